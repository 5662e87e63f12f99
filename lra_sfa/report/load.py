"""Loading for the report: run and bench records (valid ones, and the skipped with reasons), published CSVs.

Run records are validated with ``lra_sfa.records.validate_record`` (the
schema ``load_records`` applies, field types included); a run that says
``ok`` without a test accuracy is partial and skipped too. Bench records
(``"kind": "bench"``) are checked for the fields their mode needs and for
the types of the fields the report reads (``BENCH_KINDS``).
Nothing raises on a bad file: it is returned with the reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lra_sfa.records import field_problems, validate_record

BENCH_FIELDS = ("mode", "attn", "seq_len", "status", "device", "date")
BENCH_STATUSES = ("ok", "oom", "timeout", "unsupported", "error")
BENCH_KINDS = {"mode": "str", "attn": "str", "status": "str", "device": "str", "date": "str", "seq_len": "int",
               "part": "str", "op": "str", "dtype": "str", "batch": "int", "heads": "int", "head_dim": "int",
               "ms": "number", "peak_memory_mb": "number", "steps_per_second": "number",
               "tokens_per_second": "number"}
BENCH_OK_FIELDS = {"sweep": ("ms", "peak_memory_mb"), "lra_table2": ("steps_per_second", "peak_memory_mb"),
                   "overhead": ("runner_step_ms", "bare_step_ms", "overhead_fraction")}


@dataclass
class Inputs:
    runs: list[dict] = field(default_factory=list)
    bench: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    published: dict[str, pd.DataFrame] = field(default_factory=dict)
    kernels_csv: Path | None = None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_problem(record: dict) -> str | None:
    """Why a schema-valid run record still cannot go into the accuracy tables."""
    if record["status"] == "ok" and not _number(record.get("test_accuracy")):
        return "partial: status ok but no numeric test_accuracy"
    if not _number(record.get("seq_len")):
        return f"seq_len {record.get('seq_len')!r} is not a number"
    return None


def bench_problem(record: dict) -> str | None:
    """Why a bench record cannot be used; None when it can."""
    missing = [key for key in BENCH_FIELDS if key not in record]
    if missing:
        return f"bench record missing field(s) {missing}"
    wrong = field_problems(record, BENCH_KINDS, ("mode", "attn", "status"))
    if wrong:
        return "; ".join(wrong)
    if record["status"] not in BENCH_STATUSES:
        return f"status {record['status']!r} not in {BENCH_STATUSES}"
    if record["mode"] not in BENCH_OK_FIELDS:
        return f"mode {record['mode']!r} not in {tuple(BENCH_OK_FIELDS)}"
    if not _number(record["seq_len"]):
        return f"seq_len {record['seq_len']!r} is not a number"
    if record["status"] == "ok":
        bad = [key for key in BENCH_OK_FIELDS[record["mode"]] if not _number(record.get(key))]
        if bad:
            return f"partial: status ok but no numeric {bad}"
    return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _check(record, path: Path) -> tuple[str | None, str | None]:
    """(kind, problem): kind 'run' or 'bench' (None = another kind, ignored); problem None when usable."""
    if not isinstance(record, dict):
        return "run", f"not a JSON object ({type(record).__name__})"
    kind = record.get("kind", "run")
    if kind == "run":
        problems = validate_record(record)
        return kind, "; ".join(problems) if problems else run_problem(record)
    if kind == "bench":
        return kind, bench_problem(record)
    return None, None


WITHDRAWN = "withdrawn"  # a folder of records kept but not reported: their code had a defect found later


def load_inputs(in_dir: Path, published_dir: Path | None, kernels_csv: Path | None) -> Inputs:
    """Every record under ``in_dir`` (recursively, as ``records.load_records``) and the published tables.
    Records in a ``withdrawn/`` folder are listed as skipped, with that reason: a run whose code had a defect
    found afterwards stays in the repository, out of every table, and its cell is run again.

    Run records are checked with ``records.validate_record`` (the schema
    ``load_records`` applies) plus ``run_problem``; bench records with
    ``bench_problem``. Each skipped file is kept with its path and reason.
    """
    if not in_dir.is_dir():
        raise ValueError(f"report: in_dir={in_dir} is not a folder")
    inputs = Inputs()
    names: dict[int, str] = {}
    for path in sorted(in_dir.rglob("*.json")):
        name = _relative(path, in_dir)
        if WITHDRAWN in path.relative_to(in_dir).parts[:-1]:
            inputs.skipped.append((name, f"withdrawn: made by code with a defect found later ({WITHDRAWN}/README.md "
                                         f"says which and where it was fixed)"))
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            inputs.skipped.append((name, f"unreadable JSON: {exc}"))
            continue
        kind, problem = _check(record, path)
        if problem:
            inputs.skipped.append((name, problem))
        elif kind == "run":
            inputs.runs.append(record)
            names[id(record)] = name
        elif kind == "bench":
            inputs.bench.append(record)
    superseded = superseded_runs(inputs.runs)
    for record, by in superseded:
        inputs.skipped.append((names[id(record)], f"superseded by {names[id(by)]}: a run of the same campaign cell "
                                                  f"cut by its slot at step {record.get('steps')}, resumed or run "
                                                  f"again to step {by.get('steps')}"))
    dropped = {id(record) for record, _ in superseded}
    inputs.runs = [record for record in inputs.runs if id(record) not in dropped]
    inputs.published = load_published(published_dir)
    inputs.kernels_csv = kernels_csv if kernels_csv is not None and kernels_csv.is_file() else None
    return inputs


def superseded_runs(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(cut run, the run that supersedes it) pairs: a run of a campaign ``cell`` stopped by its time budget
    is superseded by a later run of the same cell that trained more steps (the cut run resumed from its
    checkpoint, or started again where the checkpoint could not travel), so one seed counts once."""
    by_cell: dict[str, list[dict]] = {}
    for record in runs:
        if record.get("cell"):
            by_cell.setdefault(str(record["cell"]), []).append(record)
    pairs = []
    for records in by_cell.values():
        for record in records:
            if not record.get("stopped_by_time_budget"):
                continue
            later = [other for other in records if other is not record
                     and str(other.get("date", "")) > str(record.get("date", ""))
                     and int(other.get("steps") or 0) > int(record.get("steps") or 0)]
            if later:
                pairs.append((record, max(later, key=lambda other: (int(other.get("steps") or 0),
                                                                    str(other.get("date", ""))))))
    return pairs


