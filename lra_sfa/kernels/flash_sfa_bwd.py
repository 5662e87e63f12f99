"""FlashSFA backward: dQ and dK masked to the top-k support, and dV.

What it computes
    With P = exp2(Q~K~^T * qk_scale - lse2) recomputed tile by tile from the
    forward's base-2 log-sum-exp, delta = rowsum(dO * O) and sm = 1/sqrt(D):
        dV  = P^T dO
        dS  = P * (dO V^T - delta)
        dQ~ = sm * dS K~,   dK~ = sm * dS^T Q~
    and then dQ = dQ~ * support(Q), dK = dK~ * support(K): the top-k support
    is held constant (the masked, straight-through gradient of the paper),
    rebuilt in-kernel from the packed int8/int16 indices. Three kernels:
    ``_delta_kernel`` (rowsum), ``_dkdv_kernel`` (one program per key block,
    looping over query blocks) and ``_dq_kernel`` (one program per query
    block, looping over key blocks); no atomics, so results are deterministic.
    Option ``SPARSE_DQ`` (off until measured): the dK/dV kernel also forms
    dS K~ per tile pair and adds only q's top-k columns of it into a packed
    fp32 dQ with atomics (``add_sparse_dq``), so the dQ kernel and its two
    recomputed matmuls (Q.K^T, dO.V^T) go: 5 matmuls per tile pair instead
    of 7, and topk_q / D of a dense dQ's atomic traffic (1/16 at k=8,
    d=128). Prepared 2026-11-29 (session 8) without device time left;
    interpreter-tested against the reference.

Masking
    Query rows past L load lse2 = +inf, so their P is 0. Keys past L (or
    padded keys) get P = 0 in ``_dq_kernel``; in ``_dkdv_kernel`` key rows
    past L are simply not stored and padded keys get P = 0.

Limits
    As the forward: head_dim 16..128, fp16 / bf16 / fp32 (IEEE dots), any L.

Measured (H200, 2026-11-29, bf16, 2^19 tokens, calls queued): fwd+bwd at
    d=128, k=8 is 35.3 ms at L=16K and 276 ms at L=128K against cuDNN 25.5 /
    209 ms (0.72x / 0.76x; 0.61-0.65x with the 2026-11-28 tiles) and FA2
    (1.33-1.36x); d=64 reaches 0.83-0.84x cuDNN. The backward (about 28 of
    the 35 ms at 16K) is a plain FA2-style pair of kernels with pointer
    loads; next: TMA loads, one fused kernel.

Block sizes
    dK/dV keeps two fp32 (BLOCK_N, D) accumulators in registers, so BLOCK_N
    64 with 4 warps (or 128 with 8) at D=128; dQ keeps one, so BLOCK_M 64-128.
    Three configurations each are autotuned (the grid beside the lists below;
    every extra config costs seconds of compile per dtype/head-dim/top-k).
"""

from __future__ import annotations

import triton
import triton.language as tl

from lra_sfa.kernels.flash_sfa_fwd import dot


