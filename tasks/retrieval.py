"""Retrieval (LRA): AAN citation matching of two documents, byte level, 2 classes, dual encoder.

``data_dir`` points at the folder holding the LRA release's
``new_aan_pairs.{train,eval,test}.tsv`` (``lra_release/tsv_data``; from ``lra_release.gz``,
see the LRA README). Each line: ``label<TAB>id1<TAB>id2<TAB>text1<TAB>text2``, no header,
label a float (0/1). Each document becomes its UTF-8 bytes + 1 (vocab 257, pad 0), cut to
``seq_len`` bytes (LRA: 4000 per document). Inputs are pairs (N, 2, seq_len) and ``dual``
is True: the model encodes both documents with shared weights and classifies
[x1, x2, x1*x2, x1-x2]. Splits: train, eval (= val), test. There is no hub fallback: the
AAN pairs exist only in the LRA release. Token arrays are cached under ``cache_dir/retrieval``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lra_sfa.tasks.base import Split, Task, TaskData, TaskDataError, cache_key, save_arrays_atomic
from lra_sfa.tasks.sources import byte_ids

FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
HINT = ("Download lra_release.gz (link in the LRA README, github.com/google-research/long-range-arena), unpack it "
        "and pass task.data_dir=.../lra_release/tsv_data (holding new_aan_pairs.train.tsv, "
        "new_aan_pairs.eval.tsv, new_aan_pairs.test.tsv).")


def read_pairs(path: Path, seq_len: int) -> Split:
    """One TSV file -> Split with inputs (N, 2, seq_len) int16; errors name the file and line."""
    if not path.is_file():
        raise TaskDataError(f"retrieval: missing file {path}. {HINT}")
    rows: list[np.ndarray] = []
    labels: list[int] = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise TaskDataError(f"retrieval: {path} line {line_no}: expected 5 tab-separated fields "
                                    f"(label, id1, id2, text1, text2), got {len(fields)}")
            try:
                label = float(fields[0])
            except ValueError:
                raise TaskDataError(
                    f"retrieval: {path} line {line_no}: label {fields[0][:20]!r} is not a number") from None
            if label not in (0.0, 1.0):
                raise TaskDataError(f"retrieval: {path} line {line_no}: label {label} is not 0 or 1")
            pair = np.zeros((2, seq_len), np.int16)  # (2 documents, seq_len)
            byte_ids(fields[3], seq_len, out=pair[0])
            byte_ids(fields[4], seq_len, out=pair[1])
            rows.append(pair)
            labels.append(int(label))
    if not labels:
        raise TaskDataError(f"retrieval: {path} holds no examples")
    return Split(np.stack(rows), np.asarray(labels, np.int64))


class Retrieval(Task):
    """AAN document pairs (see module docstring)."""

    name = "retrieval"
    vocab_size = 257
    num_classes = 2
    dual = True
    has_padding = True

    def __init__(self, seq_len: int = 4000, pooling: str = "cls", data_dir: str | None = None) -> None:
        super().__init__(seq_len, pooling, data_dir)

    def load(self, cache_dir) -> TaskData:
        if not self.data_dir:
            raise TaskDataError(f"retrieval: task.data_dir is required (the AAN pairs are not on a hub). {HINT}")
        folder = Path(self.data_dir).expanduser().resolve()
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise TaskDataError(f"retrieval: {folder} lacks {', '.join(missing)}. {HINT}")
        stamp = [((folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in FILES.values()]
        key = cache_key(folder=str(folder), seq_len=self.seq_len, stamp=stamp, v=1)
        path = Path(cache_dir).expanduser() / "retrieval" / f"{key}.npz"
        if not path.is_file():
            splits = {s: read_pairs(folder / name, self.seq_len) for s, name in FILES.items()}
            save_arrays_atomic(path, **{f"{s}_{f}": getattr(splits[s], f) for s in FILES for f in ("inputs", "labels")})
        with np.load(path) as data:
            splits = {s: Split(data[f"{s}_inputs"], data[f"{s}_labels"]) for s in FILES}
        return TaskData(**splits, source=str(folder))
