"""Reference-only geometry for MVGenMaster's priors (`--reference-depth vggt`): VGGT's depth
of the references alone, in the cameras' units, against the exact depth of rendered synthetic
scenes, with a stand-in VGGT (`tests/vggt_standin.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cameo_cli.cli import main
from cameo_cli.data.synthetic import render_scene
from cameo_cli.errors import CameoError
from cameo_cli.pipeline import MultiViewPipeline
from tests import vggt_standin

SCENE, CONTEXT, TARGET = "synth-test-00000", [0, 4], [2]


def _weights(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vggt_standin.save_weights(folder / "model.safetensors")
    return folder


def _relative_error(depth: torch.Tensor, truth: np.ndarray) -> torch.Tensor:
    """|depth - truth| / truth on the pixels given a depth."""
    truth = torch.from_numpy(truth).double()
    kept = depth > 0
    return (depth.double()[kept] - truth[kept]).abs() / truth[kept]


def test_reference_depth_in_the_cameras_units(tmp_path, monkeypatch) -> None:
    """The stand-in returns the true depth times its own scale s (and 0.3 % noise): the fit
    must undo it (scale 1 / s, from the references' baseline) and give the rendered depth."""
    from cameo_cli.reference_geometry import ReferenceVGGT

    render = render_scene(seed=3, index=0, resolution=64, num_frames=16)
    state = vggt_standin.install(monkeypatch, render)
    vggt = ReferenceVGGT(_weights(tmp_path / "vggt"), device="cpu")
    frames = [0, 6, 11]
    images = torch.from_numpy(render.images[frames]).permute(0, 3, 1, 2).float() / 255
    w2c = torch.from_numpy(render.world_to_camera[frames])
    result = vggt(images, w2c)
    assert state["calls"] == [frames]  # one call on the references only
    stand_in_scale = state["similarity"][0][0]
    assert result.scale == pytest.approx(1 / stand_in_scale, rel=0.01)
    assert result.residual < 0.02 and result.rotation_error < 0.01
    assert result.depth.shape == (3, 64, 64) and result.depth.dtype == torch.float32
    kept = (result.depth > 0).float().mean()
    assert 0.6 < kept <= 0.8  # 20 % least confident pixels dropped, and depth edges
    error = _relative_error(result.depth, render.depth[frames])
    assert error.median() < 0.01 and error.max() < 0.03

    with pytest.raises(CameoError, match="at least 2 references, got 1"):
        vggt(images[:1], w2c[:1])
    with pytest.raises(CameoError, match="do not move"):
        vggt(images[:2], w2c[:1].repeat(2, 1, 1))


@pytest.fixture(scope="module")
def mvgenmaster_run(synthetic_dataset: Path, tmp_path_factory) -> Path:
    """One CPU step of the quick-start recipe with the MVGenMaster backbone."""
    from cameo_cli.config import load_recipe
    from cameo_cli.train.loop import run_training

    recipe = load_recipe(
        "quickstart-cpu",
        [
            f"data.dataset={synthetic_dataset}",
            "backbone.name=mvgenmaster",
            "train.steps=1",
            "train.batch_size=1",
            "train.validate_every=1000",
            "train.checkpoint_every=1",
        ],
    )
    run = tmp_path_factory.mktemp("mvgenmaster") / "run"
    run_training(recipe, run, command=["pytest"])
    return run


@pytest.fixture
def depths_given(monkeypatch) -> list:
    """The `depths` of every pipeline call."""
    seen: list = []
    call = MultiViewPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("depths"))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(MultiViewPipeline, "__call__", spy)
    return seen


def _evaluate(run: Path, dataset: Path, out: Path, index: Path, *args: object):
    common = ["--checkpoint", run, "--dataset", dataset, "--out", out, "--index", index]
    common += ["--metrics", "psnr", "--steps", 1]
    return CliRunner().invoke(main, ["evaluate", *map(str, common), *map(str, args)])


def _index(tmp_path: Path, context: list[int]) -> Path:
    path = tmp_path / f"index-{len(context)}.json"
    path.write_text(json.dumps({SCENE: {"context": context, "target": TARGET}}))
    return path


