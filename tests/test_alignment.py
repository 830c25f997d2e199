"""CameoLoss against a plain float64 reference (full logits, no chunking)."""

from __future__ import annotations

import pytest
import torch

from cameo.alignments.cameo.loss import CameoLoss
from cameo_cli.attention.hooks import ProbeResult
from cameo_cli.geometry import CorrespondenceTargets as Targets
from tests.official_reference import official_cameo_loss


def reference_loss(
    loss_fn: CameoLoss, probe: ProbeResult, targets: Targets, ref_mask: torch.Tensor
) -> torch.Tensor:
    """The official formulas (tests/official_reference.py) with `loss_fn`'s head weights."""
    head = loss_fn.head
    params = [] if head is None else [head[0].weight, head[0].bias, head[2].weight, head[2].bias]
    return official_cameo_loss(
        probe.q, probe.k, probe.scale, params, targets.index, targets.mask, ref_mask,
        loss_fn.loss_kind, loss_fn.head_kind,
    )  # fmt: skip


def make_case(batch=2, views=3, heads=4, grid=(4, 5), dim=8, keep=0.6, seed=0, zero=0.0):
    """Random q, k and targets; a fraction `zero` of the kept rows get an all-zero target."""
    gen = torch.Generator().manual_seed(seed)
    hw = grid[0] * grid[1]
    shape = (batch, views, heads, hw, dim)
    q = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    probe = ProbeResult(q=q, k=k, scale=dim**-0.5, grid=grid)
    index = torch.randint(0, hw, (batch, views, views, hw), generator=gen)
    mask = torch.rand((batch, views, views, hw), generator=gen) < keep
    mask &= ~torch.eye(views, dtype=torch.bool)[None, :, :, None]
    index[~mask] = -1  # dropped rows may carry any index
    index[torch.rand(index.shape, generator=gen) < zero] = -1
    ref_mask = torch.zeros(batch, views, dtype=torch.bool)
    ref_mask[:, 0] = True
    ref_mask[1, 1] = True
    return probe, Targets(index, mask), ref_mask


def grads_of(value, tensors):
    return torch.autograd.grad(value, tensors)


@pytest.mark.parametrize("head", ["mlp", "none"])
@pytest.mark.parametrize("loss", ["ce", "l1"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
@pytest.mark.parametrize("keep", [0.3, 1.0])  # rows gathered / every row of a view kept
@pytest.mark.parametrize("zero", [0.0, 0.5])  # kept rows with an all-zero target (joint)
def test_matches_reference_in_value_and_gradients(head, loss, chunk_size, keep, zero):
    torch.manual_seed(1)
    probe, targets, ref_mask = make_case(keep=keep, zero=zero)
    loss_fn = CameoLoss(4, head=head, loss=loss, chunk_size=chunk_size).double()
    params = list(loss_fn.parameters())
    inputs = [probe.q, probe.k, *params]

    value = loss_fn(probe, targets, ref_mask)
    expected = reference_loss(loss_fn, probe, targets, ref_mask)
    assert value.dtype == torch.float64
    assert torch.allclose(value, expected, rtol=0, atol=1e-9)

    got = grads_of(value, inputs)
    want = grads_of(expected, inputs)
    assert len(got) == 2 + (4 if head == "mlp" else 0)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=0, atol=1e-6), (g - w).abs().max()
    assert probe.q.shape == got[0].shape and got[0].abs().sum() > 0 and got[1].abs().sum() > 0


@pytest.mark.parametrize("empty", ["reference", "target", "all"])
def test_empty_groups_contribute_zero(empty):
    probe, targets, ref_mask = make_case(seed=3)
    is_ref = ref_mask[:, :, None, None].expand_as(targets.mask)
    if empty == "reference":
        targets.mask &= ~is_ref
    elif empty == "target":
        targets.mask &= is_ref
    else:
        targets.mask[:] = False
    loss_fn = CameoLoss(4, chunk_size=5).double()
    value = loss_fn(probe, targets, ref_mask)
    expected = reference_loss(loss_fn, probe, targets, ref_mask)
    assert torch.allclose(value, expected, rtol=0, atol=1e-9)
    if empty == "all":
        assert value.item() == 0.0
    else:
        assert value.item() > 0.0
        for g, w in zip(
            grads_of(value, [probe.q, probe.k]), grads_of(expected, [probe.q, probe.k]), strict=True
        ):
            assert torch.allclose(g, w, rtol=0, atol=1e-6)


def test_diagonal_pairs_are_ignored_even_if_marked_kept():
    probe, targets, ref_mask = make_case(seed=4)
    loss_fn = CameoLoss(4, chunk_size=6).double()
    before = loss_fn(probe, targets, ref_mask)
    for i in range(targets.mask.shape[1]):
        targets.mask[:, i, i] = True
    assert torch.allclose(loss_fn(probe, targets, ref_mask), before, rtol=0, atol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "l1"])
