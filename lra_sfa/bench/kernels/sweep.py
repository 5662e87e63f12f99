"""``--mode sweep``: SFA against cuDNN and FA2 over lengths, head dims and top-k, then the plot.

Writes ``sfa_vs_sdpa.csv`` and ``sfa_checks.csv`` cell by cell (``rows.KERNEL_KEY``;
the files are rewritten after every row, so a timeout or a partial re-run keeps
everything else), ``sfa_topk.csv`` (``topk_pack`` against torch.topk) and
``sfa_vs_sdpa.png``. ``--budget-s`` skips the jobs left when it is spent.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch

from lra_sfa.bench.kernels.calls import DEVICE, shape_for, time_ms, torch_topk_codes
from lra_sfa.bench.kernels.decode import bench_decode
from lra_sfa.bench.kernels.prefill import bench_prefill
from lra_sfa.bench.kernels.rows import CHECK_COLUMNS, KERNEL_CSV_COLUMNS, KERNEL_KEY, RowWriter
from lra_sfa.bench.kernels.table import plot
from lra_sfa.kernels.sfa.topk_pack import topk_pack


def run_sweep(args) -> None:
    out_dir = Path(args.out)
    rows = RowWriter(out_dir / "sfa_vs_sdpa.csv", KERNEL_CSV_COLUMNS, key=KERNEL_KEY)
    checks = RowWriter(out_dir / "sfa_checks.csv", CHECK_COLUMNS, key=KERNEL_KEY)
    base = dict(dtype="bf16", device=torch.cuda.get_device_name(), date=args.date)
    started, cache = time.time(), {}
    for dim in args.dims if "decode" in args.ops else ():
        for length in args.decode_lengths:
            for topk in args.topks:
                batch, heads = shape_for(length, args.decode_tokens)
                bench_decode(rows, checks, dict(base, batch=batch, heads=heads, seq_len=length, head_dim=dim,
                                                topk=topk), args.rep_ms, args.decode_config)
    if "fwd" not in args.ops and "fwd_bwd" not in args.ops:
        plot(out_dir / "sfa_vs_sdpa.csv", out_dir / "sfa_vs_sdpa.png")
        return
    topk_rows = RowWriter(out_dir / "sfa_topk.csv", ["rows", "head_dim", "topk", "topk_pack_ms", "torch_topk_ms",
                                                      "device", "date"], key=["rows", "head_dim", "topk"])
    x = torch.randn(args.topk_rows, 128, device=DEVICE, dtype=torch.bfloat16)
    for topk in args.topks:
        pack_ms = time_ms(partial(topk_pack, x, topk))[0]
        torch_ms = time_ms(partial(torch_topk_codes, x, topk, False))[0]
        topk_rows.write(dict(rows=args.topk_rows, head_dim=128, topk=topk, topk_pack_ms=round(pack_ms, 4),
                             torch_topk_ms=round(torch_ms, 4), device=base["device"], date=args.date))
        print(f"top-k {args.topk_rows} rows x 128, k={topk}: topk_pack {pack_ms:.3f} ms, torch.topk {torch_ms:.3f} ms")
    del x
    pairs = [(dim, topk) for topk in args.topks for dim in args.dims]
    jobs = [(dim, topk, length, op) for dim, topk in pairs for length in args.lengths for op in ("fwd", "fwd_bwd")
            if op in args.ops]
    extra = [(dim, args.topks[0], length, "fwd") for dim in args.dims for length in args.fwd_extra_lengths
             if "fwd" in args.ops]
    per_dim = len(jobs) // len(pairs)  # the first (dim, topk) pair's jobs, then its extra lengths, then the rest
    jobs = jobs[:per_dim] + extra[:len(args.fwd_extra_lengths)] + jobs[per_dim:] + extra[len(args.fwd_extra_lengths):]
    for dim, topk, length, op in jobs:
        if time.time() - started > args.budget_s:
            print(f"budget of {args.budget_s} s spent: skipping {op} L={length} d={dim} k={topk}", flush=True)
            continue
        batch, heads = shape_for(length, args.tokens)
        meta = dict(base, batch=batch, heads=heads, seq_len=length, head_dim=dim, topk=topk)
        bench_prefill(rows, checks, meta, op, cache, args.rep_ms)
    plot(out_dir / "sfa_vs_sdpa.csv", out_dir / "sfa_vs_sdpa.png")