@pytest.mark.slow
def test_evaluate_with_reference_only_vggt_depth(
    mvgenmaster_run, synthetic_dataset, tmp_path, monkeypatch, depths_given, caplog
) -> None:
    render = render_scene(0, 0, 32, 8, held_out=True)  # the dataset's held-out scene
    state = vggt_standin.install(monkeypatch, render)
    weights = _weights(tmp_path / "vggt")
    index = _index(tmp_path, CONTEXT)
    result = _evaluate(
        mvgenmaster_run, synthetic_dataset, tmp_path / "vggt-eval", index,
        "--reference-depth", "vggt", "--vggt-weights", weights,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert state["calls"] == [CONTEXT]  # VGGT saw the references, never the target
    (depth,) = depths_given
    # at 32 px, 42 % of the pixels lie on a depth edge (3 x 3 ratio > 1.1) and are dropped
    assert depth.shape == (2, 32, 32) and (depth > 0).float().mean() > 0.3
    assert _relative_error(depth, render.depth[CONTEXT]).median() < 0.01
    results = json.loads((tmp_path / "vggt-eval" / "results.json").read_text())
    assert results["config"]["priors"].startswith("VGGT on the references only")
    fit = results["per_scene"][0]["vggt_fit"]
    assert fit["scale"] == pytest.approx(1 / state["similarity"][0][0], rel=0.01)

    with caplog.at_level("WARNING"):
        result = _evaluate(
            mvgenmaster_run, synthetic_dataset, tmp_path / "none", index,
            "--reference-depth", "none",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert depths_given[-1] is None and "zero priors" in caplog.text
    results = json.loads((tmp_path / "none" / "results.json").read_text())
    assert results["config"]["priors"] == "none: --reference-depth none (zero priors)"
    assert "vggt_fit" not in results["per_scene"][0]


@pytest.mark.slow
def test_evaluate_dataset_depth_stays_the_default(
    mvgenmaster_run, synthetic_dataset, tmp_path, depths_given
) -> None:
    result = _evaluate(
        mvgenmaster_run, synthetic_dataset, tmp_path / "eval", _index(tmp_path, CONTEXT)
    )
    assert result.exit_code == 0, result.output
    render = render_scene(0, 0, 32, 8, held_out=True)
    (depth,) = depths_given
    # the exact depth, as stored (float16)
    assert _relative_error(depth, render.depth[CONTEXT]).max() < 1e-3
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["config"]["priors"] == "dataset depth (exact on synthetic)"


@pytest.mark.parametrize(
    ("args", "context", "message"),
    [
        (["--reference-depth", "vggt"], CONTEXT, "needs --vggt-weights"),
        (["--reference-depth", "vggt", "--vggt-weights", "nowhere"], CONTEXT, "not found"),
        (["--vggt-weights", "{weights}"], CONTEXT, "only used with --reference-depth vggt"),
        (["--reference-depth", "vggt", "--vggt-weights", "{weights}"], [0], "one context view"),
    ],
)
def test_bad_reference_depth_options_write_nothing(
    args, context, message, tmp_path, monkeypatch
) -> None:
    vggt_standin.install(monkeypatch)
    weights = _weights(tmp_path / "vggt")
    args = [str(a).format(weights=weights) for a in args]
    out = tmp_path / "eval"
    # refused before the checkpoint or the dataset is read
    result = _evaluate(tmp_path / "run", tmp_path / "data", out, _index(tmp_path, context), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def _sample(run: Path, inputs: Path, out: Path, *args: object):
    common = ["--checkpoint", run, "--cameras", inputs / "refs.json", "--out", out]
    common += ["--targets", inputs / "targets.json", "--steps", 1]
    return CliRunner().invoke(main, ["sample", *map(str, common), *map(str, args)])


@pytest.mark.slow
def test_sample_with_reference_only_vggt_depth(
    mvgenmaster_run, sample_inputs, tmp_path, monkeypatch, depths_given
) -> None:
    render = render_scene(0, 0, 32, 8)  # sample_inputs: frames 0 and 7 of synth-00000
    state = vggt_standin.install(monkeypatch, render)
    weights = _weights(tmp_path / "vggt")
    views = ["--views", sample_inputs / "view0.png", sample_inputs / "view1.png"]
    out = tmp_path / "out"
    result = _sample(
        mvgenmaster_run, sample_inputs, out, *views,
        "--reference-depth", "vggt", "--vggt-weights", weights,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert state["calls"] == [[0, 7]]
    (depth,) = depths_given
    assert _relative_error(depth, render.depth[[0, 7]]).median() < 0.01
    record = json.loads((out / "sample.json").read_text())["depths"]
    assert record["source"].startswith("vggt")
    assert record["scale"] == pytest.approx(1 / state["similarity"][0][0], rel=0.01)

    bad = tmp_path / "bad"
    np.save(tmp_path / "d.npy", np.ones((32, 32), np.float32))
    both = [*views, "--depths", tmp_path / "d.npy", tmp_path / "d.npy"]
    result = _sample(mvgenmaster_run, sample_inputs, bad, *both, "--reference-depth", "vggt")
    assert result.exit_code == 2 and "not both" in result.output, result.output
    one = json.loads((sample_inputs / "refs.json").read_text())
    one["cameras"] = one["cameras"][:1]
    (tmp_path / "one.json").write_text(json.dumps(one))
    args = ["--views", sample_inputs / "view0.png", "--cameras", tmp_path / "one.json"]
    args += ["--reference-depth", "vggt", "--vggt-weights", weights]
    result = _sample(mvgenmaster_run, sample_inputs, bad, *args)
    assert result.exit_code == 2, result.output
    assert "at least 2 references, got 1 --views" in result.output
    assert not bad.exists()
