"""The monotone projection head (`alignment.head: monotone`, cameo's, not the official one):
its scores never decrease when one attention head's logit rises, the chunked CAMEO loss
computes it exactly, it trains, and runs save and load it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cameo.alignments.cameo.loss import CameoLoss, MonotoneHead
from cameo_cli.attention.hooks import ProbeResult
from cameo_cli.geometry import CorrespondenceTargets as Targets
from tests.official_reference import official_loss_of_probs
from tests.test_alignment import make_case

HEADS = 4


def written_out(head: MonotoneHead, logits: torch.Tensor) -> torch.Tensor:
    """The head's definition: w2⁺ · softplus(W1⁺ l + b1) + b2 with W⁺ = softplus(raw W)."""
    w1, w2 = F.softplus(head.raw_weight1), F.softplus(head.raw_weight2)
    return F.softplus(logits @ w1.T + head.bias1) @ w2.T + head.bias2


def reference_loss(loss_fn: CameoLoss, probe, targets: Targets, ref_mask, loss: str):
    """The official row losses and group means on every logit at once (float64)."""
    q, k = probe.q, probe.k
    logits = torch.einsum("bihqd,bjhkd->bijqkh", q, k) * probe.scale
    probs = written_out(loss_fn.head, logits).squeeze(-1).softmax(dim=-1)
    return official_loss_of_probs(probs, targets.index, targets.mask, ref_mask, loss)


def randomise(head: MonotoneHead, generator: torch.Generator, spread: float = 3.0) -> None:
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * spread)


