"""`cameo evaluate` end to end on held-out synthetic scenes (with object masks), resuming,
LPIPS through local weights, and its errors."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cameo_cli.cli import main
from cameo_cli.data.records import SceneData
from cameo_cli.data.synthetic import SyntheticSource

pytestmark = pytest.mark.slow


class MaskedSynthetic(SyntheticSource):
    """Synthetic scenes with an object mask (the central square), like DTU's."""

    def load_scene(self, scene: str) -> SceneData:
        data = super().load_scene(scene)
        for frame in data.frames:
            mask = np.zeros(frame.image.shape[:2], dtype=bool)
            mask[8:24, 8:24] = True
            frame.mask = mask
        return data


@pytest.fixture(scope="module")
def eval_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 scenes the tiny run never saw (another generator seed), 8 frames at 32 px."""
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset

    out = tmp_path_factory.mktemp("eval") / "dataset"
    source = MaskedSynthetic(scenes=4, resolution=32, frames=8, seed=1, split="test")
    prepare_dataset(source, out, console=Console(quiet=True))
    return out


def evaluate(run: Path, dataset: Path, out: Path, *args: object) -> object:
    """`cameo evaluate --checkpoint run --dataset dataset --out out *args`."""
    common = ["--checkpoint", run, "--dataset", dataset, "--out", out]
    return CliRunner().invoke(main, ["evaluate", *map(str, common), *map(str, args)])


def check_lines_by_hand(dataset: Path, index: dict, results: dict) -> None:
    """The flat and copy lines of the first scene, recomputed with numpy from the dataset."""
    from cameo_cli.data.dataset import MultiViewDataset

    scene, entry = next(iter(index.items()))
    refs = len(entry["context"])
    views = MultiViewDataset(dataset, num_views=2, resolution=32).get_views(
        scene, entry["context"] + entry["target"], refs
    )
    images = ((views["images"].double().numpy() + 1) / 2).transpose(0, 2, 3, 1)
    w2c = views["world_to_camera"].double().numpy()
    centres = [-w[:3, :3].T @ w[:3, 3] for w in w2c]
    per_view = results["per_scene"][0]["per_view"]
    flat = images[:refs].mean(axis=(0, 1, 2))
    for k, truth in enumerate(images[refs:]):
        nearest = min(range(refs), key=lambda r: np.linalg.norm(centres[r] - centres[refs + k]))
        for line, guess in (("flat", flat), ("copy", images[nearest])):
            expected = 10 * np.log10(1 / ((guess - truth) ** 2).mean())
            assert per_view[f"{line}_psnr"][k] == pytest.approx(expected, abs=1e-4)
        assert 0 < per_view["reproject_seen"][k] <= 1 and per_view["sharpness"][k] > 0


def test_evaluate_end_to_end_and_resume(tiny_run: Path, eval_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = [
        "--metrics",
        "psnr,ssim",
        "--steps",
        3,
        "--seed",
        5,
        "--save-images",
    ]
    started = time.perf_counter()
    result = evaluate(tiny_run, eval_dataset, out, *args)
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 120
    index = json.loads((eval_dataset / "eval_index.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert [s["scene"] for s in results["per_scene"]] == list(index)
    names = ["psnr", "psnr_masked", "ssim", "ssim_masked"]
    lines = [f"{line}_{name}" for line in ("flat", "copy", "reproject") for name in names]
    assert sorted(results["mean"]) == sorted([*names, "sharpness", *lines, "reproject_seen"])
    check_lines_by_hand(eval_dataset, index, results)
    views = sum(len(entry["target"]) for entry in index.values())
    assert results["views"] == views
    all_psnr = [v for s in results["per_scene"] for v in s["per_view"]["psnr"]]
    assert results["mean"]["psnr"] == pytest.approx(np.mean(all_psnr))
    config = results["config"]
    assert config["resolution"] == 32 and config["steps"] == 3 and config["seed"] == 5
    assert config["guidance"] == 2.0 and config["ssim"]["window"] == 11
    assert config["ssim"]["sigma"] == 1.5 and config["psnr"]["identical_images"] == 100.0
    assert config["masked_metrics"] is True and config["lpips"] is None
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["scene"] for r in rows] == [*index, "mean"]
    assert float(rows[-1]["ssim"]) == pytest.approx(results["mean"]["ssim"], abs=1e-6)
    assert rows[0]["steps"] == "3" and rows[0]["ssim_sigma"] == "1.5"
    for name in ("sharpness", "flat_psnr", "copy_ssim", "reproject_psnr", "reproject_seen"):
        assert float(rows[-1][name]) == pytest.approx(results["mean"][name], abs=1e-6)
    assert config["reference_lines"]["lines"] == ["flat", "copy", "reproject"]
    first_scene = next(iter(index))
    saved = out / "images" / first_scene
    targets = len(index[first_scene]["target"])
    assert len(list(saved.glob("target_*.png"))) == len(list(saved.glob("truth_*.png"))) == targets
    refs = sorted(saved.glob("reference_*.png"))
    assert len(refs) == len(index[first_scene]["context"])
    # the saved scene is ready for `cameo sample`
    sampled = tmp_path / "sampled"
    sample_result = CliRunner().invoke(
        main,
        [
            "sample",
            "--checkpoint",
            str(tiny_run),
            "--views",
            *map(str, refs),
            "--cameras",
            str(saved / "references.json"),
            "--targets",
            str(saved / "targets.json"),
            "--steps",
            "3",
            "--seed",
            "5",
            "--out",
            str(sampled),
        ],
    )
    assert sample_result.exit_code == 0, sample_result.output
    assert len(list(sampled.glob("target_*.png"))) == targets
    assert "mean" in result.output and "psnr" in result.output
    assert "sharpness" in result.output and "reference lines" in result.output
    for line in ("model", "flat", "copy", "reproject"):
        assert f"\n│ {line} " in result.output

    # resume: one scene lost -> only that one is recomputed, to the same numbers
    scene_files = sorted((out / "scenes").glob("*.json"))
    lost = scene_files[1]
    before = json.loads(lost.read_text())
    lost.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in scene_files if p != lost}
    result = evaluate(tiny_run, eval_dataset, out, *args)
    assert result.exit_code == 0, result.output
    assert "resuming: 3 of 4" in result.output
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert json.loads(lost.read_text())["per_view"] == before["per_view"]

    # another configuration refuses to mix into this folder
    result = evaluate(tiny_run, eval_dataset, out, *[a if a != 3 else 4 for a in args])
    assert result.exit_code == 2 and "another configuration" in result.output


def random_lpips_weights(path: Path) -> Path:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def test_evaluate_lpips_from_local_weights(
    tiny_run: Path, eval_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    weights = random_lpips_weights(tmp_path / "alexnet.pth")
    result = evaluate(
        tiny_run,
        eval_dataset,
        out,
        "--metrics",
        "lpips",
        "--lpips-net",
        "alex",
        "--lpips-weights",
        weights,
        "--steps",
        2,
        "--limit",
        1,
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    names = ["lpips", "lpips_masked"]
    lines = [f"{line}_{name}" for line in ("flat", "copy", "reproject") for name in names]
    assert sorted(results["mean"]) == sorted([*names, "sharpness", *lines, "reproject_seen"])
    assert results["mean"]["lpips"] > 0
    assert results["config"]["lpips"]["net"] == "alex"


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"synth-00000": {"context": [0, 1, 2, 3], "target": [5]}}, "at most 3 references"),
        ({"synth-00000": {"context": [0], "target": [8]}}, "outside 0..7"),
        ({"nowhere": {"context": [0], "target": [1]}}, "is not in the dataset"),
        ({"synth-00000": {"context": [], "target": [1]}}, "non-empty integer lists"),
    ],
)
def test_bad_index_is_a_clear_error(
    index: dict, message: str, tiny_run: Path, eval_dataset: Path, tmp_path: Path
) -> None:
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index))
    out = tmp_path / "eval"
    result = evaluate(tiny_run, eval_dataset, out, "--index", path, "--metrics", "psnr")
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()


def test_missing_lpips_weights_and_unknown_metric(
    tiny_run: Path, eval_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "eval"
    result = evaluate(tiny_run, eval_dataset, out, "--metrics", "psnr,lpips")
    assert result.exit_code == 2
    assert "vgg16-397923af.pth" in result.output and "--metrics psnr,ssim" in result.output
    assert not out.exists()
    result = evaluate(tiny_run, eval_dataset, out, "--metrics", "psnr,fid")
    assert result.exit_code == 2 and "unknown metrics fid" in result.output


def test_priors_label_names_the_depth_source(synthetic_dataset: Path) -> None:
    from types import SimpleNamespace

    from cameo_cli.data.dataset import MultiViewDataset
    from cameo_cli.evaluate.job import priors_label

    with_priors = SimpleNamespace(backbone=SimpleNamespace(uses_priors=True))
    synthetic = MultiViewDataset(synthetic_dataset, num_views=2, min_refs=1, max_refs=1)
    assert priors_label(synthetic, with_priors) == "dataset depth (exact on synthetic)"
    assert (
        priors_label(synthetic, SimpleNamespace(backbone=SimpleNamespace(uses_priors=False)))
        is None
    )
    vggt = SimpleNamespace(
        has_geometry=True, index={"source": {"dataset": "re10k"}, "scenes": {"a": {"vggt_fit": {}}}}
    )
    assert "VGGT over windows that include the target frames" in priors_label(vggt, with_priors)
    vggt.has_geometry = False
    assert priors_label(vggt, with_priors).startswith("none")
