"""FlashSFA backward's dQ and dK/dV kernels for Hopper in Gluon, warp-specialised like the forward.

dQ (``_gluon_dq_kernel``)
    The same as ``triton_bwd._dq_kernel`` without a padding mask: per
    query block, over all key tiles, P = 2^(Q~K~^T * scale - lse2),
    dS = P * (dO V^T - delta), dQ~ += dS K~; then dQ = sm * dQ~ masked to
    each query's top-k support (rebuilt from the packed indices). lse2 and
    delta are read from the rows the launcher pads (``tiles.pad_rows``).
    As in ``gluon_fwd``'s forward, one producer warp streams K/V tiles by
    TMA into a ring of STAGES buffers, and two compute warpgroups (one
    per 64 query rows) take every tile from it (``empty`` counts one arrival
    per warpgroup). Each warpgroup keeps its Q and dO tiles in shared memory
    and its dQ accumulator in registers, and writes dQ through its Q buffer
    by TMA. The Triton kernel runs its two warpgroups in lockstep on loads it
    issues itself.

dK/dV (``_gluon_dkdv_kernel``)
    The same as ``triton_bwd._dkdv_kernel`` without a padding mask: each
    compute warpgroup keeps 64 keys' K, V tiles and dK, dV accumulators and
    takes every (Q, dO) tile of the producer's ring, working on transposed
    tiles (keys x queries) so that P^T and dS^T are matmul operands straight
    from registers; lse2 is loaded one iteration ahead (PREFETCH).

Why
    Both kernels still do 7 matmuls per tile pair; the gain over the Triton
    kernels is the producer warp and the tiles two warpgroups share, as in
    the forward (results/kernels/NOTES.md).

Limits (``dispatch``; everything else runs the Triton kernels): CUDA sm_90,
    fp16 / bf16, head_dim 64 or 128, L a multiple of 128, no padding mask.
    No CPU interpreter runs Gluon, so ``pytest -m gpu
    tests/test_kernels_gpu.py`` checks them on the GPU against float64.
"""

from __future__ import annotations

import math

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma

from lra_sfa.kernels.sfa.gluon_fwd import LOG2E, _load_partition, check_launch, nvmma_descriptor, wgmma_layout

# Compute warpgroups per program, each with its own 64 rows. One warpgroup measured slower in both kernels
# (results/kernels/NOTES.md), so the kernels are written for two.
WARPGROUPS = gl.constexpr(2)


