"""Triton kernels for wide-code SFA: bucket-at-a-time candidate scoring and aggregation.

Computes exactly what ``reference.wide_dense_reference`` defines (overlap or
exact mode, optional cap, padding, self-attending fallback), forward and
backward, from the posting lists of ``plan.build_plan``.

Design (the split-K flash-decoding layout the issue suggests):
* One program per work item = (bucket (g, f), tile of BLOCK_M query entries
  whose code holds f). It walks the bucket's key list (or, with a cap, the
  union of its queries' windows) in tiles of BLOCK_N keys, gathers their codes
  and V rows, scores the BLOCK_M x BLOCK_N block exactly from the two codes
  (k x k index comparison on CUDA cores), keeps a pair only in the bucket of
  its smallest shared feature (and inside the query's window), runs an online
  softmax and accumulates P.V with ``tl.dot`` on tensor cores.
* Each program writes a partial softmax state (m, l, acc) per query entry;
  PyTorch merges a query's k partial states (split-K merge). Exact mode keeps
  m >= 0, weights candidates by exp(s - m) - exp(-m) and adds the background
  of all real keys at score 0 in the merge.
* Backward: the same work items recompute P, accumulate dV with ``tl.dot`` and
  atomics, and scatter dS onto the code values of every shared feature
  (atomics on dq_val / dk_val). The exact-mode background and the fallback
  rows are handled in PyTorch.

Score loop (SCORE_DESIGNS): "compare" tests every (query slot, key slot) pair with a
compare, a product, a select, an add and the "shared below f" test; "select" (default) uses
that a code holds each feature once, so query slot t meets at most one key slot: a chain of
selects picks that slot's key value (NaN if none), and the product and the below-f test are
taken once per query slot.

Limits: indices int32 inside the kernel; v's head dim a power of two, zero-padded
to at least 16 by the launcher (the backward's dP = dO V^T is a ``tl.dot`` whose
inner dimension is that head dim, and tensor-core dots need 16; the padded
columns of the output are 0 and dropped, so nothing else changes); per-call partial states take
N * k * (dv + 3) floats, so groups are processed in chunks of about
``max_partial_bytes``. Scores are fp32; P.V uses the input dtype (bf16/fp16
on tensor cores, fp32 as IEEE fp32). Tests use 16 x 16 tiles under
TRITON_INTERPRET=1 (fp32 only: the interpreter's bf16 tl.dot returns garbage
with triton 3.6 + numpy 2.4; bf16 is checked on the GPU).

Launch: 16 x 16 tiles, 2 warps forward and 1 backward: buckets are small
(Poisson-sized) and small tiles waste less of each and keep the unrolled score
loop in registers without spills; it was the fastest launch at every bucket
size measured (results/kernels/sfa_wide.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from lra_sfa.kernels.wide.plan import WidePlan, build_plan, validate_codes

LOG2E = 1.4426950408889634
OVERLAP_INIT_VALUE = -1.0e30  # running max before any candidate (overlap mode)
OVERLAP_INIT = tl.constexpr(OVERLAP_INIT_VALUE)


@triton.jit
def _tile_setup(tile_bucket, tile_start, bucket_qptr, q_order, entry_lo, entry_hi, pid, D, K: tl.constexpr,
                BLOCK_M: tl.constexpr):
    bucket = tl.load(tile_bucket + pid)
    row = tl.load(tile_start + pid) + tl.arange(0, BLOCK_M)
    rmask = row < tl.load(bucket_qptr + bucket + 1)
    entry = tl.load(q_order + row, mask=rmask, other=0)
    lo = tl.load(entry_lo + entry, mask=rmask, other=0)
    hi = tl.load(entry_hi + entry, mask=rmask, other=0)
    return bucket % D, entry, entry // K, rmask, lo, hi


@triton.jit
def _block_scores(q_idx, q_val, k_idx, k_val, tok, ktok, feat, rmask, kmask, K: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Raw score sum_{shared f} qv * kv and whether a shared feature below ``feat`` exists."""
    score = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dup = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int1)
    for t in range(K):
        qi = tl.load(q_idx + tok * K + t, mask=rmask, other=-1)
        qv = tl.load(q_val + tok * K + t, mask=rmask, other=0.0).to(tl.float32)
        below = (qi < feat)[:, None]
        for u in tl.static_range(K):
            ki = tl.load(k_idx + ktok * K + u, mask=kmask, other=-2)
            kv = tl.load(k_val + ktok * K + u, mask=kmask, other=0.0).to(tl.float32)
            eq = qi[:, None] == ki[None, :]
            score += tl.where(eq, qv[:, None] * kv[None, :], 0.0)
            dup = dup | (eq & below)
    return score, dup


