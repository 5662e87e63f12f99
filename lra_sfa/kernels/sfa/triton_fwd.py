"""FlashSFA forward: softmax(Q~ K~^T / sqrt(D) + pad_bias) V without an L x L matrix.

What it computes
    For zero-filled sparse codes Q~, K~ (B*H, L, D) (from ``topk_pack``; or,
    with ``TOPK_Q``, dense q whose top-k this kernel selects per tile) and
    dense V, one program per (BLOCK_M query rows, batch*head) streams key
    tiles of BLOCK_N rows: S = Q~ K~^T on tensor cores (``tl.dot``; exact:
    a pair with no shared feature gets 0, not -inf), a softmax in the base-2
    domain (log2(e)/sqrt(D) folded into one scale), and O += P V on tensor
    cores with fp32 accumulation. It writes O and the row log-sum-exp in
    base 2 (``lse2``; the backward recomputes P from it). Tiles move by TMA
    descriptors over a (B*H, L, D) view, so a partial last tile is zero-filled.

Design and why
    Dense tensor-core dots over the zero-filled codes beat gathering each
    query's k (value, index) pairs and beat reading K packed (k values + ids)
    and scattering it into registers: the tensor cores do the zeros for free,
    a gather or scatter costs k selects per tile. ``BOUNDED`` configs use a
    fixed per-row softmax offset, an upper bound of the row's scores from the
    key codes' per-feature range (``score_bound``), so the loop keeps no running
    max and never rescales; a block whose bound sat 64+ binades above a row's
    true max is redone online (``BOUND_MIN_SUM``). ``ROWSUM_2D`` keeps the row
    sums per tile column and reduces once after the loop. The autotuner picks
    among ``GPU_CONFIGS`` per power-of-two length; on Hopper the Gluon kernel
    (``gluon_fwd``) replaces this one where ``dispatch`` allows. Measurements
    of each choice: results/kernels/README.md and NOTES.md there.

Masking
    Only the last key tile, when L is not a multiple of BLOCK_N, pays for a
    bounds mask; a key padding mask is an additive fp32 bias (0 / -inf) per
    key, and the key loop ends at the sequence's ``key_end`` (one past its
    last real key, ``tiles.KeyPadding``): the tiles after it hold padding
    only, so a right-padded batch costs its real keys, not L. With
    ``ZERO_PAD_ROWS`` the query rows from ``key_end`` on are padding too:
    they output 0 (lse2 0) and a block of them runs no key loop (for a
    right-padded batch, or one whose real tokens ``api.sfa_attention(
    skip_padding=True)`` packed first: a batch then costs its real tokens
    squared). The running max
    starts at -1e30 (finite), so a fully padded tile yields p = 0 instead of
    NaN, and a query whose keys are all padding gets output 0 and lse2 = 0
    (the reference does the same).

Causal
    With ``CAUSAL`` row i attends keys j <= i: a query block's key loop ends
    at its last row (or the key end, if sooner); the tiles wholly before the
    block's first row run unmasked, the few crossing the diagonal with the
    j <= i mask, always by the online softmax (``causal_rows``; the bounded
    configs' offset is not used).

Limits
    head_dim in 16, 32, 64, 128; fp16 / bf16 (fp32 for tests: dots then run
    in IEEE fp32); any L >= 1. Launcher checks live in ``launcher.py``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from lra_sfa.kernels.interpret_compat import install as _install_interpreter_compat
from lra_sfa.kernels.sfa.topk_pack import keep_topk

_install_interpreter_compat()
NEG_BIG = tl.constexpr(-1.0e30)  # finite start for the running max: no NaN on all-padding tiles
# BOUNDED kernels redo a query block online when a row's sum of 2^(s - bound) falls below this, i.e. when
# the bound exceeded the row's largest score by more than 64 (base 2): p then keeps 62 binades above fp32's
# smallest normal, far more than the 24 bits that matter. A row whose keys are all padding (sum 0) also
# takes the online path, which gives it output 0 as before.
BOUND_MIN_SUM = tl.constexpr(2.0 ** -64)
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b on tensor cores; IEEE fp32 (no TF32) for the fp32 test inputs."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def softmax_pv_update(acc, l_i, m_i, qk, v, valid, qk_scale, bias, MASKED: tl.constexpr, HAS_BIAS: tl.constexpr,
                      IEEE: tl.constexpr):
    """One online-softmax step: qk (M, N) raw scores, v (N, D), valid a mask broadcasting to (M, N) (read when
    MASKED); returns acc, l_i, m_i."""
    if HAS_BIAS:
        qk = qk * qk_scale + bias[None, :]
        if MASKED:
            qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
    elif MASKED:
        qk = tl.where(valid, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = dot(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
    return acc, l_i, m_new


@triton.jit
def finish_rows(acc, l_i, m_i, Lse, O_desc, bh, start_m, offs_m, L, row_end, BLOCK_M: tl.constexpr,
                HEAD_DIM: tl.constexpr):
    """Normalise, zero rows with no valid key and rows from ``row_end`` on, store O (through its descriptor)
    and lse2."""
    empty = (l_i == 0.0) | (offs_m >= row_end)
    inv = tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, l_i))
    lse2 = tl.where(empty, 0.0, m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    out = acc * inv[:, None]
    tl.store(Lse + bh.to(tl.int64) * L + offs_m, lse2, mask=offs_m < L)
    O_desc.store([bh, start_m, 0], out.to(O_desc.dtype).reshape([1, BLOCK_M, HEAD_DIM]))


@triton.jit
def tile_scores(q, K_desc, V_desc, bh, start_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HEAD_DIM: tl.constexpr, IEEE: tl.constexpr):
    """Load the key/value tile at start_n; returns raw scores q K~^T (M, N) fp32 and v (N, D)."""
    k = K_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    v = V_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    return dot(q, k.T, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE), v


@triton.jit
def online_rows(q, K_desc, V_desc, bias_row, bh, L, qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, WARP_SPEC: tl.constexpr):
    """The classic online softmax over the key tiles before L (the caller's key end): returns acc (M, D), l_i,
    m_i (base 2)."""
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = L - L % BLOCK_N
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start_n in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPEC):
        qk, v = tile_scores(q, K_desc, V_desc, bh, start_n, BLOCK_M, BLOCK_N, HEAD_DIM, IEEE)
        if HAS_BIAS:
            bias = tl.load(bias_row + start_n + offs_n)
        acc, l_i, m_i = softmax_pv_update(acc, l_i, m_i, qk, v, (offs_n < BLOCK_N)[None, :], qk_scale, bias,
                                          False, HAS_BIAS, IEEE)
    if n_full < L:  # the partial last key tile: bounds mask (TMA zero-fills the rows past L)
        qk, v = tile_scores(q, K_desc, V_desc, bh, n_full, BLOCK_M, BLOCK_N, HEAD_DIM, IEEE)
        valid = (n_full + offs_n) < L
        if HAS_BIAS:
            bias = tl.load(bias_row + n_full + offs_n, mask=valid, other=float("-inf"))
        acc, l_i, m_i = softmax_pv_update(acc, l_i, m_i, qk, v, valid[None, :], qk_scale, bias, True, HAS_BIAS,
                                          IEEE)
    return acc, l_i, m_i


@triton.jit
def causal_rows(q, K_desc, V_desc, bias_row, bh, key_end, start_m, qk_scale, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr):
    """The online softmax of rows start_m .. start_m + BLOCK_M - 1 over their keys j <= i before key_end:
    the key tiles before the block's first row unmasked, then the tiles up to its last row under the j <= i
    mask. Returns acc (M, D), l_i, m_i (base 2)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = tl.minimum(key_end, start_m + BLOCK_M)  # one past the block's last key
    lo = tl.minimum(start_m, hi) // BLOCK_N * BLOCK_N  # the tiles before it precede every row of the block
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start_n in tl.range(0, lo, BLOCK_N):
        qk, v = tile_scores(q, K_desc, V_desc, bh, start_n, BLOCK_M, BLOCK_N, HEAD_DIM, IEEE)
        if HAS_BIAS:
            bias = tl.load(bias_row + start_n + offs_n)
        acc, l_i, m_i = softmax_pv_update(acc, l_i, m_i, qk, v, (offs_n < BLOCK_N)[None, :], qk_scale, bias,
                                          False, HAS_BIAS, IEEE)
    for start_n in tl.range(lo, hi, BLOCK_N):
        qk, v = tile_scores(q, K_desc, V_desc, bh, start_n, BLOCK_M, BLOCK_N, HEAD_DIM, IEEE)
        cols = start_n + offs_n
        in_range = cols < hi
        if HAS_BIAS:
            bias = tl.load(bias_row + cols, mask=in_range, other=float("-inf"))
        valid = in_range[None, :] & (cols[None, :] <= offs_m[:, None])
        acc, l_i, m_i = softmax_pv_update(acc, l_i, m_i, qk, v, valid, qk_scale, bias, True, HAS_BIAS, IEEE)
    return acc, l_i, m_i


@triton.jit
def score_bound(q, KBound, bh, qk_scale, HEAD_DIM: tl.constexpr):
    """(M,) upper bound of row i's scaled scores: sum_f max(q_if * kmax_f, q_if * kmin_f) * qk_scale.

    KBound holds, per batch*head, the column-wise max (row 0) and min (row 1)
    of the zero-filled key codes, so every key's score q_i . k_j is at most
    this bound (a product is largest at one end of its factor's range).
    """
    cols = tl.arange(0, HEAD_DIM)
    base = KBound + bh.to(tl.int64) * 2 * HEAD_DIM
    kmax = tl.load(base + cols)
    kmin = tl.load(base + HEAD_DIM + cols)
    qf = q.to(tl.float32)
    return tl.sum(tl.maximum(qf * kmax[None, :], qf * kmin[None, :]), 1) * qk_scale


@triton.jit
def bounded_update(acc, l_acc, m_i, qk, v, bias_row, start_n, offs_n, qk_scale, HAS_BIAS: tl.constexpr,
                   IEEE: tl.constexpr, ROWSUM_2D: tl.constexpr):
    """One full key tile with the fixed offset m_i: returns acc and the running sum (M,) or, with ROWSUM_2D,
    (M, N) (summed over N once after the loop, so no cross-thread reduction per tile)."""
    if HAS_BIAS:
        p = tl.math.exp2(qk * qk_scale + tl.load(bias_row + start_n + offs_n)[None, :] - m_i[:, None])
    else:
        p = tl.math.exp2(qk * qk_scale - m_i[:, None])
    if ROWSUM_2D:
        l_acc += p
    else:
        l_acc += tl.sum(p, 1)
    return dot(p.to(v.dtype), v, acc, IEEE), l_acc


@triton.jit
def bounded_rows(q, K_desc, V_desc, bias_row, bh, L, qk_scale, m_i, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, WARP_SPEC: tl.constexpr,
                 ROWSUM_2D: tl.constexpr):
    """Softmax with a fixed per-row offset m_i >= every scaled score (keys before L, the caller's key end):
    no running max, no rescaling.

    p = 2^(s - m_i) <= 1 never overflows; the result equals the online
    softmax's whenever the largest p is not far below 1 (the caller checks).
    """
    offs_n = tl.arange(0, BLOCK_N)
    if ROWSUM_2D:
        l_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:
        l_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = L - L % BLOCK_N
    for start_n in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPEC):
        qk, v = tile_scores(q, K_desc, V_desc, bh, start_n, BLOCK_M, BLOCK_N, HEAD_DIM, IEEE)
        acc, l_acc = bounded_update(acc, l_acc, m_i, qk, v, bias_row, start_n, offs_n, qk_scale, HAS_BIAS, IEEE,
                                    ROWSUM_2D)
    if ROWSUM_2D:
        l_i = tl.sum(l_acc, 1)
    else:
        l_i = l_acc
    if n_full < L:
        qk, v = tile_scores(q, K_desc, V_desc, bh, n_full, BLOCK_M, BLOCK_N, HEAD_DIM, IEEE)
        valid = (n_full + offs_n) < L
        qk = qk * qk_scale
        if HAS_BIAS:
            qk += tl.load(bias_row + n_full + offs_n, mask=valid, other=float("-inf"))[None, :]
        p = tl.math.exp2(tl.where(valid[None, :], qk, float("-inf")) - m_i[:, None])
        l_i += tl.sum(p, 1)
        acc = dot(p.to(v.dtype), v, acc, IEEE)
    return acc, l_i


