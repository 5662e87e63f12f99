"""``--mode table`` and ``--mode plot``: results/kernels/README.md's table and the speed-up plot from the CSV."""

from __future__ import annotations

from pathlib import Path

from lra_sfa.bench.kernels.rows import SFA_IMPL

TABLE_HEADING = "## Table"


def markdown_table(csv_path: Path) -> str:
    """The README table of the ``sfa_triton`` rows: one line per (op, d, k, L), cuDNN and FA2 side by side."""
    import pandas as pd

    from lra_sfa.markdown import md_table

    frame = pd.read_csv(csv_path)
    frame = frame[frame["impl"] == SFA_IMPL]
    frame = frame.assign(op_order=frame["op"].map({"fwd": 0, "fwd_bwd": 1, "decode": 2}))
    cells = ["op_order", "op", "head_dim", "topk", "seq_len"]
    rows = []
    for (_, op, dim, topk, length), group in frame.sort_values(cells).groupby(cells, sort=False):
        by = {row["baseline"]: row for _, row in group.iterrows()}
        first = group.iloc[0]
        base = [cell for b in ("sdpa_cudnn", "sdpa_fa2")
                for cell in ((f"{by[b]['baseline_ms']:.3f}", f"{by[b]['speedup']:.2f}") if b in by else ("", ""))]
        rows.append([op, dim, topk, length, f"{first['batch']}x{first['heads']}", f"{first['ms']:.3f}", *base,
                     f"{float(first['max_rel_err']):.1e}", f"{first['peak_mem_mb']:.0f}", first["date"]])
    headers = ["op", "d", "k", "L", "B x H", "SFA ms", "cuDNN ms", "x cuDNN", "FA2 ms", "x FA2", "rel. err",
               "peak MiB", "date"]
    return md_table(headers, rows) + "\n"


def write_table(out: Path) -> None:
    """Rewrite the table section (``TABLE_HEADING`` to the end) of ``out/README.md`` from ``out/sfa_vs_sdpa.csv``."""
    readme = out / "README.md"
    text = readme.read_text()
    if TABLE_HEADING not in text:
        raise SystemExit(f"lra_sfa.bench.kernels --mode table: {readme} has no '{TABLE_HEADING}' section")
    head = text[:text.index(TABLE_HEADING)]
    readme.write_text(f"{head}{TABLE_HEADING}\n\n{markdown_table(out / 'sfa_vs_sdpa.csv')}")
    print(f"wrote the table of {out / 'sfa_vs_sdpa.csv'} into {readme}")


def plot(csv_path: Path, png_path: Path) -> None:
    """Speedup over each SDPA backend against L, one panel per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(csv_path)
    frame = frame[frame["impl"] == SFA_IMPL]  # the wide-code rows have their own plot (lra_sfa.bench.wide)
    ops = [op for op in ("fwd", "fwd_bwd", "decode") if op in set(frame["op"])]
    fig, axes = plt.subplots(1, len(ops), figsize=(5.5 * len(ops), 4.2), squeeze=False)
    for ax, op in zip(axes[0], ops):
        part = frame[frame["op"] == op]
        for (dim, topk, baseline), group in part.groupby(["head_dim", "topk", "baseline"]):
            group = group.sort_values("seq_len")
            style = "-" if baseline.endswith("cudnn") else "--"
            ax.plot(group["seq_len"], group["speedup"], style, marker="o", ms=3,
                    label=f"d={dim} k={topk} vs {baseline.removeprefix('sdpa_')}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("speedup (SDPA ms / SFA ms)")
        ax.set_title(f"SFA Triton {op}, bf16, {frame['device'].iloc[0]}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
