"""`cameo diagnose` end to end on synthetic data, over a training run, and on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cameo_cli.cli import main
from cameo_cli.errors import CameoError
from cameo_cli.layers import read_recommended_layers, write_recommended_layer


def prepared(root: Path, scenes: int, geometry: str) -> Path:
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource

    source = SyntheticSource(scenes=scenes, resolution=32, frames=8, seed=0, geometry=geometry)
    prepare_dataset(source, root, scenes_per_shard=4, console=Console(quiet=True))
    return root


@pytest.fixture(scope="module")
def four_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(tmp_path_factory.mktemp("diagnose") / "synthetic", 4, "depth")


@pytest.fixture()
def cameo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cameo_home"
    monkeypatch.setenv("CAMEO_HOME", str(home))
    return home


def run(*args: str):
    return CliRunner().invoke(main, ["diagnose", *args], catch_exceptions=False)


def assert_png_shows_data(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000, path
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, path  # more than a blank frame


@pytest.mark.slow
def test_whole_diagnose_on_synthetic_writes_json_plots_and_recommendation(
    four_scenes: Path, tmp_path: Path, cameo_home: Path
):
    out = tmp_path / "diagnose"
    result = run(
        "--backbone", "cat3d", "--dataset", str(four_scenes), "--out", str(out),
        "--perturb", "--sample-steps", "1", "--timesteps", "250,750",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "diagnose.json").read_text())
    assert [s["layer"] for s in report["layers"]] == list(range(16))
    assert report["radii"] == {  # 32 px / 8; the synthetic rooms are not metric
        "tokens": 1.0,
        "pixels": 4.0,
        "3d": {"unit": "token footprints", "values": [1.0]},
    }
    assert report["metric"] is False
    assert report["metrics"] == ["exact", "tokens", "pixels", "3d@1tok"]
    assert len(report["scenes"]) == 4
    for summary in report["layers"]:
        assert summary["attention"]["rows"] > 0
        assert set(summary["by_timestep"]) == {"250", "750"}
        rotation_rows = sum(b["rows"] for b in summary["attention"]["by_rotation"].values())
        assert rotation_rows == summary["attention"]["rows"]
    for summary in report["layers"]:  # chance per metric, and the lift over it
        for metric in report["metrics"]:
            chance, precision = summary["chance"][metric], summary["attention"]["precision"][metric]
            assert 0 < chance < 1
            assert summary["attention"]["lift"][metric] == pytest.approx(precision - chance)
    recommended = report["recommended_layer"]
    best = max(s["attention"]["lift"]["pixels"] for s in report["layers"] if s["multiview"])
    assert recommended["lift"] == best
    chosen = report["layers"][recommended["layer"]]
    assert chosen["multiview"] and recommended["chance"] == chosen["chance"]["pixels"]
    assert recommended["precision"] == chosen["attention"]["precision"]["pixels"]
    perturbation = report["perturbation"]
    assert [row["layer"] for row in perturbation["layers"]] == list(range(16))
    assert all(np.isfinite(row["psnr"]) for row in perturbation["layers"])
    for name in (
        "precision_by_layer", "precision_by_rotation", "perturbation_drop", "perturbation_samples"
    ):  # fmt: skip
        assert_png_shows_data(out / f"{name}.png")
    assert read_recommended_layers("cat3d", "tiny") == [recommended["layer"]]
    stored = json.loads((cameo_home / "recommended_layers.json").read_text())
    assert stored["cat3d/tiny"]["layer"] == recommended["layer"]
    assert [row["layer"] for row in stored["cat3d/tiny"]["top"]] == [recommended["layer"]]
    assert "recommended layer" in result.output

    again = run("--backbone", "cat3d", "--dataset", str(four_scenes), "--out", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.slow
def test_run_scores_every_checkpoint_next_to_validation_psnr(
    tiny_run: Path, synthetic_dataset: Path, tmp_path: Path, cameo_home: Path
):
    out = tmp_path / "over_training"
    result = run(
        "--backbone", "cat3d", "--run", str(tiny_run), "--dataset", str(synthetic_dataset),
        "--layers", "6,10", "--out", str(out), "--scenes", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "diagnose.json").read_text())
    assert report["supervised_layer"] == 10
    head = report["layers"][1]["projection_head"]  # the trained head's own map
    chance = report["layers"][1]["chance"]
    assert head["lift"]["pixels"] == pytest.approx(head["precision"]["pixels"] - chance["pixels"])
    assert "10 head" in result.output  # its row beside the raw attention's
    over = report["over_training"]
    assert over["layer"] == 10
    assert [c["step"] for c in over["checkpoints"]] == [2, 4]
    assert all(c["projection_head"] is not None for c in over["checkpoints"])
    assert [p["step"] for p in over["validation_psnr"]] == [4]
    assert_png_shows_data(out / "precision_over_training.png")


def test_read_recommended_layer_without_diagnose(cameo_home: Path):
    with pytest.raises(CameoError, match="run cameo diagnose first"):
        read_recommended_layers("cat3d", "full")


def test_top_k_layers_are_recommended_stored_and_read_back(
    four_scenes: Path, tmp_path: Path, cameo_home: Path
):
    from cameo_cli.config import load_recipe
    from cameo_cli.registry import build_backbone
    from cameo_cli.train.plan import resolve_layer

    out = tmp_path / "diagnose"
    result = run(
        "--backbone", "cat3d", "--dataset", str(four_scenes), "--out", str(out),
        "--layers", "6,8,10,12", "--scenes", "1", "--top-k", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "diagnose.json").read_text())
    scored = {s["layer"]: s["attention"]["lift"]["pixels"] for s in report["layers"]}
    ranked = sorted((layer for layer in scored if scored[layer] is not None), key=scored.get)
    top = report["recommended_layer"]["top"]
    assert [row["layer"] for row in top] == ranked[::-1][:2]
    assert report["recommended_layer"]["layer"] == top[0]["layer"]
    assert [row["lift"] for row in top] == [scored[row["layer"]] for row in top]
    layers = [row["layer"] for row in top]
    assert f"top 2 layers: {layers[0]},{layers[1]}" in result.output
    assert read_recommended_layers("cat3d", "tiny", 2) == layers
    backbone = build_backbone("cat3d", "tiny", in_channels=3)
    for choice, expected in (("auto", layers[0]), ("auto:1", layers[0]), ("auto:2", layers)):
        recipe = load_recipe("quickstart-cpu", [f"alignment.layer={choice}"])
        assert resolve_layer(recipe, backbone) == expected
    with pytest.raises(CameoError, match="holds 2 recommended layer.s., not 3: rerun cameo"):
        resolve_layer(load_recipe("quickstart-cpu", ["alignment.layer=auto:3"]), backbone)


def test_entries_before_top_k_hold_one_layer(cameo_home: Path):
    write_recommended_layer("cat3d", "tiny", {"layer": 12})
    assert read_recommended_layers("cat3d", "tiny") == [12]
    with pytest.raises(CameoError, match="holds 1 recommended layer.s., not 2"):
        read_recommended_layers("cat3d", "tiny", 2)


def test_top_k_beyond_the_multiview_layers(four_scenes: Path, tmp_path: Path, cameo_home: Path):
    args = ["--backbone", "cat3d", "--dataset", str(four_scenes), "--out", str(tmp_path / "o")]
    result = run(*args, "--layers", "0,10", "--top-k", "2")
    assert result.exit_code == 2, result.output
    assert "--top-k 2: only 1 of the diagnosed layers attend across views" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_layer_list_outside_backbone(four_scenes: Path, tmp_path: Path, cameo_home: Path):
    args = ["--backbone", "cat3d", "--dataset", str(four_scenes), "--out", str(tmp_path / "o")]
    result = run(*args, "--layers", "3,16")
    assert result.exit_code == 2
    assert "layer 16 is outside backbone 'cat3d' (valid: 0-15)" in result.output
    result = run(*args, "--layers", "three")
    assert result.exit_code == 2 and "got 'three'" in result.output
    result = run(*args, "--timesteps", "1200")
    assert result.exit_code == 2 and "between 0 and 999" in result.output


def test_dataset_without_geometry_says_how_to_prepare(tmp_path: Path, cameo_home: Path):
    bare = prepared(tmp_path / "bare", 2, "none")
    result = run("--backbone", "cat3d", "--dataset", str(bare), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "has no geometry" in result.output and "--geometry depth" in result.output
    missing = run("--backbone", "cat3d", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"))
    assert missing.exit_code == 2 and "cameo prepare" in missing.output


@pytest.mark.slow
def test_checkpoint_of_another_backbone(tiny_run: Path, synthetic_dataset: Path, tmp_path: Path):
    result = run(
        "--backbone", "hunyuan-dit", "--checkpoint", str(tiny_run),
        "--dataset", str(synthetic_dataset), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "holds a 'cat3d' backbone, not 'hunyuan-dit'" in result.output
    both = run(
        "--backbone", "cat3d", "--checkpoint", str(tiny_run), "--run", str(tiny_run),
        "--dataset", str(synthetic_dataset), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output


def test_navi_through_prepare_and_diagnose_reports_precision_at_1_2_5_cm(
    tmp_path: Path, cameo_home: Path
):
    from tests.navi_fixture import write_navi

    raw = write_navi(tmp_path / "raw", {"multiview_00_pixel4a": 8, "multiview-01-pixel5": 8})
    prepared_navi = tmp_path / "navi"
    result = CliRunner().invoke(
        main, ["prepare", "navi", "--root", str(raw), "--out", str(prepared_navi)]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "diagnose"
    args = ["--backbone", "cat3d", "--dataset", str(prepared_navi), "--layers", "2,10"]
    result = run(*args, "--protocol", "probe3d", "--out", str(out), "--no-recommend")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "diagnose.json").read_text())
    assert report["metric"] is True and report["protocol"] == "probe3d"
    assert report["radii"]["3d"] == {"unit": "cm", "values": [1.0, 2.0, 5.0]}
    assert report["metrics"] == ["exact", "tokens", "pixels", "3d@1cm", "3d@2cm", "3d@5cm"]
    assert all(len(s["frames"]) == 2 for s in report["scenes"])  # image pairs
    for summary in report["layers"]:
        assert summary["attention"]["rows"] > 0
        for rotation in summary["attention"]["by_rotation"].values():
            assert set(rotation["precision"]) == set(report["metrics"])
    assert "≤2 cm" in result.output and "by relative rotation" in result.output
    assert_png_shows_data(out / "precision_by_rotation.png")
    bad = run(*args, "--radius-cm", "2,-1", "--out", str(tmp_path / "o"))
    assert bad.exit_code == 2 and "positive radii in centimetres" in bad.output
