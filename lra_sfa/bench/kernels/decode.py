"""The sweep's decode rows: one query step against a sparse-K cache, beside SDPA on the dense cache.

SFA's time includes q's top-k; the cache (k values and ids, and for the bounded
design each key block's code range) is state, built before timing. Each SDPA
backend is timed on a random dense K and on the cache's own codes scattered
back to dense, and the faster of the two is the round's baseline; all calls are
timed by ``protocol.interleaved``.
"""

from __future__ import annotations

import statistics
from functools import partial

import torch

from lra_sfa.bench.kernels import protocol
from lra_sfa.bench.kernels.calls import random_qkv, sdpa_call
from lra_sfa.bench.kernels.rows import SFA_IMPL, RowWriter
from lra_sfa.kernels.decode.launcher import (
    cache_bytes_per_token,
    cache_key_range,
    launch_defaults,
    pack_k_cache,
    sfa_decode,
)
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa.topk_pack import topk_pack

DECODE_DESIGNS = ("online", "bounded")  # the optional fifth field of a decode config: sfa_decode without / with k_range
CHECK_HEADS = 8


def decode_launch(config: tuple[int, ...]) -> tuple[int, int, int, int, str]:
    """(BLOCK_N, warps, stages, programs per SM, design) from a config tuple whose fifth field is optional."""
    block_n, warps, stages, per_sm, *design = config
    return block_n, warps, stages, per_sm, DECODE_DESIGNS[design[0] if design else 0]


def _decode_errors(q, k_vals, k_idx, kd, v, topk: int, out) -> tuple[float, float]:
    """(kernel, plain bf16 PyTorch) relative errors of the first heads' output against float64."""
    batch, heads, length, dim = v.shape
    _, _, qd = topk_pack(q, topk)
    flat = (batch * heads, 1, dim)
    qf, kf, vf = qd.reshape(flat), kd.reshape(batch * heads, length, dim), v.reshape(batch * heads, length, dim)
    rows = torch.zeros(1, dtype=torch.long, device=q.device)
    part = slice(0, CHECK_HEADS)
    ref, _ = sfa_check.rows_attention(qf[part], kf[part], vf[part], rows, torch.float64)
    plain, _ = sfa_check.rows_attention(qf[part], kf[part], vf[part], rows, torch.bfloat16)
    return sfa_check.rel_err(out.reshape(flat)[part], ref), sfa_check.rel_err(plain, ref)


def bench_decode(out_rows: RowWriter, checks: RowWriter, meta: dict, timer: protocol.Timer, repeats: int,
                 backends: list[str], device: torch.device, config: tuple[int, ...] | None = None) -> None:
    """One decode cell: SFA against each SDPA backend, ``repeats`` interleaved rounds, one row each."""
    batch, heads, length, dim, topk = (meta[k] for k in ("batch", "heads", "seq_len", "head_dim", "topk"))
    _, k, v = random_qkv(batch, heads, length, dim, torch.bfloat16, seed=7 + length, device=device)
    q = torch.randn(batch, heads, 1, dim, device=device, dtype=torch.bfloat16)
    k_vals, k_idx = pack_k_cache(k, topk)
    del k
    block_n, warps, stages, per_sm, design = decode_launch(config or (*launch_defaults(dim, bounded=True), 1))
    k_range = cache_key_range(k_vals, k_idx, dim) if design == "bounded" else None  # cache state: not timed
    run = partial(sfa_decode, q, k_vals, k_idx, v, topk, block_n=block_n, num_warps=warps, num_stages=stages,
                  programs_per_sm=per_sm, k_range=k_range)
    peak = protocol.peak_mib(run, device)  # before the baselines' dense caches exist
    kd = torch.zeros(batch, heads, length, dim, device=device, dtype=torch.bfloat16)
    kd.scatter_(-1, k_idx.long(), k_vals)  # (B, H, L, D) dense codes of the cache
    k_random = torch.randn_like(kd)
    calls: dict[str, protocol.Call] = {"sfa": (run, ())}
    for name in backends:
        calls[f"{name}_random"] = (sdpa_call(name, q, k_random, v), ())
        calls[f"{name}_sparse"] = (sdpa_call(name, q, kd, v), ())
    times = protocol.interleaved(calls, repeats, timer)
    kernel_err, torch_err = _decode_errors(q, k_vals, k_idx, kd, v, topk, run())
    sparse_bytes, dense_bytes = cache_bytes_per_token(dim, topk, torch.bfloat16)
    for name in backends:
        stats = protocol.ratio_summary(times["sfa"], protocol.faster_input(times, name))
        row = dict(meta, impl=SFA_IMPL, op="decode", sfa_path=f"triton decode {design}", baseline=f"sdpa_{name}",
                   **stats, max_rel_err=f"{kernel_err:.3e}", peak_mem_mb=round(peak, 1))
        out_rows.write(row)
        checks.write(dict(row, torch_err=f"{torch_err:.3e}", passes=sfa_check.passes(kernel_err, torch_err, q.dtype),
                          cache_bytes_per_token=sparse_bytes, dense_bytes_per_token=dense_bytes,
                          **{f"baseline_{inputs}_ms": round(statistics.median(times[f"{name}_{inputs}"]), 4)
                             for inputs in ("random", "sparse")}))
        print(f"decode   L={length:>7d} d={dim:3d} k={topk:2d} B={batch} H={heads}: sfa {stats['ms']:8.3f} ms  {name} "
              f"{stats['baseline_ms']:8.3f} ms  x{stats['speedup_median']:5.2f} [{stats['speedup_min']:.2f}-"
              f"{stats['speedup_max']:.2f}] {stats['verdict']:6s} err {kernel_err:.2e} (torch {torch_err:.2e}) "
              f"bytes/token {sparse_bytes} vs {dense_bytes}", flush=True)
