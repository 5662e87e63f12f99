"""SFA decode kernels: flash-decoding over a sparse-K cache (k values + int8/int16 ids per key, V dense).

``_split_kernel``: one program per (split of the keys, query row) keeps an fp32
(BLOCK_N, D) accumulator (no cross-thread reduction inside the loop) and
writes a partial (max, sum, acc); ``_combine_kernel`` merges the splits. The
score of key n is sum_j kv[n, j] * q~[ki[n, j]], k gathered products from the
query's zero-filled code: exact (no shared feature -> 0). With BOUNDED, a fixed
softmax offset from the cache's per-feature key range (``cache_key_range``)
replaces the running max (no rescaling), and the next block's K and V loads
are issued by hand before this block's work, since Triton does not pipeline
these gathers; a split whose bound was 64+ binades loose (or all padding) is
redone online. Scores and softmax in fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lra_sfa.kernels.sfa.triton_fwd import BOUND_MIN_SUM, NEG_BIG


@triton.jit
def _load_sparse_keys(Kv, Ki, bh, L, offs, ok, TOPK: tl.constexpr, TOPK_POW2: tl.constexpr):
    """The cached (values, indices) of keys ``offs`` of head ``bh``: two (BLOCK_N, TOPK_POW2) tiles."""
    slots = tl.arange(0, TOPK_POW2)
    key_rows = bh * L + offs
    slot_ok = ok[:, None] & (slots[None, :] < TOPK)
    kv = tl.load(Kv + key_rows[:, None] * TOPK + slots[None, :], mask=slot_ok, other=0.0)
    ki = tl.load(Ki + key_rows[:, None] * TOPK + slots[None, :], mask=slot_ok, other=0)
    return kv, ki


@triton.jit
def _scores_of(q_row, kv, ki, Bias, bh, H, L, offs, ok, qk_scale, HAS_BIAS: tl.constexpr):
    """log2-scaled scores sum_j kv[n, j] * q~[ki[n, j]] from loaded tiles; -inf where not ``ok``."""
    s = tl.sum(kv.to(tl.float32) * tl.load(q_row + ki.to(tl.int32)).to(tl.float32), axis=1) * qk_scale
    if HAS_BIAS:
        s += tl.load(Bias + (bh // H) * L + offs, mask=ok, other=float("-inf"))
    return tl.where(ok, s, float("-inf"))


@triton.jit
def _key_scores(q_row, Kv, Ki, Bias, bh, H, L, offs, ok, qk_scale,
                TOPK: tl.constexpr, TOPK_POW2: tl.constexpr, HAS_BIAS: tl.constexpr):
    """log2-scaled scores of keys ``offs`` of head ``bh``: sum_j kv[n, j] * q~[ki[n, j]]; -inf where not ``ok``."""
    kv, ki = _load_sparse_keys(Kv, Ki, bh, L, offs, ok, TOPK, TOPK_POW2)
    return _scores_of(q_row, kv, ki, Bias, bh, H, L, offs, ok, qk_scale, HAS_BIAS)


@triton.jit
def _split_online(q_row, Kv, Ki, V, Bias, bh, H, L, start, end, qk_scale, HEAD_DIM: tl.constexpr,
                  TOPK: tl.constexpr, TOPK_POW2: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Keys start..end with a running max: returns m (base 2), l (BLOCK_N,) and acc (BLOCK_N, D), unreduced."""
    cols = tl.arange(0, HEAD_DIM)
    m_i = tl.full([], NEG_BIG, tl.float32)
    l_vec = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for n0 in tl.range(start, end, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        ok = offs < end
        s = _key_scores(q_row, Kv, Ki, Bias, bh, H, L, offs, ok, qk_scale, TOPK, TOPK_POW2, HAS_BIAS)
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new)
        v = tl.load(V + (bh * L + offs)[:, None] * HEAD_DIM + cols[None, :], mask=ok[:, None], other=0.0)
        l_vec = l_vec * alpha + p
        acc = acc * alpha + p[:, None] * v.to(tl.float32)
        m_i = m_new
    return m_i, l_vec, acc