@triton.jit
def _flash_sfa_fwd_kernel(
    Q_desc, K_desc, V_desc, O_desc, Bias, KEnd, Lse, KBound,
    L, H, qk_scale, l_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, WARP_SPEC: tl.constexpr,
    BOUNDED: tl.constexpr = False, TOPK_Q: tl.constexpr = 0, ROWSUM_2D: tl.constexpr = False,
    ZERO_PAD_ROWS: tl.constexpr = False, CAUSAL: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    bias_row = Bias + (bh // H).to(tl.int64) * L
    key_end = L
    row_end = L
    if HAS_BIAS:  # keys from the sequence's key end on are padding: the loops stop there
        key_end = tl.load(KEnd + bh // H)
        if ZERO_PAD_ROWS:  # so are the query rows from there on: output 0, and a block of them does no work
            row_end = key_end
            key_end = tl.where(start_m < row_end, key_end, 0)
    q = Q_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    if TOPK_Q > 0:  # Q_desc holds dense q: keep each row's TOPK_Q largest |q| here (16-bit q only)
        q = keep_topk(q, TOPK_Q, HEAD_DIM)
    if CAUSAL:
        acc, l_i, m_i = causal_rows(q, K_desc, V_desc, bias_row, bh, key_end, start_m, qk_scale, BLOCK_M, BLOCK_N,
                                    HEAD_DIM, HAS_BIAS, IEEE)
    elif BOUNDED:
        m_i = score_bound(q, KBound, bh, qk_scale, HEAD_DIM)
        acc, l_i = bounded_rows(q, K_desc, V_desc, bias_row, bh, key_end, qk_scale, m_i, BLOCK_M, BLOCK_N,
                                HEAD_DIM, HAS_BIAS, IEEE, WARP_SPEC, ROWSUM_2D)
        if tl.min(l_i, 0) < BOUND_MIN_SUM:  # the bound sat far above some row's true max: redo the block
            acc, l_i, m_i = online_rows(q, K_desc, V_desc, bias_row, bh, key_end, qk_scale, BLOCK_M, BLOCK_N,
                                        HEAD_DIM, HAS_BIAS, IEEE, WARP_SPEC)
    else:
        acc, l_i, m_i = online_rows(q, K_desc, V_desc, bias_row, bh, key_end, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM,
                                    HAS_BIAS, IEEE, WARP_SPEC)
    finish_rows(acc, l_i, m_i, Lse, O_desc, bh, start_m, offs_m, L, row_end, BLOCK_M, HEAD_DIM)


def set_block_shapes(nargs: dict) -> None:
    """Autotune pre-hook: TMA boxes follow the config's block sizes."""
    block_m, block_n, head_dim = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
    nargs["Q_desc"].block_shape = [1, block_m, head_dim]
    nargs["O_desc"].block_shape = [1, block_m, head_dim]
    nargs["K_desc"].block_shape = [1, block_n, head_dim]
    nargs["V_desc"].block_shape = [1, block_n, head_dim]


def fwd_config(block_m: int, block_n: int, warps: int, stages: int, warp_spec: bool = False,
               bounded: bool = False, rowsum_2d: bool = False) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "WARP_SPEC": warp_spec,
                          "BOUNDED": bounded, "ROWSUM_2D": rowsum_2d},
                         num_warps=warps, num_stages=stages, pre_hook=set_block_shapes)


INTERPRETER_CONFIG = fwd_config(64, 64, 4, 1)
# fp16 runs the online softmax, never a BOUNDED config: those cast p = 2^(s - bound) to v's dtype, and in fp16
# (smallest subnormal 2^-24) a row whose bound sits 24+ binades above its largest score loses its weights while
# its fp32 row sum stays above BOUND_MIN_SUM; bf16 keeps fp32's exponent range. Not autotuned: the tuner's key
# does not tell fp16 from bf16.
FP16_CONFIG = fwd_config(64, 64, 4, 3)
GPU_CONFIGS = [  # the fastest measured at L=16K, d=128; the autotuner picks per length bucket
    fwd_config(64, 64, 4, 3, bounded=True, rowsum_2d=True),
    fwd_config(64, 64, 4, 3, warp_spec=True, bounded=True),
    fwd_config(128, 128, 8, 3, bounded=True, rowsum_2d=True),
    fwd_config(128, 128, 8, 3),
    fwd_config(64, 64, 4, 3, bounded=True),
]


def prune_fwd_configs(configs, named_args, **kwargs):
    """Drop key tiles wider than a small head dim can use; fp32 (IEEE) inputs keep the configs whose GPU
    checks ran in fp32 (the warp-specialised and per-column-row-sum ones were checked in 16 bits only)."""
    def arg(name):
        return named_args[name] if name in named_args else kwargs[name]

    kept = [c for c in configs if not (arg("HEAD_DIM") <= 32 and c.kwargs["BLOCK_N"] > 64)]
    if arg("IEEE"):
        kept = [c for c in kept if not (c.kwargs["WARP_SPEC"] or c.kwargs["ROWSUM_2D"])]
    return kept or configs


flash_sfa_fwd_tuned = triton.autotune(
    configs=GPU_CONFIGS,
    key=["l_bucket", "HEAD_DIM", "HAS_BIAS", "IEEE", "TOPK_Q", "CAUSAL"],
    prune_configs_by={"early_config_prune": prune_fwd_configs},
)(_flash_sfa_fwd_kernel)
