"""PyTorch reference for Sparse Feature Attention (SFA).

SFA keeps, per token and head, the ``topk`` entries of q and of k with the
largest magnitude (signs kept, the rest zero); v stays dense. Attention is
exact on those codes::

    out = softmax(Q~ K~^T / sqrt(D) + pad_bias) V

with D the full head dim. A query-key pair with no shared feature scores 0
(not -inf) and still takes part in the softmax. Gradients are masked: the
top-k support is held constant, so only kept entries receive gradient.
``causal``: query i attends keys j <= i only (the scores of later keys are -inf).

Two implementations live here:

* ``sfa_dense_reference`` builds the full score matrix; tests only.
* ``sfa_chunked`` processes query chunks in a custom autograd Function whose
  backward recomputes scores chunk by chunk (flash-attention style), so
  memory grows linearly in L for forward and backward. This is the CPU path.

A row whose keys are all padding has no valid key: its output is 0 and it
passes no gradient (instead of NaN).
"""

from __future__ import annotations

import math

import torch


def topk_support(x: torch.Tensor, topk: int) -> torch.Tensor:
    """Bool mask (same shape as x) of each row's ``topk`` largest |x| entries."""
    idx = torch.topk(x.abs(), topk, dim=-1, sorted=False).indices  # (..., topk)
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)


def sparsify(x: torch.Tensor, topk: int) -> torch.Tensor:
    """Keep each row's top-k by magnitude; gradient masked to that support."""
    if topk >= x.shape[-1]:
        return x
    return x * topk_support(x.detach(), topk).to(x.dtype)


