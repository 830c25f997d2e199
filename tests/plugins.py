"""Throwaway plugin distributions for the registry tests: written, pip-installed, removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    subprocess.run(command, check=True, capture_output=True)


def write_plugin(root: Path, name: str, group: str, entry: str, modules: dict[str, str]) -> Path:
    """A distribution `name` in `root / name` whose package (name with underscores) holds
    `modules` {file name: source} and registers `entry` ("key = module:attr") in `group`."""
    package = root / name / name.replace("-", "_")
    package.mkdir(parents=True)
    for file, source in modules.items():
        (package / file).write_text(source)
    (root / name / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools"]\n'
        'build-backend = "setuptools.build_meta"\n'
        "[project]\n"
        f'name = "{name}"\n'
        'version = "0.0.1"\n'
        f'[project.entry-points."{group}"]\n'
        f"{entry}\n"
    )
    return root / name
