"""What every task provides: a ``Task`` object that loads three splits.

A task module in ``tasks/`` (installed as ``lra_sfa.tasks``) defines a
subclass of ``Task``; ``conf/task/<name>.yaml`` names it in ``_target_`` with
its arguments. The runner calls ``task.load(cache_dir)`` and gets
``TaskData``: integer token arrays (numpy, any integer dtype, possibly
memory-mapped) and integer labels.

* single inputs: ``inputs`` is (N, seq_len); pad id 0.
* pairs (retrieval): ``inputs`` is (N, 2, seq_len) and ``Task.dual`` is True.
* per-position labels (``Task.token_level``, e.g. MQAR): ``labels`` is (N, seq_len) with -100
  wherever nothing is asked; the task's pooling is ``none`` and the model predicts every position.
* ``meta``: optional per-example arrays (N,) kept for analysis, e.g. the
  needle task's length and depth; the runner reports accuracy per group.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lra_sfa.fileio import chmod_like_open

PAD_ID = 0
IGNORE_INDEX = -100  # per-position label of a position that is not scored (torch cross_entropy's default)


class TaskDataError(ValueError):
    """Missing or malformed task data; the message names the file and what is wrong."""


@dataclass
class Split:
    inputs: np.ndarray  # (N, L) or (N, 2, L) integer tokens, pad = 0
    labels: np.ndarray  # (N,) integer class ids
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) arrays

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"Split: {len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split
    source: str  # where the data came from: a path, "generated:<key>", "hf:<name>"


class Task:
    """Base class. Subclasses set the class attributes and implement ``load``."""

    name: str = "task"
    vocab_size: int = 0
    num_classes: int = 0
    dual: bool = False  # True: inputs are pairs (N, 2, L) for a dual encoder
    # True: token 0 is padding, after a sequence's real tokens (right padding); False: token 0 is real data (pixels),
    # so no padding mask is derived (padding=release then masks value-0 tokens wherever they lie)
    has_padding: bool = True
    token_level: bool = False  # True: labels are per position (N, seq_len), -100 where nothing is asked; pooling none

    def __init__(self, seq_len: int, pooling: str = "cls", data_dir: str | None = None) -> None:
        if pooling not in ("cls", "mean", "last", "none"):
            raise ValueError(f"task {self.name}: pooling={pooling!r} must be one of cls, mean, last, none")
        if int(seq_len) < 1:
            raise ValueError(f"task {self.name}: seq_len={seq_len!r} must be a positive int")
        self.seq_len = int(seq_len)
        self.pooling = pooling
        self.data_dir = data_dir

    def load(self, cache_dir: str | Path) -> TaskData:
        raise NotImplementedError

    def describe(self) -> dict:
        """Parameters that go into the run record."""
        return {"task": self.name, "seq_len": self.seq_len, "pooling": self.pooling, "data_dir": self.data_dir}


def cache_key(**params) -> str:
    """A short stable hash of the parameters that determine generated data."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _file_entries(root: Path, read_under: tuple[str, ...]):
    """(relative path, size, mtime_ns, content digest or '') for ``root`` (a file) or every file below it."""
    if root.is_file():
        stat = root.stat()
        yield root.name, stat.st_size, stat.st_mtime_ns, ""
        return
    stack = [("", str(root))]  # (path relative to root, absolute path); strings: this runs once per file
    while stack:
        rel_folder, folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
                if entry.is_dir():
                    stack.append((rel, entry.path))
                    continue
                stat = entry.stat()
                read = rel.split("/", 1)[0] in read_under and entry.is_file()
                digest = hashlib.sha256(Path(entry.path).read_bytes()).hexdigest() if read else ""
                yield rel, stat.st_size, stat.st_mtime_ns, digest


def files_fingerprint(*roots: Path, read_under: tuple[str, ...] = ()) -> str:
    """A cheap content fingerprint of release files, for cache keys: every file's path, size and mtime under
    each root (stat only, no reads), plus a content hash of the files below the sub-folders ``read_under``
    (small metadata, where an edit may keep the size and land within the clock's resolution). Editing,
    adding or deleting any file changes it; a missing root counts as empty."""
    digest = hashlib.sha256()
    for root in roots:
        digest.update(f"root {root}\n".encode())
        if root.exists():
            for entry in _file_entries(Path(root), read_under):
                digest.update(("\t".join(map(str, entry)) + "\n").encode())
    return digest.hexdigest()[:16]


def save_arrays_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically (temp file + rename), so a kill leaves no partial cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        chmod_like_open(tmp)  # a shared cache stays readable (mkstemp makes 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pad_to(tokens: list[int] | np.ndarray, length: int, dtype=np.int16) -> np.ndarray:
    """Truncate or right-pad (with PAD_ID) a token sequence to ``length``."""
    out = np.zeros(length, dtype=dtype)
    seq = np.asarray(tokens, dtype=dtype)[:length]
    out[: len(seq)] = seq
    return out
