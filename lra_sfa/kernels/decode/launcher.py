"""SFA decode: a few query steps against a sparse-K cache (k values + int8 ids, V dense).

What it computes
    out[t] = softmax(q~_t K~^T / sqrt(D) + pad_bias) V for each of the T new
    query rows, where the cache keeps K as (values (B, H, L, k), indices
    (B, H, L, k) int8/int16) and V dense (B, H, L, D). Kernels and their
    design: ``triton_decode``.

Bytes per token and head (read once per decode step)
    sparse: k * (value bytes + index bytes) + D * value bytes
    dense:  2 * D * value bytes
    d = 128, k = 8, bf16: 280 B against 512 B (45% fewer); k = 16: 304 B.

Limits
    head_dim 16, 32, 64, 128 or 256, topk 1..D, T >= 1 query rows per
    (batch, head), any L >= 1; fp16 / bf16 / fp32.

Launch grid (``launch_defaults``)
    The split count matters most: about ``programs_per_sm`` split programs per
    SM, enough to fill the GPU in one wave with room to hide the bounded
    kernel's prefetch registers. The defaults are the fastest grid measured
    on an H200 (results/kernels/README.md).
"""

from __future__ import annotations

import math

import torch
import triton

from lra_sfa.kernels.decode.triton_decode import _combine_kernel, _split_kernel
from lra_sfa.kernels.sfa.topk_pack import index_dtype, topk_pack
from lra_sfa.kernels.sfa.triton_fwd import LOG2E, interpreting


def pack_k_cache(k: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, H, L, D) -> sparse cache (values (B, H, L, topk), indices (B, H, L, topk) int8/int16)."""
    values, indices, _ = topk_pack(k, topk, write_dense=False)
    return values, indices


def cache_key_range(k_vals: torch.Tensor, k_idx: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, H, 2, D) fp32: per feature, the max (row 0) and min (row 1) of the cached keys' zero-filled codes.

    Part of the cache's state, not of a decode step: built once here (O(L k)),
    then kept up to date on append with an elementwise max/min of the new keys'
    codes (O(k) per token). A query's scores are all at most
    sum_f max(q_f * max_f, q_f * min_f), the bounded kernel's fixed softmax offset.
    """
    batch, heads, length, topk = k_vals.shape
    ids = k_idx.long().reshape(batch, heads, length * topk)
    vals = k_vals.float().reshape(batch, heads, length * topk)
    zeros = torch.zeros(batch, heads, head_dim, dtype=torch.float32, device=k_vals.device)
    kmax = zeros.scatter_reduce(-1, ids, vals, "amax", include_self=True)  # the 0 of a key without feature f
    kmin = zeros.scatter_reduce(-1, ids, vals, "amin", include_self=True)
    return torch.stack((kmax, kmin), dim=2)


def cache_bytes_per_token(head_dim: int, topk: int, dtype: torch.dtype) -> tuple[int, int]:
    """(sparse-K + dense-V bytes, dense K + V bytes) per token and head."""
    item = torch.empty(0, dtype=dtype).element_size()
    index_bytes = torch.empty(0, dtype=index_dtype(head_dim)).element_size()
    return topk * (item + index_bytes) + head_dim * item, 2 * head_dim * item


def _check_decode(q, k_vals, k_idx, v, topk_q: int, key_padding_mask) -> None:
    if q.dim() != 4 or k_vals.dim() != 4 or k_idx.shape != k_vals.shape or v.dim() != 4:
        raise ValueError(f"sfa_decode: expected q (B,H,T,D), k_vals/k_idx (B,H,L,k), v (B,H,L,D); got "
                         f"{tuple(q.shape)}, {tuple(k_vals.shape)}, {tuple(k_idx.shape)}, {tuple(v.shape)}")
    batch, heads, _, head_dim = q.shape
    if v.shape[:2] != (batch, heads) or v.shape[3] != head_dim or k_vals.shape[:3] != v.shape[:3]:
        raise ValueError(f"sfa_decode: cache shapes {tuple(k_vals.shape)}, {tuple(v.shape)} do not match q "
                         f"{tuple(q.shape)}")
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"sfa_decode: head_dim={head_dim} is not one of (16, 32, 64, 128, 256)")
    if not (q.dtype == k_vals.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"sfa_decode: q, k_vals, v must share one of fp16/bf16/fp32; got {q.dtype}, "
                         f"{k_vals.dtype}, {v.dtype}")
    if k_idx.dtype not in (torch.int8, torch.int16, torch.int32):
        raise ValueError(f"sfa_decode: k_idx.dtype={k_idx.dtype} must be int8, int16 or int32")
    if not 1 <= topk_q <= head_dim:
        raise ValueError(f"sfa_decode: topk_q={topk_q} must be in 1..head_dim={head_dim}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"sfa_decode: tensors are on {q.device}; needs CUDA or TRITON_INTERPRET=1")
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool
                                         or tuple(key_padding_mask.shape) != (batch, v.shape[2])):
        raise ValueError(f"sfa_decode: key_padding_mask must be bool (B, L)={(batch, v.shape[2])}; got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")


