"""Needle in a haystack for small trained models: find the value of a key hidden in filler, corpus-free.

Sequence of ``seq_len`` tokens (layout, 0-based positions):

    [ filler ... key_q value_q ... filler ... (other key value pairs) ... | QUERY key_q ]
      positions 0 .. seq_len-3: haystack                                   last two tokens

The queried needle (``key_q value_q``) starts at ``round(depth * (seq_len - 4))``, so depth 0
is the first token and depth 1 ends right before the query. ``num_pairs`` > 1 adds other
key-value pairs (distinct keys) at random non-overlapping places: multi-query associative
recall, where the model must pick the pair whose key the query repeats. The label is the
queried value's class (``num_values`` classes). Filler tokens are uniform over their own
``filler_vocab`` ids, disjoint from keys and values.

Vocabulary: 0 pad (never used inside a sequence), 1 QUERY, then filler, keys, values.
Depths: test and val cycle through ``num_depths`` evenly spaced depths in [0, 1]; train
draws depths uniformly from [0, 1]. Each split carries ``meta`` arrays ``depth`` and
``length``, so the runner reports ``test_accuracy_by_depth``; ``plot_needle_heatmap``
draws accuracy over (length, depth) per backend from run records (one run per length).
Generation is vectorised numpy, int16 tokens, in row blocks: memory ~2 bytes per token of
the split plus one block; 1M-token sequences are fine for small example counts.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from lra_sfa.tasks.base import Split, Task, TaskData, cache_key, save_arrays_atomic

QUERY = 1
SPLITS = ("train", "val", "test")
BLOCK_TOKENS = 1 << 24  # tokens generated per block (32 MiB of int16)


def place_pairs(rng: np.random.Generator, starts0: np.ndarray, num_pairs: int, haystack: int) -> np.ndarray:
    """Start positions (N, num_pairs): column 0 given, the others random, no two pairs overlapping."""
    n = len(starts0)
    starts = np.empty((n, num_pairs), np.int64)
    starts[:, 0] = starts0
    for j in range(1, num_pairs):
        todo = np.arange(n)
        while len(todo):
            cand = rng.integers(0, haystack - 1, size=len(todo))  # a pair occupies [s, s + 1]
            clash = (np.abs(starts[todo, :j] - cand[:, None]) < 2).any(1)
            starts[todo[~clash], j] = cand[~clash]
            todo = todo[clash]
    return starts


def make_split(rng: np.random.Generator, num: int, seq_len: int, depths: np.ndarray, num_pairs: int,
               filler_vocab: int, num_keys: int, num_values: int) -> Split:
    """``num`` sequences with the queried needle at ``depths`` (num,) fractions in [0, 1]."""
    haystack = seq_len - 2
    depths = np.round(depths, 4)  # the recorded depth; positions follow from it exactly
    first_key, first_value = 2 + filler_vocab, 2 + filler_vocab + num_keys
    inputs = np.empty((num, seq_len), np.int16)
    block = max(1, BLOCK_TOKENS // seq_len)
    for lo in range(0, num, block):
        hi = min(num, lo + block)
        inputs[lo:hi] = rng.integers(2, 2 + filler_vocab, size=(hi - lo, seq_len), dtype=np.int16)
    keys = np.argsort(rng.random((num, num_keys)), axis=1)[:, :num_pairs]  # (num, pairs) distinct keys
    values = rng.integers(0, num_values, size=(num, num_pairs))  # (num, pairs)
    starts = place_pairs(rng, np.round(depths * (haystack - 2)).astype(np.int64), num_pairs, haystack)
    rows = np.arange(num)[:, None]  # (num, 1)
    inputs[rows, starts] = first_key + keys
    inputs[rows, starts + 1] = first_value + values
    inputs[:, -2] = QUERY
    inputs[:, -1] = first_key + keys[:, 0]
    meta = {"depth": depths, "length": np.full(num, seq_len, np.int64)}
    return Split(inputs, values[:, 0].astype(np.int64), meta)


class Needle(Task):
    """Key-value needle(s) in random filler (see module docstring)."""

    name = "needle"
    has_padding = True  # no pad inside sequences; 0 never occurs

    def __init__(self, seq_len: int = 1024, pooling: str = "cls", data_dir: str | None = None,
                 num_pairs: int = 1, num_depths: int = 5, filler_vocab: int = 32, num_keys: int = 64,
                 num_values: int = 16, num_train: int = 20_000, num_val: int = 1_000, num_test: int = 1_000,
                 seed: int = 0) -> None:
        super().__init__(seq_len, pooling, data_dir)
        if data_dir:
            raise ValueError("task needle: data_dir must be null (the needle task is generated)")
        if not 1 <= num_pairs <= num_keys:
            raise ValueError(f"task needle: num_pairs={num_pairs} must be between 1 and num_keys={num_keys}")
        if self.seq_len < 8 * num_pairs + 4:
            raise ValueError(f"task needle: seq_len={seq_len} too short for num_pairs={num_pairs} "
                             f"(need >= {8 * num_pairs + 4})")
        if num_depths < 1 or filler_vocab < 1 or num_values < 2:
            raise ValueError("task needle: need num_depths >= 1, filler_vocab >= 1, num_values >= 2")
        self.gen = {"num_pairs": num_pairs, "num_depths": num_depths, "filler_vocab": filler_vocab,
                    "num_keys": num_keys, "num_values": num_values, "seed": seed}
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.vocab_size = 2 + filler_vocab + num_keys + num_values
        self.num_classes = num_values

    def describe(self) -> dict:
        gen = {("data_seed" if k == "seed" else k): v for k, v in self.gen.items()}  # "seed" is the training seed
        return {**super().describe(), **gen, **{f"num_{k}": v for k, v in self.sizes.items()}}

    def depth_grid(self) -> np.ndarray:
        n = self.gen["num_depths"]
        return np.linspace(0.0, 1.0, n) if n > 1 else np.asarray([0.5])

    def load(self, cache_dir) -> TaskData:
        key = cache_key(task="needle", v=1, seq_len=self.seq_len, **self.gen, **self.sizes)
        path = Path(cache_dir).expanduser() / "needle" / f"{self.seq_len}_{key}.npz"
        if not path.is_file():
            arrays = {}
            for index, split in enumerate(SPLITS):
                rng = np.random.default_rng([self.gen["seed"], index])
                num = self.sizes[split]
                if split == "train":
                    depths = rng.random(num)
                else:
                    depths = rng.permutation(np.resize(self.depth_grid(), num))
                data = make_split(rng, num, self.seq_len, depths, self.gen["num_pairs"], self.gen["filler_vocab"],
                                  self.gen["num_keys"], self.gen["num_values"])
                arrays.update({f"{split}_inputs": data.inputs, f"{split}_labels": data.labels,
                               f"{split}_depth": data.meta["depth"], f"{split}_length": data.meta["length"]})
            save_arrays_atomic(path, **arrays)
        with np.load(path) as d:
            splits = {s: Split(d[f"{s}_inputs"], d[f"{s}_labels"], {"depth": d[f"{s}_depth"],
                                                                    "length": d[f"{s}_length"]}) for s in SPLITS}
        return TaskData(**splits, source=f"generated:{path}")


# ---- heatmap ---------------------------------------------------------------------------------------
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
        fig.suptitle("Needle test accuracy by length and depth (" + "; ".join(
            f"L={n}: {', '.join(sorted(d))}" for n, d in sorted(where.items())) + ")", fontsize=10)
    if notes:
        fig.text(0.01, -0.01, "\n".join(notes), fontsize=7, va="top", ha="left", family="monospace")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lra_sfa.tasks.needle")
    parser.add_argument("command", choices=["heatmap"])
    parser.add_argument("--runs", default="results/runs", help="folder searched for record JSON files")
    parser.add_argument("--out", default="results/plots/needle_heatmap.png")
    args = parser.parse_args(argv)
    records = []
    for path in sorted(Path(args.runs).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    print(plot_needle_heatmap(records, args.out))


if __name__ == "__main__":
    main()
