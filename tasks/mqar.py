"""Multi-query associative recall (MQAR), after Zoology (Arora et al. 2023): a per-token prediction task.

A sequence of ``seq_len`` tokens (0-based positions) holds ``num_pairs`` key-value pairs, then queries:

    k_1 v_1 k_2 v_2 ... k_P v_P | q . q . . . q . ...        (C = 2P context tokens, then the query region)

Keys are drawn without replacement from the key vocabulary ``1 .. vocab_size/2 - 1``, values without
replacement from the disjoint value vocabulary ``vocab_size/2 .. vocab_size - 1`` (token 0 is the empty
filler of the query region, never a key or value). Every key is queried exactly once: key j is
written at position ``C + 2 * g_j``, where the slots ``g_1..g_P`` are distinct draws from
``0 .. (seq_len - C)/2 - 1`` with probability proportional to ``(g + 1) ** (power_a - 1)`` (a power
law favouring queries close to the context, ``power_a = 0.01`` as in the paper). The label at a
query position is the queried key's value; every other position has label ``IGNORE_INDEX`` (-100)
and is neither trained on nor scored. As in Zoology's generator (whose values after a query are
in the labels only), no value follows its query in the input, so a bidirectional encoder sees no
answer. Zoology trains causal language models; the harness's encoders attend both ways. With
``random_non_queries`` the filler positions hold uniform random tokens ``1 .. vocab_size - 1``
instead of 0 (Zoology's option; its Figure 2 runs leave it off).

Keys and values are uniform draws without replacement; the query slots are drawn without
replacement under the power law by the Gumbel top-k trick (the top P of ``log p + Gumbel noise`` is
distributed as successive draws without replacement), so generation is vectorised numpy over row
blocks. Splits are generated from ``seed`` (one stream per split) and cached under ``cache_dir/mqar``;
tokens and labels are int16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lra_sfa.tasks.base import IGNORE_INDEX, Split, Task, TaskData, cache_key, save_arrays_atomic

SPLITS = ("train", "val", "test")
BLOCK_TOKENS = 1 << 22  # random numbers per generation block (32 MiB of float64)
MAX_VOCAB = 1 << 15  # int16 tokens


def check_params(seq_len: int, num_pairs: int, vocab_size: int) -> None:
    """ValueError naming the parameter when (seq_len, num_pairs, vocab_size) cannot make an MQAR sequence."""
    if num_pairs < 1:
        raise ValueError(f"task mqar: num_pairs={num_pairs} must be at least 1")
    if seq_len % 2:
        raise ValueError(f"task mqar: seq_len={seq_len} must be even (pairs and query slots take two tokens)")
    if 4 * num_pairs > seq_len:
        raise ValueError(f"task mqar: num_pairs={num_pairs} needs seq_len >= {4 * num_pairs} (2 tokens per pair "
                         f"and a 2-token query slot per pair), got seq_len={seq_len}; use num_pairs <= {seq_len // 4}")
    if not 4 <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"task mqar: vocab_size={vocab_size} must be in [4, {MAX_VOCAB}]")
    keys, values = vocab_size // 2 - 1, vocab_size - vocab_size // 2
    if num_pairs > min(keys, values):
        raise ValueError(f"task mqar: num_pairs={num_pairs} distinct keys need vocab_size >= {2 * num_pairs + 2} "
                         f"({keys} keys and {values} values with vocab_size={vocab_size})")


def gap_probabilities(space: int, power_a: float) -> np.ndarray:
    """(space,) probabilities of query slot g = 0 .. space-1: proportional to (g + 1) ** (power_a - 1)."""
    weights = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1.0)
    return weights / weights.sum()


def distinct_draws(rng: np.random.Generator, rows: int, count: int, log_p: np.ndarray) -> np.ndarray:
    """(rows, count) distinct indices per row, drawn without replacement with probabilities exp(log_p)."""
    keys = log_p[None, :] + rng.gumbel(size=(rows, len(log_p)))  # (rows, n) perturbed log-probabilities
    top = np.argpartition(-keys, count - 1, axis=1)[:, :count]  # (rows, count) the largest, unordered
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)


def distinct_uniform(rng: np.random.Generator, rows: int, count: int, n: int) -> np.ndarray:
    """(rows, count) distinct integers in [0, n) per row, every subset and order equally likely: the
    positions of the ``count`` smallest of n uniform numbers, shuffled (float32 halves the cost of
    Gumbel keys, which only a non-uniform law needs)."""
    smallest = np.argpartition(rng.random((rows, n), dtype=np.float32), count - 1, axis=1)[:, :count]
    return rng.permuted(smallest, axis=1)


def make_block(rng: np.random.Generator, rows: int, seq_len: int, num_pairs: int, vocab_size: int,
               power_a: float, random_non_queries: bool) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` sequences: tokens (rows, seq_len) int16 and labels (rows, seq_len) int16 (IGNORE_INDEX off queries)."""
    half = vocab_size // 2
    context = 2 * num_pairs
    keys = 1 + distinct_uniform(rng, rows, num_pairs, half - 1)  # (rows, P) in 1 .. half-1
    values = half + distinct_uniform(rng, rows, num_pairs, vocab_size - half)  # (rows, P) in half .. vocab-1
    gaps = distinct_draws(rng, rows, num_pairs, np.log(gap_probabilities((seq_len - context) // 2, power_a)))
    if random_non_queries:
        tokens = rng.integers(1, vocab_size, size=(rows, seq_len), dtype=np.int16)
    else:
        tokens = np.zeros((rows, seq_len), np.int16)
    tokens[:, 0:context:2], tokens[:, 1:context:2] = keys, values
    query_pos = context + 2 * gaps  # (rows, P): key j is queried at query_pos[:, j]
    labels = np.full((rows, seq_len), IGNORE_INDEX, np.int16)
    np.put_along_axis(tokens, query_pos, keys.astype(np.int16), axis=1)
    np.put_along_axis(labels, query_pos, values.astype(np.int16), axis=1)
    return tokens, labels


def make_split(rng: np.random.Generator, num: int, seq_len: int, num_pairs: int, vocab_size: int,
               power_a: float, random_non_queries: bool) -> Split:
    """``num`` sequences generated in row blocks of about BLOCK_TOKENS random numbers."""
    tokens = np.zeros((num, seq_len), np.int16)
    labels = np.full((num, seq_len), IGNORE_INDEX, np.int16)
    widest = max(vocab_size, seq_len)  # the largest Gumbel draw per row
    block = max(1, BLOCK_TOKENS // widest)
    for start in range(0, num, block):
        rows = min(block, num - start)
        tokens[start:start + rows], labels[start:start + rows] = make_block(
            rng, rows, seq_len, num_pairs, vocab_size, power_a, random_non_queries)
    return Split(tokens, labels)


class MQAR(Task):
    """Multi-query associative recall (see module docstring); labels are per position, (N, seq_len)."""

    name = "mqar"
    token_level = True  # one label per position (IGNORE_INDEX where nothing is asked)
    has_padding = False  # fixed length; token 0 is the query region's filler, a real token

    def __init__(self, seq_len: int = 256, pooling: str = "none", data_dir: str | None = None,
                 num_pairs: int = 16, vocab_size: int = 8192, power_a: float = 0.01,
                 random_non_queries: bool = False, num_train: int = 100_000, num_val: int = 3000,
                 num_test: int = 3000, seed: int = 0) -> None:
        super().__init__(seq_len, pooling, data_dir)
        if pooling != "none":
            raise ValueError(f"task mqar: pooling={pooling!r} must be 'none' (a prediction at every query position)")
        check_params(self.seq_len, int(num_pairs), int(vocab_size))
        if not 0 < float(power_a) <= 1:
            raise ValueError(f"task mqar: power_a={power_a} must be in (0, 1] (1 = uniform query slots)")
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if int(value) < 0:
                raise ValueError(f"task mqar: {key}={value} must be 0 or more")
        self.num_pairs, self.vocab_size, self.num_classes = int(num_pairs), int(vocab_size), int(vocab_size)
        self.power_a, self.random_non_queries = float(power_a), bool(random_non_queries)
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.seed = int(seed)

    def describe(self) -> dict:
        return {**super().describe(), "num_pairs": self.num_pairs, "vocab_size": self.vocab_size,
                "power_a": self.power_a, "random_non_queries": self.random_non_queries,
                "num_val": self.sizes["val"], "num_test": self.sizes["test"], "generator_seed": self.seed}

    def _params(self) -> dict:
        return {"seq_len": self.seq_len, "num_pairs": self.num_pairs, "vocab_size": self.vocab_size,
                "power_a": self.power_a, "random_non_queries": self.random_non_queries}

    def load(self, cache_dir) -> TaskData:
        splits = {}
        for index, split in enumerate(SPLITS):
            num = self.sizes[split]
            key = cache_key(split=split, num=num, seed=self.seed, v=1, **self._params())
            path = Path(cache_dir).expanduser() / "mqar" / f"{split}-{key}.npz"
            if not path.is_file():
                rng = np.random.default_rng((self.seed, index))  # one stream per split: val/test never seen in train
                made = make_split(rng, num, **self._params())
                save_arrays_atomic(path, inputs=made.inputs, labels=made.labels)
            with np.load(path) as data:
                splits[split] = Split(data["inputs"], data["labels"])
        return TaskData(**splits, source=f"generated:mqar-{cache_key(seed=self.seed, **self._params())}")