def load_published(folder: Path | None) -> dict[str, pd.DataFrame]:
    """``results/published/*.csv`` by stem; each must carry a ``source`` column."""
    tables: dict[str, pd.DataFrame] = {}
    if folder is None or not folder.is_dir():
        return tables
    for path in sorted(folder.glob("*.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # numbers kept as printed
        if "source" not in frame.columns:
            raise ValueError(f"report: published table {path} has no 'source' column (every row names its source)")
        tables[path.stem] = frame
    return tables


def attn_args(record: dict) -> dict:
    """The record's attention arguments (``attn_args``), the default that ``variant_labels`` compares."""
    return record.get("attn_args") or {}


def variant_labels(records: list[dict], scope, settings=attn_args) -> dict[int, str]:
    """id(record) -> backend label. Records in one ``scope(record)`` whose ``settings(record)`` (by default
    the attention arguments) differ are different configurations, not seeds: each gets its backend name
    plus the settings whose values differ among the records that have them (a key added to the config
    later does not count), e.g. ``sfa_wide (D=131072, codes=simhash, k=8)``."""
    scopes: dict = {}
    for record in records:
        scopes.setdefault(scope(record), []).append(record)
    labels = {}
    for members in scopes.values():
        args = [settings(record) for record in members]
        keys = sorted({key for a in args for key in a})
        differing = [key for key in keys if len({repr(a[key]) for a in args if key in a}) > 1]
        for record, arg in zip(members, args):
            label = ", ".join(f"{key}={arg[key]}" for key in differing if key in arg)
            labels[id(record)] = f"{record['attn']} ({label})" if label else str(record["attn"])
    return labels


def run_labels(records: list[dict], labels: dict[int, str]) -> dict[int, str]:
    """``labels`` (id(record) -> label) made distinct per record for plots that draw each run: runs
    sharing a label get their seed, and where seeds coincide too, their step count appended."""
    shared: dict[str, list[dict]] = {}
    for record in records:
        shared.setdefault(labels[id(record)], []).append(record)
    out = {}
    for label, members in shared.items():
        seeds = [record.get("seed") for record in members]
        for record in members:
            extra = []
            if len(members) > 1:
                extra.append(f"seed {record.get('seed')}")
                if seeds.count(record.get("seed")) > 1:
                    extra.append(f"{record.get('steps')} steps")
            out[id(record)] = f"{label} [{', '.join(extra)}]" if extra else label
    return out


def latest(records: list[dict], key) -> dict:
    """One record per ``key(record)``: the latest by date (ties: the later in the list)."""
    chosen: dict = {}
    for record in records:
        k = key(record)
        if k not in chosen or str(record.get("date", "")) >= str(chosen[k].get("date", "")):
            chosen[k] = record
    return chosen


def short_commit(record: dict) -> str:
    """The record's ``git_commit`` as 7 hex digits ("+dirty" kept: the tree had uncommitted edits), or "unknown"."""
    commit = str(record.get("git_commit") or "unknown")
    head, dirty = commit.split("+", 1) if "+" in commit else (commit, "")
    return head[:7] + (f"+{dirty}" if dirty else "")


def commits_label(records) -> str:
    """The distinct short commits of ``records``, sorted and comma-joined: the code each figure came from."""
    return ", ".join(sorted({short_commit(r) for r in records}))


def length_label(length: int) -> str:
    """1024 -> 1K, 1048576 -> 1M, 3072 -> 3K, 1000 -> 1K, 64 -> 64."""
    length = int(length)
    for unit, suffix in ((2**20, "M"), (2**10, "K")):
        if length >= unit and length % unit == 0:
            return f"{length // unit}{suffix}"
    if length >= 1000 and length % 1000 == 0:
        return f"{length // 1000}K"
    return str(length)


def attn_order(name: str) -> tuple[int, str]:
    """full first, then the SFA backends, then the rest alphabetically."""
    return (0 if name == "full" else 1 if str(name).startswith("sfa") else 2, str(name))
