"""The CAMEO loss written from the official formulas, the reference of the loss tests."""

from __future__ import annotations

import torch


def official_cameo_loss(q, k, scale, params, index, mask, ref_mask, loss, head):
    """float64, every logit and MLP activation at once, as the official code computes it
    (`attn_logit_head.py`, `attn_distill_loss.py`, `train.py`): a per-view softmax after the
    head MLP (without a head: the mean over heads of each head's per-view softmax); an explicit
    one-hot target, all zeros where `index` is -1; CE `-sum(p_gt * log(p + 1e-8))` or L1
    `F.l1_loss(p, p_gt)` (mean over rows x hw) over the kept rows of each query group
    (reference queries, target queries); the two group means summed."""
    batch, views, heads, hw, _ = q.shape
    logits = torch.einsum("bihqd,bjhkd->bijqkh", q, k) * scale  # [B, F, F, hw, hw, H]
    if head == "mlp":
        w1, b1, w2, b2 = params
        hidden = torch.nn.functional.gelu(logits @ w1.T + b1)
        probs = (hidden @ w2.T + b2).squeeze(-1).softmax(dim=-1)
    else:
        probs = logits.softmax(dim=-2).mean(dim=-1)
    has_target = index >= 0
    onehot = torch.nn.functional.one_hot(index.clamp(min=0), hw).to(q.dtype)
    onehot = onehot * has_target[..., None]
    if loss == "ce":
        row_loss = -(onehot * (probs + 1e-8).log()).sum(-1)
    else:
        row_loss = (probs - onehot).abs().mean(-1)
    eye = torch.eye(views, dtype=torch.bool)[None, :, :, None]
    kept = mask & ~eye
    is_ref = ref_mask[:, :, None, None].expand_as(kept)
    total = q.new_zeros(())
    for group in (kept & is_ref, kept & ~is_ref):
        if group.any():
            total = total + row_loss[group].mean()
    return total
