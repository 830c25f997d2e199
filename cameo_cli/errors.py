"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import click


class CameoError(click.ClickException):
    """A mistake in the user's input (file, flag, recipe): reported as one line, exit code 2."""

    exit_code = 2
