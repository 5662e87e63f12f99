"""The SFA kernel section: our measured speed-ups over SDPA beside the SFA paper's headline numbers.

Measured: ``results/kernels/sfa_vs_sdpa.csv`` (written by
``python -m lra_sfa.bench.kernels``), speed-up = SDPA ms / SFA ms per
(card, op, head_dim, top-k, baseline) and length: the median of the
interleaved repeats with its verdict (an older CSV: its single ratio).
Published: ``sfa_paper.csv``, with the paper's ratio dense / SFA computed from
its two columns. The two are different setups (our baseline is tensor-core
cuDNN / FlashAttention-2 on an H100 or H200; the paper's is a CUDA-core
FlashAttention on an A800), which the section says.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra_sfa.markdown import md_table
from lra_sfa.report.load import length_label


def _speedup_cell(rows: list) -> str:
    """One length's cell: the ratio (the median over the interleaved repeats, with its verdict, in a protocol
    CSV; the single ratio in an older one), each shape's when several batch x heads were measured."""
    cells = []
    for row in rows:
        if "speedup_median" in row:
            text = f"{row['speedup_median']:.2f} {row['verdict']}"
        else:
            text = f"{row['speedup']:.2f}"
        cells.append(text + (f" ({row['batch']}x{row['heads']})" if len(rows) > 1 else ""))
    return "; ".join(cells)


def measured_kernels(csv_path: Path | None) -> str:
    if csv_path is None:
        return "No SFA kernel results (`results/kernels/sfa_vs_sdpa.csv`); run `python -m lra_sfa.bench.kernels`."
    frame = pd.read_csv(csv_path)
    if "impl" in frame:
        frame = frame[frame["impl"] == "sfa_triton"]  # wide-code rows: results/kernels/sfa_wide.md
    if "timer" in frame:  # rows timed in CUDA graphs: their own table in results/kernels/README.md
        frame = frame[frame["timer"].astype(object).fillna("do_bench") == "do_bench"]
    protocol = "speedup_median" in frame
    lengths = sorted(frame["seq_len"].unique())
    keys = (["device"] if protocol else []) + ["op", "head_dim", "topk", "baseline"]
    rows = []
    for key, group in frame.groupby(keys, sort=True):
        by_length: dict = {}
        for row in group.to_dict("records"):
            by_length.setdefault(row["seq_len"], []).append(row)
        rows.append([*key, *[_speedup_cell(by_length[n]) if n in by_length else "" for n in lengths]])
    devices = ", ".join(sorted(set(frame["device"].astype(str)))) if "device" in frame else "unknown device"
    dates = ", ".join(sorted(set(frame["date"].astype(str)))) if "date" in frame else ""
    how = ("each the median of interleaved repeats, `faster` / `slower` only when the whole min-max spread is "
           "above / below 1, else `tie`; commits and spreads in results/kernels/README.md" if protocol else
           "one call each")
    return (f"Speed-up of the SFA Triton kernels over SDPA (> 1: SFA faster), {devices}, {dates}, from "
            f"`{csv_path.name}` (bf16; batch x heads varies with length, see the CSV; {how}).\n\n"
            + md_table([*(["card"] if protocol else []), "op", "head_dim", "top-k", "baseline",
                        *[length_label(n) for n in lengths]], rows))


def published_sfa(published: dict[str, pd.DataFrame]) -> str:
    frame = published.get("sfa_paper")
    if frame is None:
        return "No published SFA numbers (`results/published/sfa_paper.csv`)."
    rows = []
    for row in frame.to_dict("records"):
        dense, sfa = float(row["dense"]), float(row["sfa"])
        ratio = f"{dense / sfa:.2f}x" if row["unit"] in ("ms", "s", "TFLOP") else ""
        length = length_label(int(row["seq_len"])) if row["seq_len"] else ""
        rows.append([row["metric"], row["setting"], length, f"{row['dense']} {row['unit']}",
                     f"{row['sfa']} {row['unit']}", ratio, row["table"]])
    return (f"Source: {frame['source'].iloc[0]} (`results/published/sfa_paper.csv`). Their dense baseline is a "
            "CUDA-core FlashAttention on an A800, not tensor-core FlashAttention-2, so their speed-ups are not "
            "comparable with the measured ones above.\n\n"
            + md_table(["metric (published)", "setting", "L", "dense", "SFA", "dense / SFA", "table"], rows))


def kernels_section(csv_path: Path | None, published: dict[str, pd.DataFrame]) -> str:
    return "\n\n".join(["### Measured: SFA Triton kernels vs SDPA", measured_kernels(csv_path),
                        "### Published: SFA paper headline numbers (not measured here)", published_sfa(published)])