@gluon.jit
def _resident_tiles_and_ring(a_desc, b_desc, ring_a_desc, ring_b_desc, row0, HEAD_DIM: gl.constexpr,
                             RESIDENT_ROWS: gl.constexpr, RING_ROWS: gl.constexpr, STAGES: gl.constexpr,
                             CONSUMERS: gl.constexpr):
    """Shared memory of both backward kernels: per compute warpgroup c an (a, b) tile pair of RESIDENT_ROWS rows
    from row0 + c * RESIDENT_ROWS, loaded here (``in_bar[c]``), and a ring of STAGES (a, b) tiles of RING_ROWS
    rows for the producer (``ready``; ``empty`` frees a slot once every warpgroup has arrived).

    Every barrier allocated here is used: an unused one is dead to the allocator, which then gives its bytes to
    scratch while it is still initialised (a race, measured in the forward)."""
    dtype: gl.constexpr = a_desc.dtype
    a_res = gl.allocate_shared_memory(dtype, [CONSUMERS, RESIDENT_ROWS, HEAD_DIM], a_desc.layout)
    b_res = gl.allocate_shared_memory(dtype, [CONSUMERS, RESIDENT_ROWS, HEAD_DIM], b_desc.layout)
    a_ring = gl.allocate_shared_memory(dtype, [STAGES, RING_ROWS, HEAD_DIM], ring_a_desc.layout)
    b_ring = gl.allocate_shared_memory(dtype, [STAGES, RING_ROWS, HEAD_DIM], ring_b_desc.layout)
    in_bar = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for c in gl.static_range(CONSUMERS):
        mbarrier.init(in_bar.index(c), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=CONSUMERS)
    for c in gl.static_range(CONSUMERS):
        mbarrier.expect(in_bar.index(c), 2 * a_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(a_desc, [row0 + c * RESIDENT_ROWS, 0], in_bar.index(c), a_res.index(c))
        tma.async_copy_global_to_shared(b_desc, [row0 + c * RESIDENT_ROWS, 0], in_bar.index(c), b_res.index(c))
    return a_res, b_res, a_ring, b_ring, in_bar, ready, empty


@gluon.jit
def _dq_consumer(q_smem, do_smem, k_smem, v_smem, in_bar, ready, empty, dq_desc, Lse, Delta, Qidx,
                 bh, seq_q, row_q, n_tiles, L_PAD, qk_scale, sm_scale,
                 HEAD_DIM: gl.constexpr, TOPK: gl.constexpr, FULL_SUPPORT: gl.constexpr, BLOCK_M: gl.constexpr,
                 BLOCK_N: gl.constexpr, STAGES: gl.constexpr, IDX: gl.constexpr):
    """One compute warpgroup: dQ of query rows seq_q + IDX * BLOCK_M (within the sequence), BLOCK_M of them."""
    WARPS: gl.constexpr = 4
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = wgmma_layout(WARPS, BLOCK_N)
    o_layout: gl.constexpr = wgmma_layout(WARPS, HEAD_DIM)
    ds_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q_buf = q_smem.index(IDX)
    do_buf = do_smem.index(IDX)
    first = seq_q + IDX * BLOCK_M
    offs_m = first + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
    lse = gl.load(Lse + bh * L_PAD + offs_m)  # (M,) base 2
    delta = gl.load(Delta + bh * L_PAD + offs_m)  # (M,) rowsum(dO * O)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    dq = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    mbarrier.wait(in_bar.index(IDX), 0)
    for j in range(n_tiles):
        slot = j % STAGES
        mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
        s = warpgroup_mma(q_buf, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False)  # (M, N)
        p = gl.exp2(s * qk_scale - lse[:, None])
        dp = warpgroup_mma(do_buf, v_smem.index(slot).permute((1, 0)), s_zero, use_acc=False)  # (M, N)
        ds = p * (dp - delta[:, None])
        dq = warpgroup_mma(gl.convert_layout(ds.to(dtype), ds_layout), k_smem.index(slot), dq)  # (M, D)
        mbarrier.arrive(empty.index(slot))  # all three matmuls of this tile are done: its buffers go back
    dq = dq * sm_scale
    if not FULL_SUPPORT:  # keep each row's top-k features (its packed ids), zero the rest
        rows = (row_q + IDX * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))).to(gl.int64)
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        keep = cols[None, :] < 0
        for t in gl.static_range(TOPK):
            ids = gl.load(Qidx + rows * TOPK + t).to(gl.int32)
            keep = keep | (cols[None, :] == ids[:, None])
        dq = gl.where(keep, dq, 0.0)
    q_buf.store(dq.to(dtype))  # Q's buffer is free: every Q.K^T has completed
    fence_async_shared()
    tma.async_copy_shared_to_global(dq_desc, [row_q + IDX * BLOCK_M, 0], q_buf)
    tma.store_wait(pendings=0)


