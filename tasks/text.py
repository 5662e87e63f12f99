"""Text (LRA): IMDB sentiment, byte level. Tokens are byte + 1 (vocab 257, pad 0), 2 classes.

Each review's UTF-8 bytes are truncated (the first ``seq_len`` bytes kept) or right-padded
with 0. Length 4096 by default (LRA paper: 4K; the released config uses 1000; ``text1000``,
``text2000`` configs for the others). Labels: neg 0, pos 1 (as TFDS ``imdb_reviews``).
There is no validation split in LRA: the test set is also used as val (same arrays).

Sources:
* ``data_dir``: the ``aclImdb`` folder of ``aclImdb_v1.tar.gz``
  (https://ai.stanford.edu/~amaas/data/sentiment/): ``{train,test}/{pos,neg}/<id>_<rating>.txt``;
  files are read in (label, id) order, ``unsup/`` is ignored.
* otherwise the HF hub dataset ``hf_name`` (default ``stanfordnlp/imdb``, columns text/label),
  from the local HF cache or downloaded; offline and uncached fails within seconds.
Token arrays are cached under ``cache_dir/text`` keyed by source, seq_len and a fingerprint of
the review files (path, size and mtime of each), so a file edited in place is noticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lra_sfa.tasks.base import Split, Task, TaskData, TaskDataError, cache_key, files_fingerprint, save_arrays_atomic
from lra_sfa.tasks.sources import byte_ids, load_hf

LABELS = {"neg": 0, "pos": 1}
_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")
ACLIMDB_HINT = ("Download https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, unpack it and pass "
                "task.data_dir=/path/to/aclImdb (holding train/pos, train/neg, test/pos, test/neg).")


def read_aclimdb_split(folder: Path, split: str, seq_len: int) -> Split:
    """One split of the aclImdb tree; errors name the folder or file."""
    files = []
    for label_name, label in LABELS.items():
        sub = folder / split / label_name
        if not sub.is_dir():
            raise TaskDataError(f"text: missing folder {sub}. {ACLIMDB_HINT}")
        for path in sub.iterdir():
            match = _NAME.match(path.name)
            if match is None:
                raise TaskDataError(f"text: {path}: file name is not <id>_<rating>.txt")
            if not path.is_file():  # checked before any open: reading a FIFO would block forever
                raise TaskDataError(f"text: {path} is not a regular file (a FIFO, socket, device or folder); "
                                    "aclImdb review folders hold only <id>_<rating>.txt files")
            files.append((label, int(match.group(1)), path))
    if not files:
        raise TaskDataError(f"text: {folder / split} holds no reviews. {ACLIMDB_HINT}")
    files.sort()
    inputs = np.zeros((len(files), seq_len), np.int16)
    for row, (_, _, path) in enumerate(files):
        data = path.read_bytes()
        if not data.strip():
            raise TaskDataError(f"text: {path} is empty")
        byte_ids(data, seq_len, out=inputs[row])
    return Split(inputs, np.asarray([label for label, _, _ in files], np.int64))


def encode_texts(texts, seq_len: int) -> np.ndarray:
    inputs = np.zeros((len(texts), seq_len), np.int16)
    for row, text in enumerate(texts):
        byte_ids(text.encode("utf-8"), seq_len, out=inputs[row])
    return inputs


class Text(Task):
    """IMDB reviews as bytes (see module docstring)."""

    name = "text"
    vocab_size = 257
    num_classes = 2
    has_padding = True

    def __init__(self, seq_len: int = 4096, pooling: str = "cls", data_dir: str | None = None,
                 hf_name: str = "stanfordnlp/imdb") -> None:
        super().__init__(seq_len, pooling, data_dir)
        self.hf_name = hf_name

    def describe(self) -> dict:
        return {**super().describe(), "hf_name": None if self.data_dir else self.hf_name, "val": "test (as LRA)"}

    def load(self, cache_dir) -> TaskData:
        if self.data_dir:
            folder = Path(self.data_dir).expanduser().resolve()
            if not folder.is_dir():
                raise TaskDataError(f"text: data_dir {folder} does not exist. {ACLIMDB_HINT}")
            stamp = files_fingerprint(*(folder / s / lab for s in ("train", "test") for lab in LABELS))
            source = str(folder)
        else:
            stamp, source = "", f"hf:{self.hf_name}"
        key = cache_key(source=source, seq_len=self.seq_len, stamp=stamp, v=2)
        path = Path(cache_dir).expanduser() / "text" / f"{key}.npz"
        if not path.is_file():
            splits = self._read(folder) if self.data_dir else self._read_hf()
            save_arrays_atomic(path, **{f"{s}_{f}": getattr(part, f) for s, part in splits.items()
                                        for f in ("inputs", "labels")})
        with np.load(path) as data:
            train = Split(data["train_inputs"], data["train_labels"])
            test = Split(data["test_inputs"], data["test_labels"])
        return TaskData(train=train, val=test, test=test, source=f"{source} (val = test, as LRA)")

    def _read(self, folder: Path) -> dict[str, Split]:
        return {s: read_aclimdb_split(folder, s, self.seq_len) for s in ("train", "test")}

    def _read_hf(self) -> dict[str, Split]:
        dataset = load_hf(self.hf_name, "text", f"Pass task.data_dir=/path/to/aclImdb instead: {ACLIMDB_HINT}")
        splits = {}
        for split in ("train", "test"):
            if split not in dataset:
                raise TaskDataError(f"text: HF dataset {self.hf_name!r} has no {split!r} split ({list(dataset)})")
            part = dataset[split]
            for column in ("text", "label"):
                if column not in part.column_names:
                    raise TaskDataError(f"text: HF dataset {self.hf_name!r} has no column {column!r}")
            splits[split] = Split(encode_texts(part["text"], self.seq_len), np.asarray(part["label"], np.int64))
        return splits
