"""The per-layer hook that attention processors report to (probe) and obey (perturbation).

Every attention processor that cameo installs holds one `LayerHook`. The processor calls
`hook.capture(q, k, scale)` with the query and key it is about to feed to SDPA (after any
q/k norm and RoPE), and replaces the attention by the identity (output = V) when
`hook.identity` is set. Capturing stores differentiable tensors, so a loss on them trains
the layer's `to_q`/`to_k` and everything before it.

q and k are always reported per view, `[B, F, heads, hw, d]`, also on per-view layers
(where the forward pass attends within each view): the probe can read cross-view logits
`q_i·k_jᵀ` at any layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class LayerHook:
    """State shared between cameo and the processor of one self-attention layer.

    `num_views` is how many consecutive batch items form one sample (set by the backbone
    before every forward pass); `multiview` says whether the layer attends across them.
    """

    index: int
    path: str
    multiview: bool
    num_views: int = 1
    identity: bool = False
    recording: bool = False
    captured: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)

    def capture(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        """Store q, k shaped [B, F, heads, tokens_per_view, head_dim] when recording."""
        if not self.recording:
            return
        if q.ndim != 5 or k.ndim != 5 or q.shape[:3] != k.shape[:3]:
            raise ValueError(
                f"layer {self.index} ({self.path}): capture expects q and k shaped "
                f"[B, F, heads, hw, d], got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        self.captured.append((q, k, scale))

    def split_views(self, batch: int) -> int:
        """Number of samples in a batch of `batch` views; checks it divides evenly."""
        if batch % self.num_views:
            raise ValueError(
                f"layer {self.index} ({self.path}): batch of {batch} views is not a "
                f"multiple of num_views={self.num_views}"
            )
        return batch // self.num_views


@dataclass
class ProbeResult:
    """What the probe saw at its layer during one forward pass."""

    q: torch.Tensor  # [B, F, heads, hw, d]
    k: torch.Tensor  # [B, F, heads, hw, d]
    scale: float  # 1/sqrt(d) unless the layer says otherwise
    grid: tuple[int, int]  # (h, w) token grid per view

    def logits(self, i: int, j: int, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Pre-softmax logits q_i·k_jᵀ·scale: [B, heads, len(rows), hw]."""
        q = self.q[:, i]
        if rows is not None:
            q = q[:, :, rows]
        return torch.einsum("bhqd,bhkd->bhqk", q, self.k[:, j]) * self.scale


MatchScorer = Callable[[ProbeResult, int, int], torch.Tensor]
"""(probe, i, j) -> [B, hw] the predicted key token of view j per query token of view i."""


def head_averaged_argmax(probe: ProbeResult, i: int, j: int, chunk_size: int = 256) -> torch.Tensor:
    """[B, hw] key token of view j with the most head-averaged attention, per query of view i."""
    dtype = torch.promote_types(probe.q.dtype, torch.float32)
    q, k = probe.q[:, i].to(dtype), probe.k[:, j].to(dtype)
    best = []
    for start in range(0, q.shape[2], chunk_size):
        logits = torch.einsum("bhcd,bhkd->bhck", q[:, :, start : start + chunk_size], k)
        best.append((logits * probe.scale).softmax(dim=-1).mean(dim=1).argmax(dim=-1))
    return torch.cat(best, dim=1)


def predicted_matches(
    probe: ProbeResult,
    argmax: MatchScorer = head_averaged_argmax,
) -> torch.Tensor:
    """[B, F, F, hw] predicted key token for every ordered pair (the diagonal is unused)."""
    batch, views, _, hw, _ = probe.q.shape
    out = torch.zeros(batch, views, views, hw, dtype=torch.long, device=probe.q.device)
    for i in range(views):
        for j in range(views):
            if i != j:
                out[:, i, j] = argmax(probe, i, j)
    return out
