"""The fused Triton CAMEO kernels against a float64 reference written from the formulas.

On a CPU the kernels run through Triton's interpreter (`TRITON_INTERPRET=1`, set by
tests/conftest.py before Triton is imported; fp32 only, small shapes); on CUDA the same cases run
compiled, fp32 to 1e-5 and bf16 to 1e-3 relative. Skipped where Triton is not importable.
"""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytest.importorskip("triton", reason="Triton is not importable: the fused kernels cannot run")

from cameo.alignments.cameo import fused  # noqa: E402
from cameo.alignments.cameo.loss import CameoLoss  # noqa: E402
from cameo_cli.attention.hooks import ProbeResult  # noqa: E402
from cameo_cli.geometry import CorrespondenceTargets  # noqa: E402
from tests.official_reference import official_cameo_loss as reference  # noqa: E402


def make_case(views=3, heads=3, hw=19, dim=8, zero_targets=True, refs=(0,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = 2
    shape = (batch, views, heads, hw, dim)
    q = torch.randn(shape, generator=gen, dtype=torch.float64)
    k = torch.randn(shape, generator=gen, dtype=torch.float64)
    w1 = torch.randn(4 * heads, heads, generator=gen, dtype=torch.float64) * 0.5
    b1 = torch.randn(4 * heads, generator=gen, dtype=torch.float64) * 0.5
    w2 = torch.randn(1, 4 * heads, generator=gen, dtype=torch.float64) * 0.5
    b2 = torch.randn(1, generator=gen, dtype=torch.float64)
    index = torch.randint(0, hw, (batch, views, views, hw), generator=gen)
    if zero_targets:
        index[torch.rand(index.shape, generator=gen) < 0.25] = -1
    mask = torch.rand(index.shape, generator=gen) < 0.7
    ref_mask = torch.zeros(batch, views, dtype=torch.bool)
    ref_mask[:, list(refs)] = True
    return (q, k, dim**-0.5, [w1, b1, w2, b2], index, mask, ref_mask)


def compare(case, loss, head, dtype=torch.float32, rtol=1e-5):
    q, k, scale, params, index, mask, ref_mask = case
    leaves = [t.clone().requires_grad_(True) for t in (q, k, *params)]
    expected = reference(*leaves[:2], scale, leaves[2:], index, mask, ref_mask, loss, head)
    want = [None] * len(leaves)
    if expected.requires_grad:
        want = torch.autograd.grad(expected, leaves, allow_unused=True)
    inputs = [t.detach().to(DEVICE, dtype).requires_grad_(True) for t in (q, k)]
    weights = [t.detach().to(DEVICE, torch.float32).requires_grad_(True) for t in params]
    head_args = weights if head == "mlp" else [None] * 4
    value = fused.FusedCameoLoss.apply(
        *inputs,
        scale,
        *head_args,
        index.to(DEVICE),
        mask.to(DEVICE),
        ref_mask.to(DEVICE),
        loss,
        head,
    )
    grads = torch.autograd.grad(value * 0.5, inputs + (weights if head == "mlp" else []))
    atol = rtol * 1e-2
    torch.testing.assert_close(value.double().cpu(), expected.detach(), rtol=rtol, atol=atol)
    names = ["q", "k", "w1", "b1", "w2", "b2"]
    for name, got, ref in zip(names, grads, want, strict=False):
        ref = torch.zeros_like(got, dtype=torch.float64) if ref is None else 0.5 * ref
        scale_of = ref.abs().max().clamp(min=1e-9)  # db2 is 0 (~1e-17 in float64)
        err = (got.double().cpu() - ref).abs().max() / scale_of
        assert err <= rtol, f"d{name}: max error {err:.2e} of max |grad| {scale_of:.2e}"


@pytest.mark.parametrize("head", ["mlp", "none"])
@pytest.mark.parametrize("loss", ["ce", "l1"])
def test_matches_float64_reference(head, loss):
    compare(make_case(), loss, head)


def test_all_targets_present_and_two_reference_views():
    compare(make_case(zero_targets=False, refs=(0, 1), seed=1), "ce", "mlp")


@pytest.mark.parametrize("refs", [(), (0, 1, 2)])
def test_empty_group_adds_zero(refs):
    compare(make_case(refs=refs, seed=2), "l1", "mlp")


def test_odd_sizes_more_heads_than_a_tile():
    # 17 heads pad to 32, hw 33 spans three 16-key tiles, dim 20 pads to 32, F = 2
    compare(make_case(views=2, heads=17, hw=33, dim=20, seed=3), "ce", "mlp")


def test_no_kept_rows_gives_zero_and_zero_gradients():
    q, k, scale, params, index, mask, ref_mask = make_case(seed=4)
    case = (q, k, scale, params, index, torch.zeros_like(mask), ref_mask)
    compare(case, "ce", "none")


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 needs the GPU (the interpreter's bf16 is raw)")
@pytest.mark.parametrize("head", ["mlp", "none"])
def test_bf16_inputs_on_cuda(head):
    q, k, *rest = make_case(heads=10, hw=64, dim=88, seed=5)
    q, k = (t.to(torch.bfloat16).double() for t in (q, k))  # the reference sees the same inputs
    compare((q, k, *rest), "ce", head, dtype=torch.bfloat16, rtol=1e-3)


def test_available_only_on_cuda():
    assert not fused.fused_available(torch.device("cpu"))
    assert fused.fused_available(torch.device("cuda")) == fused.triton_available()


def cameo_case(seed=6):
    q, k, scale, _, index, mask, ref_mask = make_case(heads=4, hw=20, seed=seed)
    probe = ProbeResult(q=q.float(), k=k.float(), scale=scale, grid=(4, 5))
    return probe, CorrespondenceTargets(index.clamp(min=0), mask), ref_mask


def test_cameo_loss_selects_the_fused_path_only_where_it_can_run():
    probe, targets, ref_mask = cameo_case()
    on_cuda = torch.cuda.is_available()
    assert CameoLoss(4).uses_fused(probe.q.to(DEVICE)) == on_cuda
    assert not CameoLoss(4, fused=False).uses_fused(probe.q.to(DEVICE))
    assert CameoLoss(4, head="none", loss="l1").uses_fused(probe.q.to(DEVICE)) == on_cuda
    with pytest.raises(ValueError, match="fused CAMEO kernels need"):
        CameoLoss(4, fused=True).uses_fused(probe.q.double())


@pytest.mark.skipif(DEVICE != "cuda", reason="CameoLoss takes the fused path on CUDA only")
def test_cameo_loss_fused_equals_chunked_on_cuda():
    probe, targets, ref_mask = cameo_case()
    probe = ProbeResult(
        q=probe.q.cuda().requires_grad_(True), k=probe.k.cuda(), scale=probe.scale, grid=(4, 5)
    )
    targets = CorrespondenceTargets(targets.index.cuda(), targets.mask.cuda())
    results = []
    for fused_choice in (True, False):
        torch.manual_seed(0)
        loss_fn = CameoLoss(4, fused=fused_choice).cuda()
        value = loss_fn(probe, targets, ref_mask.cuda())
        results.append((value, *torch.autograd.grad(value, [probe.q, *loss_fn.parameters()])))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
