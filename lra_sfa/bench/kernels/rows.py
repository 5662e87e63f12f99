"""The kernel benchmark's CSV files: their columns, the key of one cell, and a writer that keeps other cells.

``sfa_vs_sdpa.csv`` holds one row per shape, op, baseline, card and timer (``COLUMNS``):
the ratio's median and spread over the interleaved repeats with its verdict
(``protocol``), and what produced it (commit, torch / Triton / cuDNN versions,
card, the SFA kernels that ran, ``timer``: do_bench or cudagraph). ``sfa_checks.csv`` holds the same cells with
the check's errors and both baseline inputs' times (``CHECK_COLUMNS``).
"""

from __future__ import annotations

import csv
from pathlib import Path

PROVENANCE = ["device", "git_commit", "torch_version", "triton_version", "cudnn_version", "date"]
COLUMNS = ["impl", "op", "batch", "heads", "seq_len", "head_dim", "topk", "dtype", "sfa_path", "ms", "baseline",
           "baseline_ms", "speedup_median", "speedup_min", "speedup_max", "repeats", "verdict", "max_rel_err",
           "peak_mem_mb", "timer", *PROVENANCE]
CHECK_COLUMNS = COLUMNS + ["baseline_random_ms", "baseline_sparse_ms", "torch_err", "passes", "cache_bytes_per_token",
                           "dense_bytes_per_token", "fwd_config"]
TOPK_COLUMNS = ["rows", "head_dim", "topk", "topk_pack_ms", "torch_topk_ms", *PROVENANCE]
TOPK_KEY = ["rows", "head_dim", "topk", "device"]
# one cell of sfa_vs_sdpa.csv / sfa_checks.csv: a re-measured cell replaces its row; rows of other cards stay
KERNEL_KEY = ["impl", "op", "batch", "heads", "seq_len", "head_dim", "topk", "dtype", "baseline", "device", "timer"]
SFA_IMPL = "sfa_triton"


def _cell(value) -> str:
    return "" if value is None else str(value)


class RowWriter:
    """A CSV of dict rows, rewritten atomically (a temporary file, then a rename) after every row.

    With ``key`` (column names) the rows already in the file are kept and a new row replaces the one
    with the same key, so a partial re-run (one op, one head dim, one card) updates its own cells and
    loses none of the others; each row keeps its own commit and date. Without ``key`` the file starts empty.
    """

    def __init__(self, path: Path, columns: list[str], key: list[str] | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.columns, self.key = path, columns, key
        self.rows: list[dict[str, str]] = []
        if key and path.exists():
            with path.open(newline="") as handle:
                self.rows = [{c: row.get(c) or "" for c in columns} for row in csv.DictReader(handle)]
        self._flush()

    def _key_of(self, row: dict) -> tuple[str, ...]:
        return tuple(_cell(row.get(c)) for c in self.key or ())  # a key column the file lacks reads as ""

    def write(self, row: dict) -> None:
        cells = {c: _cell(row.get(c)) for c in self.columns}
        key = self._key_of(cells)
        same = [i for i, old in enumerate(self.rows) if self.key and self._key_of(old) == key]
        if same:
            self.rows[same[0]] = cells
            self.rows = [r for i, r in enumerate(self.rows) if i not in same[1:]]
        else:
            self.rows.append(cells)
        self._flush()

    def _flush(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)
