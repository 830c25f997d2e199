"""Shared pytest fixtures (append new fixtures; keep existing ones)."""

from __future__ import annotations

import os
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

# Without a GPU the fused Triton kernels run through Triton's interpreter; it must be chosen
# before Triton is first imported (any test importing cameo_cli.alignment imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def builtin_alignment_entries() -> dict[str, str]:
    """name -> "module:attr" of pyproject's `cameo.alignments` table (read without tomllib,
    which Python 3.10 lacks)."""
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    table = text.split('[project.entry-points."cameo.alignments"]', 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([^"]+)"$', table, flags=re.M))


def _register_builtin_alignments() -> None:
    """A checkout run against an older install (its metadata predates some of pyproject's
    `cameo.alignments`): register the built-in methods it lacks through CAMEO_ALIGNMENTS, as
    a developer would. A fresh install (CI) has them all as entry points and sets nothing."""
    installed = {ep.name for ep in entry_points(group="cameo.alignments")}
    missing = {k: v for k, v in builtin_alignment_entries().items() if k not in installed}
    if missing:
        os.environ["CAMEO_ALIGNMENTS"] = ",".join(f"{k}={v}" for k, v in missing.items())


_register_builtin_alignments()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic dataset: 3 training scenes and 1 held-out (synth-test-00000), 8
    frames at 32 px with depth (2 shards)."""
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource

    out = tmp_path_factory.mktemp("synthetic") / "dataset"
    source = SyntheticSource(
        scenes=3, resolution=32, frames=8, seed=0, geometry="depth", test_scenes=1
    )
    prepare_dataset(source, out, scenes_per_shard=2, console=Console(quiet=True))
    return out


TINY_RUN_STEPS = 4


@pytest.fixture(scope="session")
def tiny_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: 4 CPU steps of the quick-start recipe (tiny cat3d + CAMEO, 32 px pixel
    space) on `synthetic_dataset`, with EMA and 5 sampling steps; checkpoints at steps 2 and
    4, validation samples at 4."""
    from cameo_cli.config import load_recipe
    from cameo_cli.train.loop import run_training

    recipe = load_recipe(
        "quickstart-cpu",
        [
            f"data.dataset={synthetic_dataset}",
            f"train.steps={TINY_RUN_STEPS}",
            "train.checkpoint_every=2",
            "train.validate_every=4",
            "train.log_every=1",
            "train.ema=true",
            "train.ema_decay=0.9",
            "sample.steps=5",
        ],
    )
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    run_training(recipe, run, command=["pytest", "tiny_run"])
    return run


@pytest.fixture(scope="session")
def tiny_vae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random AutoencoderKL (4 latent channels, 2x down) saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sample_inputs(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two reference PNGs of a synthetic scene, their cameras, and three target cameras."""
    import json

    from PIL import Image

    from cameo_cli.camera_files import CameraSet, to_cameo_json, to_re10k
    from cameo_cli.data.dataset import MultiViewDataset

    folder = tmp_path_factory.mktemp("sample_inputs")
    views = MultiViewDataset(synthetic_dataset).get_views("synth-00000", [0, 7, 2, 4, 6], 2)
    for i in range(2):
        image = ((views["images"][i] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(image).save(folder / f"view{i}.png")
    K, w2c = views["intrinsics"].double(), views["world_to_camera"].double()
    refs = CameraSet.from_pixel(K[:2], w2c[:2], (32, 32))
    targets = CameraSet.from_pixel(K[2:], w2c[2:], (32, 32))
    (folder / "refs.json").write_text(json.dumps(to_cameo_json(refs, image_size=(32, 32))))
    (folder / "refs.txt").write_text(to_re10k(refs))
    (folder / "targets.json").write_text(
        json.dumps(to_cameo_json(targets, image_size=(32, 32), convention="opengl"))
    )
    return folder
