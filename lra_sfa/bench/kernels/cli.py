"""Benchmark the SFA kernels against cuDNN and FlashAttention-2 SDPA (argparse; one module per mode).

    python -m lra_sfa.bench.kernels --mode sweep   --out results/kernels
    python -m lra_sfa.bench.kernels --mode check   --out $OUT   # GPU correctness only
    python -m lra_sfa.bench.kernels --mode merge   --src DIR    # a device run's CSVs into results/kernels
    python -m lra_sfa.bench.kernels --mode table                # results/kernels/README.md's table
    python -m lra_sfa.bench.kernels --mode plot

Modes: ``sweep`` (``sweep.py``), ``check`` (``check.py``), ``merge``, ``table`` and
``plot``. Design and tile explorations live in the lab (``python -m lab.kernel_explore``).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

from lra_sfa.bench.kernels.check import GPU_CHECKS, gpu_checks, row_log
from lra_sfa.bench.kernels.merge import merge
from lra_sfa.bench.kernels.sweep import run_sweep
from lra_sfa.bench.kernels.table import plot, write_table

MODES = ("sweep", "check", "plot", "merge", "table", "explore")  # explore: a pointer to the lab


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lra_sfa.bench.kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="sweep")
    parser.add_argument("--src", default=None, help="--mode merge: a folder of benchmark CSVs (a device run's $OUT)")
    parser.add_argument("--out", default="results/kernels")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--topks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2**i for i in range(10, 18)])
    parser.add_argument("--fwd-extra-lengths", type=int, nargs="+", default=[2**18, 2**19])
    parser.add_argument("--decode-lengths", type=int, nargs="+", default=[2**13, 2**15, 2**17, 2**19])
    parser.add_argument("--tokens", type=int, default=2**19, help="batch*heads*L per prefill shape")
    parser.add_argument("--decode-tokens", type=int, default=2**24, help="batch*heads*L per decode shape")
    parser.add_argument("--rep-ms", type=float, default=300.0)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--topk-rows", type=int, default=2**20)
    parser.add_argument("--ops", nargs="+", default=["fwd", "fwd_bwd", "decode"], choices=("fwd", "fwd_bwd", "decode"),
                        help="ops the sweep measures")
    parser.add_argument("--decode-config", type=lambda text: tuple(int(x) for x in text.split(",")),
                        default=None, help="BLOCK_N,warps,stages,programs_per_sm[,design] of the sweep's decode; "
                        "design 0 online, 1 bounded (DECODE_DESIGNS; default: sfa_decode's bounded launch_defaults)")
    parser.add_argument("--checks", type=int, nargs="+", default=None, choices=range(len(GPU_CHECKS)),
                        help="--mode check: run only these entries of GPU_CHECKS (default all)")
    args, unknown = parser.parse_known_args(argv)
    if args.mode == "explore":  # before the unknown options: the explore-only ones went with it
        raise SystemExit("lra_sfa.bench.kernels --mode explore moved to the lab: python -m lab.kernel_explore "
                         "with the same options (lab/README.md)")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.mode == "merge":
        merge(Path(args.src), Path(args.out))
        return
    if args.mode == "plot":
        plot(Path(args.out) / "sfa_vs_sdpa.csv", Path(args.out) / "sfa_vs_sdpa.png")
        return
    if args.mode == "table":
        write_table(Path(args.out))
        return
    if not torch.cuda.is_available():
        raise SystemExit("lra_sfa.bench.kernels needs a CUDA device (the SDPA baselines and timings are GPU-only)")
    if args.mode == "check":
        if not gpu_checks(row_log(args.out), args.checks):
            raise SystemExit("lra_sfa.bench.kernels: a GPU check failed the DESIGN.md rule (see sfa_explore.csv)")
        return
    run_sweep(args)
