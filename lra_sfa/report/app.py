"""``python -m lra_sfa.report in_dir=results out_dir=results`` (``make tables``): tables, plots, RESULTS.md.

Everything is regenerated from the records alone: every JSON record under
``in_dir`` (run records, ``"kind": "bench"`` records), the published numbers
in ``results/published/`` and the SFA kernel CSV. Writes, under ``out_dir``:

    tables/accuracy.md, tables/accuracy.csv       LRA Table 1 form (val and test), published beside
    tables/efficiency.md, tables/efficiency.csv   LRA Table 2 form, the length sweep, harness overhead,
                                                  SFA kernels vs SDPA beside the SFA paper
    tables/fmnist.*, tables/mqar.*, plots/mqar_*  the non-LRA tasks (lra_sfa/report/extra_tasks.py)
    plots/*.png                                   see lra_sfa/report/plots.py
    RESULTS.md                                    all of the above in one page (the README links it)

Bad or partial records are listed (here and at the end of RESULTS.md) and
skipped; they never stop the report. The output depends only on the inputs
(no clock), so rerunning on unchanged records changes no file.

A Hydra app like the others; its config is ``conf/report.yaml`` (in_dir,
out_dir, published_dir, kernels_csv: defaults and meanings there and in
``--help``). Hydra's run folder is the working directory and it writes no
``.hydra/`` or log file: the report writes only under out_dir. An argument
that is not one of those keys (or Hydra's own) is one line on stderr, exit 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lra_sfa.report.efficiency import efficiency_section
from lra_sfa.report.extra_tasks import extra_tasks_section
from lra_sfa.report.headline import headline_markdown
from lra_sfa.report.load import Inputs, load_inputs
from lra_sfa.report.tables import accuracy_section

KEYS = ("in_dir", "out_dir", "published_dir", "kernels_csv")
REPO_PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "published"
PLOT_FILES = {
    "speed_vs_length.png": "Speed against length (sweep, log-log)",
    "memory_vs_length.png": "Peak memory against length (sweep, log-log)",
    "accuracy_speed_memory.png": "Accuracy vs speed vs memory (LRA Figure 3 form)",
    "needle_heatmap.png": "Needle accuracy over length and depth",
    "needle_by_length.png": "Needle accuracy at lengths other than the trained one (trainer.test_lengths)",
    "sfa_kernel_speedup.png": "SFA Triton kernels: speed-up over SDPA",
}
PLOT_SOURCES = {  # where each plot's device, date and settings are written
    "speed_vs_length.png": "the efficiency tables above",
    "memory_vs_length.png": "the efficiency tables above",
    "accuracy_speed_memory.png": "the accuracy tables above",
    "needle_heatmap.png": "the needle rows of the accuracy tables above (one run per cell)",
    "needle_by_length.png": "its title and legend (device, date, training length)",
    "sfa_kernel_speedup.png": "the SFA kernel table above and results/kernels/README.md",
}


def report_paths(cfg: DictConfig) -> dict[str, Path | None]:
    """The keyword arguments of ``build_report`` from a report config, defaults filled in as
    ``conf/report.yaml`` describes them (null: the default; ``published_dir=""``: no published numbers)."""
    if cfg.in_dir is None or not str(cfg.in_dir):
        raise ValueError("report: in_dir is empty; give the folder of records (default: results)")
    in_dir = Path(str(cfg.in_dir))
    if cfg.published_dir is None:
        published_dir = in_dir / "published" if (in_dir / "published").is_dir() else REPO_PUBLISHED
    else:
        published_dir = Path(str(cfg.published_dir)) if str(cfg.published_dir) else None
    kernels = str(cfg.kernels_csv or "")
    return {"in_dir": in_dir, "out_dir": Path(str(cfg.out_dir or in_dir)), "published_dir": published_dir,
            "kernels_csv": Path(kernels) if kernels else in_dir / "kernels" / "sfa_vs_sdpa.csv"}


def argument_problem(argv: Sequence[str]) -> str | None:
    """Why a command-line argument is neither ``key=value`` with a report key nor Hydra's own (a flag,
    its value, or a ``hydra.``/``hydra/`` override); None when all are. Checked before Hydra parses the
    line, because Hydra reports an unknown key in several lines."""
    previous = ""
    for arg in argv:
        key, sep, _ = arg.partition("=")
        key = key.lstrip("+~")
        flag_or_value = arg.startswith("-") or (not sep and previous.startswith("-"))
        if not flag_or_value and not (sep and (key in KEYS or key.startswith(("hydra.", "hydra/")))):
            return f"bad argument {arg!r}; use key=value with key in {KEYS}"
        previous = arg
    return None


def report_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/report.yaml`` with ``overrides`` applied, as ``python -m lra_sfa.report <overrides>``
    composes it; ValueError for an argument that is not a report key."""
    from lra_sfa.compose import compose_config

    problem = argument_problem(overrides)
    if problem:
        raise ValueError(f"report: {problem}")
    return compose_config(list(overrides), config_name="report")


def _demote(markdown: str) -> str:
    """## -> ###, ### -> ####: a section embedded one level deeper."""
    return "\n".join("#" + line if line.startswith("##") else line for line in markdown.splitlines())


