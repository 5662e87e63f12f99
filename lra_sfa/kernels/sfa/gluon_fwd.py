"""FlashSFA forward for Hopper in Gluon: the bounded loop, warp-specialised.

What it computes
    The same as ``triton_fwd``'s BOUNDED path: per query block, a fixed
    per-row offset (``score_bound``: an upper bound of the row's scaled scores
    from the key codes' per-feature range), then over all key tiles S = Q~K~^T
    on tensor cores, p = 2^(S * scale - offset), l += rowsum(p), O += P V; no
    running max, no rescaling. A block whose bound sat 64+ binades above some
    row's largest score is redone with the online softmax (``_online_rows``),
    as in the Triton kernel. Writes O and lse2.

How
    Gluon (Triton's explicit dialect) with warp specialisation. One producer
    warp (24 registers) streams K/V tiles by TMA into a ring of STAGES
    buffers (``ready`` / ``empty`` mbarriers). CONSUMERS compute warpgroups
    (1 or 2, each a partition of 4 warps with its own 64 query rows) take
    every tile from that ring; ``empty`` counts one arrival per warpgroup,
    so two warpgroups share each K/V tile. Each warpgroup computes its rows'
    bound, runs the loop, redoes its rows online if needed (after every
    warpgroup is through the ring, in ring slot IDX), and writes O through
    its Q buffer by TMA. With TOPK_Q > 0 (the forward-only path) it first
    keeps each row's TOPK_Q largest |q| itself, as ``topk_pack`` would.
    Launches (``dispatch.gluon_config``): two warpgroups over 128-key tiles
    (2 stages, 240 registers each by ``setmaxnreg`` under ``maxnreg`` 168)
    where L is a multiple of 128, else one over 64-key tiles (3 stages,
    ``maxnreg`` 128: two programs per SM).
    Every barrier the kernel allocates is used: an initialised barrier that
    no partition uses is dead to the allocator, which gave its bytes to
    scratch (a race seen on the H200; PTX wants mbarrier.inval first).

Why
    The Triton forward cannot overlap one warpgroup's softmax with another's
    matmuls; a producer warp that owns the TMA loads and compute warpgroups
    that share its ring bring the forward to cuDNN's time at d = 128. FA3's
    ping-pong scheduling and intra-warpgroup overlap were tried here and
    lost (results/kernels/NOTES.md).

Limits (``dispatch``; everything else runs the Triton kernel): CUDA sm_90,
    bf16, head_dim 128 (64 compiles and runs but is not faster than
    the Triton kernel, which keeps that shape), L a multiple of 64, no
    padding mask. fp16 compiles too, but its range cannot hold the weights
    of a row whose bound is loose, so dispatch runs fp16 online in Triton.
    Gluon has no CPU interpreter, so CI cannot run this file;
    ``pytest -m gpu tests/test_kernels_gpu.py`` checks it on the GPU against
    float64 (shapes that take each launch, one with a loose bound).
"""

from __future__ import annotations

import math

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from lra_sfa.kernels.sfa.tiles import check_key_range, key_code_range

LOG2E = 1.4426950408889634
GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}
BOUND_MIN_SUM = gl.constexpr(2.0 ** -64)  # as triton_fwd's: below it a row's bound was too loose


