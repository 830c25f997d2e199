"""Shared pytest fixtures (append new fixtures; keep existing ones)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic dataset: 3 scenes x 8 frames at 32 px with depth (2 shards)."""
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource

    out = tmp_path_factory.mktemp("synthetic") / "dataset"
    source = SyntheticSource(scenes=3, resolution=32, frames=8, seed=0, geometry="depth")
    prepare_dataset(source, out, scenes_per_shard=2, console=Console(quiet=True))
    return out
