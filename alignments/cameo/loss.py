"""The CAMEO loss: align one layer's cross-view attention with geometric correspondence.

For every ordered view pair i != j the logits `q_i · k_jᵀ · scale` of each head are
projected across heads by a small MLP (`H -> 4H -> GELU -> 1`, one value per (query, key)
pair) and soft-maxed over the hw keys of view j (without a head: each head soft-maxed, the
probabilities averaged over heads; `monotone`: cameo's `MonotoneHead`, not the official
code's), and scored against the one-hot ground-truth key on the
rows the cycle mask keeps, as the official code does: cross-entropy
`-sum(onehot * log(p + 1e-8))`, or (ablation) L1 averaged over rows x hw keys. A kept row
with an all-zero target (target index -1, `joint` targets) adds nothing to the
cross-entropy and 1 / hw to the L1, and counts in the mean. Reference-query rows and
target-query rows are averaged separately and the two means summed. Everything runs in (at
least) fp32, whatever autocast says.

Memory: the official code holds all `rows × keys × 4H` activations at once (many GB at
512 px). Here the kept query rows are processed in chunks of `chunk_size`; when a gradient
is needed, each chunk's gradient is computed right away, by hand (the loss is a scalar, so
the backward pass only has to scale it), which bounds the extra memory by one chunk and
costs no recomputation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cameo_cli.attention.hooks import ProbeResult

if TYPE_CHECKING:
    from cameo_cli.geometry.correspondence import CorrespondenceTargets

HEADS = ("mlp", "monotone", "none")
LOSSES = ("ce", "l1")


@dataclass
class _QueryView:
    """The kept query rows of one query view i against all other views' keys."""

    view: int
    others: list[int]  # key views j != i
    rows: torch.Tensor | None  # [R] query tokens with a kept (b, j) row; None: all of them
    index: torch.Tensor  # [B, J, R] target key token per row (clamped to a valid token)
    present: torch.Tensor  # [B, J, R] 1 where the row has a target, 0 for an all-zero one
    weight: torch.Tensor  # [B, J, R] contribution of each row to the loss (0 = dropped)

    @property
    def count(self) -> int:
        return self.index.shape[-1]

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        """[B, heads, R, d]: this view's kept query rows."""
        return q[:, self.view] if self.rows is None else q[:, self.view][:, :, self.rows]

    def chunk(self, queries: torch.Tensor, part: slice) -> _Chunk:
        """Rows `part` of this view's kept `queries` (from `queries(q)`) with their targets."""
        return _Chunk(
            queries[:, :, part],
            self.index[..., part],
            self.present[..., part],
            self.weight[..., part],
        )


@dataclass
class _Chunk:
    """Some kept query rows of one view, their target key tokens and their weights."""

    q_rows: torch.Tensor  # [B, heads, c, d]
    index: torch.Tensor  # [B, J, c]
    present: torch.Tensor  # [B, J, c]
    weight: torch.Tensor  # [B, J, c]


