"""The CAMEO term as fused Triton kernels (forward and backward), for CUDA.

Semantics (the official ones): for every kept row (b, i, j, q) with i != j, p is the
softmax over the hw keys of view j of the projected score (head "mlp": Linear(H, 4H) ->
GELU(erf) -> Linear(4H, 1) across heads per (query, key) pair; head "none": the mean over
heads of the per-head softmax probabilities). CE row loss = -log(p_t + 1e-8) (0 for a row
whose target is -1, which still counts); L1 row loss = mean over hw of |p - onehot|
(= 2 (1 - p_t) / hw; 1 / hw for a -1 row). The loss is the mean over kept reference-query
rows plus the mean over kept target-query rows (an empty group adds 0).

Design: one program per (query tile, sample, ordered view pair). It streams view j's keys
tile by tile: per-head logits by `tl.dot` (heads padded to 16 with zeros), the head's MLP
on the tile's [pairs, heads] matrix in registers, an online log-sum-exp per row (per row
and head without a head), and the target's score picked on the way. Only per-row
statistics (log-sum-exp and the gradient coefficient) reach global memory, never
[rows, keys] logits nor [rows, keys, 4H] activations. The backward recomputes each tile,
forms dz = c (p - onehot) and accumulates dq, dk (fp32 atomics) and the head weights'
gradients. b2 cancels in the softmax, so its gradient is exactly 0.

Under `TRITON_INTERPRET=1` the kernels run on CPU tensors (tests); fp32 only there.
"""

from __future__ import annotations

import math

import torch

from cameo.alignments.cameo.loss import row_weights

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the chunked PyTorch path serves then
    triton = None

EPS = 1e-8
HEAD_TILE = 16  # heads padded to the tensor-core tile
BLOCK_Q = 16
BLOCK_K = 16


def triton_available() -> bool:
    """Whether Triton is importable."""
    return triton is not None


def fused_available(device: torch.device) -> bool:
    """Whether the fused kernels can run on `device`: CUDA with Triton importable."""
    return triton is not None and torch.device(device).type == "cuda"


def _pow2(n: int, floor: int = HEAD_TILE) -> int:
    return max(floor, 1 << max(0, math.ceil(math.log2(n))))


