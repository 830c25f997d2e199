"""Click options that several `cameo` commands share, so each has one spelling and help."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def path_option(*names: str, **settings: Any) -> Callable:
    """A Click option whose value is a `pathlib.Path`."""
    return click.option(*names, type=click.Path(path_type=Path), **settings)


checkpoint_option = path_option(
    "--checkpoint",
    required=True,
    help="A run folder (its latest checkpoint) or one checkpoint folder.",
)
device_option = click.option("--device", help="torch device [cuda if available, else cpu].")
