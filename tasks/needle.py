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
``length``, so the runner reports ``test_accuracy_by_depth``; the report draws accuracy over
(length, depth) per backend from the run records (``lra_sfa.report.needle``).
Generation is vectorised numpy, int16 tokens, in row blocks: memory ~2 bytes per token of
the split plus one block; 1M-token sequences are fine for small example counts.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    raise SystemExit("python -m lra_sfa.tasks.needle heatmap was replaced by `make tables` (python -m lra_sfa.report), "
                     "which draws results/plots/needle_heatmap.png from the records")