def make_plots(inputs: Inputs, plots_dir: Path) -> dict[str, Path | None]:
    """Every figure; a figure with no data is not written (and an old copy is removed)."""
    from lra_sfa.report import plots

    made = {
        "speed_vs_length.png": plots.plot_sweep(inputs.bench, "ms", "ms per call (median)",
                                                plots_dir / "speed_vs_length.png"),
        "memory_vs_length.png": plots.plot_sweep(inputs.bench, "peak_memory_mb", "peak memory (MB)",
                                                 plots_dir / "memory_vs_length.png"),
        "accuracy_speed_memory.png": plots.plot_accuracy_speed_memory(inputs.runs,
                                                                      plots_dir / "accuracy_speed_memory.png"),
        "needle_heatmap.png": plots.plot_needle(inputs.runs, plots_dir / "needle_heatmap.png"),
        "needle_by_length.png": plots.plot_needle_by_length(inputs.runs, plots_dir / "needle_by_length.png"),
        "sfa_kernel_speedup.png": plots.plot_kernel_speedup(inputs.kernels_csv, plots_dir / "sfa_kernel_speedup.png"),
    }
    for name, path in made.items():
        if path is None and (plots_dir / name).exists():
            (plots_dir / name).unlink()
    return made


def _skipped_md(inputs: Inputs) -> str:
    if not inputs.skipped:
        return "None."
    return "\n".join(f"- `{path}`: {reason}" for path, reason in inputs.skipped)


def _plots_md(made: dict[str, Path | None]) -> str:
    lines = []
    for name, title in PLOT_FILES.items():
        if made.get(name) is not None:
            lines += [f"### {title}", f"![{title}](plots/{name})",
                      f"Measured; device, date and settings of every point: {PLOT_SOURCES[name]}."]
        else:
            lines += [f"### {title}", "Not generated: no records for it yet."]
    return "\n\n".join(lines)


def results_page(inputs: Inputs, accuracy_md: str, efficiency_md: str, made: dict[str, Path | None],
                 extra_md: str = "") -> str:
    devices = sorted({str(r.get("device")) for r in [*inputs.runs, *inputs.bench]})
    dates = sorted(str(r.get("date", ""))[:10] for r in [*inputs.runs, *inputs.bench])
    span = f"{dates[0]} to {dates[-1]}" if dates else "none"
    return "\n\n".join([
        "# Results",
        "<!-- Generated by `make tables` (python -m lra_sfa.report); edits here are overwritten. -->",
        f"Regenerated from {len(inputs.runs)} run records and {len(inputs.bench)} benchmark records "
        f"(dates {span}; devices: {', '.join(devices) or 'none'}); {len(inputs.skipped)} files skipped "
        "(listed at the end). Published numbers are data in `results/published/`, always labelled "
        "\"published\" and never mixed with measured ones. Tables as files: `tables/accuracy.{md,csv}`, "
        "`tables/efficiency.{md,csv}`.",
        "## Accuracy (LRA Table 1 form)", _demote(accuracy_md),
        "## Efficiency", _demote(efficiency_md),
        "## Other tasks: sequential Fashion-MNIST and MQAR (own tables, not averaged into LRA)",
        extra_md or "No records yet.",
        "## Plots", _plots_md(made),
        "## Skipped records", _skipped_md(inputs),
    ]) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def build_report(in_dir: Path, out_dir: Path, published_dir: Path | None = None,
                 kernels_csv: Path | None = None) -> Inputs:
    """Load, write tables, plots and RESULTS.md; returns what was loaded (skipped files included)."""
    inputs = load_inputs(Path(in_dir), published_dir, kernels_csv)
    accuracy_md, accuracy_csv = accuracy_section(inputs.runs, inputs.published, headline_markdown(inputs.runs))
    efficiency_md, efficiency_csv = efficiency_section(inputs.bench, inputs.published, inputs.kernels_csv)
    tables = Path(out_dir) / "tables"
    _write_text(tables / "accuracy.md", "# Accuracy (LRA Table 1 form)\n\n" + accuracy_md)
    _write_text(tables / "efficiency.md", "# Efficiency (LRA Table 2 form and the length sweep)\n\n" + efficiency_md)
    _write_text(tables / "accuracy.csv", accuracy_csv.convert_dtypes().to_csv(index=False))
    _write_text(tables / "efficiency.csv", efficiency_csv.convert_dtypes().to_csv(index=False))
    made = make_plots(inputs, Path(out_dir) / "plots")
    extra_md = extra_tasks_section(inputs.runs, inputs.published, Path(out_dir))
    _write_text(Path(out_dir) / "RESULTS.md", results_page(inputs, accuracy_md, efficiency_md, made, extra_md))
    return inputs


def run_report(cfg: DictConfig) -> int:
    """The report for one config (``report_config`` or the Hydra app's): prints what it read, wrote and
    skipped; returns the exit code (2 with one line on stderr for bad input)."""
    start = time.perf_counter()
    try:
        args = report_paths(cfg)
        inputs = build_report(**args)
    except ValueError as exc:
        print(f"lra-sfa report: error: {exc}", file=sys.stderr)
        return 2
    for path, reason in inputs.skipped:
        print(f"lra-sfa report: skipped {path}: {reason}", file=sys.stderr)
    print(f"lra-sfa report: {len(inputs.runs)} run + {len(inputs.bench)} bench records -> "
          f"{args['out_dir']}/RESULTS.md, tables/, plots/ ({len(inputs.skipped)} skipped, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="report")
def _app(cfg: DictConfig) -> None:
    code = run_report(cfg)
    if code:
        raise SystemExit(code)


def main() -> None:
    """``python -m lra_sfa.report [key=value ...]``: the Hydra app, after the one-line argument check."""
    problem = argument_problem(sys.argv[1:])
    if problem:
        print(f"lra-sfa report: error: report: {problem}", file=sys.stderr)
        raise SystemExit(2)
    _app()
