"""The accuracy table (LRA Table 1 form) from run records, as markdown and a long-form CSV frame.

Rows are backends, columns the LRA tasks and their average (ListOps, Text,
Retrieval, Image, Pathfinder; Path-X apart, as in the paper). A cell is the
mean over the ``ok`` runs of one (task, backend, protocol, length) group, in
percent; a dagger marks runs stopped by a time budget or before their
configured steps, i.e. shorter than the protocol. Every group is listed with
steps, device and date below the table. Runs of non-LRA protocols (needle,
reduced, custom) are listed separately and never averaged. Published numbers
come last, in their own table, labelled.
"""

from __future__ import annotations

import statistics

import pandas as pd

from lra_sfa.markdown import md_table
from lra_sfa.records import trained_to_end
from lra_sfa.report.load import attn_args, attn_order, commits_label, length_label, variant_labels
from lra_sfa.report.protocols import protocol_settings

LRA_COLUMNS = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
               "pathfinder": "Pathfinder", "pathx": "Path-X"}
AVERAGE_OVER = ("listops", "text", "retrieval", "image", "pathfinder")
NEEDS_DATA = ("text", "retrieval", "image")  # IMDB, AAN, CIFAR-10: no download on the build machines
PUBLISHED_LRA_MODEL = {"full": "Transformer", "windowed": "Local Attention", "longformer": "Longformer",
                       "linformer": "Linformer", "bigbird": "BigBird", "linear": "Linear Trans.",
                       "performer_relu": "Performer"}


def lra_column(record: dict) -> str | None:
    """The LRA Table 1 column of a run, or None (Pathfinder-32 is length 1024, Path-X 16384)."""
    task, length = str(record["task"]), int(record["seq_len"])
    if task == "pathfinder":
        return {1024: "pathfinder", 16384: "pathx"}.get(length)
    if task == "pathx" or task in LRA_COLUMNS:
        return task
    return None


def is_lra(record: dict) -> bool:
    return str(record.get("protocol", "")).startswith("lra_") and lra_column(record) is not None


def _short(record: dict) -> bool:
    """Stopped by a time budget, before its configured end (``trained_to_end``), or configured for fewer steps
    than its protocol's."""
    max_steps = record.get("max_steps")
    if record.get("stopped_by_time_budget") or (max_steps is not None and not trained_to_end(record)):
        return True
    protocol = str(record.get("protocol") or "")
    settings = protocol_settings(protocol) if protocol.startswith("lra_") else None
    return bool(settings) and max_steps is not None and max_steps < (settings[1]["max_steps"] or 0)


def summarise(records: list[dict]) -> dict:
    """One group of runs -> mean accuracies (%) with the seeds' test min and max, steps, training speed (runs that
    had the device alone; the compiled ones among them where there are any), memory, device, date, commits, status."""
    ok = [r for r in records if r["status"] == "ok"]
    pct = lambda key: round(100 * statistics.mean(r[key] for r in ok), 2) if ok and all(
        isinstance(r.get(key), (int, float)) for r in ok) else None
    steps = sorted(int(r.get("steps") or 0) for r in ok)
    tests = [100 * r["test_accuracy"] for r in ok if isinstance(r.get("test_accuracy"), (int, float))]
    # speed only from runs that had the device alone (a campaign with concurrency > 1 shares it), and from the
    # compiled ones where some seeds ran compiled and others eagerly (the harness compiles where it can, so
    # backends compare on that path); a process's peak memory is its own either way
    alone = [r for r in ok if int((r.get("trainer") or {}).get("concurrent_runs") or 1) == 1]
    alone = [r for r in alone if r.get("compiled") is True] or alone
    statuses = sorted({r["status"] for r in records if r["status"] != "ok"})
    return {
        "runs": len(ok), "failed": ", ".join(statuses) or None, "test_pct": pct("test_accuracy"),
        "test_min_pct": round(min(tests), 2) if tests else None,
        "test_max_pct": round(max(tests), 2) if tests else None,
        "val_pct": pct("val_accuracy"), "steps_min": steps[0] if steps else None,
        "steps_max": steps[-1] if steps else None, "max_steps": max((r.get("max_steps") or 0) for r in records),
        "short": any(_short(r) for r in ok), "steps_per_second": _mean(alone, "steps_per_second"),
        "peak_memory_mb": _mean(ok, "peak_memory_mb"), "train_seconds": _mean(alone, "train_seconds"),
        "device": ", ".join(sorted({str(r.get("device")) for r in records})),
        "date": max(str(r.get("date", ""))[:10] for r in records),
        "git_commit": commits_label(records),
        "num_train": ", ".join(sorted({str(r["num_train"]) for r in records if r.get("num_train")})) or None,
    }


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return statistics.mean(values) if values else None