def _pad_bias(key_padding_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if key_padding_mask is None:
        return None
    bias = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    bias.masked_fill_(~key_padding_mask, float("-inf"))
    return bias[:, None, None, :]  # (B, 1, 1, L)


def sfa_dense_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_q: int,
    topk_k: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """softmax(Q~K~^T/sqrt(D)) V with an explicit (B, H, L, L) score matrix."""
    topk_k = topk_q if topk_k is None else topk_k
    qs, ks = sparsify(q, topk_q), sparsify(k, topk_k)
    scores = qs @ ks.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    length = q.shape[2]
    if key_padding_mask is None and not causal:
        return torch.softmax(scores, dim=-1) @ v
    real = key_padding_mask if key_padding_mask is not None else torch.ones(
        q.shape[0], length, dtype=torch.bool, device=q.device)  # (B, Lk)
    attend = real[:, None, None, :]  # (B, 1, 1, Lk)
    if causal:
        attend = attend & torch.ones(length, length, dtype=torch.bool, device=q.device).tril()  # (B, 1, Lq, Lk)
    has_key = attend.any(-1, keepdim=True)  # rows without any key to attend give 0 and no gradient
    scores = scores.masked_fill(~(attend | ~has_key), float("-inf"))
    probs = torch.softmax(scores, dim=-1) * has_key.to(scores.dtype)
    return probs @ v


def _chunk_size(batch_heads: int, length: int, budget: int = 1 << 22) -> int:
    """Query rows per chunk so that one chunk's scores hold about ``budget`` floats."""
    return max(1, min(length, budget // max(1, batch_heads * length)))


def _budget(x: torch.Tensor) -> int:
    """Score elements per chunk: 16 MiB of fp32 on CPU (cache-sized), 512 MiB on a GPU (few launches)."""
    return 1 << 27 if x.is_cuda else 1 << 22


class _ChunkedSoftmaxAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v, chunked over queries, recomputing in backward.

    Scores are computed in the inputs' dtype with fp32 softmax statistics; the
    in-place updates keep each chunk to a few passes over its (c, L) scores.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale, causal=False):  # q, k, v: (B, H, L, D); bias: (B, 1, 1, L) or None
        B, H, L, _ = q.shape
        step = _chunk_size(B * H, k.shape[2], _budget(q))
        q_scaled, k_t = q * scale, k.transpose(-1, -2)  # (B, H, L, D), (B, H, D, L)
        out = torch.empty_like(v)
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32 statistics (fp64 for fp64 inputs)
        lse = torch.empty(B, H, L, dtype=acc, device=q.device)
        for start in range(0, L, step):
            rows = slice(start, start + step)
            s = (q_scaled[:, :, rows] @ k_t).to(acc)  # (B, H, c, Lk)
            if bias is not None:
                s.add_(bias)
            if causal:
                s.masked_fill_(_later_keys(start, s.shape[2], L, q.device), float("-inf"))
            row_max = s.amax(-1, keepdim=True).nan_to_num_(0.0, neginf=0.0)  # (B, H, c, 1)
            p = s.sub_(row_max).exp_()  # unnormalised probabilities, in place
            row_sum = p.sum(-1, keepdim=True)  # (B, H, c, 1); 0 where every key is padding
            out[:, :, rows] = ((p.to(v.dtype) @ v) / row_sum.clamp_min(1e-30)).to(out.dtype)
            lse[:, :, rows] = (row_max + row_sum.log()).squeeze(-1).nan_to_num_(posinf=float("inf"))
        lse.masked_fill_(lse == float("-inf"), float("inf"))  # empty rows: exp(s - lse) = 0 in backward
        ctx.save_for_backward(q, k, v, bias if bias is not None else torch.empty(0), out, lse)
        ctx.scale, ctx.has_bias, ctx.causal = scale, bias is not None, causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse = ctx.saved_tensors
        acc = lse.dtype
        grad_out = grad_out.contiguous().to(acc)  # may arrive expanded (stride 0) or transposed: slow matmuls
        bias = bias if ctx.has_bias else None
        scale = ctx.scale
        L = q.shape[2]
        step = _chunk_size(q.shape[0] * q.shape[1], k.shape[2], _budget(q))
        qf, kf, vf = q.to(acc) * scale, k.to(acc), v.to(acc)
        k_t, v_t = kf.transpose(-1, -2), vf.transpose(-1, -2)  # (B, H, D, L)
        dq = torch.empty_like(q)
        dk = torch.zeros_like(kf)
        dv = torch.zeros_like(vf)
        delta = (grad_out * out.to(acc)).sum(-1, keepdim=True)  # (B, H, L, 1)
        for start in range(0, L, step):
            rows = slice(start, start + step)
            s = qf[:, :, rows] @ k_t  # (B, H, c, Lk)
            if bias is not None:
                s.add_(bias)
            if ctx.causal:
                s.masked_fill_(_later_keys(start, s.shape[2], L, q.device), float("-inf"))
            p = s.sub_(lse[:, :, rows, None]).exp_()  # (B, H, c, Lk)
            g = grad_out[:, :, rows]  # (B, H, c, Dv)
            dv += p.transpose(-1, -2) @ g
            ds = (g @ v_t).sub_(delta[:, :, rows]).mul_(p)  # dS / scale, (B, H, c, Lk)
            dq[:, :, rows] = ((ds @ kf) * scale).to(dq.dtype)
            dk += ds.transpose(-1, -2) @ qf[:, :, rows]  # qf already carries the scale
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None


def _later_keys(start: int, rows: int, length: int, device: torch.device) -> torch.Tensor:
    """(rows, L) bool: True where key j comes after query start + r (the pairs a causal row skips)."""
    return torch.arange(length, device=device)[None, :] > torch.arange(start, start + rows, device=device)[:, None]


def sfa_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_q: int,
    topk_k: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """SFA with memory linear in L (query chunks; backward recomputes)."""
    topk_k = topk_q if topk_k is None else topk_k
    qs, ks = sparsify(q, topk_q), sparsify(k, topk_k)
    bias = _pad_bias(key_padding_mask, torch.promote_types(q.dtype, torch.float32))
    return _ChunkedSoftmaxAttention.apply(qs, ks, v, bias, 1.0 / math.sqrt(q.shape[-1]), causal)
