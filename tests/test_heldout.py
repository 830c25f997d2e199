"""Held-out scenes: the synthetic `test` split, validation on held-out scenes only, evaluate's
warning on training scenes, and evaluation indices with scenes that have no target view."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from cameo_cli.cli import main
from cameo_cli.config import load_recipe
from cameo_cli.data.dataset import MultiViewDataset, load_eval_index
from cameo_cli.data.shards import load_index, prepare_dataset
from cameo_cli.data.synthetic import SyntheticSource, render_scene
from cameo_cli.errors import CameoError

QUIET = Console(quiet=True)
# sha256 of render_scene(seed, index, 16, 2).images as cameo rendered them before held-out
# scenes existed (commit c8a89dc): training scenes keep their pixels
TRAINING_PIXELS = {
    (0, 0): "a31deea2b84bd1175470e61a534cf8bb92c8e5595a0e448277792d765cf44979",
    (1, 3): "699fb82696a925031da84cd8ec348cd1c8604505a170c99611e5e03b86be0582",
}


def test_training_scenes_keep_their_pixels():
    for (seed, index), digest in TRAINING_PIXELS.items():
        images = render_scene(seed, index, resolution=16, num_frames=2).images
        assert hashlib.sha256(images.tobytes()).hexdigest() == digest


def test_held_out_scenes_are_none_of_the_training_scenes_of_seeds_0_and_1():
    def render(seed: int, index: int, held_out: bool) -> bytes:
        return render_scene(seed, index, 16, 2, held_out=held_out).images.tobytes()

    training = {render(seed, i, False) for seed in (0, 1) for i in range(12)}
    held_out = {render(seed, i, True) for seed in (0, 1) for i in range(12)}
    assert len(training) == len(held_out) == 24
    assert not training & held_out


def test_prepare_writes_a_test_split_that_the_eval_index_names_alone(tmp_path: Path):
    out = tmp_path / "synthetic"
    args = ["prepare", "synthetic", "--scenes", "2", "--test-scenes", "2", "--frames", "4"]
    result = CliRunner().invoke(main, [*args, "--resolution", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = load_index(out)
    assert {scene: meta["split"] for scene, meta in index["scenes"].items()} == {
        "synth-00000": "train",
        "synth-00001": "train",
        "synth-test-00000": "test",
        "synth-test-00001": "test",
    }
    assert sorted(load_eval_index(out)) == ["synth-test-00000", "synth-test-00001"]
    assert index["skipped"] == []  # training scenes are not reported as left out
    reader = MultiViewDataset(out, num_views=2).reader
    held_out = render_scene(0, 1, 16, 4, held_out=True).images
    assert np.array_equal(reader.image("synth-test-00001", 2), held_out[2])
    assert np.array_equal(reader.image("synth-00001", 2), render_scene(0, 1, 16, 4).images[2])
    again = CliRunner().invoke(main, [*args, "--resolution", "16", "--out", str(out)])
    assert again.exit_code == 0 and "reused 1" in again.output  # resumable as before


def test_training_reads_only_training_scenes(synthetic_dataset: Path):
    from cameo_cli.train.loop import TRAIN_SPLIT
    from cameo_cli.train.setup import open_dataset

    recipe = load_recipe("quickstart-cpu", [f"data.dataset={synthetic_dataset}"])
    dataset = open_dataset(recipe, needs_geometry=True, split=TRAIN_SPLIT)
    assert dataset.scenes == ["synth-00000", "synth-00001", "synth-00002"]
    assert "synth-test-00000" in load_index(synthetic_dataset)["scenes"]
    for epoch in range(3):
        dataset.set_epoch(epoch)
        assert all(dataset[i]["scene"].startswith("synth-0") for i in range(len(dataset)))


def test_validation_scored_the_held_out_scene(tiny_run: Path, synthetic_dataset: Path):
    meta = json.loads((tiny_run / "meta.json").read_text())
    assert meta["validation"] == {
        "dataset": str(synthetic_dataset),
        "split": "test",
        "scenes": ["synth-test-00000"],
    }


def _trainer(dataset: Path, *overrides: str, tmp_path: Path):
    """A Trainer on `dataset` (quick-start recipe), built as `run_training` builds it."""
    from accelerate import Accelerator

    from cameo_cli.train.loop import TRAIN_SPLIT, Trainer
    from cameo_cli.train.setup import open_dataset

    recipe = load_recipe("quickstart-cpu", [f"data.dataset={dataset}", *overrides])
    training = open_dataset(recipe, needs_geometry=True, split=TRAIN_SPLIT)
    return Trainer.from_recipe(recipe, tmp_path / "run", Accelerator(cpu=True), training)


@pytest.fixture(scope="module")
def training_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training scenes and no held-out ones (8 frames, 32 px)."""
    out = tmp_path_factory.mktemp("training_only") / "dataset"
    prepare_dataset(SyntheticSource(scenes=2, resolution=32, frames=8), out, console=QUIET)
    return out