def _num_splits(rows: int, length: int, block_n: int, device: torch.device, programs_per_sm: int) -> int:
    sms = 8 if device.type != "cuda" else torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(programs_per_sm * sms, rows), triton.cdiv(length, block_n)))


def launch_defaults(head_dim: int, bounded: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_N, warps, stages, programs per SM) measured best on an H200, for the online kernel or, with
    ``bounded``, the bounded kernel."""
    if bounded:
        return (32, 4, 3, 32) if head_dim == 128 else (64, 4, 3, 16)
    return (32, 4, 5, 16) if head_dim == 128 else (64, 4, 3, 4)


def sfa_decode(q: torch.Tensor, k_vals: torch.Tensor, k_idx: torch.Tensor, v: torch.Tensor, topk_q: int,
               key_padding_mask: torch.Tensor | None = None, block_n: int | None = None,
               num_warps: int | None = None, num_splits: int | None = None, num_stages: int | None = None,
               programs_per_sm: int | None = None, k_range: torch.Tensor | None = None) -> torch.Tensor:
    """SFA for T new query rows q (B, H, T, D) against a sparse-K cache; returns (B, H, T, D).

    ``k_range`` (B, H, 2, D) fp32 from ``cache_key_range`` selects the bounded kernel (module docstring).
    Launch parameters left at None take ``launch_defaults(D, bounded=k_range is not None)``; without
    ``num_splits`` the keys are split so that there are about ``programs_per_sm`` split programs per SM.
    """
    _check_decode(q, k_vals, k_idx, v, topk_q, key_padding_mask)
    batch, heads, steps, head_dim = q.shape
    if k_range is not None and tuple(k_range.shape) != (batch, heads, 2, head_dim):
        raise ValueError(f"sfa_decode: k_range must have shape {(batch, heads, 2, head_dim)} (from cache_key_range); "
                         f"got {tuple(k_range.shape)}")
    defaults = launch_defaults(head_dim, bounded=k_range is not None)
    block_n, num_warps, num_stages, programs_per_sm = (
        given if given is not None else default
        for given, default in zip((block_n, num_warps, num_stages, programs_per_sm), defaults))
    length, topk = v.shape[2], k_vals.shape[3]
    _, _, qd = topk_pack(q, topk_q)
    rows = batch * heads * steps
    splits = num_splits or _num_splits(rows, length, block_n, q.device, programs_per_sm)
    chunk = triton.cdiv(triton.cdiv(length, splits), block_n) * block_n
    splits = triton.cdiv(length, chunk)
    m_part = torch.empty(rows, splits, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    a_part = torch.empty(rows, splits, head_dim, dtype=torch.float32, device=q.device)
    bias = torch.zeros(1, dtype=torch.float32, device=q.device)
    if key_padding_mask is not None:
        bias = torch.zeros(key_padding_mask.shape, dtype=torch.float32, device=q.device)
        bias.masked_fill_(~key_padding_mask, float("-inf"))
    qd, k_vals, k_idx, v = qd.contiguous(), k_vals.contiguous(), k_idx.contiguous(), v.contiguous()
    consts = dict(TOPK=topk, TOPK_POW2=triton.next_power_of_2(topk), BLOCK_N=block_n,
                  HAS_BIAS=key_padding_mask is not None, num_warps=num_warps, num_stages=num_stages)
    k_range_arg = bias if k_range is None else k_range.float().contiguous()
    _split_kernel[(splits, rows)](qd, k_vals, k_idx, v, bias, k_range_arg, m_part, l_part, a_part, length, heads,
                                  steps, chunk, splits, LOG2E / math.sqrt(head_dim), HEAD_DIM=head_dim,
                                  BOUNDED=k_range is not None, **consts)
    out = torch.empty(batch, heads, steps, head_dim, dtype=q.dtype, device=q.device)
    _combine_kernel[(rows,)](m_part, l_part, a_part, out, splits, HEAD_DIM=head_dim,
                             SPLITS_POW2=triton.next_power_of_2(splits), num_warps=4)
    return out
