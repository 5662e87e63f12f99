"""ListOps (LRA): nested MIN/MAX/MED/SM expressions over digits, 10 classes.

Generator (faithful to the LRA release's ``data/listops.py``): a node at depth
d < max_depth is a digit with probability 0.75, else an operator drawn
uniformly from MIN, MAX, MED, SM with UniformInt[2, max_args] children; at
max_depth it is always a digit. Length counts digits, operators and closing
brackets (not parentheses). Trees with min_length < length < max_length are
kept, de-duplicated, in first-seen order, and split train/val/test.
MED is int(np.median), SM is the sum mod 10.

Files use the official TSV format (header ``Source<TAB>Target``; the Source
is the parenthesised tree, e.g. ``( ( ( [MAX 2 ) 9 ) ] )``).
LRA tokenisation: parentheses dropped, ``]`` becomes ``X``, split on spaces.

Speed: results/tasks/NOTES.md. Workers are processes with their own seed streams;
trees that outgrow max_length are abandoned while being built.
"""

from __future__ import annotations

import csv
import os
import random
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lra_sfa.fileio import chmod_like_open
from lra_sfa.tasks.base import Split, Task, TaskData, TaskDataError, cache_key, pad_to, save_arrays_atomic

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
SYMBOLS = tuple(str(d) for d in range(10)) + OPERATORS + ("X",)
PAD, UNK = 0, 1
VOCAB = {symbol: i + 2 for i, symbol in enumerate(SYMBOLS)}  # 0 = pad, 1 = unknown
SPLITS = ("train", "val", "test")
MAX_LINE_BYTES = 1 << 20  # the longest LRA example (2000 tokens) takes about 10 KB


class _TooLong(Exception):
    """Raised while growing a tree that already exceeds the length limit (it would be rejected)."""


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: list[int]):
    """A random tree as nested tuples ((op, a), b), ... closed by END; or a digit.

    ``budget`` holds the tokens still allowed; growing past it aborts early,
    which drops only trees the length filter would reject anyway.
    """
    r = rng.random() if depth < max_depth else 1.0
    if r > 0.25:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooLong
        return rng.randrange(10)
    children = [_tree(rng, depth + 1, max_depth, max_args, budget) for _ in range(rng.randint(2, max_args))]
    budget[0] -= 2  # operator and closing bracket
    if budget[0] < 0:
        raise _TooLong
    node = (rng.choice(OPERATORS), children[0])
    for child in children[1:]:
        node = (node, child)
    return (node, END)


def _length(tree) -> int:
    if isinstance(tree, tuple):
        return _length(tree[0]) + _length(tree[1])
    return 1


def to_source(tree) -> str:
    """The official parenthesised serialisation."""
    if isinstance(tree, tuple):
        return f"( {to_source(tree[0])} {to_source(tree[1])} )"
    return str(tree)


def evaluate_tokens(tokens: list[str]) -> int:
    """Evaluate a tokenised expression (operators, digits, X) with a stack."""
    stack: list[list] = []
    value = None
    for token in tokens:
        if token in OPERATORS:
            stack.append([token])
        elif token == "X":
            op, *args = stack.pop()
            if op == "[MIN":
                value = min(args)
            elif op == "[MAX":
                value = max(args)
            elif op == "[MED":
                value = int(np.median(args))
            else:
                value = sum(args) % 10
            if stack:
                stack[-1].append(value)
        else:
            value = int(token)
            if stack:
                stack[-1].append(value)
    return value


def tokenize(source: str) -> list[str]:
    """LRA tokenisation: drop parentheses, ']' -> 'X'."""
    return [t.replace("]", "X") for t in source.split() if t not in ("(", ")")]


def _generate_chunk(args) -> list[tuple[str, int]]:
    seed, count, min_length, max_length, max_depth, max_args = args
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        try:
            tree = _tree(rng, 1, max_depth, max_args, [max_length - 1])
        except _TooLong:
            continue
        if min_length < _length(tree) < max_length:
            source = to_source(tree)
            out.append((source, evaluate_tokens(tokenize(source))))
    return out


