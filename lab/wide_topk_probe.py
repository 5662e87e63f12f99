"""GPU probe: the top-k of learned wide codes' logits, torch.topk against the package's kernel and a PyTorch design.

Learned wide codes keep the k largest of every token's D code logits (``lra_sfa.sfa_wide``, q and k in every
layer). At MQAR's protocol shape (batch 256 x 2 heads x 256 tokens = 131,072 rows) this times, on the same
bf16 logits, ``torch.topk`` and each candidate (``chunked``: ``lab.kernels.row_topk.chunked_topk`` with several
chunk sizes; ``triton``: ``lra_sfa.kernels.wide.topk_triton.triton_row_topk``, which ``code_topk`` runs on CUDA,
with several rows per program and warps) by interleaved repeats (``triton.testing.do_bench`` medians, the candidates'
order reversed every other repeat), and checks each against torch.topk's values. Then, at the same width,
the forward+backward of the kept values (``value_paths``: the selected code-map columns per token, as the
backend computes them, against a gather from the whole logits) with peak memory. CSV to
``--out``/wide_topk_probe.csv: card, versions, commit, shape, method, config, median ms, the baseline
(torch.topk, or the backend's value path) and the speed-up over it in the same repeat (median, min and max
over repeats: a range that spans 1.0 is a tie), and whether the result matched.

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

from lab.kernels.row_topk import chunked_topk
from lra_sfa.kernels.wide.topk_triton import triton_row_topk
from lra_sfa.records import git_commit

COLUMNS = ["card", "torch", "triton", "commit", "rows", "width", "k", "dtype", "method", "config", "ms", "baseline",
           "speedup_median", "speedup_min", "speedup_max", "repeats", "ok"]


def candidates(width: int, k: int) -> dict[tuple[str, str], Callable]:
    """(method, config) -> function of z returning the indices of its k largest, largest first."""
    table: dict[tuple[str, str], Callable] = {("torch", "topk"): lambda z: z.topk(k, dim=-1).indices}
    for chunk in (64, 128, 256, 512):
        if width % chunk == 0 and chunk >= k and chunk < width:
            table[("chunked", f"chunk={chunk}")] = lambda z, c=chunk: chunked_topk(z, k, c)
    for rows in (1, 2, 4, 8):
        if rows * triton.next_power_of_2(width) <= 16384:
            for warps in (4, 8):
                table[("triton", f"rows={rows},warps={warps}")] = (
                    lambda z, r=rows, w=warps: triton_row_topk(z, k, block_rows=r, num_warps=w))
    return table


def _speedup(ratios: list[float]) -> dict[str, str]:
    """Median, min and max over repeats of baseline ms / this ms (> 1: faster than the baseline)."""
    return {"speedup_median": f"{statistics.median(ratios):.3f}", "speedup_min": f"{min(ratios):.3f}",
            "speedup_max": f"{max(ratios):.3f}"}


def matches(z: torch.Tensor, index: torch.Tensor, k: int) -> bool:
    """The indices select torch.topk's values, in its order."""
    return bool(torch.equal(z.gather(-1, index), z.topk(k, dim=-1).values))


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
                    "baseline": "torch.topk", **_speedup(ratios), "ok": ok[(method, config)]})
    return out


def value_paths(heads: int, width: int, k: int) -> dict[str, Callable]:
    """name -> function of (h (B, H, L, e), code_map (H, e, D), idx (B, H, L, k)) returning the kept values
    (B, H, L, k) with autograd to h and code_map: ``columns`` as ``SFAWideAttention._selected_codes`` computes
    them (the k selected columns of the code map, gathered per token), ``dense`` through the whole logits
    (one GEMM each way, and a (B, H, L, D) gradient)."""
    def columns(h, code_map, idx):
        rows = (torch.arange(heads, device=idx.device)[:, None, None] * width + idx).reshape(-1)
        picked = code_map.to(h.dtype).transpose(1, 2).reshape(heads * width, -1).index_select(0, rows)
        return (h.unsqueeze(-2) * picked.view(*idx.shape, -1)).sum(-1)

    def dense(h, code_map, idx):
        return torch.einsum("bhle,hef->bhlf", h, code_map.to(h.dtype)).gather(-1, idx)

    return {"columns": columns, "dense": dense}


def probe_values(batch: int, heads: int, length: int, dim: int, width: int, k: int, repeats: int) -> list[dict]:
    """Forward+backward of the kept values by each path of ``value_paths`` on the same inputs; checked against
    the ``columns`` path (outputs and both gradients within bf16 rounding)."""
    h = torch.randn(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    code_map = (torch.randn(heads, dim, width, device="cuda") / dim ** 0.5).requires_grad_()
    with torch.no_grad():
        idx = torch.einsum("bhle,hef->bhlf", h, code_map.to(h.dtype)).topk(k, dim=-1).indices
    grad = torch.randn(batch, heads, length, k, device="cuda", dtype=torch.bfloat16)
    paths = value_paths(heads, width, k)

    def step(fn):
        h.grad = code_map.grad = None
        fn(h, code_map, idx).backward(grad)

    results = {}
    for name, fn in paths.items():
        step(fn)
        results[name] = (fn(h, code_map, idx).detach().float(), h.grad.float(), code_map.grad.float())
    reference = results["columns"]
    ok = {name: all(torch.allclose(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())
                    for a, b in zip(got, reference)) for name, got in results.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    memory: dict[str, float] = {}
    for repeat in range(repeats):
        for name in list(paths) if repeat % 2 == 0 else list(paths)[::-1]:
            torch.cuda.reset_peak_memory_stats()
            times[name].append(triton.testing.do_bench(lambda f=paths[name]: step(f), warmup=5, rep=40))
            memory[name] = torch.cuda.max_memory_allocated() / 2**20
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": git_commit(), "rows": batch * heads * length, "width": width, "k": k, "dtype": "bfloat16",
            "repeats": repeats}
    base = times["columns"]
    out = []
    for name, ms in times.items():
        ratios = [b / t for b, t in zip(base, ms)]
        out.append({**meta, "method": f"values_{name}", "config": f"e={dim},peak_mb={memory[name]:.0f}",
                    "ms": f"{statistics.median(ms):.4f}", "baseline": "values_columns", **_speedup(ratios),
                    "ok": ok[name]})
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
        jobs = []
        for shape in args.shapes.split(","):
            rows, width, k = (int(part) for part in shape.split("x"))
            jobs.append(lambda r=rows, w=width, kk=k: probe(r, w, kk, args.repeats))
            # MQAR's value path at the same width: batch 256, 2 heads of 64, rows / 512 tokens
            jobs.append(lambda r=rows, w=width, kk=k: probe_values(256, 2, r // 512, 64, w, kk, args.repeats))
        for job in jobs:
            for row in job():
                writer.writerow(row)
                handle.flush()
                print(f"{row['rows']}x{row['width']} k={row['k']} {row['method']:14s} {row['config']:18s} "
                      f"{row['ms']} ms, x{row['speedup_median']} {row['baseline']} "
                      f"({row['speedup_min']}-{row['speedup_max']}) ok={row['ok']}")


if __name__ == "__main__":
    main()
