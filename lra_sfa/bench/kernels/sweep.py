"""``mode=sweep``: SFA against cuDNN and FA2 over lengths, head dims and top-k, by the interleaved protocol.

Writes ``sfa_vs_sdpa.csv`` and ``sfa_checks.csv`` cell by cell (``rows.KERNEL_KEY``;
the files are rewritten after every row, so a timeout or a partial re-run keeps
everything else), ``sfa_topk.csv`` (``topk_pack`` against torch.topk) and
``sfa_vs_sdpa.png``. Every row names its commit, library versions and card
(``protocol.provenance``). Shapes: batch x heads from ``tokens`` per length
(batch x heads x L = tokens), or fixed by ``batch`` and ``heads``. Cells left
when ``budget_s`` is spent are skipped and listed at the end.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig

from lra_sfa.bench.kernels import protocol
from lra_sfa.bench.kernels.calls import BACKENDS, shape_for, torch_topk_codes
from lra_sfa.bench.kernels.decode import bench_decode
from lra_sfa.bench.kernels.prefill import bench_prefill
from lra_sfa.bench.kernels.rows import CHECK_COLUMNS, COLUMNS, KERNEL_KEY, TOPK_COLUMNS, TOPK_KEY, RowWriter
from lra_sfa.bench.kernels.table import plot
from lra_sfa.kernels.sfa.api import IMPLS
from lra_sfa.kernels.sfa.topk_pack import topk_pack

OPS = ("fwd", "fwd_bwd", "decode")


def cell_shape(cfg: DictConfig, length: int, tokens: int) -> tuple[int, int]:
    """(batch, heads) of one cell: ``cfg.batch`` x ``cfg.heads`` where set, else from ``tokens`` per shape."""
    if cfg.batch is not None and cfg.heads is not None:
        return int(cfg.batch), int(cfg.heads)
    return shape_for(length, tokens)


def prefill_jobs(cfg: DictConfig) -> list[tuple[int, int, int, str]]:
    """(dim, topk, length, op) in run order: the first (dim, topk) pair's lengths, its extra forward lengths,
    then the other pairs and their extra lengths, so that a spent budget cuts the least asked-for cells."""
    ops = [op for op in ("fwd", "fwd_bwd") if op in cfg.ops]
    pairs = [(dim, topk) for topk in cfg.topks for dim in cfg.dims]
    jobs = [[(dim, topk, length, op) for length in cfg.lengths for op in ops] for dim, topk in pairs]
    extra = [[(dim, cfg.topks[0], length, "fwd") for length in cfg.fwd_extra_lengths] if "fwd" in ops else []
             for dim in cfg.dims]
    return jobs[0] + extra[0] + [job for part in jobs[1:] for job in part] + [job for part in extra[1:] for job in part]


def time_topk(cfg: DictConfig, timer: protocol.Timer, base: dict, out_dir: Path, device: torch.device) -> None:
    """``topk_pack`` against torch.topk on |x| for ``topk_rows`` rows of d = 128, into sfa_topk.csv."""
    table = RowWriter(out_dir / "sfa_topk.csv", TOPK_COLUMNS, key=TOPK_KEY)
    x = torch.randn(cfg.topk_rows, 128, device=device, dtype=torch.bfloat16)
    for topk in cfg.topks:
        pack_ms = timer(partial(topk_pack, x, topk), ())
        torch_ms = timer(partial(torch_topk_codes, x, topk, False), ())
        table.write(dict(base, rows=cfg.topk_rows, head_dim=128, topk=topk, topk_pack_ms=round(pack_ms, 4),
                         torch_topk_ms=round(torch_ms, 4)))
        print(f"top-k {cfg.topk_rows} rows x 128, k={topk}: topk_pack {pack_ms:.3f} ms, torch.topk {torch_ms:.3f} ms")


def run_sweep(cfg: DictConfig, timer: protocol.Timer | None = None, device: str = "cuda") -> list[str]:
    """Every cell of the grid that fits ``cfg.budget_s``; returns the cells skipped for the budget."""
    unknown = sorted(set(cfg.ops) - set(OPS))
    if unknown:
        raise ValueError(f"ops={list(cfg.ops)}: {unknown} not among {list(OPS)}")
    if sorted(set(cfg.baselines) - set(BACKENDS)) or not cfg.baselines:
        raise ValueError(f"baselines={list(cfg.baselines)}: each must be one of {sorted(BACKENDS)}")
    if (cfg.batch is None) != (cfg.heads is None):
        raise ValueError(f"batch={cfg.batch}, heads={cfg.heads}: set both (one shape at every length) or neither "
                         "(batch x heads from tokens)")
    impls = [impl for impl in IMPLS if impl != "reference"] + ["kernels"]
    if str(cfg.get("sfa_impl", "auto")) not in impls:
        raise ValueError(f"sfa_impl={cfg.get('sfa_impl')!r} must be one of {impls}")
    if cfg.repeats < protocol.MIN_REPEATS:
        raise ValueError(f"repeats={cfg.repeats}: a ratio needs at least {protocol.MIN_REPEATS} interleaved repeats")
    where = torch.device(device)
    timer_name = str(cfg.get("timer", "do_bench"))
    made = protocol.make_timer(timer_name, cfg.warmup_ms, cfg.rep_ms)  # a bad name fails before any timing
    timer = timer or made
    out_dir = Path(cfg.out)
    rows = RowWriter(out_dir / "sfa_vs_sdpa.csv", COLUMNS, key=KERNEL_KEY)
    checks = RowWriter(out_dir / "sfa_checks.csv", CHECK_COLUMNS, key=KERNEL_KEY)
    base = dict(protocol.provenance(where, str(cfg.date)), timer=timer_name)
    print(f"kernel sweep on {base['device']} at commit {base['git_commit']}: torch {base['torch_version']}, "
          f"Triton {base['triton_version']}, cuDNN {base['cudnn_version']}; {cfg.repeats} interleaved repeats",
          flush=True)
    if base["git_commit"] == "unknown":
        print("warning: no commit for the rows (no .git here): set LRA_SFA_GIT_COMMIT=<commit>", flush=True)
    started, skipped = time.time(), []
    backends = list(cfg.baselines)
    jobs = [(dim, topk, length, "decode") for dim in cfg.dims for length in cfg.decode_lengths for topk in cfg.topks
            if "decode" in cfg.ops] + prefill_jobs(cfg)
    if jobs and any(op != "decode" for *_, op in jobs) and cfg.topk_rows:
        time_topk(cfg, timer, base, out_dir, where)
    for dim, topk, length, op in jobs:
        if time.time() - started > cfg.budget_s:
            skipped.append(f"{op} L={length} d={dim} k={topk}")
            continue
        batch, heads = cell_shape(cfg, length, cfg.decode_tokens if op == "decode" else cfg.tokens)
        meta = dict(base, batch=batch, heads=heads, seq_len=length, head_dim=dim, topk=topk, dtype="bf16")
        if op == "decode":
            config = tuple(cfg.decode_config) if cfg.decode_config else None
            bench_decode(rows, checks, meta, timer, cfg.repeats, backends, where, config)
        else:
            bench_prefill(rows, checks, meta, op, timer, cfg.repeats, backends, where,
                          str(cfg.get("sfa_impl", "auto")))
    if skipped:
        print(f"budget_s={cfg.budget_s} spent: skipped {len(skipped)} cells: {', '.join(skipped)}", flush=True)
    if rows.rows:
        plot(out_dir / "sfa_vs_sdpa.csv", out_dir / "sfa_vs_sdpa.png")
    return skipped
