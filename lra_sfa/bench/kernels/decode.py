"""The sweep's decode rows: one query step against a sparse-K cache, beside SDPA on the dense cache."""

from __future__ import annotations

from functools import partial

import torch

from lra_sfa.bench.kernels.calls import BACKENDS, DEVICE, random_qkv, sdpa_call, time_ms
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


def decode_launch(config: tuple[int, ...]) -> tuple[int, int, int, int, str]:
    """(BLOCK_N, warps, stages, programs per SM, design) from a config tuple whose fifth field is optional."""
    block_n, warps, stages, per_sm, *design = config
    return block_n, warps, stages, per_sm, DECODE_DESIGNS[design[0] if design else 0]


def bench_decode(out_rows: RowWriter, checks: RowWriter, meta: dict, rep_ms: float,
                 config: tuple[int, ...] | None = None) -> None:
    batch, heads, length, dim, topk = (meta[k] for k in ("batch", "heads", "seq_len", "head_dim", "topk"))
    _, k, v = random_qkv(batch, heads, length, dim, torch.bfloat16, seed=7 + length)
    q = torch.randn(batch, heads, 1, dim, device=DEVICE, dtype=torch.bfloat16)
    k_vals, k_idx = pack_k_cache(k, topk)
    del k
    block_n, warps, stages, per_sm, design = decode_launch(config or (*launch_defaults(dim, bounded=True), 1))
    k_range = cache_key_range(k_vals, k_idx, dim) if design == "bounded" else None  # cache state: not timed
    run = partial(sfa_decode, q, k_vals, k_idx, v, topk, block_n=block_n, num_warps=warps, num_stages=stages,
                  programs_per_sm=per_sm, k_range=k_range)
    sfa_ms, peak = time_ms(run, rep_ms)
    out = run()
    kd = torch.zeros(batch, heads, length, dim, device=DEVICE, dtype=torch.bfloat16)
    kd.scatter_(-1, k_idx.long(), k_vals)  # (B, H, L, D) dense codes of the cache
    _, _, qd = topk_pack(q, topk)
    flat = (batch * heads, 1, dim)
    qf, kf, vf = qd.reshape(flat), kd.reshape(batch * heads, length, dim), v.reshape(batch * heads, length, dim)
    rows = torch.zeros(1, dtype=torch.long, device=DEVICE)
    ref, _ = sfa_check.rows_attention(qf[:8], kf[:8], vf[:8], rows, torch.float64)
    plain, _ = sfa_check.rows_attention(qf[:8], kf[:8], vf[:8], rows, torch.bfloat16)
    kernel_err = sfa_check.rel_err(out.reshape(flat)[:8], ref)
    torch_err = sfa_check.rel_err(plain, ref)
    sparse_bytes, dense_bytes = cache_bytes_per_token(dim, topk, torch.bfloat16)
    for name in BACKENDS:
        base_rand = time_ms(sdpa_call(name, q, kd.normal_(), v), rep_ms)[0]
        kd.zero_().scatter_(-1, k_idx.long(), k_vals)
        base_sparse = time_ms(sdpa_call(name, q, kd, v), rep_ms)[0]
        base_ms = min(base_rand, base_sparse)
        row = dict(meta, impl=SFA_IMPL, op="decode", ms=round(sfa_ms, 4), baseline=f"sdpa_{name}",
                   baseline_ms=round(base_ms, 4), speedup=round(base_ms / sfa_ms, 4),
                   max_rel_err=f"{kernel_err:.3e}", peak_mem_mb=round(peak, 1))
        out_rows.write(row)
        checks.write(dict(row, baseline_random_ms=round(base_rand, 4), baseline_sparse_ms=round(base_sparse, 4),
                          torch_err=f"{torch_err:.3e}", passes=sfa_check.passes(kernel_err, torch_err, q.dtype),
                          cache_bytes_per_token=sparse_bytes, dense_bytes_per_token=dense_bytes))
        print(f"decode   L={length:>7d} d={dim:3d} k={topk:2d} B={batch} H={heads}: sfa {sfa_ms:8.3f} ms  {name} "
              f"{base_ms:8.3f} ms  x{base_ms / sfa_ms:5.2f}  err {kernel_err:.2e} (torch {torch_err:.2e}) "
              f"bytes/token {sparse_bytes} vs {dense_bytes}", flush=True)