@triton.jit
def _block_scores_select(q_idx, q_val, k_idx, k_val, tok, ktok, feat, rmask, kmask, K: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """As ``_block_scores``, in two operations per (query slot, key slot) instead of six.

    A code holds each feature once, so query slot t meets at most one key slot: a chain of selects
    finds that slot's value (NaN where none matches) and the product and the "shared below
    ``feat``" test are taken once per query slot, not once per slot pair.
    """
    score = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dup = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int1)
    for t in tl.static_range(K):
        qi = tl.load(q_idx + tok * K + t, mask=rmask, other=-1)
        qv = tl.load(q_val + tok * K + t, mask=rmask, other=0.0).to(tl.float32)
        hit = tl.full((BLOCK_M, BLOCK_N), float("nan"), dtype=tl.float32)
        for u in tl.static_range(K):
            ki = tl.load(k_idx + ktok * K + u, mask=kmask, other=-2)
            kv = tl.load(k_val + ktok * K + u, mask=kmask, other=0.0).to(tl.float32)
            hit = tl.where(qi[:, None] == ki[None, :], kv[None, :], hit)
        matched = hit == hit  # False where no key slot matched (NaN)
        score += tl.where(matched, qv[:, None] * hit, 0.0)
        dup = dup | (matched & (qi < feat)[:, None])
    return score, dup


