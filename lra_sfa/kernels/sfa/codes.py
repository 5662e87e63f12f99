"""SFA through a dense attention engine: the zero-filled top-k codes of q and k, then torch SDPA.

What it computes
    Exactly ``sfa_attention``'s softmax(Q~ K~^T / sqrt(D)) V: ``topk_pack``
    writes the zero-filled codes Q~ and K~ (each row's top-k entries by
    magnitude, signs kept, every other feature 0), and
    ``torch.nn.functional.scaled_dot_product_attention`` runs on Q~, K~ and
    dense V with its default scale 1/sqrt(D), so on a GPU cuDNN or
    FlashAttention does the attention. Gradients: SDPA's dQ~ and dK~ masked to
    the top-k supports (``sparse_codes``' backward: the masked gradient of
    DESIGN.md), dV as SDPA gives it.

Why it exists
    The FlashSFA kernels also multiply zero-filled codes with dense
    tensor-core MMAs; they gain on a dense kernel by skipping the online
    softmax's rescaling (the bounded forward), which pays where each query
    tile meets many key tiles. Where it meets few (short sequences), the
    vendor engine's tuning wins, and SFA is cheapest as its top-k passes plus
    that engine. ``dispatch.uses_sdpa`` says where ``impl="auto"`` takes this
    path; ``impl="sdpa"`` forces it.

Padding and masks
    A key padding mask goes to SDPA as a boolean mask (every key tile visited;
    ``auto`` keeps padded batches on the kernels, which stop at each row's
    last real key), rows with no real key give 0, and with ``zero_pad_rows``
    padding query rows give 0 as the kernels' ``skip_padding`` does. Causal
    calls run SDPA's causal kernels. Head dims that ``topk_pack`` does not
    take (e.g. 4) are zero-padded for the top-k only; zero features never beat
    a real one, so the support and the codes are unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lra_sfa.kernels.sfa.topk_pack import SUPPORTED_PACK_DIMS, index_dtype, topk_pack
from lra_sfa.kernels.sfa.triton_fwd import interpreting


@torch.library.custom_op("lra_sfa::sparse_codes", mutates_args=())
def sparse_codes(x: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (..., D): x's top-k entries by magnitude in place, 0 elsewhere; their feature ids (..., topk)).
    D must be a ``topk_pack`` size. Differentiable in x: the gradient is the codes' gradient on the support."""
    _, ids, codes = topk_pack(x, topk)
    return (codes.clone() if codes is x else codes), ids  # an operator's outputs never alias its inputs


@sparse_codes.register_fake
def _(x, topk):
    return x.new_empty(x.shape), x.new_empty((*x.shape[:-1], topk), dtype=index_dtype(x.shape[-1]))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_codes, _grad_ids):
    (ids,) = ctx.saved_tensors
    if grad_codes is None:
        return None, None
    ids = ids.long()
    return torch.zeros_like(grad_codes).scatter(-1, ids, grad_codes.gather(-1, ids)), None


sparse_codes.register_autograd(_backward, setup_context=_setup_context)


def codes_of(x: torch.Tensor, topk: int) -> torch.Tensor:
    """x's zero-filled top-k codes (..., D) for any D up to the largest ``topk_pack`` size; differentiable."""
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"sfa_attention(impl='sdpa'): its top-k is a Triton kernel, which needs CUDA (or "
                         f"TRITON_INTERPRET=1 for the CPU interpreter); the tensors are on {x.device}")
    head_dim = x.shape[-1]
    if head_dim in SUPPORTED_PACK_DIMS:
        return sparse_codes(x, topk)[0]
    if head_dim > max(SUPPORTED_PACK_DIMS):
        raise ValueError(f"sfa_attention(impl='sdpa'): head_dim {head_dim} exceeds the top-k kernel's largest, "
                         f"{max(SUPPORTED_PACK_DIMS)}; use impl=reference")
    padded = min(size for size in SUPPORTED_PACK_DIMS if size > head_dim)
    codes = sparse_codes(F.pad(x, (0, padded - head_dim)), topk)[0]  # (..., P): the padding's zeros never win
    return codes[..., :head_dim]


def sdpa_sfa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int,
             key_padding_mask: torch.Tensor | None = None, zero_pad_rows: bool = False,
             causal: bool = False) -> torch.Tensor:
    """Exact SFA, (B, H, L, D) -> (B, H, L, Dv), by SDPA on the zero-filled codes (see the module docstring).
    key_padding_mask: (B, L) bool, True = real token."""
    qd, kd = codes_of(q, topk_q), codes_of(k, topk_k)  # (B, H, L, D) each
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(qd, kd, v, is_causal=causal)
    attend = key_padding_mask[:, None, None, :]  # (B, 1, 1, L), True = attend
    if causal:
        length = q.shape[2]
        attend = attend & torch.ones(length, length, dtype=torch.bool, device=q.device).tril()  # (B, 1, L, L)
    out = F.scaled_dot_product_attention(qd, kd, v, attn_mask=attend)
    seen = key_padding_mask.cumsum(1) > 0 if causal else key_padding_mask.any(1, keepdim=True)  # (B, L) / (B, 1)
    keep = seen & key_padding_mask if zero_pad_rows else seen
    return out.masked_fill(~keep[:, None, :, None], 0.0)
