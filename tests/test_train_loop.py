"""The training loop in one process: run folder, exact resume, NaN stop, inference loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cameo_cli.attention.hooks import ProbeResult
from cameo_cli.batch import ViewBatch
from cameo_cli.config import load_recipe
from cameo_cli.data.dataset import MultiViewDataset
from cameo_cli.geometry import correspondence_targets
from cameo_cli.run_folder.checkpoints import load_for_inference
from cameo_cli.train.loop import TrainingDiverged, run_training
from cameo_cli.train.validation import attention_precision


def _recipe(dataset: Path, *overrides: str):
    return load_recipe(
        "quickstart-cpu",
        [
            f"data.dataset={dataset}",
            "train.log_every=1",
            "train.validate_every=1000",
            "sample.steps=2",
            "train.batch_size=1",
            *overrides,
        ],
    )


def test_tiny_run_folder(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    meta = json.loads((tiny_run / "meta.json").read_text())
    assert meta["cameo_version"] and meta["command"] == ["pytest", "tiny_run"]
    lines = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4]
    for x in steps:  # every term is logged, and L = L_denoise + 0.02 L_cameo
        assert x["loss"] == pytest.approx(x["denoise"] + 0.02 * x["cameo"], rel=1e-5)
    validation = [x for x in lines if "val/psnr" in x]
    assert [x["step"] for x in validation] == [4]
    assert 0 < validation[0]["val/psnr"] < 100 and 0 < validation[0]["val/psnr_x0"] < 100
    for t in (250, 500, 750):  # the held-out convergence metrics
        assert validation[0][f"val/denoise_t{t}"] > 0
    assert 0 <= validation[0]["val/precision"] <= validation[0]["val/precision_1tok"] <= 1
    head = validation[0]["val/precision_head"], validation[0]["val/precision_head_1tok"]
    assert 0 <= head[0] <= head[1] <= 1  # CAMEO's projection head, scored the same way
    assert validation[0]["val/sharpness"] > 0
    # the reference lines of the validation batch, at the first validation
    lines = ("flat", "copy", "reproject")
    assert all(0 < validation[0][f"val/line_{line}_psnr"] <= 100 for line in lines)
    assert 0 < validation[0]["val/line_reproject_seen"] <= 1
    assert (tiny_run / "samples" / "step-000004.png").is_file()
    assert any((tiny_run / "tensorboard").iterdir())
    names = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000004"]
    assert not list(tiny_run.rglob("*.pt")) and not list(tiny_run.rglob("*.pkl"))


def test_held_out_precision_scores_any_argmax_against_per_pair_truth(synthetic_dataset):
    dataset = MultiViewDataset(synthetic_dataset, num_views=4)
    batch = ViewBatch.collate([dataset[i] for i in range(2)])
    grid = (8, 8)
    truth = correspondence_targets(batch.point_map, batch.point_valid, grid, 1.5, "per_pair")
    assert truth.mask.any()
    zeros = torch.zeros(2, 4, 1, 64, 4)
    probe = ProbeResult(zeros, zeros, 0.5, grid)

    def planted(shift: int):  # the true key moved `shift` tokens to the right (clamped)
        column = (truth.index % 8 + shift).clamp(max=7)
        return lambda p, i, j: (truth.index - truth.index % 8 + column)[:, i, j]

    assert attention_precision(probe, batch, 1.5, planted(0)) == {"exact": 1.0, "within1": 1.0}
    shifted = attention_precision(probe, batch, 1.5, planted(1))
    moved = ((truth.index % 8) < 7)[truth.mask].float().mean().item()  # rows a shift changes
    assert shifted["within1"] == 1.0 and shifted["exact"] == pytest.approx(1 - moved)
    assert attention_precision(probe, batch, 1.5, planted(3))["within1"] < 0.5


def test_load_for_inference_uses_the_ema_weights(tiny_run):
    run_level = load_for_inference(tiny_run)
    checkpoint = tiny_run / "checkpoints" / "step-000004"
    assert run_level.step == 4 and run_level.recipe.alignment.layer == 10
    assert run_level.alignment is not None and not run_level.backbone.training
    ema = load_file(str(checkpoint / "ema.safetensors"))
    for name, param in run_level.backbone.named_parameters():
        assert torch.equal(param, ema[f"backbone.{name}"]), name
    for name, param in run_level.alignment.named_parameters():
        assert torch.equal(param, ema[f"alignment.{name}"]), name
    raw = load_for_inference(checkpoint, use_ema=False)
    head = load_file(str(checkpoint / "alignment.safetensors"))
    for name, param in raw.alignment.state_dict().items():
        assert torch.equal(param, head[name])
    older = load_for_inference(tiny_run / "checkpoints" / "step-000002")
    assert older.step == 2


def _tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / name))


@pytest.mark.slow
def test_resume_is_bit_exact(synthetic_dataset, tmp_path):
    options = ("train.ema=true", "train.ema_decay=0.9", "train.checkpoint_every=2")
    straight = run_training(_recipe(synthetic_dataset, "train.steps=4", *options), tmp_path / "a")
    first = tmp_path / "b"
    run_training(_recipe(synthetic_dataset, "train.steps=2", *options), first)
    resumed = run_training(
        _recipe(synthetic_dataset, "train.steps=4", *options), first, resume="latest"
    )
    assert straight.name == resumed.name == "step-000004"
    for name in (
        "backbone/diffusion_pytorch_model.safetensors",
        "backbone/cameo_extra.safetensors",
        "alignment.safetensors",
        "optimizer.safetensors",
        "ema.safetensors",
        "rng-rank0.safetensors",
    ):
        a, b = _tensors(straight, name), _tensors(resumed, name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for name in ("optimizer.json", "scheduler.json", "state.json", "rng-rank0.json"):
        assert (straight / name).read_text() == (resumed / name).read_text(), name
    meta = json.loads((first / "meta.json").read_text())
    assert meta["command"] == [] and meta["resumes"][0]["from"].endswith("step-000002")
    # The resumed run's metrics continue the first run's without duplicates.
    lines = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]


@pytest.mark.slow
def test_mvgenmaster_prior_dropout_draws_from_the_trainer_generator(
    synthetic_dataset, tmp_path, monkeypatch
):
    """The trainer hands its generator (saved in every checkpoint) to the backbone, so the
    element-wise prior dropout of a resumed run draws what an uninterrupted one would."""
    from cameo.backbones.mvgenmaster import MVGenMaster

    seen: list[object] = []
    dropout = MVGenMaster._dropout

    def spy(self, maps, generator):
        seen.append(generator)
        return dropout(self, maps, generator)

    monkeypatch.setattr(MVGenMaster, "_dropout", spy)
    recipe = _recipe(synthetic_dataset, "backbone.name=mvgenmaster", "train.steps=1")
    run_training(recipe, tmp_path / "run")
    assert seen and all(isinstance(g, torch.Generator) for g in seen)
    assert len({id(g) for g in seen}) == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_dataset, tmp_path):
    recipe = _recipe(
        synthetic_dataset,
        "train.steps=6",
        "train.checkpoint_every=1",
        "train.learning_rate=1e30",
        "train.warmup_steps=0",
        "train.grad_clip=0",
    )
    with pytest.raises(TrainingDiverged, match="not finite") as caught:
        run_training(recipe, tmp_path / "run")
    message = str(caught.value)
    saved = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert saved, "no checkpoint before the divergence"
    assert f"last good checkpoint: {saved[-1]}" in message
    loaded = load_for_inference(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in loaded.backbone.parameters())


def test_attention_precision_counts_planted_matches():
    """Two views of one point map: every token's match is the same token of the other view.
    Keys are one-hot codes; queries copying their own code find it (exact), queries copying
    the next token's code are one token off (within one)."""
    from cameo_cli.attention.hooks import ProbeResult
    from cameo_cli.batch import ViewBatch
    from cameo_cli.train.validation import attention_precision

    grid, heads = (3, 4), 2
    hw = grid[0] * grid[1]
    points = torch.randn(1, 1, 3, *grid).expand(1, 2, 3, *grid).clone()
    batch = ViewBatch(
        images=torch.zeros(1, 2, 3, *grid),
        intrinsics=torch.eye(3).expand(1, 2, 3, 3),
        world_to_camera=torch.eye(4).expand(1, 2, 4, 4),
        ref_mask=torch.tensor([[True, False]]),
        scenes=["planted"],
        frames=torch.tensor([[0, 1]]),
        point_map=points,
        point_valid=torch.ones(1, 2, *grid, dtype=torch.bool),
    )
    codes = torch.eye(hw) * 50.0
    k = codes.expand(1, 2, heads, hw, hw).clone()
    planted = ProbeResult(q=k.clone(), k=k, scale=1.0, grid=grid)
    assert attention_precision(planted, batch, epsilon=1.5) == {"exact": 1.0, "within1": 1.0}
    step_right = torch.arange(hw) // grid[1] * grid[1] + (torch.arange(hw) % grid[1] + 1) % grid[1]
    off = ProbeResult(
        q=codes[step_right].expand(1, 2, heads, hw, hw).clone(), k=k, scale=1.0, grid=grid
    )
    scores = attention_precision(off, batch, epsilon=1.5)
    # every prediction is one column to the right, except the last column (wrapped to 0)
    assert scores["exact"] == 0.0
    assert scores["within1"] == pytest.approx(1 - 1 / grid[1])
