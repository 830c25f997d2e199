"""`cameo export`: a copied export samples as its checkpoint, and its card says what it is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cameo_cli.camera_files import read_cameras
from cameo_cli.cli import main
from cameo_cli.errors import CameoError
from cameo_cli.files import read_json
from cameo_cli.pipeline import MultiViewPipeline


def _sample(folder: Path, inputs: Path, scheduler: str | None = None) -> torch.Tensor:
    pipeline = MultiViewPipeline.from_pretrained(folder, scheduler=scheduler, device="cpu")
    return pipeline(
        _pictures(inputs),
        read_cameras(inputs / "refs.json"),
        read_cameras(inputs / "targets.json"),
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
    ).images


def _pictures(inputs: Path) -> list:
    from PIL import Image

    return [Image.open(inputs / f"view{i}.png") for i in range(2)]


def test_a_copied_export_samples_as_its_checkpoint(tiny_run, sample_inputs, tmp_path) -> None:
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    for scheduler in (None, "dpm-solver++"):
        assert torch.equal(
            _sample(tiny_run, sample_inputs, scheduler), _sample(moved, sample_inputs, scheduler)
        )

    index = read_json(moved / "model_index.json")
    assert index["_class_name"] == "MultiViewPipeline" and index["step"] == 4
    assert index["_cameo_version"]
    card = (moved / "README.md").read_text()
    for fact in ("CAMEO", "**Layer**:", "**Training steps**: 4", "dataset", "val/psnr"):
        assert fact in card
    from huggingface_hub import ModelCard

    assert ModelCard.load(moved / "README.md").data.library_name == "cameo"
    scheduler = read_json(moved / "scheduler" / "scheduler_config.json")
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert not list(moved.rglob("*.bin")) and not list(moved.rglob("*.pt"))

    again = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(moved)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    nested = CliRunner().invoke(main, ["export", str(moved), "--out", str(tmp_path / "x")])
    assert nested.exit_code == 2 and "already an export" in nested.output


def test_sample_cli_reads_an_export(tiny_run, sample_inputs, tmp_path) -> None:
    from cameo_cli.export.job import run_export

    model = run_export(tiny_run, tmp_path / "model")
    views = [str(sample_inputs / "view0.png"), str(sample_inputs / "view1.png")]
    args = ["sample", "--checkpoint", str(model), "--views", *views]
    args += ["--cameras", str(sample_inputs / "refs.json"), "--steps", "2"]
    args += ["--targets", str(sample_inputs / "targets.json"), "--scheduler", "unipc"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "out" / "sample.json")["scheduler"] == "unipc"


def test_a_vae_export_carries_its_codec(tiny_vae_folder, sample_inputs, tmp_path) -> None:
    """A checkpoint whose recipe points at a VAE folder: the export holds the VAE itself."""
    from cameo_cli.config import dump_recipe, load_recipe
    from cameo_cli.export.job import run_export
    from cameo_cli.files import write_json
    from cameo_cli.train.setup import build_training_backbone

    recipe = load_recipe(
        "quickstart-cpu",
        ["codec.kind=vae", f"codec.path={tiny_vae_folder}", "alignment.method=none"],
    )
    checkpoint = tmp_path / "checkpoint"
    torch.manual_seed(0)
    build_training_backbone(recipe, 4).save_pretrained(checkpoint / "backbone")
    dump_recipe(recipe, checkpoint / "config.yaml")
    write_json(checkpoint / "state.json", {"step": 0})
    vae_copy = tmp_path / "vae"
    shutil.copytree(tiny_vae_folder, vae_copy)
    dump_recipe(
        load_recipe(checkpoint / "config.yaml", [f"codec.path={vae_copy}"]),
        checkpoint / "config.yaml",
    )

    exported = run_export(checkpoint, tmp_path / "export")
    assert (exported / "codec" / "diffusion_pytorch_model.safetensors").is_file()
    before = _sample(checkpoint, sample_inputs)
    shutil.rmtree(vae_copy)  # the original VAE is gone: the export needs only itself
    with pytest.raises(CameoError):
        _sample(checkpoint, sample_inputs)
    assert torch.equal(before, _sample(exported, sample_inputs))
