"""The table that ends a Hydra multirun: one row per job, read from the jobs' records.

A Hydra ``Callback`` (registered in ``conf/config.yaml`` under
``hydra.callbacks``). ``on_multirun_end`` runs in the launching process once
every job has returned, whatever the launcher (basic, joblib, SLURM), so the
rows come from the ``record.json`` files that the jobs left in their folders
under ``hydra.sweep.dir`` rather than from in-process return values. A job
folder without a record (a job killed before it could write one) is listed
as ``no record``. The table is printed and written beside the jobs as
``summary.md`` and ``summary.csv``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

COLUMNS = ("job", "task", "attn", "status", "val_accuracy", "test_accuracy", "steps_per_second")
HEADERS = {"val_accuracy": "val acc", "test_accuracy": "test acc", "steps_per_second": "steps/s"}


def _job_order(folder: Path) -> tuple[int, str]:
    """Sort key: the job number that starts Hydra's subdir name (``<num>_<task>_<attn>``), then the name."""
    match = re.match(r"(\d+)", folder.name)
    return (int(match.group(1)) if match else 1 << 30, folder.name)


def summary_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder (a folder holding Hydra's ``.hydra/`` or a ``record.json``), in job order."""
    sweep_dir = Path(sweep_dir)
    folders = {p.parent for p in sweep_dir.glob("*/.hydra")} | {p.parent for p in sweep_dir.glob("*/record.json")}
    rows = []
    for folder in sorted(folders, key=_job_order):
        row: dict[str, Any] = {key: None for key in COLUMNS}
        row.update(job=folder.name, status="no record")
        record_path = folder / "record.json"
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text())
            except (OSError, ValueError) as exc:
                record = {"status": f"unreadable record ({type(exc).__name__})"}
            row.update({key: record.get(key) for key in COLUMNS[1:]})
        rows.append(row)
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("accuracy"):
        return f"{100 * float(value):.1f}%"
    if key == "steps_per_second":
        return f"{float(value):.2f}"
    return str(value)


def render(rows: list[dict[str, Any]], title: str) -> Table:
    """The rows as a rich table (accuracies in percent)."""
    table = Table(title=title)
    for key in COLUMNS:
        table.add_column(HEADERS.get(key, key), justify="right" if key in HEADERS else "left")
    for row in rows:
        table.add_row(*[_cell(key, row[key]) for key in COLUMNS])
    return table


class SweepSummary(Callback):
    """Prints (and writes beside the jobs) a table of every job of the multirun that just ended."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = summary_rows(sweep_dir)
        if not rows:
            return
        Console().print(render(rows, f"lra-sfa multirun: {len(rows)} jobs in {sweep_dir}"))
        frame = pd.DataFrame(rows, columns=list(COLUMNS)).rename(columns=HEADERS)
        try:
            frame.to_csv(sweep_dir / "summary.csv", index=False)
            (sweep_dir / "summary.md").write_text(frame.to_markdown(index=False) + "\n")
        except OSError as exc:
            print(f"lra-sfa: could not write the sweep summary in {sweep_dir}: {exc.strerror}")
