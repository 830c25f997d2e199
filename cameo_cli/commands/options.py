"""Click options that several `cameo` commands share, so each has one spelling and help."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cameo_cli.config import CHOICES


def path_option(*names: str, **settings: Any) -> Callable:
    """A Click option whose value is a `pathlib.Path`."""
    return click.option(*names, type=click.Path(path_type=Path), **settings)


checkpoint_option = path_option(
    "--checkpoint",
    required=True,
    help="A run folder (its latest checkpoint), one checkpoint folder or a `cameo export`.",
)
device_option = click.option("--device", help="torch device [cuda if available, else cpu].")
scheduler_option = click.option(
    "--scheduler",
    type=click.Choice(CHOICES["sample.scheduler"]),
    help="Sampler, built from the training betas [recipe: sample.scheduler, ddim].",
)
