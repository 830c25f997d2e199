"""The CAMEO loss and its joint targets written from the official formulas: the references of
the loss and correspondence tests."""

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
    return official_loss_of_probs(probs, index, mask, ref_mask, loss)


def official_loss_of_probs(probs, index, mask, ref_mask, loss):
    """The official loss of per-view probabilities probs [B, F, F, hw, hw]: the one-hot
    targets (all zeros where `index` is -1), CE or L1 rows, and the means of the kept rows
    of the two query groups (reference queries, target queries) summed."""
    views, hw = probs.shape[1], probs.shape[-1]
    has_target = index >= 0
    onehot = torch.nn.functional.one_hot(index.clamp(min=0), hw).to(probs.dtype)
    onehot = onehot * has_target[..., None]
    if loss == "ce":
        row_loss = -(onehot * (probs + 1e-8).log()).sum(-1)
    else:
        row_loss = (probs - onehot).abs().mean(-1)
    eye = torch.eye(views, dtype=torch.bool)[None, :, :, None]
    kept = mask & ~eye
    is_ref = ref_mask[:, :, None, None].expand_as(kept)
    total = probs.new_zeros(())
    for group in (kept & is_ref, kept & ~is_ref):
        if group.any():
            total = total + row_loss[group].mean()
    return total


def official_joint_targets(point_map, grid, cond_num, threshold=1.5):
    """The official correspondence supervision for one probed layer, transcribed from
    `train.py` 975-1116 and `attn_logit_head.py` (`ArgmaxOneHot`, `cycle_consistency_checker`)
    with the paper config (`neg_l2` cost, keys `[reference, target]` for both query groups,
    self excluded, per-view cycle mask with `pixel_threshold` 1.5).

    point_map [B, F, 3, S, S] (square, every point valid: the official code has no validity),
    grid: tokens per side, cond_num: reference views (the first ones). Returns (index, mask),
    both [B, F, F, grid²]: index[b, i, j, q] is the token of view j where the one-hot row of
    query q of view i has its 1, or -1 where that row is all zero; mask[b, i, j, q] is the
    per-view cycle mask (False on i == j, which the official slicing never reads)."""
    batch, views = point_map.shape[:2]
    hw = grid * grid
    # bilinear resize of the point map to the token grid, views in a row, tokens row-major
    small = torch.nn.functional.interpolate(
        point_map.flatten(0, 1), size=(grid, grid), mode="bilinear"
    )
    tokens = small.view(batch, views, 3, hw).transpose(-1, -2).reshape(batch, views * hw, 3)
    # cost of every (query, key) token pair: minus the Euclidean distance
    cost = -(tokens[:, :, None, :] - tokens[:, None, :, :]).norm(dim=-1)
    block = cost.view(batch, views, hw, views, hw)
    # cycle mask per (query view, key view): best key, then the best query of view i for that
    # key; kept when the round trip lands less than `threshold` token units away
    cycle = torch.zeros(batch, views, views, hw, dtype=torch.bool)
    token = torch.arange(hw)
    for i in range(views):
        for j in range(views):
            pair = block[:, i, :, j, :]  # [B, hw queries, hw keys]
            forward = pair.argmax(dim=-1)
            back = torch.stack([pair[b, :, forward[b]].argmax(dim=0) for b in range(batch)])
            rows = (token // grid - back // grid).double()
            cols = (token % grid - back % grid).double()
            cycle[:, i, j] = (rows * rows + cols * cols).sqrt() < threshold
    index = torch.full((batch, views, views, hw), -1, dtype=torch.long)
    mask = torch.zeros(batch, views, views, hw, dtype=torch.bool)
    every_view = list(range(views))  # "reference" + "target" keys, sorted
    for group in (range(cond_num), range(cond_num, views)):
        for i in group:
            key_views = [j for j in every_view if j != i]  # "self" is not a key
            sliced = torch.cat([block[:, i, :, j, :] for j in key_views], dim=-1)
            winner = sliced.argmax(dim=-1)  # ArgmaxOneHot over all key views at once
            for slot, j in enumerate(key_views):
                here = winner // hw == slot
                index[:, i, j] = torch.where(here, winner % hw, torch.full_like(winner, -1))
                mask[:, i, j] = cycle[:, i, j]
    return index, mask
