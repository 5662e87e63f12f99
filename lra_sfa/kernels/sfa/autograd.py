"""FlashSFA's autograd.Function and its functional entry points ``flash_sfa`` and ``flash_sfa_forward``.

Forward: ``topk_pack`` on q and on k (packed values, indices and zero-filled
codes; for k also the codes' per-feature range, which the bounded forward
reads, so no pass over K is added for it), then ``launcher.launch_forward``
on the codes, that range and dense v. Without
autograd and for 16-bit inputs, q's top-k runs inside the forward kernel
instead (one pass over q fewer). Backward: ``launcher.launch_backward``; dQ and
dK are masked to the top-k support (the masked gradient of DESIGN.md).
"""

from __future__ import annotations

import torch

from lra_sfa.kernels.sfa import triton_fwd as fwd
from lra_sfa.kernels.sfa.dispatch import check_kernels, uses_gluon
from lra_sfa.kernels.sfa.launcher import check_inputs, launch_backward, launch_forward
from lra_sfa.kernels.sfa.tiles import aligned_rows, pad_bias
from lra_sfa.kernels.sfa.topk_pack import MAX_ROW_GROUPS, topk_pack


def _pack_keys(k: torch.Tensor, topk_k: int):
    """``topk_pack`` of k (B, H, L, D) with the codes' range (B*H, 2, D) folded in; beyond ``MAX_ROW_GROUPS``
    batch*heads the range is None and the launcher computes it from the codes (one pass over them)."""
    if k.shape[0] * k.shape[1] > MAX_ROW_GROUPS:
        return (*topk_pack(k, topk_k), None)
    return topk_pack(k, topk_k, key_range=True)


class FlashSFAFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves the codes, indices, out and lse2; backward runs the kernels."""

    @staticmethod
    def forward(ctx, q, k, v, topk_q, topk_k, key_padding_mask, kernels="auto"):
        batch, heads, length, head_dim = q.shape
        has_bias = key_padding_mask is not None
        if kernels == "gluon":  # raise now, not after the forward, if the backward cannot run Gluon
            uses_gluon(q.device, q.dtype, length, head_dim, has_bias, kernels, backward=True)
        flat = (batch * heads, length, head_dim)
        _, q_idx, qd = topk_pack(q, topk_q)
        _, k_idx, kd, k_range = _pack_keys(k, topk_k)
        v_flat = aligned_rows(v).reshape(flat)  # (B*H, L, D)
        bias = pad_bias(key_padding_mask, q.device)
        qd, kd = aligned_rows(qd).reshape(flat), aligned_rows(kd).reshape(flat)  # (B*H, L, D)
        out, lse2 = launch_forward(qd, kd, v_flat, bias, heads, has_bias, kernels=kernels, key_range=k_range)
        ctx.save_for_backward(qd, kd, v_flat, out, lse2, bias, q_idx, k_idx)
        ctx.meta = (q.shape, heads, has_bias, topk_q, topk_k, kernels)
        return out.reshape(q.shape)  # (B, H, L, D)

    @staticmethod
    def backward(ctx, dout):
        shape, heads, has_bias, topk_q, topk_k, kernels = ctx.meta
        dq, dk, dv = launch_backward(ctx.saved_tensors, dout, heads, has_bias, topk_q, topk_k, kernels)
        return dq.reshape(shape), dk.reshape(shape), dv.reshape(shape), None, None, None, None  # (B, H, L, D)


def _forward_only(q, k, v, topk_q: int, topk_k: int, key_padding_mask,
                  kernels: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """No autograd: (out (B, H, L, D), lse2 (B*H, L) base 2). For fp16 / bf16 the forward kernel selects q's
    top-k itself (one pass over q fewer); only k goes through ``topk_pack``."""
    batch, heads, length, head_dim = q.shape
    flat = (batch * heads, length, head_dim)
    fuse = topk_q if q.element_size() == 2 and topk_q < head_dim else 0
    with torch.no_grad():
        qd = q if fuse else topk_pack(q, topk_q)[2]
        _, _, kd, k_range = _pack_keys(k, topk_k)
        qd, kd, v_flat = (aligned_rows(t).reshape(flat) for t in (qd, kd, v))  # (B*H, L, D)
        out, lse2 = launch_forward(qd, kd, v_flat, pad_bias(key_padding_mask, q.device), heads,
                                   key_padding_mask is not None, fuse_topk_q=fuse, kernels=kernels,
                                   key_range=k_range)
    return out.reshape(q.shape), lse2


def needs_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether a call on q, k, v records a graph (grad mode on and some input needs a gradient)."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def flash_sfa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int | None = None,
              key_padding_mask: torch.Tensor | None = None, kernels: str = "auto") -> torch.Tensor:
    """Exact SFA, softmax(Q~K~^T/sqrt(D)) V, by the FlashSFA kernels; differentiable.

    q, k, v: (B, H, L, D) fp16/bf16/fp32 with D in 16, 32, 64, 128;
    key_padding_mask: (B, L) bool, True = real token. Rows whose keys are all
    padding give 0. Without autograd (no grad mode, or no input needing a
    gradient) it runs the forward-only path, which fuses q's top-k.
    ``kernels``: "auto", "gluon" or "triton" (``dispatch``).
    """
    topk_k = topk_q if topk_k is None else topk_k
    check_kernels(kernels)
    check_inputs(q, k, v, topk_q, topk_k, key_padding_mask)
    if not needs_backward(q, k, v):
        return _forward_only(q, k, v, topk_q, topk_k, key_padding_mask, kernels)[0]
    return FlashSFAFunction.apply(q, k, v, topk_q, topk_k, key_padding_mask, kernels)


def flash_sfa_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int | None = None,
                      key_padding_mask: torch.Tensor | None = None,
                      kernels: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Forward only: (out (B, H, L, D), logsumexp (B, H, L) fp32, natural log; 0 for all-padding rows)."""
    topk_k = topk_q if topk_k is None else topk_k
    check_kernels(kernels)
    check_inputs(q, k, v, topk_q, topk_k, key_padding_mask)
    out, lse2 = _forward_only(q, k, v, topk_q, topk_k, key_padding_mask, kernels)
    return out, (lse2 / fwd.LOG2E).reshape(q.shape[:3])  # (B, H, L, D), (B, H, L)
