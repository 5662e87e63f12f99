"""FlashSFA as custom operators with autograd, and its functional entry points ``flash_sfa`` and ``flash_sfa_forward``.

Forward: ``topk_pack`` on q and on k (packed values, indices and zero-filled
codes; for k also the codes' per-feature range, which the bounded forward
reads, so no pass over K is added for it), then ``launcher.launch_forward``
on the codes, that range and dense v. Without
autograd and for 16-bit inputs, q's top-k runs inside the forward kernel
instead (one pass over q fewer). Backward: ``launcher.launch_backward``; dQ and
dK are masked to the top-k support (the masked gradient of DESIGN.md).
Each runs as a torch.library custom operator (``lra_sfa::flash_sfa_train_fwd``,
``lra_sfa::flash_sfa_bwd``, ``lra_sfa::flash_sfa_fwd``), the training pair
joined by ``register_autograd``, so a compiled model keeps them in its graph.
"""

from __future__ import annotations

import torch

from lra_sfa.kernels.sfa import triton_fwd as fwd
from lra_sfa.kernels.sfa.dispatch import check_kernels, uses_gluon
from lra_sfa.kernels.sfa.launcher import check_inputs, launch_backward, launch_forward
from lra_sfa.kernels.sfa.tiles import aligned_rows, key_padding
from lra_sfa.kernels.sfa.topk_pack import MAX_ROW_GROUPS, index_dtype, topk_pack


def _pack_keys(k: torch.Tensor, topk_k: int):
    """``topk_pack`` of k (B, H, L, D) with the codes' range (B*H, 2, D) folded in; beyond ``MAX_ROW_GROUPS``
    batch*heads the range is None and the launcher computes it from the codes (one pass over them)."""
    if k.shape[0] * k.shape[1] > MAX_ROW_GROUPS:
        return (*topk_pack(k, topk_k), None)
    return topk_pack(k, topk_k, key_range=True)

# The kernels run inside custom operators (torch.library), so torch.compile keeps a model that calls them in
# one graph: the operators are opaque nodes there (their launchers' dispatch and autotuning are Python,
# which the compiler does not trace), with fake implementations giving the output shapes. Operator outputs may
# not alias inputs or one another: the training forward returns fresh codes and recomputes v's flat view and
# the key padding tensors in the backward. Every output is contiguous (the fake implementations say so too,
# whatever the inputs' strides).


@torch.library.custom_op("lra_sfa::flash_sfa_train_fwd", mutates_args=())
def _train_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int,
                   key_padding_mask: torch.Tensor | None, kernels: str, zero_pad_rows: bool, causal: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor]:
    """The training forward: (out (B, H, L, D), the zero-filled codes qd and kd (B*H, L, D), v as (B*H, L, D),
    lse2 (B*H, L) fp32 base 2, q's and k's top-k feature ids (B, H, L, topk)); everything the backward reads.
    v's flat copy is an output so that the backward keeps it, not the caller's v (in the model a view of the
    fused q, k, v projection, three times its size)."""
    batch, heads, length, head_dim = q.shape
    has_bias = key_padding_mask is not None
    if kernels == "gluon":  # raise now, not after the forward, if the backward cannot run Gluon
        uses_gluon(q.device, q.dtype, length, head_dim, has_bias, kernels, backward=True, causal=causal)
    flat = (batch * heads, length, head_dim)
    _, q_idx, qd = topk_pack(q, topk_q)
    _, k_idx, kd, k_range = _pack_keys(k, topk_k)
    # at topk == head_dim the codes are the inputs themselves: copy them, an operator's outputs are its own
    qd, kd = (codes.clone() if codes is source else codes for codes, source in ((qd, q), (kd, k)))
    qd, kd = aligned_rows(qd).reshape(flat), aligned_rows(kd).reshape(flat)  # (B*H, L, D)
    v_flat = aligned_rows(v).reshape(flat)  # (B*H, L, D)
    if v_flat.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
        v_flat = v_flat.clone()
    out, lse2 = launch_forward(qd, kd, v_flat, key_padding(key_padding_mask, q.device), heads, has_bias,
                               kernels=kernels, key_range=k_range, zero_pad_rows=zero_pad_rows, causal=causal)
    return out.reshape(q.shape), qd, kd, v_flat, lse2, q_idx, k_idx


@_train_forward.register_fake
def _(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows, causal):
    batch, heads, length, head_dim = q.shape
    flat, ids = (batch * heads, length, head_dim), index_dtype(head_dim)
    return (q.new_empty(q.shape), q.new_empty(flat), q.new_empty(flat), q.new_empty(flat),
            q.new_empty(flat[:2], dtype=torch.float32), q.new_empty((*q.shape[:3], topk_q), dtype=ids),
            q.new_empty((*q.shape[:3], topk_k), dtype=ids))