@triton.jit
def _delta_kernel(Out, DO, Delta, n_rows, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, HEAD_DIM)
    ok = rows < n_rows
    o = tl.load(Out + rows[:, None] * HEAD_DIM + cols[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * HEAD_DIM + cols[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + rows, tl.sum(o * do, axis=1), mask=ok)


@triton.jit
def load_rows(Ptr, Desc, bh, start, L, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    """(BLOCK, D) rows start.. of head bh, zero past L: by TMA descriptor, or by pointers."""
    if TMA:
        return Desc.load([bh, start, 0]).reshape([BLOCK, HEAD_DIM])
    else:
        offs = start + tl.arange(0, BLOCK)
        cols = tl.arange(0, HEAD_DIM)
        ptrs = Ptr + (bh.to(tl.int64) * L + offs[:, None]) * HEAD_DIM + cols[None, :]
        return tl.load(ptrs, mask=offs[:, None] < L, other=0.0)


@triton.jit
def store_rows(Ptr, Desc, x, bh, start, L, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    """Store (BLOCK, D) x as rows start.. of head bh, dropping rows past L."""
    if TMA:
        Desc.store([bh, start, 0], x.to(Desc.dtype).reshape([1, BLOCK, HEAD_DIM]))
    else:
        offs = start + tl.arange(0, BLOCK)
        cols = tl.arange(0, HEAD_DIM)
        ptrs = Ptr + (bh.to(tl.int64) * L + offs[:, None]) * HEAD_DIM + cols[None, :]
        tl.store(ptrs, x.to(Ptr.dtype.element_ty), mask=offs[:, None] < L)


@triton.jit
def support_mask(Idx, rows, row_ok, cols, TOPK: tl.constexpr):
    """(R, D) bool: feature d is among row r's kept indices (loaded from (rows, TOPK) int ids)."""
    keep = cols[None, :] < 0
    for j in tl.static_range(TOPK):
        ids = tl.load(Idx + rows * TOPK + j, mask=row_ok, other=-1).to(tl.int32)
        keep = keep | (cols[None, :] == ids[:, None])
    return keep


@triton.jit
def add_fused_dq(ds_t, k, Qidx, DQacc, DQacc_desc, bh, start_m, rows, row_ok, sm_scale, HEAD_DIM: tl.constexpr,
                 TOPK_Q: tl.constexpr, TOPK_Q_POW2: tl.constexpr, IEEE: tl.constexpr, FUSED_DQ: tl.constexpr):
    """This key block's share of dQ = sm * dS K~ for the query rows ``rows`` (M,), added into the fp32 DQacc.

    ds_t (N, M) and k (N, D) are the tile's dS^T and key codes. FUSED_DQ
    1: only q's TOPK_Q support columns, gathered, by scalar atomics into a
    packed (B*H*L, TOPK_Q) DQacc (TOPK_Q / D of a dense dQ's bytes);
    2: atomics on the dense (B*H*L, D) DQacc masked to q's support (same
    bytes as 1, no gather); 3: the whole (M, D) tile by one TMA reduce-add
    into a dense (B*H, L, D) DQacc (FlashAttention-3's dQ; the launcher masks
    to the support afterwards).
    """
    dq_part = dot(tl.trans(ds_t), k, tl.zeros([ds_t.shape[1], HEAD_DIM], dtype=tl.float32), IEEE) * sm_scale
    if FUSED_DQ == 1:
        slots = tl.arange(0, TOPK_Q_POW2)
        ok = row_ok[:, None] & (slots[None, :] < TOPK_Q)
        ids = tl.load(Qidx + rows[:, None] * TOPK_Q + slots[None, :], mask=ok, other=0).to(tl.int32)
        kept = tl.gather(dq_part, ids, axis=1)  # (M, TOPK_Q_POW2)
        tl.atomic_add(DQacc + rows[:, None] * TOPK_Q + slots[None, :], kept, mask=ok, sem="relaxed")
    elif FUSED_DQ == 2:
        cols = tl.arange(0, HEAD_DIM)
        keep = support_mask(Qidx, rows, row_ok, cols, TOPK_Q)  # (M, D)
        tl.atomic_add(DQacc + rows[:, None] * HEAD_DIM + cols[None, :], dq_part, mask=keep, sem="relaxed")
    else:
        DQacc_desc.atomic_add([bh, start_m, 0], dq_part.reshape([1, ds_t.shape[1], HEAD_DIM]))


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, Lse, Delta, Bias, Kidx, DK, DV, Qidx, DQacc,
    Q_desc, K_desc, V_desc, DO_desc, DK_desc, DV_desc, DQacc_desc,
    L, H, qk_scale, sm_scale, l_bucket,
    HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, FULL_SUPPORT: tl.constexpr, IEEE: tl.constexpr,
    FUSED_DQ: tl.constexpr = 0, TOPK_Q: tl.constexpr = 1, TOPK_Q_POW2: tl.constexpr = 1,
    TMA: tl.constexpr = False,
):
    bh = tl.program_id(1)
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, HEAD_DIM)
    n_ok = offs_n < L
    k = load_rows(K, K_desc, bh, start_n, L, BLOCK_N, HEAD_DIM, TMA)  # (N, D)
    v = load_rows(V, V_desc, bh, start_n, L, BLOCK_N, HEAD_DIM, TMA)
    key_ok = n_ok
    if HAS_BIAS:
        key_ok = tl.load(Bias + (bh // H).to(tl.int64) * L + offs_n, mask=n_ok, other=float("-inf")) == 0.0
    row0 = bh.to(tl.int64) * L
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for start_m in tl.range(0, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < L
        q = load_rows(Q, Q_desc, bh, start_m, L, BLOCK_M, HEAD_DIM, TMA)  # (M, D)
        do = load_rows(DO, DO_desc, bh, start_m, L, BLOCK_M, HEAD_DIM, TMA)
        lse = tl.load(Lse + row0 + offs_m, mask=m_ok, other=float("inf"))
        dlt = tl.load(Delta + row0 + offs_m, mask=m_ok, other=0.0)
        qk_t = dot(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
        p_t = tl.math.exp2(qk_t * qk_scale - lse[None, :])
        if HAS_BIAS:
            p_t = tl.where(key_ok[:, None], p_t, 0.0)
        dv = dot(p_t.to(do.dtype), do, dv, IEEE)
        dp_t = dot(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
        ds_t = p_t * (dp_t - dlt[None, :])
        dk = dot(ds_t.to(q.dtype), q, dk, IEEE)
        if FUSED_DQ > 0:
            add_fused_dq(ds_t.to(k.dtype), k, Qidx, DQacc, DQacc_desc, bh, start_m, row0 + offs_m, m_ok, sm_scale,
                         HEAD_DIM, TOPK_Q, TOPK_Q_POW2, IEEE, FUSED_DQ)
    dk = dk * sm_scale
    if not FULL_SUPPORT:
        dk = tl.where(support_mask(Kidx, row0 + offs_n, n_ok, cols, TOPK), dk, 0.0)
    store_rows(DK, DK_desc, dk, bh, start_n, L, BLOCK_N, HEAD_DIM, TMA)
    store_rows(DV, DV_desc, dv, bh, start_n, L, BLOCK_N, HEAD_DIM, TMA)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, Lse, Delta, Bias, Qidx, DQ,
    Q_desc, K_desc, V_desc, DO_desc, DQ_desc,
    L, H, qk_scale, sm_scale, l_bucket,
    HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, FULL_SUPPORT: tl.constexpr, IEEE: tl.constexpr, TMA: tl.constexpr = False,
):
    bh = tl.program_id(1)
    start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < L
    row0 = bh.to(tl.int64) * L
    q = load_rows(Q, Q_desc, bh, start_m, L, BLOCK_M, HEAD_DIM, TMA)  # (M, D)
    do = load_rows(DO, DO_desc, bh, start_m, L, BLOCK_M, HEAD_DIM, TMA)
    lse = tl.load(Lse + row0 + offs_m, mask=m_ok, other=float("inf"))
    dlt = tl.load(Delta + row0 + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in tl.range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < L
        k = load_rows(K, K_desc, bh, start_n, L, BLOCK_N, HEAD_DIM, TMA)  # (N, D)
        v = load_rows(V, V_desc, bh, start_n, L, BLOCK_N, HEAD_DIM, TMA)
        qk = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        key_ok = n_ok
        if HAS_BIAS:
            key_ok = tl.load(Bias + (bh // H).to(tl.int64) * L + offs_n, mask=n_ok, other=float("-inf")) == 0.0
        p = tl.where(key_ok[None, :], p, 0.0)
        dp = dot(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
        ds = p * (dp - dlt[:, None])
        dq = dot(ds.to(k.dtype), k, dq, IEEE)
    dq = dq * sm_scale
    if not FULL_SUPPORT:
        dq = tl.where(support_mask(Qidx, row0 + offs_m, m_ok, cols, TOPK), dq, 0.0)
    store_rows(DQ, DQ_desc, dq, bh, start_m, L, BLOCK_M, HEAD_DIM, TMA)


def set_bwd_block_shapes(nargs: dict) -> None:
    """Config pre-hook: TMA boxes follow the block sizes (query-row tensors BLOCK_M, key-row tensors BLOCK_N)."""
    for name, block in (("Q_desc", "BLOCK_M"), ("DO_desc", "BLOCK_M"), ("DQ_desc", "BLOCK_M"),
                        ("DQacc_desc", "BLOCK_M"), ("K_desc", "BLOCK_N"), ("V_desc", "BLOCK_N"),
                        ("DK_desc", "BLOCK_N"), ("DV_desc", "BLOCK_N")):
        if name in nargs:
            nargs[name].block_shape = [1, nargs[block], nargs["HEAD_DIM"]]


def bwd_config(block_m: int, block_n: int, warps: int, stages: int, tma: bool = False) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "TMA": tma}, num_warps=warps, num_stages=stages,
                         pre_hook=set_bwd_block_shapes)


INTERPRETER_BWD_CONFIG = bwd_config(64, 64, 4, 1)
# H200, 2026-11-29, bf16, L=16K, d=128, k=8, B*H=16, each kernel alone: dK/dV 64x128 w8 s3 8.55 ms, 32x64 w4 s4
# 8.89, 64x128 w8 s2 9.58 (the earlier choice), 64x64 w4 s3 11.2, 128x128 w8 s2 29.5; dQ 128x32 w4 s3 5.38,
# 128x64 w8 s3 5.43, 128x128 w8 s2 5.70, 128x64 w8 s2 6.24 (the earlier choice), 64x64 w4 s3 6.80.
DKDV_CONFIGS = [bwd_config(64, 128, 8, 3), bwd_config(64, 128, 8, 3, tma=True), bwd_config(32, 64, 4, 4),
                bwd_config(32, 64, 4, 4, tma=True)]
DQ_CONFIGS = [bwd_config(128, 32, 4, 3), bwd_config(128, 32, 4, 3, tma=True), bwd_config(128, 64, 8, 3),
              bwd_config(128, 64, 8, 3, tma=True)]
BWD_KEY = ["l_bucket", "HEAD_DIM", "HAS_BIAS", "IEEE", "FULL_SUPPORT"]
# dQ from the dK/dV kernel (add_fused_dq's modes 1-3) instead of the dQ kernel (0); measure before enabling
FUSED_DQ = 0

# the fused dQ modes accumulate into DQacc with atomics, so each timed autotune run starts from zeros
dkdv_tuned = triton.autotune(configs=DKDV_CONFIGS, key=BWD_KEY + ["FUSED_DQ"], reset_to_zero=["DQacc"])(_dkdv_kernel)
dq_tuned = triton.autotune(configs=DQ_CONFIGS, key=BWD_KEY)(_dq_kernel)
delta_kernel = _delta_kernel
dkdv_kernel = _dkdv_kernel
dq_kernel = _dq_kernel
