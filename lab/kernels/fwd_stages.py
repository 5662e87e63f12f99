"""Stage ablations of the FlashSFA forward's bounded loop: where its time goes (benchmark use only).

The kernel is the loop of ``flash_sfa_fwd``'s BOUNDED path (TMA loads, a
fixed per-row offset from ``score_bound``, one row sum per tile, no running
max) without padding, fallback or partial tiles (L a multiple of the
blocks), with stages taken out so that differences of times are stage
costs:

    1 scores            K load, Q.K^T; a row sum of the raw scores
    2 + exp2            p = exp2(s * scale - offset); the row sum of p
    3 whole             + V load, O += P V (the shipped loop)
    4 whole, no exp2    3 with p = s * scale - offset (one FMA instead of exp2)
    5 whole, no Q.K^T   3 with the first key tile's scores for every tile: no K
                        loads, no Q.K^T in the loop (the per-row offset moves
                        by 1e-9 per tile, so exp2 stays in the loop)
    6 P.V only          5 without exp2: the V loads and the P V matmul
    and ``scores, q in registers`` / ``whole, q in registers``: 1 and 3 with
    q passed through a multiply by a runtime 1, so that Q.K^T reads its A
    operand from registers instead of shared memory (the PTX of the real
    kernel has shared-memory A on the codes path, register A on the
    fused-top-k path).

A cut stage keeps its input alive through the (M,) row sum that the whole
loop needs anyway (stored as lse2), so the compiler cannot drop it. Stage 3
computes what the real kernel's bounded path computes (tested). Measured
numbers: ``flash_sfa_fwd``'s docstring and results/kernels/NOTES.md.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lra_sfa.kernels.sfa.triton_fwd import LOG2E, dot, score_bound, set_block_shapes

# name: (loop stage, q in registers)
FWD_STAGES = {"scores": (1, False), "+exp2": (2, False), "whole": (3, False), "whole, no exp2": (4, False),
              "whole, no Q.K^T": (5, False), "P.V only": (6, False), "scores, q in registers": (1, True),
              "whole, q in registers": (3, True)}


@triton.jit
def _fwd_stages_kernel(Q_desc, K_desc, V_desc, O_desc, Lse, KBound, L, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                       STAGE: tl.constexpr, REG_Q: tl.constexpr):
    bh = tl.program_id(1)
    start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = Q_desc.load([bh, start_m, 0]).reshape([BLOCK_M, HEAD_DIM])
    offset = score_bound(q, KBound, bh, qk_scale, HEAD_DIM)  # (M,) as the real kernel's m_i
    if REG_Q:  # a computed q: the compiler keeps it in registers for wgmma
        q = (q.to(tl.float32) * (qk_scale / qk_scale)).to(q.dtype)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if STAGE >= 5:  # the first key tile's scores stand in for every tile's (no K loads, no Q.K^T in the loop)
        k0 = K_desc.load([bh, 0, 0]).reshape([BLOCK_N, HEAD_DIM])
        qk0 = dot(q, k0.T, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
    for start_n in tl.range(0, L, BLOCK_N):
        if STAGE >= 5:
            qk = qk0
            offset = offset + 1e-9  # one (M,) add per tile: keeps exp2 of the tile inside the loop
        else:
            k = K_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
            qk = dot(q, k.T, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
        if STAGE == 1:
            p = qk
        elif STAGE == 4 or STAGE == 6:
            p = qk * qk_scale - offset[:, None]
        else:
            p = tl.math.exp2(qk * qk_scale - offset[:, None])
        l_i += tl.sum(p, 1)
        if STAGE >= 3:
            v = V_desc.load([bh, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
            acc = dot(p.to(v.dtype), v, acc, IEEE)
    out = acc / l_i[:, None]
    tl.store(Lse + bh.to(tl.int64) * L + offs_m, offset + tl.math.log2(tl.abs(l_i)))  # raw sums may be < 0
    O_desc.store([bh, start_m, 0], out.to(O_desc.dtype).reshape([1, BLOCK_M, HEAD_DIM]))


def fwd_stage_runner(stage: str, qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor, block_m: int, block_n: int,
                     warps: int, stages: int):
    """A no-argument callable running the bounded forward loop cut at ``stage`` (FWD_STAGES) on (B*H, L, D)
    codes qd, kd and dense v; it returns (out (B*H, L, D), lse2 (B*H, L))."""
    from lra_sfa.kernels.sfa.launcher import key_code_range, tile_descriptor

    if stage not in FWD_STAGES:
        raise ValueError(f"fwd_stage_runner: unknown stage {stage!r}; use one of {tuple(FWD_STAGES)}")
    batch_heads, length, head_dim = qd.shape
    if length % block_m or length % block_n:
        raise ValueError(f"fwd_stage_runner: L={length} must be a multiple of BLOCK_M={block_m} and "
                         f"BLOCK_N={block_n}")
    out = torch.empty_like(v)
    lse2 = torch.empty(batch_heads, length, dtype=torch.float32, device=qd.device)
    args = dict(Q_desc=tile_descriptor(qd, 16), K_desc=tile_descriptor(kd, 16), V_desc=tile_descriptor(v, 16),
                O_desc=tile_descriptor(out, 16), Lse=lse2, KBound=key_code_range(kd), L=length,
                qk_scale=LOG2E / math.sqrt(head_dim), HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
                IEEE=qd.dtype == torch.float32, STAGE=FWD_STAGES[stage][0], REG_Q=FWD_STAGES[stage][1])
    set_block_shapes(args)
    grid = (length // block_m, batch_heads)

    def run():
        _fwd_stages_kernel[grid](**args, num_warps=warps, num_stages=stages)
        return out, lse2
    return run
