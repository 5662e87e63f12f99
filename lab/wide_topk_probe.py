"""GPU probe: the top-k of learned wide codes' logits, torch.topk against the designs of ``lab.kernels.row_topk``.

Learned wide codes keep the k largest of every token's D code logits (``lra_sfa.sfa_wide``, q and k in every
layer). At MQAR's protocol shape (batch 256 x 2 heads x 256 tokens = 131,072 rows) this times, on the same
bf16 logits, ``torch.topk`` and each candidate (``chunked`` with several chunk sizes, ``triton`` with several
rows per program and warps) by interleaved repeats (``triton.testing.do_bench`` medians, the candidates'
order reversed every other repeat), and checks each against torch.topk's values. CSV to
``--out``/wide_topk_probe.csv: card, versions, commit, shape, method, config, median ms, its ratio to
torch.topk's median in the same repeat (median, min and max over repeats: a ratio whose range spans 1.0 is a
tie), and whether the selection matched.

    python -m lab.wide_topk_probe --out $OUT [--shapes 131072x1024x8,131072x4096x16] [--repeats 5]

The commit comes from git, or from ``LRA_SFA_GIT_COMMIT`` in a copy without ``.git``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import triton

from lab.kernels.row_topk import chunked_topk, triton_row_topk
from lra_sfa.records import git_commit

COLUMNS = ["card", "torch", "triton", "commit", "rows", "width", "k", "dtype", "method", "config", "ms",
           "vs_torch_median", "vs_torch_min", "vs_torch_max", "repeats", "ok"]


def candidates(width: int, k: int) -> dict[tuple[str, str], Callable]:
    """(method, config) -> function of z returning (values, indices)."""
    table: dict[tuple[str, str], Callable] = {("torch", "topk"): lambda z: z.topk(k, dim=-1)}
    for chunk in (64, 128, 256, 512):
        if width % chunk == 0 and chunk >= k and chunk < width:
            table[("chunked", f"chunk={chunk}")] = lambda z, c=chunk: chunked_topk(z, k, c)
    for rows in (1, 2, 4, 8):
        if rows * triton.next_power_of_2(width) <= 16384:
            for warps in (4, 8):
                table[("triton", f"rows={rows},warps={warps}")] = (
                    lambda z, r=rows, w=warps: triton_row_topk(z, k, block_rows=r, num_warps=w))
    return table


def matches(z: torch.Tensor, result: tuple[torch.Tensor, torch.Tensor], k: int) -> bool:
    """Values equal torch.topk's and the indices select them."""
    values, index = result
    expected = z.topk(k, dim=-1).values
    return bool(torch.equal(values, expected) and torch.equal(z.gather(-1, index), expected))


def probe(rows: int, width: int, k: int, repeats: int) -> list[dict]:
    z = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
    table = candidates(width, k)
    ok = {name: matches(z, fn(z), k) for name, fn in table.items()}
    names = list(table)
    times: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            times[name].append(triton.testing.do_bench(lambda f=table[name]: f(z), warmup=10, rep=50))
    base = times[("torch", "topk")]
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": git_commit(), "rows": rows, "width": width, "k": k, "dtype": "bfloat16", "repeats": repeats}
    out = []
    for (method, config), ms in times.items():
        ratios = [b / t for b, t in zip(base, ms)]  # > 1: faster than torch.topk in the same repeat
        out.append({**meta, "method": method, "config": config, "ms": f"{statistics.median(ms):.4f}",
                    "vs_torch_median": f"{statistics.median(ratios):.3f}", "vs_torch_min": f"{min(ratios):.3f}",
                    "vs_torch_max": f"{max(ratios):.3f}", "ok": ok[(method, config)]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="131072x1024x8,131072x4096x16", help="rows x D x k, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("wide_topk_probe: needs a CUDA GPU")
    path = Path(args.out) / "wide_topk_probe.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for shape in args.shapes.split(","):
            rows, width, k = (int(part) for part in shape.split("x"))
            for row in probe(rows, width, k, args.repeats):
                writer.writerow(row)
                handle.flush()
                print(f"{rows}x{width} k={k} {row['method']:8s} {row['config']:18s} {row['ms']} ms "
                      f"x{row['vs_torch_median']} torch.topk ({row['vs_torch_min']}-{row['vs_torch_max']}) "
                      f"ok={row['ok']}")


if __name__ == "__main__":
    main()
