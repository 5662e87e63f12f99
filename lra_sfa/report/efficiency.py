"""The efficiency tables from bench records: the LRA Table 2 form, the sweep, the harness overhead.

* Table 2 form (``mode: lra_table2``): training steps/s and peak memory of
  the Text model per backend and length, each with its ratio to full
  attention at that length; the published Table 2 follows, labelled.
* The sweep (``mode: sweep``): per device and shape, the longest length each
  backend reached in each series (attention / block x fwd / fwd+bwd) and what
  stopped it; then milliseconds and peak memory per length.
* The harness overhead (``mode: overhead``).
* The SFA kernels against SDPA, beside the SFA paper's numbers (``report.kernels``).

When a cell was measured more than once, the latest record counts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lra_sfa.markdown import md_table
from lra_sfa.report.load import attn_order, commits_label, latest, length_label, short_commit

SERIES = (("attention", "fwd"), ("attention", "fwd_bwd"), ("block", "fwd"), ("block", "fwd_bwd"))
SERIES_LABEL = {("attention", "fwd"): "attention fwd", ("attention", "fwd_bwd"): "attention fwd+bwd",
                ("block", "fwd"): "block fwd", ("block", "fwd_bwd"): "block fwd+bwd"}
CSV_COLUMNS = ["source", "mode", "attn", "part", "op", "seq_len", "status", "reason", "ms", "steps_per_second",
               "tokens_per_second", "peak_memory_mb", "speedup_vs_full", "memory_vs_full", "batch", "heads",
               "head_dim", "dtype", "attn_path", "device", "date", "git_commit", "overhead_fraction",
               "peak_memory_gb"]


def sweep_config(record: dict) -> tuple:
    return (str(record["device"]), str(record.get("dtype")), record.get("batch"), record.get("heads"),
            record.get("head_dim"), bool(record.get("mask")))


def config_title(config: tuple) -> str:
    device, dtype, batch, heads, head_dim, mask = config
    return f"{device}, {dtype}, batch {batch}, {heads} heads, head_dim {head_dim}" + (", padding mask" if mask else "")


def sweep_configs(records: list[dict]) -> list[tuple]:
    """Sweep shapes, GPU ones first, then by number of records."""
    counts: dict[tuple, int] = {}
    cuda: dict[tuple, bool] = {}
    for record in records:
        config = sweep_config(record)
        counts[config] = counts.get(config, 0) + 1
        cuda[config] = record.get("device_type") == "cuda" or "cpu" not in config[0].lower()
    return sorted(counts, key=lambda c: (not cuda[c], -counts[c], c[0]))


def series_reach(cells: dict[int, dict]) -> str:
    """'1M', '256K (oom at 512K)', or the status when nothing ran."""
    ok = [length for length, record in cells.items() if record["status"] == "ok"]
    longest = max(ok) if ok else None
    failures = sorted(length for length, record in cells.items()
                      if record["status"] != "ok" and (longest is None or length > longest))
    failure = f"{cells[failures[0]]['status']} at {length_label(failures[0])}" if failures else None
    if longest is None:
        return failure or "—"
    return length_label(longest) + (f" ({failure})" if failure else "")


def sweep_cells(records: list[dict]) -> dict[tuple, dict[int, dict]]:
    """(attn, part, op) -> {length: latest record}."""
    chosen = latest(records, lambda r: (r["attn"], r.get("part"), r.get("op"), int(r["seq_len"])))
    cells: dict[tuple, dict[int, dict]] = {}
    for (attn, part, op, length), record in chosen.items():
        cells.setdefault((attn, part, op), {})[length] = record
    return cells


def _value_table(cells, backends, lengths, series, key: str, digits: int) -> str:
    rows = []
    for attn in backends:
        by_length = cells.get((attn, *series), {})
        row = [attn]
        for length in lengths:
            record = by_length.get(length)
            if record is None:
                row.append("")
            elif record["status"] != "ok":
                row.append(record["status"])
            else:
                row.append(f"{record[key]:.{digits}f}")
        rows.append(row)
    return md_table(["backend", *[length_label(n) for n in lengths]], rows)


def sweep_section(records: list[dict]) -> str:
    sweep = [r for r in records if r["mode"] == "sweep"]
    if not sweep:
        return ("No sweep records yet. On the GPU: `python -m lra_sfa.bench` (every backend, 1K to 1M tokens; "
                "see `conf/bench/sweep.yaml`).")
    parts = []
    for config in sweep_configs(sweep):
        chosen = [r for r in sweep if sweep_config(r) == config]
        cells = sweep_cells(chosen)
        backends = sorted({attn for attn, _, _ in cells}, key=attn_order)
        lengths = sorted({int(r["seq_len"]) for r in chosen})
        dates = sorted(str(r["date"])[:10] for r in chosen)
        shown = [r for by_length in cells.values() for r in by_length.values()]
        parts.append(f"### Sweep on {config_title(config)} ({dates[0]}" +
                     (f" to {dates[-1]}" if dates[-1] != dates[0] else "") + f"; commits {commits_label(shown)})")
        present = [s for s in SERIES if any((attn, *s) in cells for attn in backends)]
        rows = [[attn, *[series_reach(cells.get((attn, *s), {})) for s in present]] for attn in backends]
        parts += ["Longest length reached (and what stopped the next one):",
                  md_table(["backend", *[SERIES_LABEL[s] for s in present]], rows)]
        for series in present:
            parts += [f"{SERIES_LABEL[series]}: milliseconds per call (median)",
                      _value_table(cells, backends, lengths, series, "ms", 3)]
        for series in [s for s in (("attention", "fwd"), ("block", "fwd_bwd")) if s in present]:
            parts += [f"{SERIES_LABEL[series]}: peak memory (MB)",
                      _value_table(cells, backends, lengths, series, "peak_memory_mb", 1)]
    return "\n\n".join(parts)


def compilation(record: dict) -> str | None:
    """How a Table 2 record's model ran: 'eager', torch.compile's mode ('default', 'reduce-overhead', ...), or
    None for records from before ``compiled`` existed (``compile_mode`` absent: before that option, 'default')."""
    if record.get("compiled") is None:
        return None
    return str(record.get("compile_mode") or "default") if record["compiled"] else "eager"


def table2_setup(record: dict) -> tuple:
    """What makes Table 2 records comparable: device, ``compilation`` and whether the model attended with a key
    padding mask (records from before ``key_padding_mask`` existed all did)."""
    return record["device"], compilation(record), record.get("key_padding_mask", True) is not False


def step_memory_measured(record: dict) -> bool:
    """Whether a Table 2 record's peak memory covers its training step: CUDA-graph replays (reduce-overhead)
    allocate nothing, so their peak counts only where the window opened before the capture
    (``memory_source`` ending in ``_from_capture``); records from before that measured almost nothing."""
    return compilation(record) != "reduce-overhead" or str(record.get("memory_source", "")).endswith("_from_capture")


def table2_rows(records: list[dict]) -> list[dict]:
    """Latest Table 2 records with speed and memory relative to full at the same length and ``table2_setup``
    (device, compilation: eager or the torch.compile mode, None in records from before the option; mask)."""
    chosen = latest([r for r in records if r["mode"] == "lra_table2"],
                    lambda r: (*table2_setup(r), r["attn"], int(r["seq_len"])))
    rows = []
    for (device, compiled, masked, _, length), record in chosen.items():
        full = chosen.get((device, compiled, masked, "full", length))
        ok = record["status"] == "ok" and full is not None and full["status"] == "ok"
        memory_ok = ok and step_memory_measured(record) and step_memory_measured(full)
        rows.append({**record, "speedup_vs_full": record["steps_per_second"] / full["steps_per_second"] if ok else None,
                     "memory_vs_full": record["peak_memory_mb"] / full["peak_memory_mb"] if memory_ok else None})
    return rows


def table2_section(records: list[dict], published: dict[str, pd.DataFrame]) -> str:
    rows = table2_rows(records)
    parts = []
    if not rows:
        parts.append("No Table 2 records yet. On the GPU: `python -m lra_sfa.bench bench=lra_table2`.")
    for setup in sorted({table2_setup(r) for r in rows}, key=str):
        mine = {(r["attn"], int(r["seq_len"])): r for r in rows if table2_setup(r) == setup}
        device = setup[0]
        lengths = sorted({length for _, length in mine})
        backends = sorted({attn for attn, _ in mine}, key=attn_order)
        table = []
        for attn in backends:
            speed, memory = [], []
            for length in lengths:
                record = mine.get((attn, length))
                speed.append(_ratio_cell(record, "steps_per_second", "speedup_vs_full", 2))
                memory.append(_ratio_cell(record, "peak_memory_mb", "memory_vs_full", 0))
            table.append([attn, *speed, *memory])
        dates = sorted({str(r["date"])[:10] for r in mine.values()})
        parts += [f"### Measured on {device} ({_table2_setting(next(iter(mine.values())))})",
                  f"Dates {', '.join(dates)}; commits {commits_label(mine.values())}.",
                  "Steps/s (speed-up vs full) and peak memory MB (ratio to full):",
                  md_table(["backend", *[f"steps/s {length_label(n)}" for n in lengths],
                            *[f"MB {length_label(n)}" for n in lengths]], table)]
    parts.append(_published_table2(published))
    return "\n\n".join(parts)


def _table2_setting(record: dict) -> str:
    """'bfloat16, batch 32, 4 layers x width 256 (4 heads, MLP 1024), synthetic bytes ...' from what is present."""
    parts = [str(record.get("dtype")), f"batch {record.get('batch')}"]
    mode = compilation(record)
    if mode is not None:
        parts.append("eager" if mode == "eager" else "model under torch.compile" + (
            f" (mode {mode})" if mode != "default" else ""))
    model = record.get("model")
    if isinstance(model, dict) and {"num_layers", "d_model", "num_heads", "mlp_dim"} <= set(model):
        parts.append(f"{model['num_layers']} layers x width {model['d_model']} ({model['num_heads']} heads, "
                     f"MLP {model['mlp_dim']})")
    if record.get("data"):
        parts.append(str(record["data"]))
    parts.append("no key padding mask" if record.get("key_padding_mask") is False else  # the field is newer than
                 "a key padding mask (all real tokens) in every layer")  # the mask every earlier model built
    return ", ".join(parts)


def _ratio_cell(record: dict | None, key: str, ratio_key: str, digits: int) -> str:
    if record is None:
        return ""
    if record["status"] != "ok":
        return record["status"]
    if key == "peak_memory_mb" and not step_memory_measured(record):
        return "not measured"  # a CUDA-graph replay's peak without its capture
    ratio = record.get(ratio_key)
    return f"{record[key]:.{digits}f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def _published_table2(published: dict[str, pd.DataFrame]) -> str:
    frame = published.get("lra_table2")
    if frame is None:
        return "No published Table 2 found (`results/published/lra_table2.csv`)."
    lengths = sorted({int(n) for n in frame["seq_len"]})
    rows = []
    for model, group in frame.groupby("model", sort=False):
        by_length = {int(r["seq_len"]): r for _, r in group.iterrows()}
        speed = [f"{by_length[n]['steps_per_second']} ({by_length[n]['speedup_vs_transformer']}x)" for n in lengths]
        memory = [f"{by_length[n]['peak_memory_gb']}" for n in lengths]
        rows.append([model, *speed, *memory])
    head = (f"### Published: {frame['source'].iloc[0]}, {frame['table'].iloc[0]} ({frame['device'].iloc[0]}; "
            "not measured here)")
    return "\n\n".join([head, md_table(["model (published)", *[f"steps/s {length_label(n)}" for n in lengths],
                                        *[f"GB {length_label(n)}" for n in lengths]], rows)])


def overhead_section(records: list[dict]) -> str:
    rows = [r for r in records if r["mode"] == "overhead" and r["status"] == "ok"]
    if not rows:
        return ("No harness-overhead records yet. On the GPU: `python -m lra_sfa.bench.overhead` "
                "(runner step vs a loop on pre-staged tensors at L = 4K).")
    table = [[r["device"], r["attn"], length_label(r["seq_len"]), r["batch"], f"{r['runner_step_ms']:.2f}",
              f"{r['bare_step_ms']:.2f}", f"{100 * r['overhead_fraction']:.1f}%", str(r["date"])[:10],
              short_commit(r)]
             for r in sorted(rows, key=lambda r: str(r["date"]))]
    return ("Time per training step outside model compute = 1 - (bare loop step) / (runner step); "
            "negative = equal within noise.\n\n" + md_table(
                ["device", "backend", "L", "batch", "runner ms/step", "bare ms/step", "overhead", "date", "commit"],
                table))


def efficiency_section(records: list[dict], published: dict[str, pd.DataFrame],
                       kernels_csv: Path | None = None) -> tuple[str, pd.DataFrame]:
    from lra_sfa.report.kernels import kernels_section

    parts = ["## LRA Table 2 protocol: Text-model training steps, batch 32", table2_section(records, published),
             "## Sweep: cost against sequence length", sweep_section(records),
             "## Harness overhead", overhead_section(records),
             "## SFA kernels", kernels_section(kernels_csv, published)]
    return "\n\n".join(parts) + "\n", efficiency_csv(records, published)


def efficiency_csv(records: list[dict], published: dict[str, pd.DataFrame]) -> pd.DataFrame:
    others = [r for r in records if r["mode"] != "lra_table2"]
    chosen = latest(others, lambda r: (r["mode"], sweep_config(r), r["attn"], r.get("part"), r.get("op"),
                                       int(r["seq_len"])))
    rows = [{"source": "measured", **{k: r.get(k) for k in CSV_COLUMNS if k != "source"},
             "git_commit": short_commit(r)} for r in [*table2_rows(records), *chosen.values()]]
    frame = published.get("lra_table2")
    if frame is not None:
        for r in frame.to_dict("records"):
            rows.append({"source": f"published: {r['source']}, {r['table']}", "mode": "lra_table2",
                         "attn": r["model"], "seq_len": int(r["seq_len"]), "status": "ok",
                         "steps_per_second": float(r["steps_per_second"]),
                         "speedup_vs_full": float(r["speedup_vs_transformer"]),
                         "peak_memory_gb": float(r["peak_memory_gb"]), "device": r["device"]})
    return pd.DataFrame(rows, columns=CSV_COLUMNS)
