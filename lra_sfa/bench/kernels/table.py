"""``mode=table`` and ``mode=plot``: results/kernels/README.md's table and the speed-up plot from the CSV.

Both show each ratio as its median over the interleaved repeats with the
min-max spread, and the table its verdict (``protocol.verdict``). The table and
the plot hold the rows timed by ``do_bench``; rows timed in CUDA graphs
(``timer=cudagraph``) get a table of their own below it.
"""

from __future__ import annotations

from pathlib import Path

from lra_sfa.bench.kernels.rows import SFA_IMPL

TABLE_HEADING = "## Table"
NEEDED = ("op", "seq_len", "head_dim", "topk", "baseline", "speedup_median", "speedup_min", "speedup_max",
          "repeats", "verdict", "device", "git_commit")
BASELINES = (("sdpa_cudnn", "cuDNN"), ("sdpa_fa2", "FA2"))
NOT_MEASURED = ("No rows measured under the interleaved protocol yet: run the commands above on the GPU machine, "
                "bring the CSVs home with `mode=merge`, and `mode=table` writes this section. The table of the "
                "older protocol is in `archive/README.md`.")


def load_rows(csv_path: Path, timer: str = "do_bench"):
    """The ``sfa_triton`` rows of a protocol CSV timed by ``timer`` (rows without a timer: ``do_bench``) as a
    DataFrame; a file without the protocol's columns (an older file, see results/kernels/archive/) is an error
    naming it and them."""
    import pandas as pd

    if not csv_path.is_file():
        raise SystemExit(f"lra_sfa.bench.kernels: no {csv_path} (mode=sweep writes it)")
    frame = pd.read_csv(csv_path)
    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise SystemExit(f"lra_sfa.bench.kernels: {csv_path} lacks the protocol's columns {missing} "
                         "(rows of the older protocol live in results/kernels/archive/)")
    timers = frame["timer"].astype(object).fillna("do_bench") if "timer" in frame.columns else "do_bench"
    return frame[(frame["impl"] == SFA_IMPL) & (timers == timer)]


def spread(row) -> str:
    """'median (min-max)' of a row's ratio."""
    return f"{row['speedup_median']:.2f} ({row['speedup_min']:.2f}-{row['speedup_max']:.2f})"


def _values(frame, column: str) -> str:
    """The distinct values of a column with their row counts, e.g. 'a (12 rows), b (3 rows)'."""
    counts = frame[column].astype(str).value_counts(sort=False)
    return ", ".join(f"`{value}` ({count} rows)" for value, count in sorted(counts.items()))


def preamble(frame) -> str:
    """What the table's rows come from: commits, cards, library versions and the repeats per ratio."""
    versions = "; ".join(f"{name} {_values(frame, column)}" for name, column in
                         (("torch", "torch_version"), ("Triton", "triton_version"), ("cuDNN", "cudnn_version")))
    return (f"{len(frame)} rows of `sfa_vs_sdpa.csv`. Commit: {_values(frame, 'git_commit')}. Card: "
            f"{_values(frame, 'device')}. {versions}. Each ratio (baseline ms / SFA ms) is the median of "
            f"{_values(frame, 'repeats')} interleaved repeats, the min-max spread in brackets; the verdict is "
            "`faster` only when the whole spread is above 1.0, `slower` when it is below, else `tie`.")


def markdown_table(csv_path: Path) -> str:
    """The README table of the do_bench rows, then, where there are any, the table of the CUDA-graph rows."""
    text = preamble_and_table(load_rows(csv_path))
    graphs = load_rows(csv_path, timer="cudagraph")
    if len(graphs):
        text += ("\n### Timed in CUDA graphs (`timer=cudagraph`)\n\nThe same cells with each call captured in a CUDA "
                 "graph and replayed (`triton.testing.do_bench_cudagraph`): the host's cost of issuing the kernels "
                 "is left out on both sides, as in a training step captured whole.\n\n" + preamble_and_table(graphs))
    return text