def logit_gradients(head: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """d score / d logit_h at every row of `logits` [N, H]: [N, H]."""
    logits = logits.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(head(logits).sum(), logits)
    return gradient


@pytest.mark.parametrize("seed", range(5))
def test_score_never_decreases_in_any_heads_logit_at_random_parameters(seed):
    generator = torch.Generator().manual_seed(seed)
    head = MonotoneHead(HEADS).double()
    randomise(head, generator)
    logits = torch.randn(4096, HEADS, generator=generator, dtype=torch.float64) * 10
    assert (logit_gradients(head, logits) >= 0).all()
    # and as a finite difference: raising one head's logit never lowers the score
    for h in range(HEADS):
        raised = logits.clone()
        raised[:, h] += 0.5
        assert (head(raised) >= head(logits)).all()


@pytest.mark.parametrize("kind", ["mlp", "monotone"])
def test_trained_towards_an_inverted_reading_only_the_official_head_inverts(kind):
    """Both heads fitted to score = -(mean of the logits): the MLP learns the decreasing
    reading (negative gradients), the monotone head keeps every gradient >= 0."""
    torch.manual_seed(0)
    head = CameoLoss(HEADS, head=kind).head.double()
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(512, HEADS, generator=generator, dtype=torch.float64) * 3
    wanted = -logits.mean(dim=-1, keepdim=True)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        optimiser.zero_grad()
        F.mse_loss(head(logits), wanted).backward()
        optimiser.step()
    gradients = logit_gradients(head, logits)
    if kind == "mlp":
        assert (gradients.sum(dim=-1) < 0).float().mean() > 0.9
    else:
        assert (gradients >= 0).all()


def test_initial_head_ranks_keys_as_the_mean_of_the_heads_logits():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(64, 50, HEADS, generator=generator) * 4  # rows x keys x heads
    scores = MonotoneHead(HEADS)(logits).squeeze(-1)
    assert torch.equal(scores.argmax(dim=-1), logits.mean(dim=-1).argmax(dim=-1))
    assert torch.equal(scores.argsort(dim=-1), logits.mean(dim=-1).argsort(dim=-1))


@pytest.mark.parametrize("loss", ["ce", "l1"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
@pytest.mark.parametrize("zero", [0.0, 0.5])
def test_chunked_loss_matches_the_written_out_head_in_value_and_gradients(loss, chunk_size, zero):
    probe, targets, ref_mask = make_case(zero=zero, seed=5)
    loss_fn = CameoLoss(HEADS, head="monotone", loss=loss, chunk_size=chunk_size).double()
    randomise(loss_fn.head, torch.Generator().manual_seed(3), spread=1.0)
    inputs = [probe.q, probe.k, *loss_fn.parameters()]
    value = loss_fn(probe, targets, ref_mask)
    expected = reference_loss(loss_fn, probe, targets, ref_mask, loss)
    assert torch.allclose(value, expected, rtol=0, atol=1e-9)
    got = torch.autograd.grad(value, inputs)
    want = torch.autograd.grad(expected, inputs)
    assert len(got) == 6
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=0, atol=1e-6), (g - w).abs().max()
    assert all(g.abs().sum() > 0 for g in got[:5])  # b2 cancels in the softmax


def test_correspondence_logits_are_the_heads_log_softmax():
    probe, _, _ = make_case(seed=6)
    loss_fn = CameoLoss(HEADS, head="monotone").double()
    randomise(loss_fn.head, torch.Generator().manual_seed(4), spread=1.0)
    logits = torch.einsum("bhqd,bhkd->bqkh", probe.q[:, 1], probe.k[:, 2]) * probe.scale
    want = written_out(loss_fn.head, logits).squeeze(-1).log_softmax(dim=-1)
    got = loss_fn.correspondence_logits(probe, 1, 2)
    assert torch.allclose(got, want, atol=1e-10)
    assert torch.equal(loss_fn.predicted_match(probe, 1, 2), want.argmax(dim=-1))


def test_head_learns_a_planted_informative_attention_head():
    """Head 0's attention points at the true key, the others are noise: training only the
    monotone head lowers the CAMEO loss and raises the precision of its argmax."""
    generator = torch.Generator().manual_seed(7)
    batch, views, hw, dim = 2, 3, 16, 8
    q = torch.randn(batch, views, HEADS, hw, dim, generator=generator)
    k = torch.randn(batch, views, HEADS, hw, dim, generator=generator)
    probe = ProbeResult(q=q, k=k, scale=dim**-0.5, grid=(4, 4))
    index = torch.zeros(batch, views, views, hw, dtype=torch.long)
    for i in range(views):
        for j in range(views):
            index[:, i, j] = probe.logits(i, j)[:, 0].argmax(dim=-1)  # head 0's favourite
    mask = ~torch.eye(views, dtype=torch.bool)[None, :, :, None].expand_as(index).clone()
    targets, ref_mask = Targets(index, mask), torch.tensor([[True, False, False]] * batch)
    loss_fn = CameoLoss(HEADS, head="monotone")

    def precision() -> float:
        hits = [
            (loss_fn.predicted_match(probe, i, j) == index[:, i, j]).float().mean()
            for i in range(views)
            for j in range(views)
            if i != j
        ]
        return torch.stack(hits).mean().item()

    before_loss, before_precision = loss_fn(probe, targets, ref_mask).item(), precision()
    optimiser = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        loss_fn(probe, targets, ref_mask).backward()
        optimiser.step()
    assert loss_fn(probe, targets, ref_mask).item() < 0.6 * before_loss
    assert precision() > before_precision + 0.2
    gradients = logit_gradients(loss_fn.head, torch.randn(256, HEADS, generator=generator) * 5)
    assert (gradients >= 0).all()


def test_the_fused_kernels_are_not_used_for_it():
    probe, targets, ref_mask = make_case(seed=8)
    q = probe.q.float()
    assert CameoLoss(HEADS, head="monotone").uses_fused(q) is False
    with pytest.raises(ValueError, match="monotone"):
        CameoLoss(HEADS, head="monotone", fused=True).uses_fused(q)


def test_a_monotone_run_trains_saves_exports_and_loads_its_head(synthetic_dataset, tmp_path):
    from cameo_cli.config import load_recipe
    from cameo_cli.export.job import run_export
    from cameo_cli.files import load_safetensors
    from cameo_cli.run_folder.checkpoints import load_for_inference
    from cameo_cli.train.loop import run_training

    recipe = load_recipe(
        "repro-cpu-monotone-head",
        [
            f"data.dataset={synthetic_dataset}",
            "train.steps=2",
            "train.batch_size=1",
            "train.log_every=1",
            "train.validate_every=1000",
            "train.checkpoint_every=2",
            "sample.steps=2",
        ],
    )
    assert recipe.alignment.head == "monotone"
    run_training(recipe, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    saved = load_safetensors(checkpoint / "alignment.safetensors")
    assert sorted(saved) == [
        f"losses.10.head.{name}" for name in ("bias1", "bias2", "raw_weight1", "raw_weight2")
    ]
    initial = MonotoneHead(saved["losses.10.head.bias1"].numel() // 4)
    assert not torch.equal(saved["losses.10.head.raw_weight1"], initial.raw_weight1)  # trained
    exported = run_export(tmp_path / "run", tmp_path / "export")
    for folder in (checkpoint, exported):
        loaded = load_for_inference(folder, use_ema=False)
        head = loaded.alignment.correspondence_head(10)
        assert isinstance(head.head, MonotoneHead) and head.head_kind == "monotone"
        for name, value in head.state_dict().items():
            assert torch.equal(value, saved[f"losses.10.{name}"]), name
