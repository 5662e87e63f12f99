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
    On Hopper, where ``dispatch`` allows (bf16 / fp16, head_dim 64 or 128, L
    a multiple of 128, no padding), ``gluon_bwd`` replaces the last two with
    warp-specialised Gluon kernels of the same math; this file runs every
    other shape and the CPU interpreter.
    Q, K, V, dO tiles load and dQ, dK, dV tiles store through TMA tensor
    descriptors over (B*H, L, D) views, so rows past L are zero-filled on load
    and dropped on store by the hardware.

Masking
    lse2 and delta are padded to ``ROW_PAD`` rows with lse2 = +inf, so query
    rows past L get P = 0 (their dO rows are zero as well). Keys past L have
    zero K and V rows (TMA zero-fill): they add nothing to dS K in
    ``_dq_kernel`` and their dK / dV rows are never stored. Padded keys (a
    key padding mask) get P = 0 in both kernels; ``_dq_kernel``'s key loop
    ends at the sequence's key end (``tiles.KeyPadding``), and a
    ``_dkdv_kernel`` program whose key block starts there or later stores
    zeros without looping over the queries. With ``ZERO_PAD_ROWS`` (the
    forward's rows from the key end on are 0, constants): their dQ is 0,
    they add nothing to dK / dV, and the query loops stop at the key end.
    With ``CAUSAL`` (row i attends keys j <= i): ``_dq_kernel``'s key loop
    ends at its block's last row and ``_dkdv_kernel``'s query loop starts at
    the block holding its first key; only the tiles crossing the diagonal
    apply the j <= i mask.

Limits
    As the forward: head_dim 16..128, fp16 / bf16 / fp32 (IEEE dots), any L.

Design and why
    Two kernels, not one: fusing dQ into the dK/dV loop (5 matmuls per tile
    pair instead of 7) needs a third fp32 tile and atomics or a TMA
    reduce-add, and every variant tried ran slower than the pair. lse2 and
    delta are read by TMA from rows the launcher pads to ``ROW_PAD`` (no
    masks in the loop), and the dQ kernel applies no key mask without
    padding (zero K rows past L add nothing). Measurements of each choice:
    results/kernels/README.md and NOTES.md there.
Block sizes
    dK/dV keeps two fp32 (BLOCK_N, D) accumulators in registers, so BLOCK_N
    64 with 4 warps (or 128 with 8) at D=128; dQ keeps one, so BLOCK_M 64-128.
    Three configurations each are autotuned (the grid beside the lists below;
    every extra config costs seconds of compile per dtype/head-dim/top-k).
"""

from __future__ import annotations

import triton
import triton.language as tl

from lra_sfa.kernels.sfa.triton_fwd import dot


@triton.jit
def _delta_kernel(Out, DO, Delta, n_rows, L, L_PAD, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr):
    """Delta[bh, i] = rowsum(dO * O) for the flat rows bh * L + i, stored with row stride L_PAD."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, HEAD_DIM)
    ok = rows < n_rows
    o = tl.load(Out + rows[:, None] * HEAD_DIM + cols[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * HEAD_DIM + cols[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + (rows // L) * L_PAD + rows % L, tl.sum(o * do, axis=1), mask=ok)


@triton.jit
def support_mask(Idx, rows, row_ok, cols, TOPK: tl.constexpr):
    """(R, D) bool: feature d is among row r's kept indices (loaded from (rows, TOPK) int ids)."""
    keep = cols[None, :] < 0
    for j in tl.static_range(TOPK):
        ids = tl.load(Idx + rows * TOPK + j, mask=row_ok, other=-1).to(tl.int32)
        keep = keep | (cols[None, :] == ids[:, None])
    return keep


@triton.jit
def dkdv_tile(k, v, dk, dv, key_ok, offs_n, start_m, Q_desc, DO_desc, Lse_desc, Delta_desc, bh, row_end,
              qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, ZERO_PAD_ROWS: tl.constexpr, CAUSAL_TILE: tl.constexpr):
    """dK~ / sm and dV of one key block, plus the query block at start_m; CAUSAL_TILE masks the pairs j > i."""
    q = Q_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    do = DO_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    lse = Lse_desc.load([bh, start_m]).reshape([BLOCK_M])  # +inf in the padding past L, so P = 0 there
    qk_t = dot(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
    p_t = tl.math.exp2(qk_t * qk_scale - lse[None, :])
    offs_m = start_m + tl.arange(0, BLOCK_M)
    if HAS_BIAS:
        keep = key_ok[:, None]
        if ZERO_PAD_ROWS:
            keep = keep & (offs_m < row_end)[None, :]
        p_t = tl.where(keep, p_t, 0.0)
    if CAUSAL_TILE:
        p_t = tl.where(offs_n[:, None] <= offs_m[None, :], p_t, 0.0)
    dv = dot(p_t.to(do.dtype), do, dv, IEEE)
    dlt = Delta_desc.load([bh, start_m]).reshape([BLOCK_M])
    dp_t = dot(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
    ds_t = p_t * (dp_t - dlt[None, :])
    return dot(ds_t.to(q.dtype), q, dk, IEEE), dv


@triton.jit
def _dkdv_kernel(
    Q_desc, K_desc, V_desc, DO_desc, DK_desc, DV_desc, Lse_desc, Delta_desc, Bias, KEnd, Kidx,
    L, H, qk_scale, sm_scale, l_bucket,
    HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, FULL_SUPPORT: tl.constexpr, IEEE: tl.constexpr, ZERO_PAD_ROWS: tl.constexpr = False,
    CAUSAL: tl.constexpr = False,
):
    bh = tl.program_id(1)
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_ok = offs_n < L
    k = K_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    v = V_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    key_ok = n_ok
    row_end = L  # query rows from here on are constants 0 (ZERO_PAD_ROWS): they add nothing
    query_end = L
    if HAS_BIAS:
        key_ok = tl.load(Bias + (bh // H).to(tl.int64) * L + offs_n, mask=n_ok, other=float("-inf")) == 0.0
        key_end = tl.load(KEnd + bh // H)
        if ZERO_PAD_ROWS:
            row_end = key_end
        query_end = tl.where(start_n < key_end, row_end, 0)  # a block of padding only: dK = dV = 0
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    diag_end = 0  # causal: the query blocks before diag_end cross the diagonal (masked), those after see every key
    if CAUSAL:
        diag_end = tl.minimum(query_end, tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M)
        for start_m in tl.range(start_n // BLOCK_M * BLOCK_M, diag_end, BLOCK_M):
            dk, dv = dkdv_tile(k, v, dk, dv, key_ok, offs_n, start_m, Q_desc, DO_desc, Lse_desc, Delta_desc, bh,
                               row_end, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, HAS_BIAS, IEEE, ZERO_PAD_ROWS, True)
    for start_m in tl.range(diag_end, query_end, BLOCK_M):
        dk, dv = dkdv_tile(k, v, dk, dv, key_ok, offs_n, start_m, Q_desc, DO_desc, Lse_desc, Delta_desc, bh,
                           row_end, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, HAS_BIAS, IEEE, ZERO_PAD_ROWS, False)
    dk = dk * sm_scale
    if not FULL_SUPPORT:
        keep = support_mask(Kidx, bh.to(tl.int64) * L + offs_n, n_ok, tl.arange(0, HEAD_DIM), TOPK)
        dk = tl.where(keep, dk, 0.0)
    DK_desc.store([bh, start_n, 0], dk.to(DK_desc.dtype).reshape([1, BLOCK_N, HEAD_DIM]))
    DV_desc.store([bh, start_n, 0], dv.to(DV_desc.dtype).reshape([1, BLOCK_N, HEAD_DIM]))


@triton.jit
def dq_tile(q, do, dq, lse, dlt, offs_m, start_n, K_desc, V_desc, Bias, bh, L, H, row_end, qk_scale,
            HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
            IEEE: tl.constexpr, ZERO_PAD_ROWS: tl.constexpr, CAUSAL_TILE: tl.constexpr):
    """dQ~ / sm of one query block, plus the key block at start_n; CAUSAL_TILE masks the pairs j > i."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = K_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    v = V_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    qk = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
    p = tl.math.exp2(qk * qk_scale - lse[:, None])
    if HAS_BIAS:  # without padding no key mask: keys past L have zero K rows (TMA), so dS K gets 0 from them
        key_ok = tl.load(Bias + (bh // H).to(tl.int64) * L + offs_n, mask=offs_n < L, other=float("-inf")) == 0.0
        keep = key_ok[None, :]
        if ZERO_PAD_ROWS:  # rows from row_end on hold lse2 = 0, not their own: their P is not a softmax
            keep = keep & (offs_m < row_end)[:, None]
        p = tl.where(keep, p, 0.0)
    if CAUSAL_TILE:
        p = tl.where(offs_n[None, :] <= offs_m[:, None], p, 0.0)
    dp = dot(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
    ds = p * (dp - dlt[:, None])
    return dot(ds.to(k.dtype), k, dq, IEEE)


@triton.jit
def _dq_kernel(
    Q_desc, K_desc, V_desc, DO_desc, DQ_desc, Lse, Delta, Bias, KEnd, Qidx,
    L, L_PAD, H, qk_scale, sm_scale, l_bucket,
    HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, FULL_SUPPORT: tl.constexpr, IEEE: tl.constexpr, ZERO_PAD_ROWS: tl.constexpr = False,
    CAUSAL: tl.constexpr = False,
):
    bh = tl.program_id(1)
    start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_ok = offs_m < L
    row0 = bh.to(tl.int64) * L
    q = Q_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    do = DO_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    lse = tl.load(Lse + bh.to(tl.int64) * L_PAD + offs_m)  # +inf past L (padding), so P = 0 there
    dlt = tl.load(Delta + bh.to(tl.int64) * L_PAD + offs_m)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    key_end = L
    row_end = L
    if HAS_BIAS:  # keys from the sequence's key end on are padding
        key_end = tl.load(KEnd + bh // H)
        if ZERO_PAD_ROWS:  # and so are the rows, constants 0: a block of them does no work
            row_end = key_end
            key_end = tl.where(start_m < row_end, key_end, 0)
    diag_start = key_end  # causal: the key blocks from diag_start on cross the diagonal (masked)
    if CAUSAL:
        key_end = tl.minimum(key_end, start_m + BLOCK_M)
        diag_start = tl.minimum(start_m, key_end) // BLOCK_N * BLOCK_N
    for start_n in tl.range(0, diag_start, BLOCK_N):
        dq = dq_tile(q, do, dq, lse, dlt, offs_m, start_n, K_desc, V_desc, Bias, bh, L, H, row_end, qk_scale,
                     HEAD_DIM, BLOCK_M, BLOCK_N, HAS_BIAS, IEEE, ZERO_PAD_ROWS, False)
    if CAUSAL:
        for start_n in tl.range(diag_start, key_end, BLOCK_N):
            dq = dq_tile(q, do, dq, lse, dlt, offs_m, start_n, K_desc, V_desc, Bias, bh, L, H, row_end, qk_scale,
                         HEAD_DIM, BLOCK_M, BLOCK_N, HAS_BIAS, IEEE, ZERO_PAD_ROWS, True)
    dq = dq * sm_scale
    if not FULL_SUPPORT:
        dq = tl.where(support_mask(Qidx, row0 + offs_m, m_ok, tl.arange(0, HEAD_DIM), TOPK), dq, 0.0)
    DQ_desc.store([bh, start_m, 0], dq.to(DQ_desc.dtype).reshape([1, BLOCK_M, HEAD_DIM]))


def set_bwd_block_shapes(nargs: dict) -> None:
    """Config pre-hook: TMA boxes follow the block sizes (query-row tensors BLOCK_M, key-row tensors BLOCK_N)."""
    for name, block in (("Q_desc", "BLOCK_M"), ("DO_desc", "BLOCK_M"), ("DQ_desc", "BLOCK_M"),
                        ("K_desc", "BLOCK_N"), ("V_desc", "BLOCK_N"), ("DK_desc", "BLOCK_N"), ("DV_desc", "BLOCK_N")):
        if name in nargs:
            nargs[name].block_shape = [1, nargs[block], nargs["HEAD_DIM"]]
    for name in ("Lse_desc", "Delta_desc"):  # (B*H, L_PAD) fp32 rows, BLOCK_M at a time
        if nargs.get(name) is not None:
            nargs[name].block_shape = [1, nargs["BLOCK_M"]]


def bwd_config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages,
                         pre_hook=set_bwd_block_shapes)


INTERPRETER_BWD_CONFIG = bwd_config(64, 64, 4, 1)
# The fastest launches measured at L=16K, d=128 on an H200 (results/kernels/NOTES.md), three per kernel
DKDV_CONFIGS = [bwd_config(64, 128, 8, 4), bwd_config(64, 128, 8, 3), bwd_config(32, 64, 4, 4)]
DQ_CONFIGS = [bwd_config(128, 64, 8, 3), bwd_config(64, 128, 4, 3), bwd_config(128, 32, 4, 3)]
BWD_KEY = ["l_bucket", "HEAD_DIM", "HAS_BIAS", "IEEE", "FULL_SUPPORT", "CAUSAL"]
# lse2 and delta are laid out with rows padded to a multiple of this (lse2 = +inf in the padding), so the
# kernels read them without masks; every config's BLOCK_M divides it
ROW_PAD = 128

# fp32 inputs (IEEE dots; tests and checks, not speed) take small tiles: 4-byte TMA tiles of the 16-bit lists
# need up to 320 KB of shared memory at D=128, above the H200's 227 KB per block
DKDV_FP32_CONFIG, DQ_FP32_CONFIG = bwd_config(32, 64, 4, 2), bwd_config(64, 32, 4, 2)


def fp32_pruner(fp32_config: triton.Config):
    """An autotune early_config_prune: fp32 (IEEE) launches get ``fp32_config`` alone, 16-bit ones the list."""
    def prune(configs, named_args, **kwargs):
        ieee = named_args["IEEE"] if "IEEE" in named_args else kwargs["IEEE"]
        return [fp32_config] if ieee else configs
    return prune


prune_dkdv_configs, prune_dq_configs = fp32_pruner(DKDV_FP32_CONFIG), fp32_pruner(DQ_FP32_CONFIG)
dkdv_tuned = triton.autotune(configs=DKDV_CONFIGS, key=BWD_KEY,
                             prune_configs_by={"early_config_prune": prune_dkdv_configs})(_dkdv_kernel)
dq_tuned = triton.autotune(configs=DQ_CONFIGS, key=BWD_KEY,
                           prune_configs_by={"early_config_prune": prune_dq_configs})(_dq_kernel)
delta_kernel = _delta_kernel
dkdv_kernel = _dkdv_kernel
dq_kernel = _dq_kernel
