"""The report's figures (matplotlib, Agg backend), each from records or a results CSV alone.

* ``speed_vs_length.png`` / ``memory_vs_length.png``: the sweep, log-log, one
  line per backend, one panel per part and pass; a legend entry says what
  stopped a backend (e.g. "oom at 512K").
* ``accuracy_speed_memory.png``: the LRA paper's Figure 3 form from the GPU
  runs, one panel per task setting: training steps/s (x) against test
  accuracy (y, 0-100%), marker area proportional to peak memory, a legend
  naming each point.
* ``needle_heatmap.png``: accuracy over (length, depth) per backend
  (``lra_sfa.report.needle.plot_needle_heatmap``).
* ``sfa_kernel_speedup.png``: the SFA Triton kernels' speed-up over SDPA from
  ``results/kernels/sfa_vs_sdpa.csv``.

Each function returns the path written, or None when there is nothing to plot.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from lra_sfa.report.efficiency import (  # noqa: E402
    SERIES,
    SERIES_LABEL,
    config_title,
    sweep_cells,
    sweep_config,
    sweep_configs,
)
from lra_sfa.report.load import attn_order, commits_label, length_label, run_labels, variant_labels  # noqa: E402
from lra_sfa.report.tables import LRA_COLUMNS, group_runs  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _length_axis(ax, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [length_label(n) for n in lengths], fontsize=7, rotation=45)
    ax.grid(True, which="both", alpha=0.3)


def plot_sweep(records: list[dict], key: str, ylabel: str, path: Path) -> Path | None:
    """The first sweep shape (GPU first): ``key`` against length, one line per backend."""
    sweep = [r for r in records if r["mode"] == "sweep"]
    if not sweep:
        return None
    config = sweep_configs(sweep)[0]
    cells = sweep_cells([r for r in sweep if sweep_config(r) == config])
    present = [s for s in SERIES if any(k[1:] == s for k in cells)]
    cols = min(2, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    lengths = sorted({n for by_length in cells.values() for n in by_length})
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, series in zip(axes.flat, present):
        for attn in sorted({k[0] for k in cells if k[1:] == series}, key=attn_order):
            by_length = cells[(attn, *series)]
            ok = sorted(n for n, r in by_length.items() if r["status"] == "ok")
            failed = sorted((n, r["status"]) for n, r in by_length.items() if r["status"] != "ok")
            label = attn + (f" ({failed[0][1]} at {length_label(failed[0][0])})" if failed else "")
            if ok:
                ax.plot(ok, [by_length[n][key] for n in ok], marker="o", markersize=3, label=label,
                        linestyle="-" if attn == "full" or attn.startswith("sfa") else "--")
        _length_axis(ax, lengths)
        ax.set_title(SERIES_LABEL[series], fontsize=9)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    shown = [r for by_length in cells.values() for r in by_length.values()]
    dates = sorted({str(r["date"])[:10] for r in shown})
    fig.suptitle(f"{config_title(config)}; {', '.join(dates)}; commits {commits_label(shown)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _legend_label(attn: str, short: bool, width: int = 48) -> str:
    """A backend label wrapped for a legend; the arguments of a variant go on the following lines."""
    import textwrap

    return textwrap.fill(attn + (" †" if short else ""), width=width, subsequent_indent="  ")


def plot_accuracy_speed_memory(runs: list[dict], path: Path) -> Path | None:
    """LRA Figure 3 form from the protocol-complete GPU runs (``headline.protocol_complete``): one
    panel per task setting (task, protocol, length), steps/s against test accuracy (0-100%), marker area
    ~ peak memory; a colour per backend, a marker shape per variant of a backend, and a legend beside
    each panel naming every point. Budget-cut and exploratory runs are left out, as in the headline."""
    from lra_sfa.report.headline import protocol_complete

    gpu = [r for r in runs if not str(r.get("device", "cpu")).startswith("cpu")  # CPU and GPU speeds differ 10x
           and protocol_complete(r)]
    frame = group_runs(gpu)
    if frame.empty:
        return None
    frame = frame[(frame["runs"] > 0) & frame["test_pct"].notna() & frame["steps_per_second"].notna()]
    if frame.empty:
        return None
    groups = list(frame.groupby(["task", "protocol", "seq_len"], sort=True))
    cols = min(2, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8.4 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    largest = float(frame["peak_memory_mb"].max() or 1.0)
    backends = sorted({str(a).split(" (")[0] for a in frame["attn"]}, key=attn_order)  # one colour per backend
    for ax, ((task, protocol, length), group) in zip(axes.flat, groups):
        variants: dict[str, int] = {}
        several_devices = group["device"].nunique() > 1
        for row in group.itertuples():
            backend = str(row.attn).split(" (")[0]
            where = f" [{str(row.device).split(' (')[0].replace('NVIDIA ', '').split()[0]}]" if several_devices else ""
            variants[backend] = variants.get(backend, -1) + 1
            if row.runs > 1:  # the seeds' spread: a bar from the lowest to the highest test accuracy
                ax.errorbar(row.steps_per_second, row.test_pct, yerr=[[row.test_pct - row.test_min_pct],
                                                                      [row.test_max_pct - row.test_pct]],
                            fmt="none", ecolor=f"C{backends.index(backend) % 10}", elinewidth=1.2, capsize=4)
            ax.scatter(row.steps_per_second, row.test_pct, s=30 + 570 * float(row.peak_memory_mb or 0.0) / largest,
                       alpha=0.6, color=f"C{backends.index(backend) % 10}", edgecolors="black", linewidths=0.5,
                       marker=MARKERS[variants[backend] % len(MARKERS)],
                       label=_legend_label(str(row.attn) + where, row.short), clip_on=False)  # 100% stays whole
        title = LRA_COLUMNS.get(str(group["column"].iloc[0]), task) if group["column"].notna().all() else task
        ax.set_title(f"{title}: {protocol}, L={length_label(length)}", fontsize=9)
        ax.set_xlabel("training steps/s")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0, right=1.1 * float(group["steps_per_second"].max()))
        ax.grid(True, alpha=0.3)
        legend = ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                           markerscale=0.6, labelspacing=0.6)
        for handle in legend.legend_handles:
            handle.set_sizes([40])
    devices = ", ".join(sorted({str(d).split(" (")[0] for d in frame["device"]}))
    commits = ", ".join(sorted({c for joined in frame["git_commit"] for c in str(joined).split(", ")}))
    fig.suptitle(f"Accuracy vs speed vs memory ({devices}; commits {commits}): marker area ~ peak memory "
                 f"(largest {largest / 1024:.0f} GB); mean over seeds, bar: lowest to highest seed; "
                 "† = stopped before the protocol's steps", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_needle(runs: list[dict], path: Path) -> Path | None:
    from lra_sfa.report.needle import plot_needle_heatmap

    needle = [r for r in runs if str(r["task"]).startswith("needle") and r.get("test_accuracy_by_depth")
              and r["status"] == "ok"]
    if not needle:
        return None
    labels = variant_labels(needle, lambda r: str(r["attn"]))  # one panel per configuration
    short, notes = _numbered_variants(sorted(set(labels.values()), key=attn_order))
    ordered = sorted(needle, key=lambda r: str(r.get("date", "")))  # later records win on duplicates
    return plot_needle_heatmap([dict(r, attn=short[labels[id(r)]]) for r in ordered], path, notes)


def _numbered_variants(labels: list[str]) -> tuple[dict[str, str], list[str]]:
    """Short panel titles for variant labels: ``sfa_wide (D=..., k=8)`` -> ``sfa_wide [2]``, with the
    notes that say what each number stands for."""
    short, notes, counts = {}, [], {}
    for label in labels:
        backend, _, args = label.partition(" (")
        if not args:
            short[label] = label
            continue
        counts[backend] = counts.get(backend, 0) + 1
        short[label] = f"{backend} [{counts[backend]}]"
        notes.append(f"{short[label]}: {args.rstrip(')')}")
    return short, notes


def plot_needle_by_length(runs: list[dict], path: Path) -> Path | None:
    """Needle test accuracy against the tested length (``trainer.test_lengths``), one line per
    configuration and training length; the training length is marked."""
    needle = [r for r in runs if str(r["task"]).startswith("needle") and r["status"] == "ok"
              and len(r.get("test_accuracy_by_length") or {}) > 1]
    if not needle:
        return None
    configs = variant_labels(needle, lambda r: str(r["attn"]))
    labels = run_labels(needle, configs)
    # one colour per configuration (tab20: more than 10 configurations stay apart), one line style per run
    palette = plt.get_cmap("tab20").colors
    colours = {c: palette[i % len(palette)] for i, c in enumerate(sorted(set(configs.values()), key=attn_order))}
    styles, seen = ("-", "--", ":", "-."), {}
    fig, ax = plt.subplots(figsize=(11.0, 4.6))
    for record in sorted(needle, key=lambda r: (attn_order(labels[id(r)]), int(r["seq_len"]))):
        points = sorted((int(length), acc) for length, acc in record["test_accuracy_by_length"].items())
        trained = int(record["seq_len"])
        config = configs[id(record)]
        seen[config] = seen.get(config, -1) + 1
        line, = ax.plot([n for n, _ in points], [a for _, a in points], marker="o", color=colours[config],
                        linestyle=styles[seen[config] % len(styles)],
                        label=f"{labels[id(record)]}, trained at {length_label(trained)}")
        ax.plot([trained], [record["test_accuracy"]], "s", markersize=10, markerfacecolor="none",
                color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tested sequence length (square: the training length)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    devices = ", ".join(sorted({str(r.get("device")).split(" (")[0] for r in needle}))
    dates = ", ".join(sorted({str(r.get("date", ""))[:10] for r in needle}))
    ax.set_title(f"needle: trained at one length, tested at others ({devices}; {dates}; commits "
                 f"{commits_label(needle)})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_kernel_speedup(csv_path: Path | None, path: Path) -> Path | None:
    """SFA Triton speed-up over SDPA against length, one panel per op, a line per (head_dim, topk, baseline)."""
    if csv_path is None:
        return None
    frame = pd.read_csv(csv_path)
    if "speedup_median" in frame:  # a protocol CSV: the median of the interleaved repeats
        frame = frame.assign(speedup=frame["speedup_median"])
    needed = {"op", "seq_len", "head_dim", "topk", "baseline", "speedup"}
    if not needed <= set(frame.columns) or frame.empty:
        raise ValueError(f"report: {csv_path} lacks columns {sorted(needed - set(frame.columns))}")
    if "impl" in frame:
        frame = frame[frame["impl"] == "sfa_triton"]  # wide-code rows have their own plot
        if frame.empty:
            return None
    ops = [op for op in ("fwd", "fwd_bwd", "decode") if op in set(frame["op"])]
    fig, axes = plt.subplots(1, len(ops), figsize=(4.5 * len(ops), 3.8), squeeze=False)
    for ax, op in zip(axes[0], ops):
        part = frame[frame["op"] == op]
        shapes = sorted({(int(d), int(k)) for d, k in zip(frame["head_dim"], frame["topk"])})
        for (head_dim, topk, baseline), line in part.groupby(["head_dim", "topk", "baseline"]):
            line = line.sort_values("seq_len")
            ax.plot(line["seq_len"], line["speedup"], marker="o", markersize=3,
                    color=f"C{shapes.index((int(head_dim), int(topk)))}",
                    linestyle="-" if "cudnn" in str(baseline) else ":", label=f"d={head_dim} k={topk} vs {baseline}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        lengths = sorted(part["seq_len"].unique())
        ax.set_xticks(lengths, [length_label(n) for n in lengths], fontsize=7)
        ax.set_title(f"SFA Triton {op}", fontsize=9)
        ax.set_xlabel("sequence length")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("speed-up over SDPA (>1 = SFA faster)")
    device = ", ".join(sorted(set(frame["device"].astype(str)))) if "device" in frame else ""
    commits = ", ".join(sorted({str(c)[:7] for c in frame["git_commit"]})) if "git_commit" in frame else "unknown"
    fig.suptitle(f"SFA kernels vs SDPA ({device}; commits {commits}; {csv_path.name})", fontsize=9)
    return _save(fig, path)