@triton.jit
def _key_tile(pos, last, lo, hi, key_tok, q_idx, q_val, k_idx, k_val, tok, feat, rmask, K: tl.constexpr,
              SELECT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One tile of a bucket's key list at positions ``pos``: key tokens, their mask, the raw scores and
    which pairs count (inside the query's window, counted in the bucket of their smallest shared feature)."""
    kmask = pos < last
    ktok = tl.load(key_tok + pos, mask=kmask, other=0)
    if SELECT:
        score, dup = _block_scores_select(q_idx, q_val, k_idx, k_val, tok, ktok, feat, rmask, kmask, K, BLOCK_M,
                                          BLOCK_N)
    else:
        score, dup = _block_scores(q_idx, q_val, k_idx, k_val, tok, ktok, feat, rmask, kmask, K, BLOCK_M, BLOCK_N)
    valid = (pos[None, :] >= lo[:, None]) & (pos[None, :] < hi[:, None]) & rmask[:, None] & (dup == 0)
    return ktok, kmask, score, valid


@triton.jit
def _wide_fwd_kernel(tile_bucket, tile_start, tile_lo, tile_hi, bucket_qptr, q_order, entry_lo, entry_hi, key_tok,
                     q_idx, q_val, k_idx, k_val, v, part_m, part_l, part_acc, part_cnt, scale2, D,
                     K: tl.constexpr, DV: tl.constexpr, EXACT: tl.constexpr, IEEE: tl.constexpr,
                     SELECT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    feat, entry, tok, rmask, lo, hi = _tile_setup(tile_bucket, tile_start, bucket_qptr, q_order, entry_lo,
                                                  entry_hi, pid, D, K, BLOCK_M)
    first = tl.load(tile_lo + pid)
    last = tl.load(tile_hi + pid)
    cols = tl.arange(0, DV)
    m_i = tl.full((BLOCK_M,), 0.0 if EXACT else OVERLAP_INIT, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    cnt = tl.zeros((BLOCK_M,), dtype=tl.int32)
    acc = tl.zeros((BLOCK_M, DV), dtype=tl.float32)
    start = first
    while start < last:  # a while loop: the interpreter cannot range() over loaded bounds
        pos = start + tl.arange(0, BLOCK_N)
        start += BLOCK_N
        ktok, kmask, score, valid = _key_tile(pos, last, lo, hi, key_tok, q_idx, q_val, k_idx, k_val, tok, feat,
                                              rmask, K, SELECT, BLOCK_M, BLOCK_N)
        s2 = tl.where(valid, score * scale2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s2 - m_new[:, None])
        if EXACT:
            p = tl.where(valid, p - tl.exp2(-m_new)[:, None], 0.0)
        vt = tl.load(v + ktok[:, None] * DV + cols[None, :], mask=kmask[:, None], other=0.0)
        if IEEE:
            pv = tl.dot(p, vt, input_precision="ieee")
        else:
            pv = tl.dot(p.to(vt.dtype), vt)
        acc = acc * alpha[:, None] + pv
        l_i = l_i * alpha + tl.sum(p, axis=1)
        cnt += tl.sum(valid.to(tl.int32), axis=1)
        m_i = m_new
    tl.store(part_m + entry, m_i, mask=rmask)
    tl.store(part_l + entry, l_i, mask=rmask)
    tl.store(part_cnt + entry, cnt, mask=rmask)
    tl.store(part_acc + entry.to(tl.int64)[:, None] * DV + cols[None, :], acc, mask=rmask[:, None])


@triton.jit
def _wide_bwd_kernel(tile_bucket, tile_start, tile_lo, tile_hi, bucket_qptr, q_order, entry_lo, entry_hi, key_tok,
                     q_idx, q_val, k_idx, k_val, v, dout, lse2, delta, dq_val, dk_val, dv, scale, D,
                     K: tl.constexpr, DV: tl.constexpr, EXACT: tl.constexpr, IEEE: tl.constexpr,
                     SELECT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    feat, entry, tok, rmask, lo, hi = _tile_setup(tile_bucket, tile_start, bucket_qptr, q_order, entry_lo,
                                                  entry_hi, pid, D, K, BLOCK_M)
    first = tl.load(tile_lo + pid)
    last = tl.load(tile_hi + pid)
    cols = tl.arange(0, DV)
    kcols = tl.arange(0, K)
    lse = tl.load(lse2 + tok, mask=rmask, other=float("inf"))
    dlt = tl.load(delta + tok, mask=rmask, other=0.0)
    do = tl.load(dout + tok[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
    dq_acc = tl.zeros((BLOCK_M, K), dtype=tl.float32)
    start = first
    while start < last:  # a while loop: the interpreter cannot range() over loaded bounds
        pos = start + tl.arange(0, BLOCK_N)
        start += BLOCK_N
        ktok, kmask, score, valid = _key_tile(pos, last, lo, hi, key_tok, q_idx, q_val, k_idx, k_val, tok, feat,
                                              rmask, K, SELECT, BLOCK_M, BLOCK_N)
        p = tl.where(valid, tl.exp2(score * (scale * 1.4426950408889634) - lse[:, None]), 0.0)
        pw = p
        if EXACT:
            pw = tl.where(valid, p - tl.exp2(-lse)[:, None], 0.0)
        vt = tl.load(v + ktok[:, None] * DV + cols[None, :], mask=kmask[:, None], other=0.0)
        if IEEE:
            dv_tile = tl.dot(tl.trans(pw), do, input_precision="ieee")
            dp = tl.dot(do, tl.trans(vt), input_precision="ieee")
        else:
            dv_tile = tl.dot(tl.trans(pw).to(do.dtype), do)
            dp = tl.dot(do, tl.trans(vt))
        tl.atomic_add(dv + ktok[:, None] * DV + cols[None, :], dv_tile, mask=kmask[:, None])
        ds = tl.where(valid, p * (dp - dlt[:, None]), 0.0) * scale
        dk_tile = tl.zeros((BLOCK_N, K), dtype=tl.float32)
        for t in range(K):
            qi = tl.load(q_idx + tok * K + t, mask=rmask, other=-1)
            qv = tl.load(q_val + tok * K + t, mask=rmask, other=0.0).to(tl.float32)
            dq_t = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for u in tl.static_range(K):
                ki = tl.load(k_idx + ktok * K + u, mask=kmask, other=-2)
                kv = tl.load(k_val + ktok * K + u, mask=kmask, other=0.0).to(tl.float32)
                c = tl.where(qi[:, None] == ki[None, :], ds, 0.0)
                dq_t += tl.sum(c * kv[None, :], axis=1)
                dk_tile += tl.where(kcols[None, :] == u, tl.sum(c * qv[:, None], axis=0)[:, None], 0.0)
            dq_acc += tl.where(kcols[None, :] == t, dq_t[:, None], 0.0)
        tl.atomic_add(dk_val + ktok[:, None] * K + kcols[None, :], dk_tile, mask=kmask[:, None])
    tl.atomic_add(dq_val + tok[:, None] * K + kcols[None, :], dq_acc, mask=rmask[:, None])


SCORE_DESIGNS = ("select", "compare")  # _block_scores_select, _block_scores


# Default launch (module docstring)
DEFAULT_BLOCKS = (16, 16)  # (BLOCK_M query entries, BLOCK_N keys)
MIN_DOT = 16  # the least inner dimension of a tensor-core tl.dot: v's head dim is padded to it
DEFAULT_WARPS = (2, 1)  # (forward, backward)


class Launch(NamedTuple):
    """How the kernels are launched (``wide_triton_attention``'s blocks, num_warps and scores)."""

    block_m: int
    block_n: int
    fwd_warps: int
    bwd_warps: int
    select: bool  # the "select" score loop (else "compare")


def _work_items(plan: WidePlan, q_bucket: torch.Tensor, block_m: int):
    """Work items (bucket, first row in q_order) over query entries grouped by bucket.

    Returns tile_bucket, tile_start, tile_lo, tile_hi (T,) and bucket_qptr (G * D + 1,) as int32, and q_order
    (N * K,): the query entries sorted by bucket, tile t taking rows tile_start[t] onwards of its bucket's
    run in q_order (at most ``block_m``; the kernels stop at bucket_qptr[bucket + 1]) and its queries' key
    ranges' union [tile_lo, tile_hi). A bucket whose list is empty gets no tile. Apart from the row pointers
    the kernels read (one count and one prefix sum over the G * D buckets), everything is computed over the
    runs of the query entries' buckets, which are few where D is wide and most buckets empty."""
    dev = q_bucket.device
    n_buckets = plan.groups * plan.num_features
    q_order = torch.argsort(q_bucket, stable=True)  # (N * K,)
    bucket_qptr = torch.zeros(n_buckets + 1, dtype=torch.long, device=dev)
    bucket_qptr[1:] = torch.cumsum(torch.bincount(q_bucket, minlength=n_buckets), 0)
    sorted_bucket = q_bucket[q_order]  # (N * K,) ascending: runs of equal buckets
    run_first = torch.ones_like(sorted_bucket, dtype=torch.bool)
    run_first[1:] = sorted_bucket[1:] != sorted_bucket[:-1]
    run_of_row = torch.cumsum(run_first, 0) - 1  # (N * K,) run index of each row of q_order
    run_start = torch.nonzero(run_first).squeeze(1)  # (R,) first row of each run
    run_size = torch.diff(run_start, append=run_start.new_tensor([q_order.numel()]))  # (R,) query entries
    run_has_keys = plan.list_len[q_order[run_start]] > 0  # (R,) one bucket, one list: any entry's length
    n_tiles = torch.where(run_has_keys, torch.div(run_size + block_m - 1, block_m, rounding_mode="floor"), 0)
    tile_run = torch.repeat_interleave(torch.arange(run_start.numel(), device=dev), n_tiles)  # (T,)
    tile_first = torch.cumsum(n_tiles, 0) - n_tiles  # (R,) first tile of each run
    within = torch.arange(tile_run.numel(), device=dev) - tile_first[tile_run]
    tile_bucket = sorted_bucket[run_start][tile_run]
    tile_start = run_start[tile_run] + within * block_m
    row_has_tile = n_tiles[run_of_row] > 0
    row_tile = tile_first[run_of_row] + torch.div(
        torch.arange(q_order.numel(), device=dev) - run_start[run_of_row], block_m, rounding_mode="floor")
    row_tile, rows = row_tile[row_has_tile], q_order[row_has_tile]
    n_items = tile_run.numel()
    big = torch.iinfo(torch.long).max
    tile_lo = torch.full((n_items,), big, device=dev).scatter_reduce(0, row_tile, plan.entry_lo[rows], "amin")
    tile_hi = torch.zeros(n_items, dtype=torch.long, device=dev).scatter_reduce(
        0, row_tile, plan.entry_hi[rows], "amax")
    as32 = (tile_bucket, tile_start, tile_lo, tile_hi, bucket_qptr)
    return (*(x.to(torch.int32) for x in as32), q_order.to(torch.int32))


class _WideTritonFunction(torch.autograd.Function):
    """Wide attention over one chunk of groups; q_val, k_val: (N, K); v: (N, dv)."""

    @staticmethod
    def forward(ctx, q_val, k_val, v, q_idx, k_idx, plan, items, real, scale, exact, launch, sink):
        N, K = q_val.shape
        DV, L = v.shape[1], plan.length
        tile_bucket, tile_start, tile_lo, tile_hi, bucket_qptr, q_order = items
        q_val, k_val, v = q_val.contiguous(), k_val.contiguous(), v.contiguous()
        part_m = torch.full((N * K,), 0.0 if exact else OVERLAP_INIT_VALUE, dtype=torch.float32, device=v.device)
        part_l = torch.zeros(N * K, dtype=torch.float32, device=v.device)
        part_acc = torch.zeros(N * K, DV, dtype=torch.float32, device=v.device)
        part_cnt = torch.zeros(N * K, dtype=torch.int32, device=v.device)
        ieee = v.dtype == torch.float32
        lo, hi, key_tok = plan.entry_lo.to(torch.int32), plan.entry_hi.to(torch.int32), plan.key_tok.to(torch.int32)
        if tile_bucket.numel():
            _wide_fwd_kernel[(tile_bucket.numel(),)](
                tile_bucket, tile_start, tile_lo, tile_hi, bucket_qptr, q_order, lo, hi, key_tok,
                q_idx, q_val, k_idx, k_val, v,
                part_m, part_l, part_acc, part_cnt, scale * LOG2E, plan.num_features,
                K=K, DV=DV, EXACT=exact, IEEE=ieee, SELECT=launch.select, BLOCK_M=launch.block_m,
                BLOCK_N=launch.block_n, num_warps=launch.fwd_warps)
        pm = part_m.view(N, K)  # (N, K) partial maxima, log2 units
        top = pm.max(dim=1).values
        weight = torch.exp2(pm - top[:, None])
        den = (weight * part_l.view(N, K)).sum(1)
        num = (weight[:, :, None] * part_acc.view(N, K, DV)).sum(1)  # (N, DV)
        group = torch.div(torch.arange(N, device=v.device), L, rounding_mode="floor")
        count = plan.key_count[group].to(torch.float32)
        if exact:
            sum_v = (v.float() * real[:, None]).view(-1, L, DV).sum(1)  # (G, DV)
            background = torch.exp2(-top)
            num = num + background[:, None] * sum_v[group]
            den = den + background * count
            has = count > 0
        else:
            has = part_cnt.view(N, K).sum(1) > 0
        out = torch.where(has[:, None], num / torch.where(has, den, 1.0)[:, None], v.float()).to(v.dtype)
        lse2 = torch.where(has, top + torch.log2(torch.where(has, den, 1.0)), float("inf"))
        ctx.save_for_backward(q_val, k_val, v, q_idx, k_idx, out, lse2, has, real, group, lo, hi, key_tok)
        ctx.meta = (plan, items, scale, exact, launch)
        sink["candidates"] = part_cnt.sum()
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_val, k_val, v, q_idx, k_idx, out, lse2, has, real, group, lo, hi, key_tok = ctx.saved_tensors
        plan, items, scale, exact, launch = ctx.meta
        N, K = q_val.shape
        DV = v.shape[1]
        tile_bucket, tile_start, tile_lo, tile_hi, bucket_qptr, q_order = items
        do = grad_out.contiguous().to(v.dtype)
        delta = (do.float() * out.float()).sum(1)  # (N,)
        dq = torch.zeros(N * K, dtype=torch.float32, device=v.device)
        dk = torch.zeros(N * K, dtype=torch.float32, device=v.device)
        dv = torch.zeros(N, DV, dtype=torch.float32, device=v.device)
        if tile_bucket.numel():
            _wide_bwd_kernel[(tile_bucket.numel(),)](
                tile_bucket, tile_start, tile_lo, tile_hi, bucket_qptr, q_order, lo, hi, key_tok,
                q_idx, q_val, k_idx, k_val, v,
                do, lse2, delta, dq, dk, dv, scale, plan.num_features,
                K=K, DV=DV, EXACT=exact, IEEE=v.dtype == torch.float32, SELECT=launch.select,
                BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, num_warps=launch.bwd_warps)
        dv = dv + torch.where(has[:, None], 0.0, do.float())
        if exact:
            weighted = torch.exp2(-lse2)[:, None] * do.float()  # (N, DV); 0 on fallback rows
            per_group = torch.zeros(plan.groups, DV, dtype=torch.float32, device=v.device)
            per_group.index_add_(0, group, weighted)
            dv = dv + per_group[group] * real[:, None]
        grads = (dq.view(N, K).to(q_val.dtype), dk.view(N, K).to(k_val.dtype), dv.to(v.dtype))
        return (*grads, None, None, None, None, None, None, None, None, None)


def wide_triton_attention(
    q_idx: torch.Tensor,
    q_val: torch.Tensor,
    k_idx: torch.Tensor,
    k_val: torch.Tensor,
    v: torch.Tensor,
    num_features: int,
    scale: float | None = None,
    mode: str = "overlap",
    cap: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    blocks: tuple[int, int] | None = None,
    num_warps: int | tuple[int, int] | None = None,
    scores: str = "select",
    max_partial_bytes: int = 2 << 30,
    causal: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Wide attention with the Triton kernels; same contract as ``api.wide_attention``.

    ``blocks`` (BLOCK_M query entries x BLOCK_N keys per tile) and ``num_warps`` (one int, or
    (forward, backward)) default to DEFAULT_BLOCKS and DEFAULT_WARPS; ``scores`` picks the score
    loop (SCORE_DESIGNS).
    """
    validate_codes(q_idx, q_val, k_idx, k_val, v, num_features, mode, cap, key_padding_mask, causal)
    B, H, L, K = q_idx.shape
    DV = v.shape[-1]
    for name, value in (("k", K), ("head dim of v", DV)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"wide_triton_attention: {name}={value} must be a power of two (tl.arange)")
    if scores not in SCORE_DESIGNS:
        raise ValueError(f"wide_triton_attention: scores={scores!r} must be one of {SCORE_DESIGNS}")
    blocks = DEFAULT_BLOCKS if blocks is None else tuple(blocks)
    if len(blocks) != 2 or any(b < 16 or b & (b - 1) for b in blocks):
        raise ValueError(f"wide_triton_attention: blocks={blocks} must be two powers of two >= 16 (tl.dot)")
    warps = DEFAULT_WARPS if num_warps is None else num_warps
    warps = (warps, warps) if isinstance(warps, int) else tuple(warps)
    launch = Launch(*blocks, *warps, scores == "select")
    scale = 1.0 / math.sqrt(K) if scale is None else scale
    G = B * H
    dv_kernel = max(DV, MIN_DOT)  # v zero-padded to the tensor-core dots' least inner dimension
    qi, ki = q_idx.reshape(G, L, K), k_idx.reshape(G, L, K)  # (G, L, K)
    qv, kv = q_val.reshape(G, L, K), k_val.reshape(G, L, K)
    vf = v.reshape(G, L, DV)
    if dv_kernel > DV:
        vf = torch.nn.functional.pad(vf, (0, dv_kernel - DV))  # (G, L, dv_kernel)
    real = (torch.ones(G, L, dtype=torch.bool, device=v.device) if key_padding_mask is None
            else key_padding_mask[:, None, :].expand(B, H, L).reshape(G, L))  # (G, L)
    per_chunk = max(1, max_partial_bytes // max(1, L * K * (dv_kernel + 3) * 4))
    outs, stats = [], {"candidates": 0, "incidences_total": 0, "incidences_kept": 0}
    for g0 in range(0, G, per_chunk):
        sl = slice(g0, min(G, g0 + per_chunk))
        n_groups = sl.stop - sl.start
        plan = build_plan(qi[sl], ki[sl], None if key_padding_mask is None else real[sl], num_features, cap,
                          causal)
        group = torch.arange(n_groups, device=v.device)[:, None, None]
        q_bucket = (group * num_features + qi[sl]).reshape(-1)  # (N * K,)
        items = _work_items(plan, q_bucket, launch.block_m)
        real_f = real[sl].reshape(-1).to(torch.float32)  # (N,)
        sink: dict[str, torch.Tensor] = {}
        out = _WideTritonFunction.apply(
            qv[sl].reshape(-1, K), kv[sl].reshape(-1, K), vf[sl].reshape(-1, dv_kernel),
            qi[sl].reshape(-1, K).to(torch.int32).contiguous(), ki[sl].reshape(-1, K).to(torch.int32).contiguous(),
            plan, items, real_f, scale, mode == "exact", launch, sink)
        outs.append(out.view(n_groups, L, dv_kernel)[..., :DV])  # (g, L, DV)
        stats["incidences_total"] = stats["incidences_total"] + plan.incidences_total
        stats["incidences_kept"] = stats["incidences_kept"] + plan.incidences_kept
        stats["candidates"] = stats["candidates"] + sink["candidates"]
    return torch.cat(outs).reshape(B, H, L, DV), stats
