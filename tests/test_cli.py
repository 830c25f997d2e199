"""The top-level `cameo` command: version, help, and a light start-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import click
from click.testing import CliRunner

from cameo_cli import __version__
from cameo_cli.cli import COMMANDS, main, summary

REPO = Path(__file__).resolve().parents[1]


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_listing_shows_each_commands_own_short_help():
    """The lazy listing (read from source) is what Click itself would list for the imported
    command at the default width: the docstring's first line, whole (not cut with "...")."""
    limit = click.HelpFormatter(width=78).width - 6 - max(map(len, COMMANDS))  # 80 columns
    for name in COMMANDS:
        command = main.get_command(None, name)
        assert summary(name), f"no summary for {name}"
        assert summary(name) == command.get_short_help_str(limit), name


def test_help_lists_commands_without_importing_them():
    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from cameo_cli.cli import COMMANDS, main
        result = CliRunner().invoke(main, ["--help"])
        assert result.exit_code == 0, result.output
        assert all(name in result.output for name in COMMANDS)
        print("HEAVY", [m for m in ("torch", "diffusers") if m in sys.modules])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