def test_without_held_out_scenes_validation_refuses(training_only: Path, tmp_path: Path):
    with pytest.raises(CameoError) as error:
        _trainer(training_only, tmp_path=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{training_only}: no held-out scenes for validation")
    assert "data.validation=DIR" in message and "data.validation=train" in message


def test_validation_on_training_scenes_is_an_explicit_opt_in_with_a_warning(
    training_only: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="cameo_cli.train.loop"):
        trainer = _trainer(training_only, "data.validation=train", tmp_path=tmp_path)
    assert "VALIDATION ON TRAINING SCENES" in caplog.text
    assert trainer.validation_source == {
        "dataset": str(training_only),
        "split": "train",
        "scenes": ["synth-00000", "synth-00001"],
    }
    assert trainer.validation_batch.scenes == ["synth-00000", "synth-00001"]


def test_validation_reads_the_test_split_of_another_folder(
    training_only: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    other = tmp_path / "held_out"
    source = SyntheticSource(scenes=1, resolution=32, frames=8, seed=7, test_scenes=2)
    prepare_dataset(source, other, console=QUIET)
    with caplog.at_level(logging.WARNING, logger="cameo_cli.train.loop"):
        trainer = _trainer(training_only, f"data.validation={other}", tmp_path=tmp_path)
    assert "TRAINING SCENES" not in caplog.text
    assert trainer.validation_batch.scenes == ["synth-test-00000", "synth-test-00001"]
    assert trainer.validation_source["dataset"] == str(other)


def test_a_misspelt_validation_key_names_the_right_one():
    with pytest.raises(CameoError, match="did you mean 'data.validation'"):
        load_recipe("quickstart-cpu", ["data.validaton=train"])


def test_evaluate_warns_when_it_scores_training_scenes(
    tiny_run: Path, synthetic_dataset: Path, tmp_path: Path
):
    def evaluate(out: Path, *extra: str):
        args = ["evaluate", "--checkpoint", str(tiny_run), "--dataset", str(synthetic_dataset)]
        args += ["--metrics", "psnr", "--steps", "1", "--out", str(out), *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return result.output, json.loads((out / "results.json").read_text())

    output, results = evaluate(tmp_path / "held_out")  # the prepared index: held-out only
    assert "warning" not in output and results["warnings"] == []
    index = tmp_path / "trained.json"
    index.write_text(json.dumps({"synth-00001": {"context": [0, 7], "target": [3]}}))
    output, results = evaluate(tmp_path / "trained", "--index", str(index))
    assert "warning" in output and "marked 'train'" in output
    [warning] = results["warnings"]
    assert warning.startswith(f"{synthetic_dataset}: 1 of the 1 evaluated scenes")
    assert "synth-00001" in warning


class ShortFirstScene(SyntheticSource):
    """Held-out scene 0 keeps only 2 of its frames: no target fits between two contexts."""

    def load_scene(self, scene: str):
        data = super().load_scene(scene)
        if scene == "synth-test-00000":
            data.frames = data.frames[:2]
        return data


def test_a_two_frame_scene_is_left_out_of_the_eval_index_not_the_index(tmp_path: Path):
    out = tmp_path / "short"
    source = ShortFirstScene(scenes=1, resolution=16, frames=4, test_scenes=2)
    prepare_dataset(source, out, console=QUIET)
    # 4 frames: the window spans them all, the two inner frames are the targets
    assert load_eval_index(out) == {"synth-test-00001": {"context": [0, 3], "target": [1, 2]}}
    [skip] = load_index(out)["skipped"]
    assert skip["item"] == "synth-test-00000 (evaluation)" and "2 frame(s)" in skip["reason"]


def test_an_index_with_an_empty_target_list_loads_without_that_scene(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "eval_index.json"
    kept = {"context": [0, 2], "target": [1]}
    path.write_text(json.dumps({"two": {"context": [0, 1], "target": []}, "three": kept}))
    with caplog.at_level(logging.WARNING, logger="cameo_cli.data.dataset"):
        assert load_eval_index(path) == {"three": kept}
    assert "1 scene(s) without target views: two" in caplog.text