if triton is not None:

    @triton.jit
    def _load_tile(
        base,
        stride_h,
        stride_t,
        stride_d,
        start,
        n_tok,
        n_heads,
        dim,
        BT: tl.constexpr,
        HP: tl.constexpr,
        DP: tl.constexpr,
        LOW: tl.constexpr,
    ):
        """[HP, BT, DP] tokens start.. of one view (zeros outside), in the dot dtype."""
        h = tl.arange(0, HP)[:, None, None]
        t = start + tl.arange(0, BT)[None, :, None]
        d = tl.arange(0, DP)[None, None, :]
        mask = (h < n_heads) & (t < n_tok) & (d < dim)
        x = tl.load(base + h * stride_h + t * stride_t + d * stride_d, mask=mask, other=0.0)
        if not LOW:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _dot(a, b, LOW: tl.constexpr):
        if LOW:
            out = tl.dot(a, b)
        else:
            out = tl.dot(a, b, input_precision="ieee")
        return out

    @triton.jit
    def _program_rows(n_views, hw, BQ: tl.constexpr):
        """This program's query tile, sample b, view pair (i, j != i), rows, rows in range,
        and the rows' flat [B, F, F, hw] index."""
        tile, pair = tl.program_id(0), tl.program_id(1)
        pairs = n_views * (n_views - 1)
        b = pair // pairs
        p = pair % pairs
        i = p // (n_views - 1)
        r = p % (n_views - 1)
        j = r + (r >= i).to(tl.int32)
        rows = tile * BQ + tl.arange(0, BQ)
        stat = ((b * n_views + i) * n_views + j) * hw + rows
        return tile, b, i, j, rows, rows < hw, stat

    @triton.jit
    def _load_head(w1_ptr, b1_ptr, w2_ptr, n_heads, n_hidden, HP: tl.constexpr, UP: tl.constexpr):
        """The head MLP's weights in fp32, zero-padded: hidden units, W1^T [HP, UP], b1, w2."""
        u = tl.arange(0, UP)
        hh = tl.arange(0, HP)
        w_mask = (u[None, :] < n_hidden) & (hh[:, None] < n_heads)
        w1t = tl.load(w1_ptr + u[None, :] * n_heads + hh[:, None], mask=w_mask, other=0.0)
        b1 = tl.load(b1_ptr + u, mask=u < n_hidden, other=0.0)
        w2 = tl.load(w2_ptr + u, mask=u < n_hidden, other=0.0)
        return u, w1t.to(tl.float32), b1.to(tl.float32), w2.to(tl.float32)

    @triton.jit
    def _mlp_scores(s, w1t, b1, w2, BQ: tl.constexpr, BK: tl.constexpr, HP: tl.constexpr):
        """Per-head logits s [HP, BQ, BK] -> X [BQ*BK, HP], pre-activation, hidden, z [BQ, BK]."""
        x = tl.reshape(tl.permute(s, (1, 2, 0)), (BQ * BK, HP))
        pre = tl.dot(x, w1t, input_precision="ieee") + b1[None, :]
        hidden = 0.5 * pre * (1.0 + tl.erf(pre * 0.7071067811865476))
        z = tl.reshape(tl.sum(hidden * w2[None, :], axis=1), (BQ, BK))
        return x, pre, hidden, z

    @triton.jit
    def _cameo_forward(
        q_ptr,
        k_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        index_ptr,
        weight_ptr,
        loss_ptr,
        lse_ptr,
        coef_ptr,
        s_b,
        s_f,
        s_h,
        s_t,
        s_d,
        hw,
        n_heads,
        dim,
        n_hidden,
        n_views,
        scale,
        MLP: tl.constexpr,
        CE: tl.constexpr,
        LOW: tl.constexpr,
        BQ: tl.constexpr,
        BK: tl.constexpr,
        HP: tl.constexpr,
        DP: tl.constexpr,
        UP: tl.constexpr,
    ):
        tile, b, i, j, rows, row_ok, stat = _program_rows(n_views, hw, BQ)
        weight = tl.load(weight_ptr + stat, mask=row_ok, other=0.0)
        if tl.max(weight, axis=0) > 0:
            target = tl.load(index_ptr + stat, mask=row_ok, other=-1)
            q = _load_tile(
                q_ptr + b * s_b + i * s_f,
                s_h,
                s_t,
                s_d,
                tile * BQ,
                hw,
                n_heads,
                dim,
                BQ,
                HP,
                DP,
                LOW,
            )
            k_base = k_ptr + b * s_b + j * s_f
            if MLP:
                u, w1t, b1, w2 = _load_head(w1_ptr, b1_ptr, w2_ptr, n_heads, n_hidden, HP, UP)
                m = tl.full((BQ,), float("-inf"), tl.float32)
                acc = tl.zeros((BQ,), tl.float32)
                picked = tl.zeros((BQ,), tl.float32)
            else:
                m = tl.full((HP, BQ), float("-inf"), tl.float32)
                acc = tl.zeros((HP, BQ), tl.float32)
                picked = tl.zeros((HP, BQ), tl.float32)
            for start in range(0, hw, BK):
                k = _load_tile(k_base, s_h, s_t, s_d, start, hw, n_heads, dim, BK, HP, DP, LOW)
                s = _dot(q, tl.permute(k, (0, 2, 1)), LOW) * scale  # [HP, BQ, BK]
                keys = start + tl.arange(0, BK)
                if MLP:
                    _, _, _, z = _mlp_scores(s, w1t, b1, w2, BQ, BK, HP)
                    z = tl.where(keys[None, :] < hw, z, float("-inf"))
                    m_new = tl.maximum(m, tl.max(z, axis=1))
                    acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
                    hit = keys[None, :] == target[:, None]
                    picked += tl.sum(tl.where(hit, z, 0.0), axis=1)
                else:
                    s = tl.where(keys[None, None, :] < hw, s, float("-inf"))
                    m_new = tl.maximum(m, tl.max(s, axis=2))
                    acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, :, None]), axis=2)
                    hit = keys[None, None, :] == target[None, :, None]
                    picked += tl.sum(tl.where(hit, s, 0.0), axis=2)
                m = m_new
            lse = m + tl.log(acc)
            has_target = target >= 0
            if MLP:
                p_t = tl.where(has_target, tl.exp(picked - lse), 0.0)
            else:
                head_ok = tl.arange(0, HP)[:, None] < n_heads
                p_head = tl.where(head_ok & has_target[None, :], tl.exp(picked - lse), 0.0)
                p_t = tl.sum(p_head, axis=0) / n_heads
            if CE:
                row_loss = tl.where(has_target, -tl.log(p_t + 1e-8), 0.0)
                grad_p = -weight / (p_t + 1e-8)  # d(weight * row_loss) / d p_t
            else:
                row_loss = tl.where(has_target, 2.0 * (1.0 - p_t), 1.0) / hw
                grad_p = -2.0 * weight / hw
            grad_p = tl.where(has_target, grad_p, 0.0)
            tl.store(loss_ptr + stat, weight * row_loss, mask=row_ok)
            # dz_k = c (p_k - onehot_k) with c = -grad_p * dp_t/dz_t-part (see module docstring)
            if MLP:
                tl.store(lse_ptr + stat * HP, lse, mask=row_ok)
                tl.store(coef_ptr + stat * HP, -grad_p * p_t, mask=row_ok)
            else:
                h = tl.arange(0, HP)[:, None]
                at = stat[None, :] * HP + h
                ok = row_ok[None, :] & (h < n_heads)
                tl.store(lse_ptr + at, lse, mask=ok)
                tl.store(coef_ptr + at, -grad_p[None, :] * p_head / n_heads, mask=ok)

    @triton.jit
    def _cameo_backward(
        q_ptr,
        k_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        index_ptr,
        lse_ptr,
        coef_ptr,
        grad_out_ptr,
        dq_ptr,
        dk_ptr,
        dw1_ptr,
        db1_ptr,
        dw2_ptr,
        s_b,
        s_f,
        s_h,
        s_t,
        s_d,
        hw,
        n_heads,
        dim,
        n_hidden,
        n_views,
        scale,
        MLP: tl.constexpr,
        LOW: tl.constexpr,
        BQ: tl.constexpr,
        BK: tl.constexpr,
        HP: tl.constexpr,
        DP: tl.constexpr,
        UP: tl.constexpr,
    ):
        tile, b, i, j, rows, row_ok, stat = _program_rows(n_views, hw, BQ)
        grad_out = tl.load(grad_out_ptr).to(tl.float32)
        hh = tl.arange(0, HP)
        if MLP:
            coef = tl.load(coef_ptr + stat * HP, mask=row_ok, other=0.0) * grad_out
            lse = tl.load(lse_ptr + stat * HP, mask=row_ok, other=0.0)
            live = tl.max(tl.abs(coef), axis=0) > 0
        else:
            at = stat[None, :] * HP + hh[:, None]
            ok = row_ok[None, :] & (hh[:, None] < n_heads)
            coef = tl.load(coef_ptr + at, mask=ok, other=0.0) * grad_out  # [HP, BQ]
            lse = tl.load(lse_ptr + at, mask=ok, other=0.0)
            live = tl.max(tl.max(tl.abs(coef), axis=1), axis=0) > 0
        if live:
            target = tl.load(index_ptr + stat, mask=row_ok, other=-1)
            q_base = q_ptr + b * s_b + i * s_f
            k_base = k_ptr + b * s_b + j * s_f
            q = _load_tile(q_base, s_h, s_t, s_d, tile * BQ, hw, n_heads, dim, BQ, HP, DP, LOW)
            dq = tl.zeros((HP, BQ, DP), tl.float32)
            if MLP:
                u, w1t, b1, w2 = _load_head(w1_ptr, b1_ptr, w2_ptr, n_heads, n_hidden, HP, UP)
                dw1 = tl.zeros((UP, HP), tl.float32)
                db1 = tl.zeros((UP,), tl.float32)
                dw2 = tl.zeros((UP,), tl.float32)
            for start in range(0, hw, BK):
                k = _load_tile(k_base, s_h, s_t, s_d, start, hw, n_heads, dim, BK, HP, DP, LOW)
                s = _dot(q, tl.permute(k, (0, 2, 1)), LOW) * scale  # [HP, BQ, BK]
                keys = start + tl.arange(0, BK)
                key_ok = keys < hw
                if MLP:
                    x, pre, hidden, z = _mlp_scores(s, w1t, b1, w2, BQ, BK, HP)
                    prob = tl.where(key_ok[None, :], tl.exp(z - lse[:, None]), 0.0)
                    onehot = (keys[None, :] == target[:, None]).to(tl.float32)
                    dz = tl.reshape(coef[:, None] * (prob - onehot), (BQ * BK,))
                    dw2 += tl.sum(dz[:, None] * hidden, axis=0)
                    gauss = tl.exp(-0.5 * pre * pre) * 0.3989422804014327
                    slope = 0.5 * (1.0 + tl.erf(pre * 0.7071067811865476)) + pre * gauss
                    dpre = dz[:, None] * w2[None, :] * slope  # [BQ*BK, UP]
                    db1 += tl.sum(dpre, axis=0)
                    dw1 += tl.dot(tl.trans(dpre), x, input_precision="ieee")
                    dx = tl.dot(dpre, tl.trans(w1t), input_precision="ieee")  # [BQ*BK, HP]
                    ds = tl.permute(tl.reshape(dx, (BQ, BK, HP)), (2, 0, 1))
                else:
                    prob = tl.where(key_ok[None, None, :], tl.exp(s - lse[:, :, None]), 0.0)
                    onehot = (keys[None, None, :] == target[None, :, None]).to(tl.float32)
                    ds = coef[:, :, None] * (prob - onehot)
                ds = ds * scale
                if LOW:
                    ds = ds.to(q.dtype)
                dq += _dot(ds, k, LOW)
                dk = _dot(tl.permute(ds, (0, 2, 1)), q, LOW)  # [HP, BK, DP]
                h3 = hh[:, None, None]
                t3 = keys[None, :, None]
                d3 = tl.arange(0, DP)[None, None, :]
                dk_at = dk_ptr + b * s_b + j * s_f + h3 * s_h + t3 * s_t + d3 * s_d
                tl.atomic_add(dk_at, dk, mask=(h3 < n_heads) & (t3 < hw) & (d3 < dim))
            h3 = hh[:, None, None]
            t3 = rows[None, :, None]
            d3 = tl.arange(0, DP)[None, None, :]
            dq_at = dq_ptr + b * s_b + i * s_f + h3 * s_h + t3 * s_t + d3 * s_d
            tl.atomic_add(dq_at, dq, mask=(h3 < n_heads) & (t3 < hw) & (d3 < dim))
            if MLP:
                u_ok = u < n_hidden
                at = u[:, None] * n_heads + hh[None, :]
                ok = u_ok[:, None] & (hh[None, :] < n_heads)
                tl.atomic_add(dw1_ptr + at, dw1, mask=ok)
                tl.atomic_add(db1_ptr + u, db1, mask=u_ok)
                tl.atomic_add(dw2_ptr + u, dw2, mask=u_ok)