@dataclass
class _ChunkGradients:
    value: torch.Tensor
    q_rows: torch.Tensor | None
    keys: torch.Tensor | None
    params: list[torch.Tensor]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 when the inputs already are (reference tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_weights(mask: torch.Tensor, ref_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, F, F, hw] per-row weights of the kept rows `mask` (i == j never counts) so that
    sum(weight * row_loss) = mean(ref rows) + mean(target rows) (an empty group adds 0)."""
    views = mask.shape[1]
    eye = torch.eye(views, dtype=torch.bool, device=mask.device)
    mask = mask & ~eye[None, :, :, None]
    is_ref = ref_mask[:, :, None, None].expand_as(mask)
    kept_ref = (mask & is_ref).to(dtype)
    kept_tgt = (mask & ~is_ref).to(dtype)
    return kept_ref / kept_ref.sum().clamp(min=1) + kept_tgt / kept_tgt.sum().clamp(min=1)


def _plan(
    index: torch.Tensor, mask: torch.Tensor, ref_mask: torch.Tensor, dtype: torch.dtype
) -> list[_QueryView]:
    """Per query view: which rows to compute, their targets and weights."""
    num_views, hw = mask.shape[1], mask.shape[-1]
    weight = row_weights(mask, ref_mask, dtype)
    present = (index >= 0).to(dtype)
    plan = []
    for i in range(num_views):
        others = [j for j in range(num_views) if j != i]
        kept = mask[:, i, others]  # [B, J, hw]
        rows = kept.any(dim=1).any(dim=0).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        parts = (index[:, i, others].clamp(0, hw - 1), present[:, i, others], weight[:, i, others])
        if rows.numel() < hw:
            parts = tuple(part[..., rows] for part in parts)
        plan.append(_QueryView(i, others, None if rows.numel() == hw else rows, *parts))
    return plan


def _chunks(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def _activation(head: str, before: torch.Tensor) -> torch.Tensor:
    """The hidden units of a head: GELU (erf) for the official `mlp`, softplus for
    `monotone`."""
    return F.softplus(before) if head == "monotone" else F.gelu(before)


def _activation_backward(
    head: str, grad_hidden: torch.Tensor, before: torch.Tensor
) -> torch.Tensor:
    """The gradient of the pre-activations, written into `before`'s buffer."""
    if head == "monotone":
        return torch.ops.aten.softplus_backward.grad_input(
            grad_hidden, before, 1.0, 20.0, grad_input=before
        )
    return torch.ops.aten.gelu_backward.grad_input(
        grad_hidden, before, approximate="none", grad_input=before
    )


def _project(logits: torch.Tensor, params: Sequence[torch.Tensor], head: str) -> torch.Tensor:
    """[..., heads] logits -> [...] scores of a two-layer head with weights `params`."""
    w1, b1, w2, b2 = params
    return F.linear(_activation(head, F.linear(logits, w1, b1)), w2, b2).squeeze(-1)


def _log_probabilities(
    logits: torch.Tensor, params: Sequence[torch.Tensor], head: str
) -> torch.Tensor:
    """[..., hw, heads] logits -> [..., hw] log-probabilities over the hw keys: a softmax of
    the head's scores, or (no head) the log of the mean over heads of each head's
    softmax (the official `Softmax_HeadMean`)."""
    if not params:
        per_head = logits - torch.logsumexp(logits, dim=-2, keepdim=True)
        return torch.logsumexp(per_head, dim=-1) - math.log(logits.shape[-1])
    scores = _project(logits, params, head)
    return scores - torch.logsumexp(scores, dim=-1, keepdim=True)


class MonotoneHead(nn.Module):
    """cameo's projection head (not the official code's), non-decreasing in every attention
    head's logit by construction: `score = w2⁺ · softplus(W1⁺ l + b1) + b2` with the weights
    `W1⁺ = softplus(V1)`, `w2⁺ = softplus(V2)` positive, so `d score / d l_h = sum_u w2⁺_u
    sigmoid(.) W1⁺_uh >= 0`. The CAMEO term can then only be lowered by raising the true
    key's logits relative to the others', never by reading the attention upside down (which
    the official MLP head may learn, pushing the raw attention away from the truth).

    Initialised to the mean of the heads' logits: `W1⁺ = 1/H`, `w2⁺ = 1/(4H)`, the hidden
    biases spread over [-2, 2] (so the units differ and learn apart), which scores a key by
    a mean over units of `softplus(mean_h l_h + b_u)`, an increasing function of the mean
    logit: the same ranking of keys."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        hidden = 4 * num_heads

        def inverse_softplus(value: float) -> float:
            return math.log(math.expm1(value))

        self.raw_weight1 = nn.Parameter(
            torch.full((hidden, num_heads), inverse_softplus(1 / num_heads))
        )
        self.bias1 = nn.Parameter(torch.linspace(-2.0, 2.0, hidden))
        self.raw_weight2 = nn.Parameter(torch.full((1, hidden), inverse_softplus(1 / hidden)))
        self.bias2 = nn.Parameter(torch.zeros(1))

    def weights(self) -> list[torch.Tensor]:
        """(W1⁺, b1, w2⁺, b2): the weights the scores are computed with (differentiable)."""
        return [F.softplus(self.raw_weight1), self.bias1, F.softplus(self.raw_weight2), self.bias2]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., heads] logits -> [..., 1] scores."""
        return _project(logits, self.weights(), "monotone").unsqueeze(-1)


def _row_losses(
    p_target: torch.Tensor, present: torch.Tensor, loss: str, hw: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official row losses of the target's probability and their derivative in it.

    ce: -sum(onehot * log(p + 1e-8)) = -present * log(p_t + 1e-8);
    l1: mean over the hw keys of |p - onehot| = (present * 2 (1 - p_t) + (1 - present)) / hw
    (a row sums to 1, so an all-zero target costs 1 / hw whatever p is)."""
    if loss == "ce":
        return -present * torch.log(p_target + 1e-8), -present / (p_target + 1e-8)
    return (present * 2.0 * (1.0 - p_target) + (1.0 - present)) / hw, -2.0 * present / hw


def _chunk_loss_and_gradients(
    chunk: _Chunk,
    keys: torch.Tensor,
    scale: float,
    params: Sequence[torch.Tensor],
    loss: str,
    wants: Sequence[bool],
    head: str,
) -> _ChunkGradients:
    """Weighted loss of some query rows of one view against the keys of the other views
    (keys [B, J, heads, hw, d]) and its gradients, written out by hand (no autograd graph,
    fewer kernels and buffers: the hidden activations are reused for their own gradients).

    wants: whether the gradient of q_rows, keys and each parameter is needed (none: the
    value only); head: which activation the head's hidden units use.
    """
    q_rows, index, weight = chunk.q_rows, chunk.index, chunk.weight
    logits = torch.einsum("bhcd,bjhkd->bjckh", q_rows, keys) * scale  # [B, J, c, hw, H]
    hw, heads = logits.shape[-2:]
    if params:
        w1, b1, w2, b2 = params
        before = F.linear(logits, w1, b1)
        hidden = _activation(head, before)
        scores = F.linear(hidden, w2, b2).squeeze(-1)
        log_p = scores - torch.logsumexp(scores, dim=-1, keepdim=True)  # [B, J, c, hw]
        p_target = log_p.gather(-1, index.unsqueeze(-1)).squeeze(-1).exp()
    else:
        log_p = logits - torch.logsumexp(logits, dim=-2, keepdim=True)  # per head
        at = index[..., None, None].expand(*index.shape, 1, heads)
        p_head_target = log_p.gather(-2, at).squeeze(-2).exp()  # [B, J, c, H]
        p_target = p_head_target.mean(dim=-1)
    row_loss, slope = _row_losses(p_target, chunk.present, loss, hw)
    value = (weight * row_loss).sum()
    if not any(wants):
        return _ChunkGradients(value, None, None, [])
    # d(row loss)/d(score_k) = slope * p_t * (onehot_k - p_k) = coefficient * (p_k - onehot_k)
    grad_params: list[torch.Tensor] = []
    if params:
        coefficient = -(weight * slope) * p_target  # [B, J, c]
        grad_scores = log_p.exp_().mul_(coefficient.unsqueeze(-1))
        grad_scores.scatter_add_(-1, index.unsqueeze(-1), -coefficient.unsqueeze(-1))
        flat_scores = grad_scores.reshape(-1)
        grad_w2 = (flat_scores @ hidden.reshape(-1, hidden.shape[-1]))[None]
        grad_b2 = flat_scores.sum().reshape(1)
        # the two [.., 4H] buffers are reused for their own gradients (elementwise, in place)
        grad_hidden = torch.mul(grad_scores.unsqueeze(-1), w2[0], out=hidden)
        grad_before = _activation_backward(head, grad_hidden, before)
        del hidden, grad_hidden
        flat_before = grad_before.reshape(-1, grad_before.shape[-1])
        grad_w1 = flat_before.T @ logits.reshape(-1, logits.shape[-1])
        grad_b1 = flat_before.sum(dim=0)
        grad_logits = grad_before @ w1
        grad_params = [grad_w1, grad_b1, grad_w2, grad_b2]
    else:
        # p_t = mean_h p_ht: head h's logits get slope * p_ht / H * (onehot - p_h)
        coefficient = -(weight * slope)[..., None] * p_head_target / heads  # [B, J, c, H]
        grad_logits = log_p.exp_().mul_(coefficient.unsqueeze(-2))
        grad_logits.scatter_add_(-2, at, -coefficient.unsqueeze(-2))
    grad_logits = grad_logits * scale
    grad_q = torch.einsum("bjckh,bjhkd->bhcd", grad_logits, keys) if wants[0] else None
    grad_k = torch.einsum("bjckh,bhcd->bjhkd", grad_logits, q_rows) if wants[1] else None
    return _ChunkGradients(value, grad_q, grad_k, grad_params)


def _total_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    plan: list[_QueryView],
    params: Sequence[torch.Tensor],
    loss: str,
    chunk_size: int,
    head: str,
) -> torch.Tensor:
    """The loss value only, chunk by chunk."""
    total = q.new_zeros(())
    no_gradients = [False] * (2 + len(params))
    for view in plan:
        keys, queries = k[:, view.others], view.queries(q)
        for part in _chunks(view.count, chunk_size):
            chunk = view.chunk(queries, part)
            total = (
                total
                + _chunk_loss_and_gradients(
                    chunk, keys, scale, params, loss, no_gradients, head
                ).value
            )
    return total


class _ChunkedCameoLoss(torch.autograd.Function):
    """Loss forward with each chunk's gradient taken at once; backward only scales it.

    Runs with autograd off (inside `Function.forward`), so nothing but the gradient buffers
    outlives a chunk."""

    @staticmethod
    def forward(ctx, plan, scale, loss, chunk_size, head, q, k, *params):
        wants = ctx.needs_input_grad[5:]
        grad_q = torch.zeros_like(q) if wants[0] else None
        grad_k = torch.zeros_like(k) if wants[1] else None
        grad_params = [
            torch.zeros_like(p) if w else None for p, w in zip(params, wants[2:], strict=True)
        ]
        total = q.new_zeros(())
        for view in plan:
            keys = k[:, view.others]
            queries = view.queries(q)
            grad_keys = torch.zeros_like(keys) if wants[1] else None
            grad_queries = torch.zeros_like(queries) if wants[0] else None
            for part in _chunks(view.count, chunk_size):
                chunk = _chunk_loss_and_gradients(
                    view.chunk(queries, part), keys, scale, params, loss, wants, head
                )
                if wants[0]:
                    grad_queries[:, :, part] = chunk.q_rows
                if wants[1]:
                    grad_keys += chunk.keys
                for slot, grad in enumerate(chunk.params):
                    if wants[2 + slot]:
                        grad_params[slot] += grad
                total += chunk.value
            if wants[0] and view.rows is None:
                grad_q[:, view.view] = grad_queries
            elif wants[0]:
                grad_q[:, view.view].index_add_(2, view.rows, grad_queries)
            if wants[1]:
                grad_k[:, view.others] += grad_keys
        ctx.save_for_backward(
            *(g if g is not None else q.new_zeros(()) for g in (grad_q, grad_k, *grad_params))
        )
        ctx.wants = wants
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grads = [
            g * grad_output if w else None
            for g, w in zip(ctx.saved_tensors, ctx.wants, strict=True)
        ]
        return (None, None, None, None, None, *grads)


class CameoLoss(nn.Module):
    """CAMEO alignment loss of one probed layer; holds the projection head's parameters."""

    def __init__(
        self,
        num_heads: int,
        head: str = "mlp",
        loss: str = "ce",
        chunk_size: int | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if num_heads < 1 or (chunk_size is not None and chunk_size < 1):
            raise ValueError("num_heads and chunk_size must be positive")
        self.num_heads = num_heads
        self.head_kind = head
        self.loss_kind = loss
        self.chunk_size = chunk_size
        self.fused = fused  # None: the fused kernels where they can run; False: chunked path
        self.head = None
        if head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(num_heads, 4 * num_heads), nn.GELU(), nn.Linear(4 * num_heads, 1)
            )
        elif head == "monotone":
            self.head = MonotoneHead(num_heads)

    def extra_repr(self) -> str:
        return (
            f"head={self.head_kind}, loss={self.loss_kind}, chunk_size={self.chunk_size}, "
            f"fused={self.fused}"
        )

    def _head_params(self, dtype: torch.dtype) -> list[torch.Tensor]:
        if self.head is None:
            return []
        if isinstance(self.head, MonotoneHead):
            params = self.head.weights()
        else:
            first, _, last = self.head
            params = [first.weight, first.bias, last.weight, last.bias]
        return [p.to(dtype) for p in params]

    def _check(self, probe: ProbeResult) -> None:
        if probe.q.shape != probe.k.shape or probe.q.dim() != 5:
            raise ValueError(
                f"probe q/k must both be [B, F, heads, hw, d], got {tuple(probe.q.shape)} "
                f"and {tuple(probe.k.shape)}"
            )
        if self.head is not None and probe.q.shape[2] != self.num_heads:
            raise ValueError(
                f"the projection head expects {self.num_heads} heads, "
                f"the probed layer has {probe.q.shape[2]}"
            )

    def forward(
        self, probe: ProbeResult, targets: CorrespondenceTargets, ref_mask: torch.Tensor
    ) -> torch.Tensor:
        """Scalar loss (fp32; fp64 for fp64 inputs) over all ordered view pairs i != j."""
        self._check(probe)
        batch, num_views, _, hw, _ = probe.q.shape
        expected = (batch, num_views, num_views, hw)
        if tuple(targets.index.shape) != expected or tuple(targets.mask.shape) != expected:
            raise ValueError(
                f"targets must be {list(expected)}, got index {list(targets.index.shape)} "
                f"and mask {list(targets.mask.shape)}"
            )
        if tuple(ref_mask.shape) != (batch, num_views):
            raise ValueError(f"ref_mask must be [{batch}, {num_views}], got {list(ref_mask.shape)}")
        with torch.autocast(probe.q.device.type, enabled=False):
            if self.uses_fused(probe.q):
                from cameo.alignments.cameo.fused import FusedCameoLoss

                w1, b1, w2, b2 = self._head_params(torch.float32) or [None] * 4
                return FusedCameoLoss.apply(
                    probe.q,
                    probe.k,
                    probe.scale,
                    w1,
                    b1,
                    w2,
                    b2,
                    targets.index.to(probe.q.device),
                    targets.mask.to(probe.q.device),
                    ref_mask.to(probe.q.device),
                    self.loss_kind,
                    self.head_kind,
                )
            dtype = _compute_dtype(probe.q.dtype)
            q, k = probe.q.to(dtype), probe.k.to(dtype)
            params = self._head_params(dtype)
            plan = _plan(
                targets.index.to(q.device, torch.long),
                targets.mask.to(q.device, torch.bool),
                ref_mask.to(q.device, torch.bool),
                dtype,
            )
            needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, *params))
            if not needs_grad:
                with torch.no_grad():
                    return _total_loss(
                        q,
                        k,
                        probe.scale,
                        plan,
                        params,
                        self.loss_kind,
                        self.rows_per_chunk(q),
                        self.head_kind,
                    )
            return _ChunkedCameoLoss.apply(
                plan,
                probe.scale,
                self.loss_kind,
                self.rows_per_chunk(q),
                self.head_kind,
                q,
                k,
                *params,
            )

    def uses_fused(self, q: torch.Tensor) -> bool:
        """Whether `forward` takes the fused Triton kernels: by default (`fused=None`) on
        CUDA with Triton importable, below fp64, for the official head or none; `fused=False`
        never; `fused=True` always (ValueError where they cannot run, and for the monotone
        head, which only the chunked path computes)."""
        if self.fused is False:
            return False
        if self.head_kind == "monotone":
            if self.fused:
                raise ValueError("the fused CAMEO kernels compute head mlp|none, not monotone")
            return False
        from cameo.alignments.cameo.fused import fused_available

        possible = q.dtype != torch.float64 and fused_available(q.device)
        if self.fused and not possible:
            raise ValueError(
                "the fused CAMEO kernels need CUDA, Triton and fp32/bf16/fp16 inputs; got "
                f"{q.device.type}, {q.dtype}"
            )
        return possible

    def rows_per_chunk(self, q: torch.Tensor) -> int:
        """The chunk size, or by device when unset: 256 rows on GPUs (fewer, larger kernels
        keep the term within 1.3x of the naive time) and 64 on CPUs (4x less memory)."""
        if self.chunk_size is not None:
            return self.chunk_size
        return 256 if q.device.type == "cuda" else 64

    def correspondence_logits(self, probe: ProbeResult, i: int, j: int) -> torch.Tensor:
        """Log-probabilities of view i's queries over view j's keys, [B, hw, hw]: the softmax
        of the projection head's output, or the log of the head-averaged probabilities
        without a head."""
        self._check(probe)
        with torch.autocast(probe.q.device.type, enabled=False):
            dtype = _compute_dtype(probe.q.dtype)
            q, k = probe.q[:, i].to(dtype), probe.k[:, j].to(dtype)
            params = self._head_params(dtype)
            parts = []
            for part in _chunks(q.shape[2], self.rows_per_chunk(q)):
                logits = torch.einsum("bhcd,bhkd->bckh", q[:, :, part], k) * probe.scale
                parts.append(_log_probabilities(logits, params, self.head_kind))
            return torch.cat(parts, dim=1)

    def predicted_match(self, probe: ProbeResult, i: int, j: int) -> torch.Tensor:
        """[B, hw] the key token of view j that the head ranks first, per query of view i."""
        return self.correspondence_logits(probe, i, j).argmax(dim=-1)
