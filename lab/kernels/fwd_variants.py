"""Losing FlashSFA forward designs, kept so the benchmark can re-measure them.

Both compute the same function as ``flash_sfa_fwd`` (no padding mask, L a
multiple of BLOCK_N; benchmark use only) and differ in the score stage:

B. ``gather``: scores from each query's k (value, index) pairs, multiplied
   by the key tile's column at that index: k gathered (BLOCK_M, BLOCK_N)
   loads from the zero-filled key codes per tile, on CUDA cores.
C. ``packed_k``: keys read as k values + int8 ids (k*3 bytes per key instead
   of 2*D), scattered into a dense (BLOCK_N, D) register tile with k selects,
   then a tensor-core ``tl.dot``.

Ablations of design A (``_fwd_ablation_kernel``, plain pointer loads instead
of TMA) take stages out to show where the time goes: ``pointer_loads`` (all
stages), ``no_qk`` (Q.K^T replaced by an index-derived tile), ``no_pv``
(softmax statistics only) and ``scores_only`` (Q.K^T and its row max/sum).
Measured numbers: docstring of ``flash_sfa_fwd`` and results/kernels/NOTES.md.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lra_sfa.kernels.sfa.triton_fwd import LOG2E, NEG_BIG, softmax_pv_update


@triton.jit
def _store_rows(Out, Lse, acc, l_i, m_i, bh, offs_m, cols, L, HEAD_DIM: tl.constexpr):
    out = acc / l_i[:, None]
    rows = bh * L + offs_m
    tl.store(Out + rows[:, None] * HEAD_DIM + cols[None, :], out.to(Out.dtype.element_ty))
    tl.store(Lse + rows, m_i + tl.math.log2(l_i))


@triton.jit
def _fwd_gather_kernel(Qv, Qi, Kd, V, Out, Lse, L, qk_scale,
                       HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    no_bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start_n in tl.range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_rows = (bh * L + offs_n)[None, :] * HEAD_DIM
        qk = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for j in tl.static_range(TOPK):
            qv = tl.load(Qv + (bh * L + offs_m) * TOPK + j).to(tl.float32)
            qi = tl.load(Qi + (bh * L + offs_m) * TOPK + j).to(tl.int64)
            qk += qv[:, None] * tl.load(Kd + key_rows + qi[:, None]).to(tl.float32)
        v = tl.load(V + (bh * L + offs_n)[:, None] * HEAD_DIM + cols[None, :])
        acc, l_i, m_i = softmax_pv_update(acc, l_i, m_i, qk, v, offs_n < L, qk_scale, no_bias, False, False, False)
    _store_rows(Out, Lse, acc, l_i, m_i, bh, offs_m, cols, L, HEAD_DIM)


@triton.jit
def _fwd_packed_k_kernel(Qd, Kv, Ki, V, Out, Lse, L, qk_scale,
                         HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM)
    q = tl.load(Qd + (bh * L + offs_m)[:, None] * HEAD_DIM + cols[None, :])
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    no_bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start_n in tl.range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kd = tl.zeros([BLOCK_N, HEAD_DIM], dtype=q.dtype)
        for j in tl.static_range(TOPK):
            kv = tl.load(Kv + (bh * L + offs_n) * TOPK + j)
            ki = tl.load(Ki + (bh * L + offs_n) * TOPK + j).to(tl.int32)
            kd = tl.where(cols[None, :] == ki[:, None], kv[:, None], kd)
        qk = tl.dot(q, tl.trans(kd))
        v = tl.load(V + (bh * L + offs_n)[:, None] * HEAD_DIM + cols[None, :])
        acc, l_i, m_i = softmax_pv_update(acc, l_i, m_i, qk, v, offs_n < L, qk_scale, no_bias, False, False, False)
    _store_rows(Out, Lse, acc, l_i, m_i, bh, offs_m, cols, L, HEAD_DIM)


@triton.jit
def _fwd_ablation_kernel(Qd, Kd, V, Out, Lse, L, qk_scale, MODE: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Design A with pointer loads. MODE 0: full; 1: Q.K^T replaced by an index-derived tile;
    2: no P.V (softmax statistics only); 3: scores only (row max and sum of Q.K^T)."""
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM)
    q = tl.load(Qd + (bh * L + offs_m)[:, None] * HEAD_DIM + cols[None, :])
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in tl.range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MODE == 1:
            qk = offs_m[:, None].to(tl.float32) * 1e-4 - (offs_n[None, :] % 61).to(tl.float32) * 1e-2
        else:
            k = tl.load(Kd + (bh * L + offs_n)[:, None] * HEAD_DIM + cols[None, :])
            qk = tl.dot(q, tl.trans(k))
        if MODE == 3:
            m_i = tl.maximum(m_i, tl.max(qk, 1))
            l_i += tl.sum(qk, 1)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if MODE != 2:
                v = tl.load(V + (bh * L + offs_n)[:, None] * HEAD_DIM + cols[None, :])
                acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
    _store_rows(Out, Lse, acc, l_i, m_i, bh, offs_m, cols, L, HEAD_DIM)


ABLATION_MODES = {"pointer_loads": 0, "no_qk": 1, "no_pv": 2, "scores_only": 3}


def run_variant(name: str, packs: dict, v: torch.Tensor, block_m: int = 128, block_n: int = 64,
                num_warps: int = 8, num_stages: int = 3) -> torch.Tensor:
    """Run design ``gather``, ``packed_k`` or an ablation of A (ABLATION_MODES) on (B*H, L, D) inputs.

    ``packs`` holds q_vals, q_idx, q_dense, k_vals, k_idx, k_dense from ``topk_pack`` (flattened).
    """
    batch_heads, length, head_dim = v.shape
    if length % block_n or length % block_m:
        raise ValueError(f"run_variant: L={length} must be a multiple of BLOCK_M={block_m} and BLOCK_N={block_n}")
    out = torch.empty_like(v)
    lse = torch.empty(batch_heads, length, dtype=torch.float32, device=v.device)
    grid = (length // block_m, batch_heads)
    scale = LOG2E / math.sqrt(head_dim)
    tiles = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
    if name == "gather":
        _fwd_gather_kernel[grid](packs["q_vals"], packs["q_idx"], packs["k_dense"], v, out, lse, length, scale,
                                 TOPK=packs["q_vals"].shape[-1], **tiles)
    elif name == "packed_k":
        _fwd_packed_k_kernel[grid](packs["q_dense"], packs["k_vals"], packs["k_idx"], v, out, lse, length, scale,
                                   TOPK=packs["k_vals"].shape[-1], **tiles)
    elif name in ABLATION_MODES:
        _fwd_ablation_kernel[grid](packs["q_dense"], packs["k_dense"], v, out, lse, length, scale,
                                   MODE=ABLATION_MODES[name], **tiles)
    else:
        raise ValueError(f"run_variant: unknown design {name!r}; use gather, packed_k or one of "
                         f"{tuple(ABLATION_MODES)}")
    return out