@gluon.jit
def _gluon_dq_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, Lse, Delta, Qidx, L, L_PAD, qk_scale, sm_scale,
                     HEAD_DIM: gl.constexpr, TOPK: gl.constexpr, FULL_SUPPORT: gl.constexpr,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                     CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
    gl.static_assert(num_warps == 4, "the default partition is one compute warpgroup")
    bh = gl.program_id(1)
    seq_q = gl.program_id(0) * (WARPGROUPS * BLOCK_M)  # first query row of this program within its sequence
    row_q = bh * L + seq_q  # ... and within the (B*H*L, D) views
    row_k = bh * L
    n_tiles = L // BLOCK_N

    q_smem, do_smem, k_smem, v_smem, in_bar, ready, empty = _resident_tiles_and_ring(
        q_desc, do_desc, k_desc, v_desc, row_q, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, WARPGROUPS)

    gl.warp_specialize([
        (_dq_consumer, (q_smem, do_smem, k_smem, v_smem, in_bar, ready, empty, dq_desc, Lse, Delta, Qidx,
                        bh, seq_q, row_q, n_tiles, L_PAD, qk_scale, sm_scale,
                        HEAD_DIM, TOPK, FULL_SUPPORT, BLOCK_M, BLOCK_N, STAGES, 0)),
        (_dq_consumer, (q_smem, do_smem, k_smem, v_smem, in_bar, ready, empty, dq_desc, Lse, Delta, Qidx,
                        bh, seq_q, row_q, n_tiles, L_PAD, qk_scale, sm_scale,
                        HEAD_DIM, TOPK, FULL_SUPPORT, BLOCK_M, BLOCK_N, STAGES, 1)),
        (_load_partition, (k_desc, v_desc, k_smem, v_smem, ready, empty, row_k, n_tiles, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, 24])


def gluon_dq(qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, lse_pad: torch.Tensor,
             delta: torch.Tensor, q_idx: torch.Tensor, topk_q: int, block_m: int = 64, block_n: int = 64,
             stages: int = 3, maxnreg: int = 168, consumer_regs: int = 240) -> torch.Tensor:
    """dQ (B*H, L, D) of the FlashSFA backward, masked to q's top-k support, from the (B*H, L, D) codes qd, kd,
    dense v and dout, lse2 / delta padded to (B*H, L_PAD) and q's packed ids (B*H*L, topk_q)."""
    check_launch("gluon_dq", (qd, kd, v, dout), WARPGROUPS.value,
                 {"2*BLOCK_M": WARPGROUPS.value * block_m, "BLOCK_N": block_n})
    batch_heads, length, head_dim = qd.shape
    dq = torch.empty_like(qd)
    grid = (length // (WARPGROUPS.value * block_m), batch_heads)
    _gluon_dq_kernel[grid](nvmma_descriptor(qd, block_m), nvmma_descriptor(kd, block_n),
                           nvmma_descriptor(v, block_n), nvmma_descriptor(dout, block_m),
                           nvmma_descriptor(dq, block_m), lse_pad, delta, q_idx, length, lse_pad.shape[1],
                           LOG2E / math.sqrt(head_dim), 1.0 / math.sqrt(head_dim),
                           HEAD_DIM=head_dim, TOPK=topk_q, FULL_SUPPORT=topk_q == head_dim, BLOCK_M=block_m,
                           BLOCK_N=block_n, STAGES=stages, CONSUMER_REGS=consumer_regs,
                           num_warps=4, maxnreg=maxnreg)
    return dq


@gluon.jit
def _dkdv_consumer(k_smem, v_smem, q_smem, do_smem, in_bar, ready, empty, dk_desc, dv_desc, Lse, Delta, Kidx,
                   bh, row_k, n_tiles, L_PAD, qk_scale, sm_scale,
                   HEAD_DIM: gl.constexpr, TOPK: gl.constexpr, FULL_SUPPORT: gl.constexpr, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PREFETCH: gl.constexpr, IDX: gl.constexpr):
    """One compute warpgroup: dK and dV of key rows row_k + IDX * BLOCK_N, BLOCK_N of them, over every query tile
    of the shared Q/dO ring. Works on transposed tiles (keys x queries), so dS^T and P^T are matmul operands
    straight from registers."""
    WARPS: gl.constexpr = 4
    dtype: gl.constexpr = k_smem.dtype
    st_layout: gl.constexpr = wgmma_layout(WARPS, BLOCK_M)  # (N keys, M queries)
    acc_layout: gl.constexpr = wgmma_layout(WARPS, HEAD_DIM)  # (N, D)
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    k_buf = k_smem.index(IDX)
    v_buf = v_smem.index(IDX)
    cols_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, st_layout))
    st_zero = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout)
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, acc_layout)
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, acc_layout)
    lse_row = Lse + bh * L_PAD + cols_m
    delta_row = Delta + bh * L_PAD + cols_m
    lse = gl.load(lse_row)  # (M,) base 2, +inf past L
    delta = gl.load(delta_row)  # (M,)
    mbarrier.wait(in_bar.index(IDX), 0)
    for j in range(n_tiles):
        slot = j % STAGES
        # PREFETCH 1: the next tile's lse2 a whole iteration ahead of its use (the last tile re-reads); 2: and delta
        nxt = gl.minimum(j + 1, n_tiles - 1) * BLOCK_M
        if PREFETCH >= 1:
            lse_next = gl.load(lse_row + nxt)
        else:
            lse = gl.load(lse_row + j * BLOCK_M)
        if PREFETCH >= 2:
            delta_next = gl.load(delta_row + nxt)
        else:
            delta = gl.load(delta_row + j * BLOCK_M)
        mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
        q_t = q_smem.index(slot)
        do_t = do_smem.index(slot)
        s_t = warpgroup_mma(k_buf, q_t.permute((1, 0)), st_zero, use_acc=False)  # (N, M) = K Q^T
        p_t = gl.exp2(s_t * qk_scale - lse[None, :])
        dv = warpgroup_mma(gl.convert_layout(p_t.to(dtype), op_layout), do_t, dv)  # += P^T dO
        dp_t = warpgroup_mma(v_buf, do_t.permute((1, 0)), st_zero, use_acc=False)  # (N, M) = V dO^T
        ds_t = p_t * (dp_t - delta[None, :])
        dk = warpgroup_mma(gl.convert_layout(ds_t.to(dtype), op_layout), q_t, dk)  # += dS^T Q
        mbarrier.arrive(empty.index(slot))  # all four matmuls of this tile are done: its buffers go back
        if PREFETCH >= 1:
            lse = lse_next
        if PREFETCH >= 2:
            delta = delta_next
    dk = dk * sm_scale
    rows = row_k + IDX * BLOCK_N
    if not FULL_SUPPORT:  # keep each key's top-k features (its packed ids), zero the rest
        keys = (rows + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, acc_layout))).to(gl.int64)
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
        keep = cols[None, :] < 0
        for t in gl.static_range(TOPK):
            ids = gl.load(Kidx + keys * TOPK + t).to(gl.int32)
            keep = keep | (cols[None, :] == ids[:, None])
        dk = gl.where(keep, dk, 0.0)
    k_buf.store(dk.to(dtype))  # K's and V's buffers are free: every matmul has completed
    v_buf.store(dv.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(dk_desc, [rows, 0], k_buf)
    tma.async_copy_shared_to_global(dv_desc, [rows, 0], v_buf)
    tma.store_wait(pendings=0)


@gluon.jit
def _gluon_dkdv_kernel(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, Lse, Delta, Kidx, L, L_PAD,
                       qk_scale, sm_scale,
                       HEAD_DIM: gl.constexpr, TOPK: gl.constexpr, FULL_SUPPORT: gl.constexpr,
                       BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PREFETCH: gl.constexpr,
                       CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
    gl.static_assert(num_warps == 4, "the default partition is one compute warpgroup")
    bh = gl.program_id(1)
    row_k = bh * L + gl.program_id(0) * (WARPGROUPS * BLOCK_N)  # first key row of this program, (B*H*L, D) views
    n_tiles = L // BLOCK_M

    k_smem, v_smem, q_smem, do_smem, in_bar, ready, empty = _resident_tiles_and_ring(
        k_desc, v_desc, q_desc, do_desc, row_k, HEAD_DIM, BLOCK_N, BLOCK_M, STAGES, WARPGROUPS)

    gl.warp_specialize([
        (_dkdv_consumer, (k_smem, v_smem, q_smem, do_smem, in_bar, ready, empty, dk_desc, dv_desc, Lse, Delta,
                          Kidx, bh, row_k, n_tiles, L_PAD, qk_scale, sm_scale,
                          HEAD_DIM, TOPK, FULL_SUPPORT, BLOCK_M, BLOCK_N, STAGES, PREFETCH, 0)),
        (_dkdv_consumer, (k_smem, v_smem, q_smem, do_smem, in_bar, ready, empty, dk_desc, dv_desc, Lse, Delta,
                          Kidx, bh, row_k, n_tiles, L_PAD, qk_scale, sm_scale,
                          HEAD_DIM, TOPK, FULL_SUPPORT, BLOCK_M, BLOCK_N, STAGES, PREFETCH, 1)),
        (_load_partition, (q_desc, do_desc, q_smem, do_smem, ready, empty, bh * L, n_tiles, BLOCK_M, STAGES)),
    ], [4, 1], [CONSUMER_REGS, 24])


def gluon_dkdv(qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, lse_pad: torch.Tensor,
               delta: torch.Tensor, k_idx: torch.Tensor, topk_k: int, block_m: int = 64, block_n: int = 64,
               stages: int = 3, maxnreg: int = 168, consumer_regs: int = 240,
               prefetch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """dK (masked to k's top-k support) and dV, each (B*H, L, D), of the FlashSFA backward; arguments as
    ``gluon_dq``'s, with k's packed ids (B*H*L, topk_k). ``block_n`` keys per compute warpgroup, ``block_m``
    queries per tile of the Q/dO ring; ``prefetch`` 1 loads each tile's lse2 one iteration early, 2 its delta too."""
    check_launch("gluon_dkdv", (qd, kd, v, dout), WARPGROUPS.value,
                 {"2*BLOCK_N": WARPGROUPS.value * block_n, "BLOCK_M": block_m})
    batch_heads, length, head_dim = qd.shape
    dk, dv = torch.empty_like(kd), torch.empty_like(v)
    grid = (length // (WARPGROUPS.value * block_n), batch_heads)
    _gluon_dkdv_kernel[grid](nvmma_descriptor(qd, block_m), nvmma_descriptor(kd, block_n),
                             nvmma_descriptor(v, block_n), nvmma_descriptor(dout, block_m),
                             nvmma_descriptor(dk, block_n), nvmma_descriptor(dv, block_n), lse_pad, delta, k_idx,
                             length, lse_pad.shape[1], LOG2E / math.sqrt(head_dim), 1.0 / math.sqrt(head_dim),
                             HEAD_DIM=head_dim, TOPK=topk_k, FULL_SUPPORT=topk_k == head_dim, BLOCK_M=block_m,
                             BLOCK_N=block_n, STAGES=stages, PREFETCH=int(prefetch),
                             CONSUMER_REGS=consumer_regs, num_warps=4, maxnreg=maxnreg)
    return dk, dv
