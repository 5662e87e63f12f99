"""``make run``: full vs SFA attention on a REDUCED ListOps, then a comparison table.

    python -m lra_sfa.demo [key=value ...: training keys applied to every run, e.g. trainer.max_steps=100]

A Hydra app whose config, ``conf/demo.yaml``, is the training config with
``experiment=listops_reduced`` plus ``demo.backends`` and ``demo.out_dir``,
so a mistyped key fails before any run. Runs the experiment once per backend
through the same ``run(cfg)`` as the CLI, each composed afresh with the
command line's overrides, writes each run's record under ``demo.out_dir``
and prints and writes the comparison (``<demo.out_dir>/comparison.{md,csv}``).
This is a reduced protocol sized for a 2-core CPU; its numbers are not
comparable with published LRA results (use ``experiment=lra_listops``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from lra_sfa.__main__ import CLEAR_ERRORS, group_options
from lra_sfa.cli import exit_on_bad_input
from lra_sfa.compose import compose_config
from lra_sfa.train import run

COLUMNS = {
    "attn": "attention", "attn_path": "path", "test_accuracy": "test acc", "val_accuracy": "val acc",
    "steps": "steps", "train_seconds": "train s", "steps_per_second": "steps/s", "peak_memory_mb": "peak MB",
    "status": "status",
}


def comparison_table(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{key: record.get(key) for key in COLUMNS} for record in records])
    return frame.rename(columns=COLUMNS)


def run_demo(backends: Sequence[str], out: Path, overrides: Sequence[str]) -> pd.DataFrame:
    """One ``experiment=listops_reduced`` run per backend (``overrides`` after the demo's own), then the
    comparison, printed and written under ``out``."""
    options = group_options("attn").split(", ")
    unknown = [name for name in backends if name not in options]
    if unknown:
        raise ValueError(f"demo.backends: {unknown} not in conf/attn/; valid: {', '.join(options)}")
    console = Console(width=max(120, Console().width))
    console.print(
        "[bold yellow]REDUCED PROTOCOL[/]: ListOps with expressions of 41-127 tokens, 8k training examples, "
        "a 2-layer width-64 model, 600 steps on the CPU. Not comparable with published LRA numbers; "
        "`python -m lra_sfa experiment=lra_listops attn=...` runs the paper protocol."
    )
    records = []
    for backend in backends:
        cfg = compose_config(["experiment=listops_reduced", f"attn={backend}", f"run_dir={out / backend}",
                              f"results_dir={out / 'runs'}", *overrides])
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
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "comparison.csv", index=False)
    header = f"Reduced ListOps protocol (not LRA), device {device}, date {date}, overrides {overrides or 'none'}\n\n"
    (out / "comparison.md").write_text(header + frame.to_markdown(index=False) + "\n")
    console.print(f"written: {out / 'comparison.md'}, {out / 'comparison.csv'}, records in {out / 'runs'}")
    return frame


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="demo")
def _app(cfg: DictConfig) -> None:
    overrides = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("demo.", "demo="))]
    with exit_on_bad_input("lra-sfa demo", CLEAR_ERRORS):
        run_demo([str(name) for name in cfg.demo.backends], Path(cfg.demo.out_dir), overrides)


def main() -> None:
    """``python -m lra_sfa.demo [key=value ...]`` (``make run``)."""
    _app()


if __name__ == "__main__":
    main()
