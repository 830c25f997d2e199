"""Click options that several `cameo` commands share, so each has one spelling and help."""

from __future__ import annotations

from pathlib import Path

import click

checkpoint_option = click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="A run folder (its latest checkpoint) or one checkpoint folder.",
)
device_option = click.option("--device", help="torch device [cuda if available, else cpu].")
