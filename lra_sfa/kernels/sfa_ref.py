"""PyTorch reference for Sparse Feature Attention (SFA).

SFA keeps, per token and head, the ``topk`` entries of q and of k with the
largest magnitude (signs kept, the rest zero); v stays dense. Attention is
exact on those codes::

    out = softmax(Q~ K~^T / sqrt(D) + pad_bias) V

with D the full head dim. A query-key pair with no shared feature scores 0
(not -inf) and still takes part in the softmax. Gradients are masked: the
top-k support is held constant, so only kept entries receive gradient.

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
) -> torch.Tensor:
    """softmax(Q~K~^T/sqrt(D)) V with an explicit (B, H, L, L) score matrix."""
    topk_k = topk_q if topk_k is None else topk_k
    qs, ks = sparsify(q, topk_q), sparsify(k, topk_k)
    scores = qs @ ks.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    bias = _pad_bias(key_padding_mask, scores.dtype)
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-padding rows -> 0
    return probs @ v


def _chunk_size(batch_heads: int, length: int, budget: int = 1 << 22) -> int:
    """Query rows per chunk so that one chunk's scores hold about ``budget`` floats."""
    return max(1, min(length, budget // max(1, batch_heads * length)))


class _ChunkedSoftmaxAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v, chunked over queries, recomputing in backward."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # q, k, v: (B, H, L, D); bias: (B, 1, 1, L) or None
        B, H, L, _ = q.shape
        step = _chunk_size(B * H, k.shape[2])
        out = torch.empty_like(v[:, :, :L])
        lse = torch.empty(B, H, L, dtype=torch.float32, device=q.device)
        for start in range(0, L, step):
            rows = slice(start, start + step)
            s = (q[:, :, rows] @ k.transpose(-1, -2)).float() * scale  # (B, H, c, Lk)
            if bias is not None:
                s = s + bias
            row_lse = torch.logsumexp(s, dim=-1)  # (B, H, c)
            safe = torch.where(torch.isinf(row_lse), torch.zeros_like(row_lse), row_lse)
            p = torch.exp(s - safe[..., None])
            out[:, :, rows] = (p.to(v.dtype) @ v).to(out.dtype)
            lse[:, :, rows] = safe
        ctx.save_for_backward(q, k, v, bias if bias is not None else torch.empty(0), out, lse)
        ctx.scale, ctx.has_bias = scale, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        scale = ctx.scale
        L = q.shape[2]
        step = _chunk_size(q.shape[0] * q.shape[1], k.shape[2])
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k, dtype=torch.float32)
        dv = torch.zeros_like(v, dtype=torch.float32)
        delta = (grad_out.float() * out.float()).sum(-1)  # (B, H, L)
        for start in range(0, L, step):
            rows = slice(start, start + step)
            s = (q[:, :, rows] @ k.transpose(-1, -2)).float() * scale  # (B, H, c, Lk)
            if bias is not None:
                s = s + bias
            p = torch.exp(s - lse[:, :, rows, None])  # (B, H, c, Lk)
            g = grad_out[:, :, rows].float()  # (B, H, c, Dv)
            dv += p.transpose(-1, -2) @ g
            dp = g @ v.float().transpose(-1, -2)  # (B, H, c, Lk)
            ds = p * (dp - delta[:, :, rows, None]) * scale
            dq[:, :, rows] = (ds @ k.float()).to(dq.dtype)
            dk += ds.transpose(-1, -2) @ q[:, :, rows].float()
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def sfa_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_q: int,
    topk_k: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SFA with memory linear in L (query chunks; backward recomputes)."""
    topk_k = topk_q if topk_k is None else topk_k
    qs, ks = sparsify(q, topk_q), sparsify(k, topk_k)
    bias = _pad_bias(key_padding_mask, torch.float32)
    return _ChunkedSoftmaxAttention.apply(qs, ks, v, bias, 1.0 / math.sqrt(q.shape[-1]))
