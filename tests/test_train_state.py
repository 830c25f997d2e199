"""Checkpoint building blocks: state round trips, RNG, EMA, checkpoint folder, data stream."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch

from cameo_cli.errors import CameoError
from cameo_cli.run_folder.checkpoints import CheckpointManager
from cameo_cli.run_folder.layout import resolve_resume
from cameo_cli.run_folder.state import capture_rng_state, load_state, restore_rng_state, save_state
from cameo_cli.train.data import ResumableBatchSampler
from cameo_cli.train.ema import ExponentialMovingAverage
from cameo_cli.train.loop import WarmupConstant


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_optimizer_state_round_trip_is_exact_and_pickle_free(tmp_path):
    model, optimizer = _trained_optimizer()
    save_state(optimizer.state_dict(), tmp_path, "optimizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "optimizer.json",
        "optimizer.safetensors",
    ]
    json.loads((tmp_path / "optimizer.json").read_text())  # plain JSON
    restored = torch.optim.AdamW(model.parameters(), lr=1.0)
    restored.load_state_dict(load_state(tmp_path, "optimizer"))
    original, loaded = optimizer.state_dict(), restored.state_dict()
    assert original["param_groups"] == loaded["param_groups"]  # tuples (betas) included
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    # Both optimizers take the same next step.
    x = torch.randn(5, 3)
    twin = [p.detach().clone() for p in model.parameters()]
    model(x).square().mean().backward()
    optimizer.step()
    stepped = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, value in zip(model.parameters(), twin, strict=True):
            p.copy_(value)
    restored.zero_grad()
    model(x).square().mean().backward()
    restored.step()
    for p, expected in zip(model.parameters(), stepped, strict=True):
        assert torch.equal(p, expected)


def test_rng_states_survive_a_file_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(7)
    random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator)
    save_state(capture_rng_state({"train": generator}), tmp_path, "rng")
    expected = (
        random.random(),
        np.random.rand(),
        torch.rand(3),
        torch.rand(3, generator=generator),
    )
    random.seed(1), np.random.seed(1), torch.manual_seed(1), generator.manual_seed(1)
    restore_rng_state(load_state(tmp_path, "rng"), {"train": generator})
    got = (random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=generator))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_ema_follows_the_closed_form():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ExponentialMovingAverage(model, decay=0.9)
    for value in (2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    expected = 0.9 * (0.9 * 1.0 + 0.1 * 2.0) + 0.1 * 4.0
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), expected))
    ema.copy_to(model)
    assert torch.allclose(model.weight, torch.full((1, 2), expected))


def test_ema_applied_lends_the_averaged_weights_and_gives_the_trained_ones_back():
    model = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    trained = model.weight.detach().clone()
    averaged = ema.state_dict()["weight"]
    with ema.applied(model):
        assert torch.equal(model.weight, averaged)
    assert torch.equal(model.weight, trained)


def test_validation_scores_the_ema_weights(synthetic_dataset, tmp_path):
    """EMA with decay 1 keeps the initial weights: a trained run's validation then equals the
    validation of a run whose weights barely move (learning rate 1e-12)."""
    from cameo_cli.config import load_recipe
    from cameo_cli.train.loop import run_training

    base = [
        f"data.dataset={synthetic_dataset}",
        "train.steps=2",
        "train.checkpoint_every=2",
        "train.validate_every=2",
        "sample.steps=2",
        "train.trackers=[]",
    ]
    values = {}
    for name, extra in (
        ("ema", ["train.ema=true", "train.ema_decay=1.0", "train.learning_rate=0.01"]),
        ("frozen", ["train.learning_rate=1e-12", "train.weight_decay=0.0"]),
    ):
        run = tmp_path / name
        run_training(load_recipe("quickstart-cpu", [*base, *extra]), run, command=["pytest"])
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        values[name] = next(x for x in lines if "val/psnr" in x)
    for key in ("val/psnr", "val/psnr_x0", "val/denoise_t250", "val/denoise_t750"):
        assert values["ema"][key] == pytest.approx(values["frozen"][key], rel=1e-5), key


def test_warmup_then_constant():
    schedule = WarmupConstant(4)
    assert [schedule(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert WarmupConstant(0)(0) == 1.0


def _commit(manager: CheckpointManager, step: int) -> None:
    folder = manager.stage(step)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    (folder / "backbone").mkdir()
    manager.commit(step)


def test_checkpoint_manager_commits_atomically_and_keeps_the_last_k(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3):
        _commit(manager, step)
    assert [p.name for p in manager.folders()] == ["step-000002", "step-000003"]
    # A write killed half way leaves a staging folder that is never listed...
    half = manager.stage(4)
    (half / "state.json").write_text("{")
    assert manager.latest().name == "step-000003"
    # ...and the next save clears it.
    _commit(manager, 5)
    assert not any(p.name.startswith(".staging") for p in manager.root.iterdir())
    assert [p.name for p in manager.folders()] == ["step-000003", "step-000005"]


def test_output_folder_rules(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(run, overwrite=False, resume=None) is None  # new folder
    run.mkdir()
    assert resolve_resume(run, overwrite=False, resume=None) is None  # empty folder
    (run / "config.yaml").write_text("{}")
    with pytest.raises(CameoError, match="--overwrite"):
        resolve_resume(run, overwrite=False, resume=None)
    assert resolve_resume(run, overwrite=True, resume=None) is None
    with pytest.raises(CameoError, match="no checkpoint"):
        resolve_resume(run, overwrite=False, resume="latest")
    with pytest.raises(CameoError, match="exclude"):
        resolve_resume(run, overwrite=True, resume="latest")
    _commit(CheckpointManager(run / "checkpoints", keep=3), 2)
    latest = resolve_resume(run, overwrite=False, resume="latest")
    assert latest.name == "step-000002"
    assert resolve_resume(run, overwrite=False, resume=str(run)) == latest


def test_batch_stream_resumes_and_splits_over_ranks():
    full = ResumableBatchSampler(10, 3, seed=4)
    first = list(itertools.islice(iter(full), 7))
    resumed = list(itertools.islice(iter(ResumableBatchSampler(10, 3, seed=4, start=3)), 4))
    assert resumed == first[3:]
    # Every epoch is a permutation of the dataset, addressed as (epoch, item, global batch).
    stream = [key for batch in first for key in batch]
    for epoch in (0, 1):
        keys = stream[10 * epoch : 10 * (epoch + 1)]
        assert {e for e, _, _ in keys} == {epoch}
        assert sorted(i for _, i, _ in keys) == list(range(10))
    assert [{k for _, _, k in batch} for batch in first] == [{k} for k in range(7)]
    # Two ranks with batch 3 read exactly what one process with batch 6 reads.
    ranks = [ResumableBatchSampler(10, 3, world_size=2, rank=r, seed=4) for r in (0, 1)]
    single = ResumableBatchSampler(10, 6, seed=4)
    for a, b, whole in itertools.islice(zip(*map(iter, ranks), iter(single), strict=True), 5):
        assert a + b == whole
