"""GPU probe: SFA by the FlashSFA kernels against SFA as SDPA on the zero-filled codes, to place ``uses_sdpa``.

Both compute the same exact SFA (``lra_sfa.kernels.sfa.codes``). On the same
bf16 inputs, per cell, the interleaved protocol of the kernel benchmark
(``lra_sfa.bench.kernels.protocol``: ``repeats`` rounds, alternating order)
times three calls, top-k included on both SFA sides:

* ``kernels``: ``flash_sfa`` (the Gluon or Triton kernels as dispatch picks);
* ``sdpa``: ``codes.sdpa_sfa`` (``topk_pack`` codes of q and k, then SDPA, cuDNN first);
* ``cudnn``: SDPA held to cuDNN on the dense q, k (the reference of every kernel ratio).

Ops: ``fwd`` (no autograd), ``fwd_bwd`` and ``causal_fwd_bwd`` (training; causal as MQAR). A row keeps each
median and the per-round ratio kernels / sdpa (median, min, max): above 1 over the whole spread, SDPA on the
codes is faster. Shapes: batch x heads = 256 up to 8K (LRA's), 2^21 tokens beyond.

    python -m lab.sfa_sdpa_probe --out $OUT [--dims 32,64,128] [--lengths 512,...,32768]

The commit comes from git, or from ``LRA_SFA_GIT_COMMIT`` in a copy without ``.git``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.bench.kernels import protocol
from lra_sfa.bench.kernels.calls import leaf, random_qkv, sdpa_call
from lra_sfa.kernels.sfa.autograd import flash_sfa
from lra_sfa.kernels.sfa.codes import sdpa_sfa
from lra_sfa.kernels.sfa.dispatch import kernel_path

COLUMNS = ["device", "git_commit", "torch_version", "triton_version", "cudnn_version", "date", "op", "batch", "heads",
           "seq_len", "head_dim", "topk", "kernels_path", "kernels_ms", "sdpa_ms", "cudnn_ms", "kernels_over_sdpa",
           "kernels_over_sdpa_min", "kernels_over_sdpa_max", "sdpa_vs_cudnn", "kernels_vs_cudnn", "max_abs_diff"]
OPS = ("fwd", "fwd_bwd", "causal_fwd_bwd")


def calls(q, k, v, topk: int, op: str) -> dict[str, protocol.Call]:
    """The three timed calls of a cell, each on leaves of its own when it has a backward."""
    causal = op.startswith("causal")
    grad = None if op == "fwd" else torch.randn_like(q)

    def closure(fn, tensors):
        if grad is None:
            def run():
                with torch.no_grad():
                    return fn(*tensors)
            return run, ()
        leaves = tuple(leaf(t) for t in tensors)
        return (lambda: fn(*leaves).backward(grad)), leaves

    kernels = closure(lambda a, b, c: flash_sfa(a, b, c, topk, topk, causal=causal), (q, k, v))
    sdpa = closure(lambda a, b, c: sdpa_sfa(a, b, c, topk, topk, causal=causal), (q, k, v))
    if causal:
        dense = closure(lambda a, b, c: cudnn_attention(a, b, c, is_causal=True), (q, k, v))
    else:
        dense_leaves = (q, k, v) if grad is None else tuple(leaf(t) for t in (q, k, v))
        dense = sdpa_call("cudnn", *dense_leaves, grad), (dense_leaves if grad is not None else ())
    return {"kernels": kernels, "sdpa": sdpa, "cudnn": dense}


def cudnn_attention(q, k, v, is_causal: bool):
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def cell(writer, base: dict, dim: int, length: int, op: str, topk: int, repeats: int, timer) -> None:
    batch, heads = (32, 8) if length <= 8192 else (max(1, 2**21 // (length * 16)), 16)
    q, k, v = random_qkv(batch, heads, length, dim, torch.bfloat16, seed=length + dim)
    with torch.no_grad():
        diff = (flash_sfa(q, k, v, topk, topk, causal=op.startswith("causal"))
                - sdpa_sfa(q, k, v, topk, topk, causal=op.startswith("causal"))).abs().max().item()
    times = protocol.interleaved(calls(q, k, v, topk, op), repeats, timer)
    ratios = [kern / sdpa for kern, sdpa in zip(times["kernels"], times["sdpa"])]
    med = {name: statistics.median(values) for name, values in times.items()}
    path = kernel_path(q.device, q.dtype, length, dim, False, "auto", op != "fwd", op.startswith("causal"))
    row = dict(base, op=op, batch=batch, heads=heads, seq_len=length, head_dim=dim, topk=topk, kernels_path=path,
               kernels_ms=round(med["kernels"], 4), sdpa_ms=round(med["sdpa"], 4), cudnn_ms=round(med["cudnn"], 4),
               kernels_over_sdpa=round(statistics.median(ratios), 4), kernels_over_sdpa_min=round(min(ratios), 4),
               kernels_over_sdpa_max=round(max(ratios), 4), sdpa_vs_cudnn=round(med["cudnn"] / med["sdpa"], 4),
               kernels_vs_cudnn=round(med["cudnn"] / med["kernels"], 4), max_abs_diff=f"{diff:.3e}")
    writer.writerow(row)
    print(f"{op:15s} d={dim:3d} L={length:6d} {batch}x{heads} kernels({path}) {med['kernels']:.3f} sdpa "
          f"{med['sdpa']:.3f} cudnn {med['cudnn']:.3f} ms; kernels/sdpa {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}] diff {diff:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dims", default="64,128,32")
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384,32768")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    base = protocol.provenance(device, datetime.date.today().isoformat())
    timer = protocol.do_bench_timer(args.warmup_ms, args.rep_ms)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sfa_sdpa_probe.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for op in args.ops.split(","):
            for dim in map(int, args.dims.split(",")):
                for length in map(int, args.lengths.split(",")):
                    cell(writer, base, dim, length, op, args.topk, args.repeats, timer)
                    handle.flush()


if __name__ == "__main__":
    main()