@gluon.constexpr_function
def wgmma_layout(warps, n):
    """The accumulator layout of an (M, n) warpgroup MMA over ``warps`` warps stacked along M."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps, 1], instr_shape=[16, n, 16])


@gluon.jit
def _load_partition(k_desc, v_desc, k_smem, v_smem, ready, empty, row_k, n_tiles,
                    BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    for j in range(n_tiles):
        slot = j % STAGES
        mbarrier.wait(empty.index(slot), ((j // STAGES) & 1) ^ 1)  # fresh barriers pass phase 1 at once
        mbarrier.expect(ready.index(slot), 2 * k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [row_k + j * BLOCK_N, 0], ready.index(slot), k_smem.index(slot))
        tma.async_copy_global_to_shared(v_desc, [row_k + j * BLOCK_N, 0], ready.index(slot), v_smem.index(slot))


@gluon.jit
def _query_codes(q_buf, KBound, bh, qk_scale, TOPK_Q: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                 WARPS: gl.constexpr):
    """Per query row of q_buf (M, D) in shared memory: an upper bound of its scaled scores against every key,
    sum_d max(q_d * kmax_d, q_d * kmin_d) * scale, from the key codes' per-feature range (KBound).

    With TOPK_Q > 0, q_buf holds dense q: first each row keeps its TOPK_Q largest |q| (the keys and rounds of
    ``topk_pack.entry_keys`` / ``take_largest``, so the same support, ties to the lowest index) and the codes go
    back into q_buf for the matmuls."""
    blocked: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8],
                                             warps_per_cta=[WARPS, 1], order=[1, 0])
    q = q_buf.load(blocked)  # (M, D)
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, blocked))
    if TOPK_Q > 0:
        bits = q.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        key = ((bits & 0x7FFF) << 16) | ((HEAD_DIM - 1 - cols[None, :]) << 8) | (bits >> 15)
        for _ in gl.static_range(TOPK_Q):
            best = gl.max(key, axis=1)
            key = gl.where(key == best[:, None], -1, key)
        q = gl.where(key < 0, q, gl.zeros_like(q))
        q_buf.store(q)
        fence_async_shared()  # the codes are read next by the warpgroup's matmuls (the async proxy)
    qf = q.to(gl.float32)
    kmax = gl.load(KBound + bh * 2 * HEAD_DIM + cols)
    kmin = gl.load(KBound + bh * 2 * HEAD_DIM + HEAD_DIM + cols)
    bound = gl.sum(gl.maximum(qf * kmax[None, :], qf * kmin[None, :]), axis=1) * qk_scale
    return gl.convert_layout(bound, gl.SliceLayout(1, wgmma_layout(WARPS, BLOCK_N)))


@gluon.jit
def _bounded_loop(q_buf, k_smem, v_smem, ready, empty, offset, n_tiles, qk_scale,
                  HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                  WARPS: gl.constexpr):
    """The bounded loop: per K/V tile, S = Q K^T, p = 2^(S * scale - offset), l += rowsum(p), O += P V."""
    dtype: gl.constexpr = q_buf.dtype
    s_layout: gl.constexpr = wgmma_layout(WARPS, BLOCK_N)
    o_layout: gl.constexpr = wgmma_layout(WARPS, HEAD_DIM)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    for j in range(n_tiles):
        slot = j % STAGES
        mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
        s = warpgroup_mma(q_buf, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False)
        p = gl.exp2(s * qk_scale - offset[:, None])
        l_i += gl.sum(p, axis=1)
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_smem.index(slot), acc)
        mbarrier.arrive(empty.index(slot))  # both matmuls of this tile are done: its buffers go back
    return acc, l_i


@gluon.jit
def _online_rows(q_buf, k_buf, v_buf, bar, k_desc, v_desc, row_k, n_tiles, qk_scale,
                 HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, WARPS: gl.constexpr):
    """The fallback: the classic online softmax over all key tiles, one synchronous TMA load per tile into
    k_buf / v_buf. Returns acc, l_i, m_i (base 2)."""
    dtype: gl.constexpr = q_buf.dtype
    s_layout: gl.constexpr = wgmma_layout(WARPS, BLOCK_N)
    o_layout: gl.constexpr = wgmma_layout(WARPS, HEAD_DIM)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    for j in range(n_tiles):
        mbarrier.expect(bar, 2 * k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [row_k + j * BLOCK_N, 0], bar, k_buf)
        tma.async_copy_global_to_shared(v_desc, [row_k + j * BLOCK_N, 0], bar, v_buf)
        mbarrier.wait(bar, j & 1)
        s = warpgroup_mma(q_buf, k_buf.permute((1, 0)), s_zero, use_acc=False) * qk_scale
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        p = gl.exp2(s - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_buf, acc)
        m_i = m_new
    return acc, l_i, m_i


@gluon.jit
def _consumer_partition(q_smem, k_smem, v_smem, q_bar, ready, empty, done, fb_bar, k_desc, v_desc, o_desc,
                        KBound, Lse, bh, row_q, row_k, n_tiles, qk_scale,
                        TOPK_Q: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                        STAGES: gl.constexpr, IDX: gl.constexpr):
    """One compute warpgroup: query rows row_q + IDX * BLOCK_M, BLOCK_M of them, against the shared K/V ring;
    writes their O and lse2."""
    WARPS: gl.constexpr = 4
    dtype: gl.constexpr = q_smem.dtype
    q_buf = q_smem.index(IDX)
    rows = row_q + IDX * BLOCK_M
    mbarrier.wait(q_bar.index(IDX), 0)
    offset = _query_codes(q_buf, KBound, bh, qk_scale, TOPK_Q, HEAD_DIM, BLOCK_N, WARPS)
    acc, l_i = _bounded_loop(q_buf, k_smem, v_smem, ready, empty, offset, n_tiles, qk_scale,
                             HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, WARPS)
    mbarrier.arrive(done)  # this warpgroup is through the ring
    if gl.min(l_i, axis=0) < BOUND_MIN_SUM:  # the bound sat far above some row's true max: redo online
        mbarrier.wait(done, 0)  # every compute warpgroup is through the ring, so its slot IDX is free
        acc, l_i, offset = _online_rows(q_buf, k_smem.index(IDX), v_smem.index(IDX), fb_bar.index(IDX), k_desc,
                                        v_desc, row_k, n_tiles, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, WARPS)
    o_layout: gl.constexpr = wgmma_layout(WARPS, HEAD_DIM)
    out = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
    offs = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, wgmma_layout(WARPS, BLOCK_N)))
    gl.store(Lse + rows + offs, offset + gl.log2(l_i))
    q_buf.store(out.to(dtype))  # Q's buffer is free: every Q.K^T has completed
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [rows, 0], q_buf)
    tma.store_wait(pendings=0)


@gluon.jit
def _gluon_ws_fwd_kernel(q_desc, k_desc, v_desc, o_desc, KBound, Lse, L, qk_scale,
                         TOPK_Q: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                         STAGES: gl.constexpr, CONSUMERS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                         num_warps: gl.constexpr):
    gl.static_assert(num_warps == 4, "the default partition is one compute warpgroup")
    gl.static_assert(STAGES >= CONSUMERS, "the online fallback of compute warpgroup i reuses ring slot i")
    dtype: gl.constexpr = q_desc.dtype
    bh = gl.program_id(1)
    row_q = bh * L + gl.program_id(0) * (CONSUMERS * BLOCK_M)  # rows of the (B*H*L, D) views
    row_k = bh * L
    n_tiles = L // BLOCK_N

    q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    fb_bar = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for c in gl.static_range(CONSUMERS):
        mbarrier.init(q_bar.index(c), count=1)
        mbarrier.init(fb_bar.index(c), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=CONSUMERS)  # a slot goes back when every compute warpgroup is done
    mbarrier.init(done, count=CONSUMERS)
    for c in gl.static_range(CONSUMERS):
        mbarrier.expect(q_bar.index(c), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [row_q + c * BLOCK_M, 0], q_bar.index(c), q_smem.index(c))

    if CONSUMERS == 1:
        gl.warp_specialize([
            (_consumer_partition, (q_smem, k_smem, v_smem, q_bar, ready, empty, done, fb_bar, k_desc, v_desc, o_desc,
                                   KBound, Lse, bh, row_q, row_k, n_tiles, qk_scale,
                                   TOPK_Q, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 0)),
            (_load_partition, (k_desc, v_desc, k_smem, v_smem, ready, empty, row_k, n_tiles, BLOCK_N, STAGES)),
        ], [1], [24])
    else:
        gl.warp_specialize([
            (_consumer_partition, (q_smem, k_smem, v_smem, q_bar, ready, empty, done, fb_bar, k_desc, v_desc, o_desc,
                                   KBound, Lse, bh, row_q, row_k, n_tiles, qk_scale,
                                   TOPK_Q, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 0)),
            (_consumer_partition, (q_smem, k_smem, v_smem, q_bar, ready, empty, done, fb_bar, k_desc, v_desc, o_desc,
                                   KBound, Lse, bh, row_q, row_k, n_tiles, qk_scale,
                                   TOPK_Q, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 1)),
            (_load_partition, (k_desc, v_desc, k_smem, v_smem, ready, empty, row_k, n_tiles, BLOCK_N, STAGES)),
        ], [4, 1], [CONSUMER_REGS, 24])


def nvmma_descriptor(x: torch.Tensor, rows: int) -> TensorDescriptor:
    """TMA descriptor over a 16-bit (B*H, L, D) tensor viewed as (B*H*L, D), ``rows`` rows per box, in the NVMMA
    shared layout that the warpgroup matmuls read."""
    flat = x.reshape(-1, x.shape[-1])
    layout = gl.NVMMASharedLayout.get_default_for([rows, x.shape[-1]], GL_DTYPES[x.dtype])
    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [rows, x.shape[-1]], layout)


def check_launch(name: str, tensors: tuple, consumers: int, multiples: dict[str, int]) -> None:
    """Raise ValueError naming the value unless the (B*H, L, D) tensors share one 16-bit dtype, D is 64 or 128,
    consumers is 1 or 2 and L is a multiple of every value of ``multiples`` (keyed by what it is)."""
    dtypes = [t.dtype for t in tensors]
    if dtypes[0] not in GL_DTYPES or len(set(dtypes)) != 1:
        raise ValueError(f"{name}: needs one 16-bit dtype; got {dtypes}")
    length, head_dim = tensors[0].shape[-2:]
    if head_dim not in (64, 128) or consumers not in (1, 2) or any(length % m for m in multiples.values()):
        wanted = " and ".join(f"{label}={m}" for label, m in multiples.items())
        raise ValueError(f"{name}: head_dim={head_dim} must be 64 or 128, consumers={consumers} 1 or 2, "
                         f"L={length} a multiple of {wanted}")


def gluon_ws_forward(qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor, block_m: int = 64, block_n: int = 64,
                     stages: int = 3, consumers: int = 1, maxnreg: int = 128, consumer_regs: int = 232,
                     topk_q: int = 0, key_range: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounded FlashSFA forward on (B*H, L, D) codes qd, kd and dense v: returns out (B*H, L, D), lse2 (B*H, L).

    Each program runs ``consumers`` compute warpgroups (1 or 2) of ``block_m`` query rows each over one shared
    ring of ``stages`` K/V tiles of ``block_n`` keys; ``maxnreg`` caps the registers per thread at launch and
    ``consumer_regs`` is what the second compute warpgroup asks for (``setmaxnreg``). With ``topk_q`` > 0, qd is
    the dense q and the kernel keeps each row's ``topk_q`` largest entries itself (as ``topk_pack``).
    ``key_range`` (B*H, 2, D) fp32 is kd's per-feature max / min, the bound's input (``topk_pack(k, topk,
    key_range=True)``); when None it is computed from kd (``tiles.key_code_range``, a pass over kd)."""
    check_launch("gluon_ws_forward", (qd, kd, v), consumers,
                 {"consumers*BLOCK_M": consumers * block_m, "BLOCK_N": block_n})
    if stages < consumers:
        raise ValueError(f"gluon_ws_forward: stages={stages} must be >= consumers={consumers} (the online "
                         "fallback of warpgroup i reuses ring slot i)")
    if key_range is None:
        key_range = key_code_range(kd)
    check_key_range("gluon_ws_forward", key_range, kd)
    batch_heads, length, head_dim = qd.shape
    out = torch.empty_like(v)
    lse2 = torch.empty(batch_heads, length, dtype=torch.float32, device=qd.device)
    grid = (length // (consumers * block_m), batch_heads)
    _gluon_ws_fwd_kernel[grid](nvmma_descriptor(qd, block_m), nvmma_descriptor(kd, block_n),
                               nvmma_descriptor(v, block_n), nvmma_descriptor(out, block_m),
                               key_range, lse2, length, LOG2E / math.sqrt(head_dim),
                               TOPK_Q=topk_q if topk_q < head_dim else 0,
                               HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                               CONSUMERS=consumers, CONSUMER_REGS=consumer_regs, num_warps=4, maxnreg=maxnreg)
    return out, lse2