def generate(num: int, min_length: int, max_length: int, max_depth: int = 10, max_args: int = 10,
             seed: int = 0, workers: int | None = None) -> list[tuple[str, int]]:
    """``num`` unique (source, target) pairs, in a deterministic order for a given seed."""
    workers = workers or min(16, os.cpu_count() or 1)
    seen: dict[str, int] = {}
    round_index = 0
    with ProcessPoolExecutor(workers) as pool:
        while len(seen) < num:
            need = num - len(seen)
            per_job = max(64, need // (4 * workers) + 1)
            jobs = [(seed * 1_000_003 + round_index * 10_007 + j, per_job, min_length, max_length, max_depth, max_args)
                    for j in range(-(-need // per_job))]
            round_index += 1
            for chunk in pool.map(_generate_chunk, jobs):
                for source, target in chunk:
                    if len(seen) < num:
                        seen.setdefault(source, target)
    return list(seen.items())


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    """Write the official format atomically: header Source<TAB>Target. The temp file's name is unique,
    so processes that generate the same cache at once (DDP ranks) never rename each other's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        chmod_like_open(fd)  # a shared cache stays readable (mkstemp makes 0600)
        with os.fdopen(fd, "w", newline="") as f:
            f.write("Source\tTarget\n")
            for source, target in rows:
                f.write(f"{source}\t{target}\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _lines(handle, path: Path):
    """Decoded lines of a file opened in binary; a line that is not UTF-8, or longer than any ListOps
    example could be, is a TaskDataError naming the file and line (read in bounded pieces, so a file
    without newlines never fills memory)."""
    line_no = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        line_no += 1
        if len(raw) > MAX_LINE_BYTES:
            raise TaskDataError(f"listops: {path} line {line_no} is longer than {MAX_LINE_BYTES} bytes, far beyond "
                                "any ListOps example (a few KB); is this the right file?")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TaskDataError(f"listops: {path} line {line_no}: byte {raw[err.start]:#04x} at column "
                                f"{err.start + 1} is not UTF-8") from None


def read_tsv(path: Path, seq_len: int) -> Split:
    """Read an official-format TSV into a Split; errors name the file and line."""
    if not path.is_file():
        raise TaskDataError(f"listops: missing file {path} (expected basic_train.tsv, basic_val.tsv, basic_test.tsv)")
    inputs, labels = [], []
    with open(path, "rb") as handle:
        reader = csv.reader(_lines(handle, path), delimiter="\t")
        try:
            header = next(reader, None)
            if header != ["Source", "Target"]:
                raise TaskDataError(f"listops: {path} line 1: expected header 'Source<TAB>Target', got {header!r}")
            for row in reader:
                source, target = _fields(row, path, reader.line_num)
                ids = [VOCAB.get(token, UNK) for token in tokenize(source)]
                if not ids:
                    raise TaskDataError(f"listops: {path} line {reader.line_num}: empty Source")
                inputs.append(pad_to(ids, seq_len, dtype=np.int8))
                labels.append(int(target))
        except csv.Error as err:
            raise TaskDataError(f"listops: {path} line {reader.line_num}: {err}") from None
    if not labels:
        raise TaskDataError(f"listops: {path} has a header but no examples")
    return Split(np.stack(inputs), np.asarray(labels, dtype=np.int64))


def _fields(row: list[str], path: Path, line_no: int) -> tuple[str, str]:
    """(Source, Target) of one row; Target must be one ASCII digit (int() would also take other scripts' digits)."""
    if len(row) != 2:
        raise TaskDataError(f"listops: {path} line {line_no}: expected 2 tab-separated fields, got {len(row)}")
    source, target = row
    if re.fullmatch(r"[0-9]", target.strip()) is None:
        raise TaskDataError(f"listops: {path} line {line_no}: Target {target!r} is not an integer 0..9")
    return source, target.strip()


class ListOps(Task):
    """ListOps from released TSVs (``data_dir``) or generated and cached."""

    name = "listops"
    vocab_size = len(VOCAB) + 2
    num_classes = 10

    def __init__(self, seq_len: int = 2000, pooling: str = "cls", data_dir: str | None = None,
                 num_train: int = 96_000, num_val: int = 2_000, num_test: int = 2_000, min_length: int = 500,
                 max_length: int = 2000, max_depth: int = 10, max_args: int = 10, seed: int = 0,
                 workers: int | None = None) -> None:
        super().__init__(seq_len, pooling, data_dir)
        if not 0 <= min_length < max_length - 1:
            raise ValueError(f"task listops: need 0 <= min_length < max_length - 1, got {min_length}, {max_length}")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.gen = {"min_length": min_length, "max_length": max_length, "max_depth": max_depth,
                    "max_args": max_args, "seed": seed}
        self.workers = workers

    def describe(self) -> dict:
        generator = {("data_seed" if key == "seed" else key): value for key, value in self.gen.items()}
        return {**super().describe(), **generator, **{f"num_{k}": v for k, v in self.sizes.items()}}

    def load(self, cache_dir) -> TaskData:
        if self.data_dir:
            folder = Path(self.data_dir).expanduser()
            splits = {s: read_tsv(folder / f"basic_{s}.tsv", self.seq_len) for s in SPLITS}
            return TaskData(**splits, source=str(folder))
        key = cache_key(task="listops", v=1, **self.gen, **self.sizes)
        folder = Path(cache_dir).expanduser() / "listops" / key
        if not all((folder / f"basic_{s}.tsv").is_file() for s in SPLITS):
            rows = generate(sum(self.sizes.values()), workers=self.workers, **self.gen)
            start = 0
            for split in SPLITS:
                write_tsv(folder / f"basic_{split}.tsv", rows[start : start + self.sizes[split]])
                start += self.sizes[split]
        arrays = folder / f"tokens_{self.seq_len}.npz"
        if arrays.is_file():
            data = np.load(arrays)
            splits = {s: Split(data[f"{s}_inputs"], data[f"{s}_labels"]) for s in SPLITS}
        else:
            splits = {s: read_tsv(folder / f"basic_{s}.tsv", self.seq_len) for s in SPLITS}
            fields = {f"{s}_{f}": getattr(splits[s], f) for s in SPLITS for f in ("inputs", "labels")}
            save_arrays_atomic(arrays, **fields)
        return TaskData(**splits, source=f"generated:{folder}")