def preamble_and_table(frame) -> str:
    """One table: a line per (card, op, d, k, L, B x H), cuDNN and FA2 side by side, after its preamble."""
    from lra_sfa.markdown import md_table

    frame = frame.assign(op_order=frame["op"].map({"fwd": 0, "fwd_bwd": 1, "decode": 2}))
    cells = ["device", "op_order", "op", "head_dim", "topk", "seq_len", "batch", "heads"]
    rows = []
    for (device, _, op, dim, topk, length, batch, heads), group in frame.sort_values(cells).groupby(cells,
                                                                                                     sort=False):
        by = {row["baseline"]: row for _, row in group.iterrows()}
        first = group.iloc[0]
        base = [cell for b, _ in BASELINES
                for cell in ((f"{by[b]['baseline_ms']:.3f}", spread(by[b]), by[b]["verdict"]) if b in by
                             else ("", "", ""))]
        rows.append([str(device).removeprefix("NVIDIA "), op, dim, topk, length, f"{batch}x{heads}",
                     first.get("sfa_path", ""), f"{first['ms']:.3f}", *base, f"{float(first['max_rel_err']):.1e}",
                     f"{first['peak_mem_mb']:.0f}"])
    headers = ["card", "op", "d", "k", "L", "B x H", "SFA kernels", "SFA ms"]
    for _, name in BASELINES:
        headers += [f"{name} ms", f"x {name} (min-max)", f"vs {name}"]
    headers += ["rel. err", "peak MiB"]
    return preamble(frame) + "\n\n" + md_table(headers, rows) + "\n"


def write_table(out: Path) -> None:
    """Rewrite the table section (``TABLE_HEADING`` to the end) of ``out/README.md`` from ``out/sfa_vs_sdpa.csv``
    (without that file, a line saying so)."""
    readme = out / "README.md"
    if not readme.is_file():
        raise SystemExit(f"lra_sfa.bench.kernels mode=table: no {readme}")
    text = readme.read_text()
    if TABLE_HEADING not in text:
        raise SystemExit(f"lra_sfa.bench.kernels mode=table: {readme} has no '{TABLE_HEADING}' section")
    head = text[:text.index(TABLE_HEADING)]
    csv_path = out / "sfa_vs_sdpa.csv"
    body = markdown_table(csv_path) if csv_path.is_file() else NOT_MEASURED + "\n"
    readme.write_text(f"{head}{TABLE_HEADING}\n\n{body}")
    print(f"wrote the table of {csv_path} into {readme}" if csv_path.is_file() else
          f"no {csv_path}: {readme} says the table is not measured yet")


def plot(csv_path: Path, png_path: Path) -> None:
    """Median speed-up over each SDPA backend against L with its min-max spread, one panel per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = load_rows(csv_path)
    ops = [op for op in ("fwd", "fwd_bwd", "decode") if op in set(frame["op"])]
    fig, axes = plt.subplots(1, max(1, len(ops)), figsize=(5.5 * max(1, len(ops)), 4.2), squeeze=False)
    for ax, op in zip(axes[0], ops):
        part = frame[frame["op"] == op]
        for (device, dim, topk, baseline), group in part.groupby(["device", "head_dim", "topk", "baseline"]):
            group = group.sort_values("seq_len")
            low = group["speedup_median"] - group["speedup_min"]
            high = group["speedup_max"] - group["speedup_median"]
            ax.errorbar(group["seq_len"], group["speedup_median"], yerr=[low, high], capsize=2, marker="o", ms=3,
                        linestyle="-" if baseline.endswith("cudnn") else "--",
                        label=f"{str(device).removeprefix('NVIDIA ')} d={dim} k={topk} vs "
                              f"{baseline.removeprefix('sdpa_')}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("speed-up (SDPA ms / SFA ms), median and min-max")
        ax.set_title(f"SFA {op}, bf16")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
