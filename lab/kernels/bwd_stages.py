"""Stage ablations of the FlashSFA backward kernels: where their time goes (benchmark use only).

Each kernel is the loop of ``flash_sfa_bwd``'s kernel (TMA loads, the same
dots) without padding or support masks (L a multiple of the blocks), with
stages taken out cumulatively so that differences of times are stage costs:

    dK/dV (``dkdv``)                      dQ (``dq``)
    1 scores: Q.K^T, exp2                 1 scores: Q.K^T, exp2
    2 + dV += P^T dO                      2 + dP = dO V^T, dS
    3 + dP = dO V^T, dS                   3 + dQ += dS K (the whole kernel)
    4 + dK += dS^T Q (the whole kernel)   4 the whole kernel without exp2
    5 the whole kernel without exp2
    6 the whole kernel with masked lse / delta loads (the real one's, then)
    7 the whole kernel with delta loaded before Q.K^T (the real one's, then)

A stage whose last matmul is cut keeps its input alive through a row sum
(one (N,) or (M,) fp32 vector), so the compiler cannot drop it. Stage 4 of
dK/dV and stage 3 of dQ compute what the real kernels compute before their
support masks (tested). lse2 and delta come by unmasked pointer loads from
(B*H, L) rows here; the real dK/dV kernel, changed after these stages were
measured, reads them by TMA from padded rows (6.50 ms against this file's
7.24 ms whole loop). Measured numbers: ``flash_sfa_bwd``'s docstring and
results/kernels/NOTES.md.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lra_sfa.kernels.sfa.triton_bwd import set_bwd_block_shapes
from lra_sfa.kernels.sfa.triton_fwd import LOG2E, dot

DKDV_STAGES = {"scores": 1, "+dV": 2, "+dP,dS": 3, "whole": 4, "whole, no exp2": 5,
               "whole, masked lse/delta loads": 6, "whole, delta loaded first": 7}
DQ_STAGES = {"scores": 1, "+dP,dS": 2, "whole": 3, "whole, no exp2": 4}


@triton.jit
def _dkdv_stages_kernel(Q_desc, K_desc, V_desc, DO_desc, DK_desc, DV_desc, Lse, Delta, L, qk_scale, sm_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                        STAGE: tl.constexpr):
    bh = tl.program_id(1)
    start_n = tl.program_id(0) * BLOCK_N
    row0 = bh.to(tl.int64) * L
    k = K_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    v = V_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    alive = tl.zeros([BLOCK_N], dtype=tl.float32)  # row sums that keep a cut stage's input live
    for start_m in tl.range(0, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = Q_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
        do = DO_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
        if STAGE == 6:  # masked loads (rows past L), as the real kernel had them before the padding
            m_ok = offs_m < L
            lse = tl.load(Lse + row0 + offs_m, mask=m_ok, other=float("inf"))
            dlt0 = tl.load(Delta + row0 + offs_m, mask=m_ok, other=0.0)
        else:
            lse = tl.load(Lse + row0 + offs_m)
            dlt0 = tl.load(Delta + row0 + offs_m)
        qk_t = dot(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
        if STAGE == 5:
            p_t = qk_t * qk_scale - lse[None, :]
        else:
            p_t = tl.math.exp2(qk_t * qk_scale - lse[None, :])
        if STAGE == 1:
            alive += tl.sum(p_t, 1)
        else:
            dv = dot(p_t.to(do.dtype), do, dv, IEEE)
        if STAGE >= 3:
            if STAGE >= 6:  # delta loaded before Q.K^T, as the real kernel did then
                dlt = dlt0
            else:
                dlt = tl.load(Delta + row0 + offs_m)
            dp_t = dot(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
            ds_t = p_t * (dp_t - dlt[None, :])
            if STAGE == 3:
                alive += tl.sum(ds_t, 1)
            else:
                dk = dot(ds_t.to(q.dtype), q, dk, IEEE)
    dk = dk * sm_scale + alive[:, None]
    DK_desc.store([bh, start_n, 0], dk.to(DK_desc.dtype).reshape([1, BLOCK_N, HEAD_DIM]))
    DV_desc.store([bh, start_n, 0], dv.to(DV_desc.dtype).reshape([1, BLOCK_N, HEAD_DIM]))


@triton.jit
def _dq_stages_kernel(Q_desc, K_desc, V_desc, DO_desc, DQ_desc, Lse, Delta, L, qk_scale, sm_scale,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                      STAGE: tl.constexpr):
    bh = tl.program_id(1)
    start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row0 = bh.to(tl.int64) * L
    q = Q_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    do = DO_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    lse = tl.load(Lse + row0 + offs_m)
    dlt = tl.load(Delta + row0 + offs_m)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    alive = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in tl.range(0, L, BLOCK_N):
        k = K_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
        qk = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
        if STAGE == 4:
            p = qk * qk_scale - lse[:, None]
        else:
            p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if STAGE == 1:
            alive += tl.sum(p, 1)
        else:
            v = V_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
            dp = dot(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
            ds = p * (dp - dlt[:, None])
            if STAGE == 2:
                alive += tl.sum(ds, 1)
            else:
                dq = dot(ds.to(k.dtype), k, dq, IEEE)
    dq = dq * sm_scale + alive[:, None]
    DQ_desc.store([bh, start_m, 0], dq.to(DQ_desc.dtype).reshape([1, BLOCK_M, HEAD_DIM]))


def bwd_stage_runner(kernel: str, stage: str, qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor,
                     dout: torch.Tensor, lse2: torch.Tensor, delta: torch.Tensor, block_m: int, block_n: int,
                     warps: int, stages: int):
    """A no-argument callable running ``kernel`` ('dkdv' or 'dq') cut at ``stage`` (DKDV_STAGES / DQ_STAGES)
    on (B*H, L, D) codes qd, kd, dense v and dout, lse2 (B*H, L) base 2 and delta (B*H, L); it returns the
    kernel's outputs ((dk, dv) or (dq,))."""
    from lra_sfa.kernels.sfa.launcher import tile_descriptor

    table = {"dkdv": (DKDV_STAGES, _dkdv_stages_kernel, block_n), "dq": (DQ_STAGES, _dq_stages_kernel, block_m)}
    if kernel not in table or stage not in table[kernel][0]:
        raise ValueError(f"bwd_stage_runner: unknown kernel/stage {kernel!r}/{stage!r}; kernels {tuple(table)}, "
                         f"stages {tuple(DKDV_STAGES)} (dkdv) or {tuple(DQ_STAGES)} (dq)")
    stage_ids, jit_fn, grid_block = table[kernel]
    batch_heads, length, head_dim = qd.shape
    if length % block_m or length % block_n:
        raise ValueError(f"bwd_stage_runner: L={length} must be a multiple of BLOCK_M={block_m} and "
                         f"BLOCK_N={block_n}")
    outs = (torch.empty_like(kd), torch.empty_like(v)) if kernel == "dkdv" else (torch.empty_like(qd),)
    names = ("DK_desc", "DV_desc") if kernel == "dkdv" else ("DQ_desc",)
    args = dict(Q_desc=tile_descriptor(qd, 16), K_desc=tile_descriptor(kd, 16), V_desc=tile_descriptor(v, 16),
                DO_desc=tile_descriptor(dout, 16), Lse=lse2, Delta=delta, L=length,
                qk_scale=LOG2E / math.sqrt(head_dim), sm_scale=1.0 / math.sqrt(head_dim), HEAD_DIM=head_dim,
                BLOCK_M=block_m, BLOCK_N=block_n, IEEE=qd.dtype == torch.float32, STAGE=stage_ids[stage],
                **{name: tile_descriptor(t, 16) for name, t in zip(names, outs)})
    set_bwd_block_shapes(args)
    grid = (length // grid_block, batch_heads)

    def run():
        jit_fn[grid](**args, num_warps=warps, num_stages=stages)
        return outs
    return run
