"""``make run``: full vs SFA attention on a REDUCED ListOps, then a comparison table.

    python -m lra_sfa.demo [hydra overrides applied to every run, e.g. trainer.max_steps=100]

Runs ``experiment=listops_reduced`` once per backend through the same
``run(cfg)`` as the CLI, writes each run's record under ``outputs/demo/``
and prints and writes the comparison (``outputs/demo/comparison.{md,csv}``).
This is a reduced protocol sized for a 2-core CPU; its numbers are not
comparable with published LRA results (use ``experiment=lra_listops``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table

from lra_sfa.train import run

BACKENDS = ("full", "sfa")
OUT = Path("outputs/demo")
COLUMNS = {
    "attn": "attention", "attn_path": "path", "test_accuracy": "test acc", "val_accuracy": "val acc",
    "steps": "steps", "train_seconds": "train s", "steps_per_second": "steps/s", "peak_memory_mb": "peak MB",
    "status": "status",
}


def comparison_table(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{key: record.get(key) for key in COLUMNS} for record in records])
    return frame.rename(columns=COLUMNS)


def main(overrides: list[str]) -> pd.DataFrame:
    console = Console(width=max(120, Console().width))
    console.print(
        "[bold yellow]REDUCED PROTOCOL[/]: ListOps with expressions of 41-127 tokens, 8k training examples, "
        "a 2-layer width-64 model, 600 steps on the CPU. Not comparable with published LRA numbers; "
        "`python -m lra_sfa experiment=lra_listops attn=...` runs the paper protocol."
    )
    records = []
    with initialize_config_module("lra_sfa.conf", version_base=None):
        for backend in BACKENDS:
            cfg = compose("config", overrides=[
                "experiment=listops_reduced", f"attn={backend}", f"run_dir={OUT / backend}",
                f"results_dir={OUT / 'runs'}", *overrides,
            ])
            console.rule(f"{backend}")
            records.append(run(cfg))
    frame = comparison_table(records)
    device, date = records[0]["device"], records[0]["date"][:10]
    table = Table(title=f"Reduced ListOps: full vs SFA ({device}, {date})")
    for column in frame.columns:
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{value:.4g}" if isinstance(value, float) else str(value) for value in row])
    console.print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT / "comparison.csv", index=False)
    header = f"Reduced ListOps protocol (not LRA), device {device}, date {date}, overrides {overrides or 'none'}\n\n"
    (OUT / "comparison.md").write_text(header + frame.to_markdown(index=False) + "\n")
    console.print(f"written: {OUT / 'comparison.md'}, {OUT / 'comparison.csv'}, records in {OUT / 'runs'}")
    return frame


if __name__ == "__main__":
    main(sys.argv[1:])
