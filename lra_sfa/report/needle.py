"""The needle heatmap: test accuracy over (length, depth), one panel per attention backend, from run records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lra_sfa.report.load import commits_label


def _accuracy_grid(records: list[dict]) -> dict[str, tuple[list[int], list[float], np.ndarray]]:
    """Per backend: sorted lengths, sorted depths, accuracy (lengths, depths) with NaN where no run."""
    cells: dict[str, dict[tuple[int, float], float]] = {}
    for record in records:
        by_depth = record.get("test_accuracy_by_depth")
        if not str(record.get("task", "")).startswith("needle") or not by_depth:
            continue
        attn = record.get("attn")
        attn = attn.get("name", str(attn)) if isinstance(attn, dict) else str(attn)
        for depth, accuracy in by_depth.items():
            cells.setdefault(attn, {})[(int(record["seq_len"]), float(depth))] = float(accuracy)
    grids = {}
    for attn, values in sorted(cells.items()):
        lengths = sorted({length for length, _ in values})
        depths = sorted({depth for _, depth in values})
        grid = np.full((len(lengths), len(depths)), np.nan)
        for (length, depth), accuracy in values.items():
            grid[lengths.index(length), depths.index(depth)] = accuracy
        grids[attn] = (lengths, depths, grid)
    return grids


def _heatmap_panel(ax, lengths: list[int], depths: list[float], grid: np.ndarray, title: str):
    """One backend's (length x depth) accuracy grid, each cell written out; returns the image."""
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
    ax.set_yticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)
                                        for n in lengths], fontsize=7)
    ax.set_title(title, fontsize=9)
    for (i, j), value in np.ndenumerate(grid):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.5 else "white")
    return image


def plot_needle_heatmap(records: list[dict], out_png: str | Path, notes: list[str] | None = None) -> Path:
    """Accuracy over (length, depth), one panel per attention backend (four to a row), from run records
    (dicts with task, attn, seq_len, test_accuracy_by_depth). Later records win on duplicates.
    ``notes`` are printed under the panels (e.g. what a short panel title stands for)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = _accuracy_grid(records)
    if not grids:
        raise ValueError("plot_needle_heatmap: no needle records with test_accuracy_by_depth")
    notes = [textwrap.fill(note, width=150, subsequent_indent="      ") for note in notes or []]
    cols = min(4, len(grids))
    rows = -(-len(grids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.0 + 3.1 * cols, 0.6 + 2.7 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(grids):]:
        ax.set_visible(False)
    for index, (ax, (attn, (lengths, depths, grid))) in enumerate(zip(axes.flat, grids.items())):
        image = _heatmap_panel(ax, lengths, depths, grid, attn)
        if index % cols == 0:
            ax.set_ylabel("sequence length")
        if index + cols >= len(grids):
            ax.set_xlabel("needle depth")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="test accuracy", shrink=0.8)
    where = {}  # length -> devices, so a grid that mixes machines says which row ran where
    for record in records:
        if str(record.get("task", "")).startswith("needle") and record.get("device"):
            where.setdefault(int(record["seq_len"]), set()).add(str(record["device"]).split(" (")[0])
    if where:
        needle = [r for r in records if str(r.get("task", "")).startswith("needle")]
        fig.suptitle("Needle test accuracy by length and depth (" + "; ".join(
            f"L={n}: {', '.join(sorted(d))}" for n, d in sorted(where.items())) +
            f"; commits {commits_label(needle)})", fontsize=10)
    if notes:
        fig.text(0.01, -0.01, "\n".join(notes), fontsize=7, va="top", ha="left", family="monospace")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