def run_settings(record: dict) -> dict:
    """What makes two runs of one (task, backend, protocol, length) different configurations rather than
    seeds: the attention arguments, the learning rate (a swept axis of e.g. MQAR) and MQAR's number of
    key-value pairs."""
    settings = dict(attn_args(record))
    lr = (record.get("trainer") or {}).get("lr")
    if lr is not None:
        settings["lr"] = lr
    if record.get("num_pairs") is not None:
        settings["pairs"] = record["num_pairs"]
    return settings


def group_runs(runs: list[dict]) -> pd.DataFrame:
    """One row per (task, backend, protocol, length, device, max_steps) with ``summarise``'s fields:
    only runs made the same way on the same machine average as seeds; runs with other settings
    (``run_settings``) in the same cell get a row of their own (``variant_labels``)."""
    labels = variant_labels(runs, lambda r: (str(r["task"]), str(r["attn"]), str(r.get("protocol", "custom")),
                                             int(r["seq_len"])), run_settings)
    groups: dict[tuple, list[dict]] = {}
    for record in runs:
        key = (str(record["task"]), labels[id(record)], str(record.get("protocol", "custom")), int(record["seq_len"]),
               str(record.get("device")), record.get("max_steps"))
        groups.setdefault(key, []).append(record)
    rows = []
    for (task, attn, protocol, length, _, _), records in groups.items():
        column = lra_column(records[0]) if is_lra(records[0]) else None
        rows.append({"task": task, "column": column, "attn": attn, "protocol": protocol, "seq_len": length,
                     **summarise(records)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["order"] = frame["attn"].map(attn_order)
    return frame.sort_values(["order", "task", "seq_len", "protocol"]).drop(columns="order").reset_index(drop=True)


def _chosen(group: pd.DataFrame) -> pd.Series:
    """A cell's group: the one trained longest, the latest among equals."""
    return group.sort_values(["steps_max", "date"], na_position="first").iloc[-1]


def _cell(group: pd.DataFrame, column: str, metric: str, any_records: bool) -> str:
    if group.empty:
        if column in NEEDS_DATA and not any_records:
            return "needs data"
        return "not run"
    row = _chosen(group)
    if row["runs"] == 0:
        return str(row["failed"])  # every run of the group failed, so its status string is there
    value = row[metric]
    return "—" if pd.isna(value) else f"{value:.2f}" + (" †" if row["short"] else "")


def _select(frame: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows whose columns equal the given values (an empty frame stays empty)."""
    for key, value in equal.items():
        if frame.empty:
            return frame
        frame = frame[frame[key] == value]
    return frame


def _lra_matrix(lra: pd.DataFrame, backends: list[str], metric: str) -> str:
    headers = ["backend", *LRA_COLUMNS.values(), "Avg (5 tasks)"]
    rows = []
    for attn in backends:
        cells, values = [], {}
        for column in LRA_COLUMNS:
            in_column = _select(lra, column=column)
            group = _select(in_column, attn=attn)
            cells.append(_cell(group, column, metric, not in_column.empty))
            if not group.empty and pd.notna(_chosen(group)[metric]):
                values[column] = float(_chosen(group)[metric])
        have = [values[c] for c in AVERAGE_OVER if c in values]
        average = f"{statistics.mean(have):.2f}" if len(have) == len(AVERAGE_OVER) else f"{len(have)}/5 tasks"
        rows.append([attn, *cells, average])
    return md_table(headers, rows)


def _details(frame: pd.DataFrame) -> str:
    headers = ["task", "backend", "protocol", "L", "runs", "test %", "val %", "steps (of max)", "steps/s",
               "peak MB", "train size", "device", "date", "commit"]
    rows = []
    for row in frame.itertuples():
        steps = "—" if row.steps_max is None else (
            f"{row.steps_min}" if row.steps_min == row.steps_max else f"{row.steps_min}-{row.steps_max}")
        rows.append([row.task, row.attn, row.protocol, length_label(row.seq_len),
                     f"{row.runs} ({row.failed})" if isinstance(row.failed, str) else row.runs,
                     _fmt(row.test_pct), _fmt(row.val_pct), f"{steps} of {row.max_steps}" + (" †" if row.short else ""),
                     _fmt(row.steps_per_second), _fmt(row.peak_memory_mb, 0), row.num_train or "", row.device,
                     row.date, row.git_commit])
    return md_table(headers, rows)


def _fmt(value, digits: int = 2) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def published_lra_table1(published: dict[str, pd.DataFrame]) -> str | None:
    frame = published.get("lra_table1")
    if frame is None:
        return None
    rows = [[row["model"], *[row[c] for c in LRA_COLUMNS], row["average"]] for _, row in frame.iterrows()]
    source = f"{frame['source'].iloc[0]}, {frame['table'].iloc[0]}"
    return f"Source: {source} (`results/published/lra_table1.csv`).\n\n" + md_table(
        ["model (published)", *LRA_COLUMNS.values(), "Avg"], rows)


def published_reproductions(published: dict[str, pd.DataFrame]) -> str | None:
    frame = published.get("lra_reproductions")
    if frame is None:
        return None
    rows = [[row["model"], *["" if pd.isna(row[c]) else row[c] for c in LRA_COLUMNS], row["source"], row["note"]]
            for _, row in frame.iterrows()]
    return md_table(["model", *LRA_COLUMNS.values(), "source", "note"], rows)


def accuracy_section(runs: list[dict], published: dict[str, pd.DataFrame],
                     headline: str = "") -> tuple[str, pd.DataFrame]:
    """Markdown body (headings from ##) and the long-form CSV frame: ``headline`` (protocol-complete
    runs, report.headline) first, the published tables beside it, every run group in the appendix."""
    frame = group_runs(runs)
    lra_rows = frame[frame["column"].notna()] if not frame.empty else frame
    other = frame[frame["column"].isna()] if not frame.empty else frame
    # a backend or variant with no LRA run gets no row (its needle or other runs are in the table below)
    backends = sorted(set(lra_rows["attn"]), key=attn_order) if not lra_rows.empty else ["full", "sfa"]
    parts = [
        "## Measured: test accuracy (%), protocol-complete runs",
        "Mean ± standard deviation over seeds, with n, of the runs that trained to the protocol's last step "
        "with its settings (`lra_sfa/report/headline.py`). A backend with no such run has no row.",
        headline or "No protocol-complete run yet.",
    ]
    table1 = published_lra_table1(published)
    parts += ["## Published: LRA paper Table 1 (not measured here)",
              table1 if table1 else "No published table found (`results/published/lra_table1.csv`)."]
    if table1:
        pairs = ", ".join(f"{ours} = {theirs}" for ours, theirs in PUBLISHED_LRA_MODEL.items())
        parts.append(f"Our backends correspond to the paper's models as: {pairs}.")
    reproductions = published_reproductions(published)
    if reproductions:
        parts += ["## Published reproductions of the LRA release (not measured here)", reproductions]
    parts += [
        "## Appendix: every run group, budget-cut and exploratory runs included",
        "Mean over the `ok` runs of each cell's longest-trained group (the latest among equals; every group in "
        "the table below). † = shorter "
        "than the protocol (stopped by the time budget or before its configured steps, or configured for "
        "fewer steps than its protocol): not comparable with the published numbers. \"needs data\": "
        "the dataset cannot be downloaded on the machines used so far (no runs). Avg needs all five tasks.",
        "### Test accuracy (%)",
        _lra_matrix(lra_rows, backends, "test_pct"),
        "### Validation accuracy (%)",
        _lra_matrix(lra_rows, backends, "val_pct"),
        "### Every LRA-protocol group (steps, device)",
        _details(lra_rows) if not lra_rows.empty else "No LRA-protocol run records yet.",
        "### Other protocols (not LRA; never averaged)",
        _details(other) if not other.empty else "No other run records.",
    ]
    return "\n\n".join(parts) + "\n", accuracy_csv(frame, published)


def accuracy_csv(frame: pd.DataFrame, published: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = [] if frame.empty else [
        {"source": "measured", **{k: v for k, v in row.items() if k != "short"}, "shorter_than_protocol": row["short"]}
        for row in frame.to_dict("records")
    ]
    table1 = published.get("lra_table1")
    if table1 is not None:
        for row in table1.to_dict("records"):
            for column in (*LRA_COLUMNS, "average"):
                value = row[column]
                rows.append({"source": f"published: {row['source']}, {row['table']}", "task": column,
                             "column": column, "attn": row["model"], "protocol": "lra_paper",
                             "test_pct": pd.to_numeric(value, errors="coerce"),
                             "failed": "FAIL" if str(value) == "FAIL" else None})
    return pd.DataFrame(rows)
