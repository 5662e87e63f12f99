"""GPU probe: where an SFA attention call spends its time at LRA's lengths, beside cuDNN.

For each length and head dim it runs ``sfa_attention`` (the public function, top-k
included, ``impl=auto``) and SDPA held to cuDNN on the same bf16 inputs, forward and
forward+backward, under ``torch.profiler``, and writes per call:

* every GPU kernel that ran, with its launches and GPU time per call (``kernels.csv``);
* the totals (``summary.csv``): kernel launches per call, the summed kernel time, the
  host time to issue one call without a sync (``host_us``: when it is near or above the
  GPU time, the call is launch-bound and fewer launches or CUDA graphs pay), and the wall
  time of a synchronised call (``wall_us``), both medians over ``--reps`` calls.

The default shapes are issue 23's: batch x heads = 256 (batch 32, 8 heads), L = 1K, 2K,
4K, 8K, d = 64 and 128, k = 8. Head dims below 16 (LRA Pathfinder's 4, Image's 8) run
zero-padded in the SFA kernels; ``--dims 4,8 --batch 512 --lengths 1024`` measures what
that costs. Where cuDNN refuses a shape the dense side is SDPA's own choice
(``engine`` says ``sdpa_default``). The card, torch, triton and cuDNN versions and the
commit are in every row.

    python -m lab.short_seq_profile --out $OUT [--lengths 1024,2048,4096,8192] [--dims 64,128] [--batch 32]

The commit comes from git, or from ``LRA_SFA_GIT_COMMIT`` in a copy without ``.git``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.kernels.sfa.api import sfa_attention
from lra_sfa.records import git_commit

TOPK = 8


def topk_for(dim: int) -> int:
    """k = 8, or half of a smaller head dim (Pathfinder's d = 4 runs k = 2 in its campaign cells)."""
    return min(TOPK, max(1, dim // 2))
KERNEL_COLUMNS = ["engine", "mode", "length", "head_dim", "kernel", "launches_per_call", "gpu_us_per_call"]
SUMMARY_COLUMNS = ["card", "torch", "triton", "cudnn", "commit", "engine", "mode", "batch", "heads", "length",
                   "head_dim", "topk", "launches_per_call", "kernel_us_per_call", "host_us", "wall_us"]


def kernel_table(events, calls: int) -> dict[str, tuple[float, float]]:
    """Kernel name -> (launches per call, GPU microseconds per call), from profiler events.

    ``events`` are ``torch.profiler`` FunctionEvents (or anything with ``name``,
    ``device_type`` and ``device_time``); only device-side kernel events count.
    """
    table: dict[str, list[float]] = {}
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        count_time = table.setdefault(event.name, [0.0, 0.0])
        count_time[0] += 1
        count_time[1] += event.device_time
    return {name: (count / calls, us / calls) for name, (count, us) in table.items()}


def host_and_wall_us(call: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median host time to issue one call (no sync) and median wall time of a synchronised call, in us."""
    host, wall = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        issued = time.perf_counter()
        torch.cuda.synchronize()
        done = time.perf_counter()
        host.append((issued - start) * 1e6)
        wall.append((done - start) * 1e6)
    return statistics.median(host), statistics.median(wall)


def _dense(q, k, v) -> tuple[str, Callable[[], torch.Tensor]]:
    """SDPA held to cuDNN, or SDPA's own choice where cuDNN refuses the shape (e.g. head dim 4)."""
    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    try:
        with torch.no_grad():
            cudnn()
        return "sdpa_cudnn", cudnn
    except RuntimeError:
        return "sdpa_default", lambda: F.scaled_dot_product_attention(q, k, v)


def calls_for(batch: int, heads: int, length: int, dim: int) -> dict[tuple[str, str], Callable[[], object]]:
    """(engine, mode) -> one call on fresh bf16 inputs of (batch, heads, length, dim)."""
    q, k, v = (torch.randn(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)

    def sfa():
        return sfa_attention(q, k, v, topk_q=topk_for(dim))

    dense_name, dense = _dense(q, k, v)

    def with_backward(forward):
        def call():
            forward().backward(grad)
        return call

    def no_grad(forward):
        def call():
            with torch.no_grad():
                return forward()
        return call

    return {("sfa", "fwd"): no_grad(sfa), ("sfa", "fwd_bwd"): with_backward(sfa),
            (dense_name, "fwd"): no_grad(dense), (dense_name, "fwd_bwd"): with_backward(dense)}


def profile_call(call: Callable[[], object], reps: int) -> dict[str, tuple[float, float]]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):  # compile, autotune and warm the caches outside the profile
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    return kernel_table(prof.events(), reps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.short_seq_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--dims", default="64,128")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                cudnn=torch.backends.cudnn.version(), commit=git_commit())
    with open(out / "summary.csv", "w", newline="") as s_handle, open(out / "kernels.csv", "w", newline="") as k_handle:
        summary = csv.DictWriter(s_handle, SUMMARY_COLUMNS)
        kernels = csv.DictWriter(k_handle, KERNEL_COLUMNS)
        summary.writeheader()
        kernels.writeheader()
        for dim in (int(x) for x in args.dims.split(",")):
            for length in (int(x) for x in args.lengths.split(",")):
                for (engine, mode), call in calls_for(args.batch, args.heads, length, dim).items():
                    table = profile_call(call, args.reps)
                    host, wall = host_and_wall_us(call, args.reps)
                    for name, (launches, us) in sorted(table.items(), key=lambda item: -item[1][1]):
                        kernels.writerow(dict(engine=engine, mode=mode, length=length, head_dim=dim, kernel=name,
                                              launches_per_call=round(launches, 2), gpu_us_per_call=round(us, 1)))
                    row = dict(meta, engine=engine, mode=mode, batch=args.batch, heads=args.heads, length=length,
                               head_dim=dim, topk=topk_for(dim),
                               launches_per_call=round(sum(n for n, _ in table.values()), 2),
                               kernel_us_per_call=round(sum(us for _, us in table.values()), 1),
                               host_us=round(host, 1), wall_us=round(wall, 1))
                    summary.writerow(row)
                    s_handle.flush()
                    k_handle.flush()
                    print(" ".join(f"{key}={row[key]}" for key in SUMMARY_COLUMNS[5:]), flush=True)


if __name__ == "__main__":
    main()
