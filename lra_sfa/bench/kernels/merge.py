"""``mode=merge``: a device run's benchmark CSVs into results/kernels, cell by cell, then the plots."""

from __future__ import annotations

import csv
from pathlib import Path

from lra_sfa.bench import wide
from lra_sfa.bench.kernels.rows import KERNEL_KEY, TOPK_KEY, RowWriter
from lra_sfa.bench.kernels.table import NEEDED, plot


def merge(src: Path, out: Path) -> None:
    """Merge the benchmark CSVs found in ``src`` into ``out`` cell by cell (each src row replaces the out row
    of the same cell; every other out row stays), then redraw the plots."""
    keys = {"sfa_vs_sdpa.csv": KERNEL_KEY, "sfa_checks.csv": KERNEL_KEY, "sfa_topk.csv": TOPK_KEY,
            "sfa_wide.csv": wide.WIDE_KEY}
    found = [name for name in keys if (src / name).is_file()]
    if not found:
        raise SystemExit(f"lra_sfa.bench.kernels mode=merge: none of {sorted(keys)} in {src}")
    for name in found:
        with (src / name).open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows, src_columns = list(reader), list(reader.fieldnames or [])
        missing = [c for c in NEEDED if c not in src_columns] if name == "sfa_vs_sdpa.csv" else []
        if missing:
            raise SystemExit(f"lra_sfa.bench.kernels mode=merge: {src / name} lacks the protocol's columns {missing}")
        columns = src_columns
        if (out / name).is_file():
            with (out / name).open(newline="") as handle:
                old_columns = list(csv.DictReader(handle).fieldnames or [])
            columns = old_columns + [c for c in src_columns if c not in old_columns]
        table = RowWriter(out / name, columns, key=keys[name])
        for row in rows:
            table.write(row)
        print(f"merged {len(rows)} rows of {src / name} into {out / name}")
    if (out / "sfa_vs_sdpa.csv").is_file():
        plot(out / "sfa_vs_sdpa.csv", out / "sfa_vs_sdpa.png")
    if (out / "sfa_wide.csv").is_file():
        wide.plot(out)