class FusedCameoLoss(torch.autograd.Function):
    """CAMEO term by the fused kernels.

    apply(q, k, scale, w1, b1, w2, b2, index, mask, ref_mask, loss, head) -> fp32 scalar.
    q, k [B, F, H, hw, d] (fp32, bf16 or fp16); head weights None for head "none";
    index [B, F, F, hw] long (-1: kept row with an all-zero target); mask [B, F, F, hw] bool
    (i == j never counts); ref_mask [B, F] bool; loss "ce" | "l1"; head "mlp" | "none".
    """

    @staticmethod
    def forward(ctx, q, k, scale, w1, b1, w2, b2, index, mask, ref_mask, loss, head):
        if loss not in ("ce", "l1") or head not in ("mlp", "none"):
            raise ValueError(f"loss must be ce|l1 and head mlp|none, got {loss!r}, {head!r}")
        if q.shape != k.shape or q.dim() != 5 or q.dtype != k.dtype:
            raise ValueError(
                f"q and k must be one [B, F, H, hw, d] dtype and shape, got "
                f"{tuple(q.shape)} {q.dtype} and {tuple(k.shape)} {k.dtype}"
            )
        batch, views, heads, hw, dim = q.shape
        mlp = head == "mlp"
        q, k = q.contiguous(), k.contiguous()
        index = index.to(q.device, torch.int32).contiguous()
        mask, ref_mask = mask.to(q.device, torch.bool), ref_mask.to(q.device, torch.bool)
        weight = row_weights(mask, ref_mask, torch.float32)
        hidden = 4 * heads
        dummy = q.new_zeros(1, dtype=torch.float32)
        w1c, b1c, w2c = (
            (t.detach().float().contiguous() for t in (w1, b1, w2))
            if mlp
            else (dummy, dummy, dummy)
        )
        rows = batch * views * views * hw
        hp = _pow2(heads)
        row_loss = torch.zeros(rows, device=q.device, dtype=torch.float32)
        lse = torch.zeros(rows, hp, device=q.device, dtype=torch.float32)
        coef = torch.zeros(rows, hp, device=q.device, dtype=torch.float32)
        low = q.dtype in (torch.bfloat16, torch.float16)
        meta = dict(BQ=BLOCK_Q, BK=BLOCK_K, HP=hp, DP=_pow2(dim), UP=_pow2(hidden), LOW=low)
        grid = (triton.cdiv(hw, BLOCK_Q), batch * views * (views - 1))
        sizes = (hw, heads, dim, hidden, views, float(scale))
        if views > 1:
            _cameo_forward[grid](
                q,
                k,
                w1c,
                b1c,
                w2c,
                index,
                weight,
                row_loss,
                lse,
                coef,
                *q.stride(),
                *sizes,
                MLP=mlp,
                CE=loss == "ce",
                **meta,
            )
        ctx.save_for_backward(q, k, w1c, b1c, w2c, index, lse, coef)
        ctx.config = (grid, sizes, mlp, meta, views > 1, b2 is not None)
        return row_loss.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        q, k, w1, b1, w2, index, lse, coef = ctx.saved_tensors
        grid, sizes, mlp, meta, any_pairs, has_b2 = ctx.config
        dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dw1, db1, dw2 = (torch.zeros_like(t) for t in (w1, b1, w2))
        if any_pairs:
            _cameo_backward[grid](
                q,
                k,
                w1,
                b1,
                w2,
                index,
                lse,
                coef,
                grad_output.float().reshape(1).contiguous(),
                dq,
                dk,
                dw1,
                db1,
                dw2,
                *q.stride(),
                *sizes,
                MLP=mlp,
                **meta,
            )
        grads = [dq.to(q.dtype), dk.to(k.dtype), None, None, None, None, None]
        if mlp:
            wants = ctx.needs_input_grad
            grads[3] = dw1 if wants[3] else None
            grads[4] = db1 if wants[4] else None
            grads[5] = dw2.reshape(1, -1) if wants[5] else None
            grads[6] = torch.zeros_like(grad_output).reshape(1) if has_b2 and wants[6] else None
        return (*grads, None, None, None, None, None)