@triton.jit
def _split_bounded(q_row, Kv, Ki, V, Bias, bh, H, L, start, end, qk_scale, m_b, HEAD_DIM: tl.constexpr,
                   TOPK: tl.constexpr, TOPK_POW2: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Keys start..end against a fixed offset m_b >= every score: no max, no rescaling; returns l, acc.

    Registers hold the next block's K and V loads while this block is scored and summed (Triton does not
    pipeline these gathers itself).
    """
    cols = tl.arange(0, HEAD_DIM)
    l_vec = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    offs = start + tl.arange(0, BLOCK_N)
    ok = offs < end
    kv, ki = _load_sparse_keys(Kv, Ki, bh, L, offs, ok, TOPK, TOPK_POW2)
    v = tl.load(V + (bh * L + offs)[:, None] * HEAD_DIM + cols[None, :], mask=ok[:, None], other=0.0)
    for n0 in tl.range(start, end, BLOCK_N):
        offs_next = n0 + BLOCK_N + tl.arange(0, BLOCK_N)
        ok_next = offs_next < end
        kv_next, ki_next = _load_sparse_keys(Kv, Ki, bh, L, offs_next, ok_next, TOPK, TOPK_POW2)
        v_next = tl.load(V + (bh * L + offs_next)[:, None] * HEAD_DIM + cols[None, :], mask=ok_next[:, None],
                         other=0.0)
        p = tl.math.exp2(_scores_of(q_row, kv, ki, Bias, bh, H, L, offs, ok, qk_scale, HAS_BIAS) - m_b)
        l_vec += p
        acc += p[:, None] * v.to(tl.float32)
        kv, ki, v, offs, ok = kv_next, ki_next, v_next, offs_next, ok_next
    return l_vec, acc


@triton.jit
def _split_row(L, T, chunk):
    """This program's (split, query row, flattened batch-head, first key, one past the last key)."""
    split = tl.program_id(0)
    row = tl.program_id(1)
    start = split * chunk
    return split, row, (row // T).to(tl.int64), start, tl.minimum(start + chunk, L)


@triton.jit
def _split_kernel(
    Qd, Kv, Ki, V, Bias, KRange, Mpart, Lpart, Apart,
    L, H, T, chunk, n_splits, qk_scale,
    HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, TOPK_POW2: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, BOUNDED: tl.constexpr = False,
):
    split, row, bh, start, end = _split_row(L, T, chunk)
    cols = tl.arange(0, HEAD_DIM)
    q_row = Qd + row.to(tl.int64) * HEAD_DIM
    if BOUNDED:  # the score bound from the cache's per-feature key range (``cache_key_range``)
        q = tl.load(q_row + cols).to(tl.float32)
        k_range = KRange + bh * 2 * HEAD_DIM
        m_i = tl.sum(tl.maximum(q * tl.load(k_range + cols), q * tl.load(k_range + HEAD_DIM + cols)), axis=0)
        m_i = m_i * qk_scale
        l_vec, acc = _split_bounded(q_row, Kv, Ki, V, Bias, bh, H, L, start, end, qk_scale, m_i, HEAD_DIM, TOPK,
                                    TOPK_POW2, BLOCK_N, HAS_BIAS)
        # the bound sat far above this split's scores (or all its keys are padding): redo it online
        if tl.sum(l_vec, axis=0) < BOUND_MIN_SUM:
            m_i, l_vec, acc = _split_online(q_row, Kv, Ki, V, Bias, bh, H, L, start, end, qk_scale, HEAD_DIM,
                                            TOPK, TOPK_POW2, BLOCK_N, HAS_BIAS)
    else:
        m_i, l_vec, acc = _split_online(q_row, Kv, Ki, V, Bias, bh, H, L, start, end, qk_scale, HEAD_DIM, TOPK,
                                        TOPK_POW2, BLOCK_N, HAS_BIAS)
    part = row.to(tl.int64) * n_splits + split
    tl.store(Mpart + part, m_i)
    tl.store(Lpart + part, tl.sum(l_vec, axis=0))
    tl.store(Apart + part * HEAD_DIM + cols, tl.sum(acc, axis=0))


@triton.jit
def _combine_kernel(Mpart, Lpart, Apart, Out, n_splits, HEAD_DIM: tl.constexpr, SPLITS_POW2: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, SPLITS_POW2)
    cols = tl.arange(0, HEAD_DIM)
    ok = splits < n_splits
    m = tl.load(Mpart + row * n_splits + splits, mask=ok, other=float("-inf"))
    lp = tl.load(Lpart + row * n_splits + splits, mask=ok, other=0.0)
    a = tl.load(Apart + (row * n_splits + splits)[:, None] * HEAD_DIM + cols[None, :], mask=ok[:, None], other=0.0)
    w = tl.math.exp2(m - tl.max(m, axis=0))
    total = tl.sum(w * lp, axis=0)
    out = tl.sum(w[:, None] * a, axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(Out + row * HEAD_DIM + cols, out.to(Out.dtype.element_ty))