@torch.library.custom_op("lra_sfa::flash_sfa_bwd", mutates_args=())
def _backward(dout: torch.Tensor, qd: torch.Tensor, kd: torch.Tensor, v_flat: torch.Tensor, out: torch.Tensor,
              lse2: torch.Tensor, q_idx: torch.Tensor, k_idx: torch.Tensor, key_padding_mask: torch.Tensor | None,
              topk_q: int, topk_k: int, kernels: str, zero_pad_rows: bool, causal: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (B, H, L, D) from the training forward's outputs; dq and dk masked to the top-k supports.
    It has no autograd of its own: a double backward through SFA raises."""
    shape, flat = out.shape, qd.shape
    saved = (qd, kd, v_flat, out.reshape(flat), lse2, key_padding(key_padding_mask, out.device), q_idx, k_idx)
    dq, dk, dv = launch_backward(saved, dout, shape[1], key_padding_mask is not None, topk_q, topk_k, kernels,
                                 zero_pad_rows, causal)
    return dq.reshape(shape), dk.reshape(shape), dv.reshape(shape)  # (B, H, L, D)


@_backward.register_fake
def _(dout, qd, kd, v_flat, out, lse2, q_idx, k_idx, key_padding_mask, topk_q, topk_k, kernels, zero_pad_rows,
      causal):
    return out.new_empty(out.shape), out.new_empty(out.shape), out.new_empty(out.shape)


def _setup_context(ctx, inputs, output) -> None:
    _, _, _, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows, causal = inputs
    out, qd, kd, v_flat, lse2, q_idx, k_idx = output
    ctx.save_for_backward(qd, kd, v_flat, out, lse2, q_idx, k_idx, key_padding_mask)
    ctx.meta = (topk_q, topk_k, kernels, zero_pad_rows, causal)
    ctx.set_materialize_grads(False)  # only out's gradient is read: no zero tensors for the other outputs


def _train_backward(ctx, dout, *_unused):
    qd, kd, v_flat, out, lse2, q_idx, k_idx, key_padding_mask = ctx.saved_tensors
    topk_q, topk_k, kernels, zero_pad_rows, causal = ctx.meta
    dout = torch.zeros_like(out) if dout is None else dout.contiguous()
    dq, dk, dv = _backward(dout, qd, kd, v_flat, out, lse2, q_idx, k_idx, key_padding_mask, topk_q, topk_k, kernels,
                           zero_pad_rows, causal)
    return dq, dk, dv, None, None, None, None, None, None


_train_forward.register_autograd(_train_backward, setup_context=_setup_context)


@torch.library.custom_op("lra_sfa::flash_sfa_fwd", mutates_args=())
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int,
                key_padding_mask: torch.Tensor | None, kernels: str, zero_pad_rows: bool, causal: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """No autograd: (out (B, H, L, D), lse2 (B*H, L) base 2). For fp16 / bf16 the forward kernel selects q's
    top-k itself (one pass over q fewer); only k goes through ``topk_pack``."""
    batch, heads, length, head_dim = q.shape
    flat = (batch * heads, length, head_dim)
    fuse = topk_q if q.element_size() == 2 and topk_q < head_dim else 0
    qd = q if fuse else topk_pack(q, topk_q)[2]
    _, _, kd, k_range = _pack_keys(k, topk_k)
    qd, kd, v_flat = (aligned_rows(t).reshape(flat) for t in (qd, kd, v))  # (B*H, L, D)
    out, lse2 = launch_forward(qd, kd, v_flat, key_padding(key_padding_mask, q.device), heads,
                               key_padding_mask is not None, fuse_topk_q=fuse, kernels=kernels, key_range=k_range,
                               zero_pad_rows=zero_pad_rows, causal=causal)
    return out.reshape(q.shape), lse2


@_forward_op.register_fake
def _(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows, causal):
    batch, heads, length, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch * heads, length), dtype=torch.float32)


def _forward_only(q, k, v, topk_q: int, topk_k: int, key_padding_mask, kernels: str = "auto",
                  zero_pad_rows: bool = False, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """No autograd: (out (B, H, L, D), lse2 (B*H, L) base 2), by the forward-only operator."""
    with torch.no_grad():
        return _forward_op(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows, causal)


def needs_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether a call on q, k, v records a graph (grad mode on and some input needs a gradient)."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def flash_sfa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int | None = None,
              key_padding_mask: torch.Tensor | None = None, kernels: str = "auto",
              zero_pad_rows: bool = False, causal: bool = False) -> torch.Tensor:
    """Exact SFA, softmax(Q~K~^T/sqrt(D)) V, by the FlashSFA kernels; differentiable.

    q, k, v: (B, H, L, D) fp16/bf16/fp32 with D in 16, 32, 64, 128;
    key_padding_mask: (B, L) bool, True = real token. Rows whose keys are all
    padding give 0. Without autograd (no grad mode, or no input needing a
    gradient) it runs the forward-only path, which fuses q's top-k.
    ``kernels``: "auto", "gluon" or "triton" (``dispatch``). With
    ``zero_pad_rows`` (and a mask) the rows after each sequence's last real
    token output 0, constants, and cost nothing: for a mask whose real
    tokens come first (right padding, or the mask ``api.sfa_attention(
    skip_padding=True)`` packs). ``causal``: row i attends keys j <= i only.
    """
    topk_k = topk_q if topk_k is None else topk_k
    check_kernels(kernels)
    check_inputs(q, k, v, topk_q, topk_k, key_padding_mask)
    if not needs_backward(q, k, v):
        return _forward_only(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows, causal)[0]
    return _train_forward(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows, causal)[0]


def flash_sfa_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int | None = None,
                      key_padding_mask: torch.Tensor | None = None,
                      kernels: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Forward only: (out (B, H, L, D), logsumexp (B, H, L) fp32, natural log; 0 for all-padding rows)."""
    topk_k = topk_q if topk_k is None else topk_k
    check_kernels(kernels)
    check_inputs(q, k, v, topk_q, topk_k, key_padding_mask)
    out, lse2 = _forward_only(q, k, v, topk_q, topk_k, key_padding_mask, kernels, False, False)
    return out, (lse2 / fwd.LOG2E).reshape(q.shape[:3])  # (B, H, L, D), (B, H, L)