def test_loss_vanishes_when_attention_puts_all_mass_on_the_target(loss):
    """Keys are scaled one-hot codes; each query copies the code of its target key."""
    views, hw, heads = 3, 6, 2
    codes = torch.eye(hw, dtype=torch.float64) * 60.0
    k = codes.expand(1, views, heads, hw, hw).clone()
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, hw, (1, views, views, hw), generator=gen)
    # each query wants the same key token in every other view, so one code points at it:
    index[:] = index[:, :, :1]
    q = torch.eye(hw, dtype=torch.float64)[index[0, :, 0]][:, None].expand(1, views, heads, hw, hw)
    q = (q * 60.0).clone().requires_grad_(True)
    probe = ProbeResult(q=q, k=k, scale=1.0, grid=(2, 3))
    mask = ~torch.eye(views, dtype=torch.bool)[None, :, :, None].expand(1, views, views, hw)
    ref_mask = torch.tensor([[True, False, False]])
    loss_fn = CameoLoss(heads, head="none", loss=loss, chunk_size=4).double()
    planted = loss_fn(probe, Targets(index, mask.clone()), ref_mask)
    assert planted.item() < 1e-6
    shuffled = Targets((index + 1) % hw, mask.clone())
    # far from the target: CE grows without bound, L1 tends to 2 / hw per query group
    assert loss_fn(probe, shuffled, ref_mask).item() > (1.0 if loss == "ce" else 3.6 / hw)


def test_fp32_under_bf16_autocast_and_gradients_reach_q_and_k():
    probe, targets, ref_mask = make_case(seed=5)
    q = probe.q.detach().to(torch.bfloat16).requires_grad_(True)
    k = probe.k.detach().to(torch.bfloat16).requires_grad_(True)
    loss_fn = CameoLoss(4, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss_fn(ProbeResult(q, k, probe.scale, probe.grid), targets, ref_mask)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0
    assert k.grad is not None and k.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.parameters())


def test_no_grad_value_matches_and_backward_scales_with_upstream_gradient():
    probe, targets, ref_mask = make_case(seed=6)
    loss_fn = CameoLoss(4, chunk_size=5).double()
    with torch.no_grad():
        plain = loss_fn(probe, targets, ref_mask)
    value = loss_fn(probe, targets, ref_mask)
    assert torch.allclose(plain, value.detach(), rtol=0, atol=1e-12)
    (g1,) = grads_of(value, [probe.q])
    (g3,) = grads_of(3.0 * loss_fn(probe, targets, ref_mask), [probe.q])
    assert torch.allclose(3.0 * g1, g3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("head", ["mlp", "none"])
def test_correspondence_logits_match_full_projection(head):
    probe, _, _ = make_case(seed=7)
    loss_fn = CameoLoss(4, head=head, chunk_size=7).double()
    full = torch.einsum("bhqd,bhkd->bqkh", probe.q[:, 2], probe.k[:, 0]) * probe.scale
    if head == "mlp":
        want = loss_fn.head(full).squeeze(-1).log_softmax(dim=-1)
    else:
        want = full.softmax(dim=-2).mean(-1).log()
    got = loss_fn.correspondence_logits(probe, 2, 0)
    assert got.shape == (2, 20, 20)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_shape_errors_are_explicit():
    probe, targets, ref_mask = make_case()
    with pytest.raises(ValueError, match="expects 3 heads"):
        CameoLoss(3).double()(probe, targets, ref_mask)
    with pytest.raises(ValueError, match="targets must be"):
        CameoLoss(4).double()(probe, Targets(targets.index[:, :2], targets.mask), ref_mask)
    with pytest.raises(ValueError, match="head must be"):
        CameoLoss(4, head="linear")


def test_chunk_size_defaults_by_device():
    cpu_rows = torch.zeros(1, 1, 1, 4, 2)
    assert CameoLoss(2).rows_per_chunk(cpu_rows) == 64
    assert CameoLoss(2, chunk_size=7).rows_per_chunk(cpu_rows) == 7
    with pytest.raises(ValueError, match="positive"):
        CameoLoss(2, chunk_size=0)
