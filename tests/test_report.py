"""The report: tables, plots and RESULTS.md from records alone; bad files skipped and listed.

Every store here is made of fixture records, published tables and a kernel CSV written by the tests in
the formats of results/runs, results/published and results/kernels; nothing reads the committed results/."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lra_sfa import report
from lra_sfa.bench.kernels.rows import COLUMNS as KERNEL_CSV_COLUMNS
from lra_sfa.records import REQUIRED_FIELDS, store_record, write_json_atomic
from lra_sfa.report.load import length_label

SOURCE = "Fixture paper A (test data)"  # the published fixtures' source; their numbers are invented
LRA_HEAD = ["source", "table", "model", "listops", "text", "retrieval", "image", "pathfinder", "pathx", "average",
            "note"]
PUBLISHED_TABLES = {  # results/published/<stem>.csv: columns as there, rows and numbers invented
    "lra_table1": (LRA_HEAD, [
        [SOURCE, "Table 1", "Transformer", "31.11", "61.22", "55.33", "41.44", "70.55", "FAIL", "51.93", "test %"],
        [SOURCE, "Table 1", "Performer", "18.01", "65.02", "53.03", "42.04", "77.05", "FAIL", "51.03", ""],
        [SOURCE, "Table 1", "Linear Trans.", "16.13", "65.90", "53.09", "42.34", "75.30", "FAIL", "50.55", ""]]),
    "lra_reproductions": (LRA_HEAD, [
        ["Fixture reproduction B", "README table", "Transformer", "35.55", "62.20", "", "", "48.80", "", "",
         "published reproduction, not measured here"]]),
    "lra_table2": (["source", "table", "model", "seq_len", "steps_per_second", "speedup_vs_transformer",
                    "peak_memory_gb", "device", "note"],
                   [[SOURCE, "Table 2", model, str(n), f"{sps / (n / 1000):.1f}", ratio, f"{gb * n / 1000:.2f}",
                     "4x4 TPU v3", ""] for model, sps, ratio, gb in (("Transformer", 8.0, "1.0", 0.9),
                                                                    ("Performer", 9.0, "2.5", 0.3))
                    for n in (1000, 2000, 3000, 4000)]),
    "sfa_paper": (["source", "table", "metric", "setting", "seq_len", "dense", "sfa", "unit", "note"], [
        ["Fixture paper C", "Table 9", "attention module latency", "batch 8, d=128, k=8", "4096", "900", "300", "ms",
         ""],
        ["Fixture paper C", "Table 9", "attention module latency", "batch 8, d=128, k=8", "16384", "3600", "1000",
         "ms", ""]]),
    "seq_mnist": (["source", "table", "model", "dataset", "task", "test_accuracy", "note"], [
        ["Fixture paper D", "Table 6", "Transformer", "MNIST (digits)", "pMNIST", "96.5", "a different data set"]]),
}
KERNEL_COLUMNS = KERNEL_CSV_COLUMNS + ["D"]  # results/kernels/sfa_vs_sdpa.csv (D: an older wide-code row)
LRA_TASKS = (("listops", 2000, "lra_listops"), ("text", 4096, "lra_text"), ("retrieval", 4000, "lra_retrieval"),
             ("image", 1024, "lra_image"), ("pathfinder", 1024, "lra_pathfinder"))
SWEEP_LENGTHS = [2**n for n in range(10, 21)]


def run_record(rng: random.Random, task: str, attn: str, seq_len: int, protocol: str, **extra) -> dict:
    record = {field: None for field in REQUIRED_FIELDS}
    record.update(
        kind="run", task=task, attn=attn, attn_args={}, seq_len=seq_len, model={"d_model": 64}, dtype="bfloat16",
        device="NVIDIA H200", status="ok", val_accuracy=rng.uniform(0.3, 0.9), test_accuracy=rng.uniform(0.3, 0.9),
        train_seconds=rng.uniform(10, 100), steps_per_second=rng.uniform(5, 50), tokens_per_second=1e6,
        peak_memory_mb=rng.uniform(500, 9000), steps=1000, max_steps=1000, git_commit="abc", config_hash="h",
        date=f"2026-11-{rng.randint(10, 28):02d}T10:00:00+00:00", protocol=protocol, stopped_by_time_budget=False,
    )
    record.update(extra)
    return record


def sweep_record(attn: str, part: str, op: str, length: int, status: str = "ok") -> dict:
    ms = 1e-6 * length ** (2 if attn == "full" else 1) + 0.05
    return {"kind": "bench", "mode": "sweep", "task": "bench", "attn": attn, "part": part, "op": op,
            "seq_len": length, "batch": 1, "heads": 8, "head_dim": 64, "dtype": "bfloat16", "mask": False,
            "device": "NVIDIA H200", "device_type": "cuda", "date": "2026-11-28T12:00:00+00:00", "status": status,
            "reason": None if status == "ok" else "CUDA out of memory",
            "ms": ms if status == "ok" else None, "tokens_per_second": length / ms * 1e3 if status == "ok" else None,
            "peak_memory_mb": length / 1000 if status == "ok" else None}


def synthetic_store(folder: Path, seed: int = 0) -> int:
    """~300 records: LRA runs (full complete), needle runs, a 1K-1M sweep with OOMs, Table 2, overhead."""
    rng, count = random.Random(seed), 0
    for attn in ("full", "sfa", "linear", "performer_relu"):
        for task, _length, protocol in LRA_TASKS:
            if attn == "full" or task in ("listops", "pathfinder"):
                for _ in range(3):
                    store_record(protocol_record(rng, protocol, attn, rng.uniform(0.3, 0.9), task=task),
                                 folder / "runs")
                    count += 1
        for length in (1024, 4096):
            depths = {f"{d:g}": rng.random() for d in (0.0, 0.25, 0.5, 0.75, 1.0)}
            store_record(run_record(rng, "needle", attn, length, "needle", test_accuracy_by_depth=depths),
                         folder / "runs")
            count += 1
        by_length = {str(n): rng.random() for n in (256, 1024, 4096, 16384)}  # trainer.test_lengths
        store_record(run_record(rng, "needle", attn, 256, "needle", test_accuracy_by_length=by_length),
                     folder / "runs")
        count += 1
    for attn, oom_at in (("full", 2**19), ("sfa", None), ("linear", None), ("bigbird", 2**18), ("performer", None),
                         ("windowed", None)):
        for part in ("attention", "block"):
            for op in ("fwd", "fwd_bwd"):
                for length in SWEEP_LENGTHS:
                    status = "oom" if oom_at is not None and length == oom_at else "ok"
                    write_json_atomic(folder / "bench" / f"{attn}_{part}_{op}_{length}.json",
                                      sweep_record(attn, part, op, length, status))
                    count += 1
                    if status != "ok":
                        break
    for attn in ("full", "sfa", "linear"):
        for length in (1024, 2048, 3072, 4096):
            write_json_atomic(folder / "bench" / f"t2_{attn}_{length}.json", {
                "kind": "bench", "mode": "lra_table2", "attn": attn, "seq_len": length, "status": "ok",
                "device": "NVIDIA H200", "date": "2026-11-28T12:00:00+00:00", "dtype": "bfloat16", "batch": 32,
                "steps_per_second": 40.0 / (length / 1024) ** (2 if attn == "full" else 1),
                "peak_memory_mb": 100.0 * length / 1024 * (2 if attn == "full" else 1)})
            count += 1
    write_json_atomic(folder / "bench" / "overhead.json", {
        "kind": "bench", "mode": "overhead", "attn": "full", "seq_len": 4096, "status": "ok", "batch": 32,
        "device": "NVIDIA H200", "date": "2026-11-28T12:00:00+00:00", "runner_step_ms": 50.0, "bare_step_ms": 48.5,
        "overhead_fraction": 0.03})
    return count + 1


def write_published(folder: Path) -> Path:
    """The published tables, in the results/published CSV format, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, (columns, rows) in PUBLISHED_TABLES.items():
        pd.DataFrame(rows, columns=columns).to_csv(folder / f"{stem}.csv", index=False)
    return folder


def write_kernels_csv(path: Path, seed: int = 0) -> pd.DataFrame:
    """A kernel benchmark CSV in the results/kernels format: SFA Triton rows and one wide-code row."""
    rng, rows = random.Random(seed), []
    for op in ("fwd", "fwd_bwd", "decode"):
        for head_dim in (64, 128):
            for baseline in ("sdpa_cudnn", "sdpa_fa2"):
                for seq_len in (1024, 4096, 16384):
                    ms, base = round(rng.uniform(0.1, 10), 4), round(rng.uniform(0.1, 10), 4)
                    ratio = base / ms
                    low, high = round(ratio * 0.97, 4), round(ratio * 1.03, 4)
                    verdict = "faster" if low > 1 else "slower" if high < 1 else "tie"
                    rows.append({"impl": "sfa_triton", "op": op, "batch": 4, "heads": 8, "seq_len": seq_len,
                                 "head_dim": head_dim, "topk": 8, "dtype": "bf16", "sfa_path": "triton", "ms": ms,
                                 "baseline": baseline, "baseline_ms": base, "speedup_median": round(ratio, 4),
                                 "speedup_min": low, "speedup_max": high, "repeats": 5, "verdict": verdict,
                                 "max_rel_err": 2e-3, "peak_mem_mb": 100.0, "device": "NVIDIA H200",
                                 "git_commit": "abc1234", "torch_version": "2.13.0", "triton_version": "3.7.0",
                                 "cudnn_version": "91000", "date": "2026-11-29"})
    rows.append({**rows[0], "impl": "sfa_wide", "speedup_median": 123.45, "D": 4096})  # wide codes: not in this table
    frame = pd.DataFrame(rows, columns=KERNEL_COLUMNS)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def make_report(*overrides: str) -> int:
    """``python -m lra_sfa.report <overrides>`` in this process: the same config, the same exit code."""
    return report.run_report(report.report_config(overrides))


def add_bad_files(folder: Path) -> None:
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / "corrupt.json").write_text('{"kind": "run", "task": "listo')
    partial = run_record(random.Random(1), "listops", "sfa", 2000, "lra_listops", test_accuracy=None)
    write_json_atomic(folder / "runs" / "partial.json", partial)
    write_json_atomic(folder / "bench" / "no_mode.json", {"kind": "bench", "attn": "full", "status": "ok"})
    write_json_atomic(folder / "runs" / "no_fields.json", {"kind": "run", "task": "listops"})


@pytest.fixture
def store(tmp_path) -> Path:
    folder = tmp_path / "results"
    write_published(folder / "published")
    write_kernels_csv(folder / "kernels" / "sfa_vs_sdpa.csv")
    return folder


def test_three_hundred_records_build_every_table_and_plot(store):
    count = synthetic_store(store)
    add_bad_files(store)
    assert count >= 290
    assert make_report(f"in_dir={store}") == 0  # out_dir defaults to in_dir
    for name in ("tables/accuracy.md", "tables/accuracy.csv", "tables/efficiency.md", "tables/efficiency.csv",
                 "RESULTS.md", *[f"plots/{plot}" for plot in report.PLOT_FILES]):
        assert (store / name).is_file() and (store / name).stat().st_size > 0, name
    page = (store / "RESULTS.md").read_text()
    for bad in ("corrupt.json", "no_mode.json", "no_fields.json", "partial: status ok but no numeric test_accuracy"):
        assert bad in page
    accuracy = (store / "tables" / "accuracy.md").read_text()
    appendix = accuracy.split("## Appendix")[1]
    assert "needs data" not in appendix.split("### Validation")[0].split("| full |")[1].split("\n")[0]
    headline = accuracy.split("## Published")[0]
    assert headline.count("(n=3)") == 4 * 2 + 3 and "| performer_relu |" in headline  # full: 5 tasks, others 2
    frame = pd.read_csv(store / "tables" / "accuracy.csv")
    full = frame[(frame["source"] == "measured") & (frame["attn"] == "full") & frame["column"].notna()
                 & (frame["column"] != "pathx")]
    assert len(full) == 5 and (full["runs"] == 3).all()  # 3 synthetic seeds per task
    shown = full.sort_values("date").groupby("column").tail(1)  # each column shows its latest row
    full_row = next(line for line in appendix.splitlines() if line.startswith("| full |"))
    assert full_row.rstrip(" |").endswith(f"{shown['test_pct'].mean():.2f}")  # the 5-task average
    assert frame["source"].str.startswith(f"published: {SOURCE}").sum() == 3 * 7  # 3 models x 7 columns
    efficiency = (store / "tables" / "efficiency.md").read_text()
    reach = {}
    for line in efficiency.split("Longest length reached")[1].splitlines():
        if line.startswith("| "):
            reach.setdefault(line.split("|")[1].strip(), line)  # the first table after the heading
    assert "| 256K (oom at 512K) |" in reach["full"] and "| 1M | 1M | 1M | 1M |" in reach["sfa"]
    assert "128K (oom at 256K)" in reach["bigbird"]
    assert "40.00 (1.00x)" in efficiency and "3.0%" in efficiency and f"Published: {SOURCE}, Table 2" in efficiency
    eff = pd.read_csv(store / "tables" / "efficiency.csv")
    t2 = eff[(eff["source"] == "measured") & (eff["mode"] == "lra_table2") & (eff["seq_len"] == 4096)]
    assert t2.set_index("attn").loc["linear", "speedup_vs_full"] == pytest.approx(4.0)
    assert t2.set_index("attn").loc["linear", "memory_vs_full"] == pytest.approx(0.5)


def test_missing_tasks_say_needs_data_and_published_stays_apart(store, capsys):
    """Runs of two LRA tasks only: the data-bound columns say "needs data", published numbers stand in their
    own sections, and the output has no clock in it."""
    rng = random.Random(3)
    for attn in ("full", "sfa"):
        store_record(run_record(rng, "listops", attn, 2000, "lra_listops", steps=2010, max_steps=5000,
                                stopped_by_time_budget=True, test_accuracy=0.3435), store / "runs")
        store_record(run_record(rng, "pathfinder", attn, 1024, "lra_pathfinder"), store / "runs")
    (store / "runs" / "corrupt.json").write_text("not json")
    out = store / "out"
    assert make_report(f"in_dir={store}", f"out_dir={out}") == 0
    assert "skipped runs/corrupt.json" in capsys.readouterr().err
    accuracy = (out / "tables" / "accuracy.md").read_text()
    headline, rest = accuracy.split("## Published: LRA paper Table 1")
    published, appendix = rest.split("## Appendix")
    assert "No protocol-complete run yet." in headline and "31.11" in published and "31.11" not in appendix
    assert "35.55" in published and "published reproduction" in published  # labelled as such
    rows = {}
    for line in appendix.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)  # the test-accuracy table comes first
    assert rows["full"].count("needs data") == 3 and "34.35 †" in rows["full"]
    assert "2010 of 5000 †" in appendix and "NVIDIA H200" in appendix
    efficiency = (out / "tables" / "efficiency.md").read_text()
    assert "No sweep records yet" in efficiency and "No Table 2 records yet" in efficiency
    measured_kernels, published_sfa = efficiency.split("### Published: SFA paper")
    kernels = pd.read_csv(store / "kernels" / "sfa_vs_sdpa.csv")
    first_cell = kernels[(kernels["impl"] == "sfa_triton") & (kernels["op"] == "fwd") & (kernels["head_dim"] == 128)
                         & (kernels["topk"] == 8) & (kernels["baseline"] == "sdpa_cudnn")].sort_values("seq_len")
    cell = f"{first_cell['speedup_median'].iloc[0]:.2f} {first_cell['verdict'].iloc[0]}"
    assert f"| NVIDIA H200 | fwd | 128 | 8 | sdpa_cudnn | {cell} |" in measured_kernels
    assert "| 900 ms | 300 ms | 3.00x | Table 9 |" in published_sfa and "| 16K |" in published_sfa
    assert "900 ms" not in measured_kernels and "123.45" not in measured_kernels  # wide rows: not this table
    assert not (out / "plots" / "speed_vs_length.png").exists()
    first = {p.name: p.read_text() for p in (out / "tables").iterdir()}
    make_report(f"in_dir={store}", f"out_dir={out}")
    assert first == {p.name: p.read_text() for p in (out / "tables").iterdir()}  # no clock in the output


def protocol_record(rng: random.Random, protocol: str, attn: str, test_accuracy: float, **extra) -> dict:
    """A record carrying exactly the settings of ``experiment=<protocol>``, as a real protocol run would."""
    from omegaconf import OmegaConf

    from lra_sfa.compose import compose_config

    cfg = OmegaConf.to_container(compose_config([f"experiment={protocol}"]), resolve=True)
    task = cfg["task"]["_target_"].rsplit(".", 1)[-1].lower()
    record = run_record(rng, task, attn, cfg["task"]["seq_len"], protocol, model=cfg["model"],
                        trainer=cfg["trainer"], steps=cfg["trainer"]["max_steps"],
                        max_steps=cfg["trainer"]["max_steps"], test_accuracy=test_accuracy)
    record.update(extra)
    return record


def test_headline_is_mean_and_spread_of_protocol_complete_runs_only():
    from lra_sfa.report.headline import headline_markdown, mean_std, protocol_complete

    rng = random.Random(4)
    complete = [protocol_record(rng, "lra_listops", "full", acc) for acc in (0.36, 0.37, 0.35)]
    assert all(protocol_complete(r) for r in complete)
    cut = protocol_record(rng, "lra_listops", "sfa", 0.40, steps=4000, stopped_by_time_budget=True)
    fewer_steps = protocol_record(rng, "lra_listops", "sfa", 0.41)
    fewer_steps["trainer"]["max_steps"] = fewer_steps["max_steps"] = fewer_steps["steps"] = 400
    other_width = protocol_record(rng, "lra_listops", "linear", 0.42)
    other_width["model"]["d_model"] = 256
    older = protocol_record(rng, "lra_listops", "performer", 0.43)
    del older["model"]["padding"]  # before padding=release existed: the default (task) differs from the protocol
    variant = protocol_record(rng, "lra_listops_2020", "full", 0.38)
    assert not any(protocol_complete(r) for r in (cut, fewer_steps, other_width, older))
    page = headline_markdown(complete + [cut, fewer_steps, other_width, older, variant])
    assert f"| full | {mean_std([0.36, 0.37, 0.35])} |" in page and "36.00 ± 1.00 (n=3)" in page
    for attn in ("sfa", "linear", "performer"):
        assert f"| {attn} |" not in page  # no protocol-complete run: no row
    assert "| lra_listops_2020 | full | 38.00 (n=1) |" in page


def test_headline_counts_each_seed_once_and_keeps_attention_variants_apart():
    """A seed run twice counts once (its latest record); sfa at two topk values is two rows, each labelled
    by the argument that differs; a run resumed under another max_steps is not protocol-complete."""
    from lra_sfa.report.headline import headline_markdown, protocol_complete

    rng = random.Random(5)
    make = lambda attn, acc, seed, date, **args: protocol_record(
        rng, "lra_listops", attn, acc, seed=seed, date=date, attn_args={"impl": "auto", **args})
    full = [make("full", 0.30, 0, "2026-12-01"), make("full", 0.36, 0, "2026-12-02"),
            make("full", 0.38, 1, "2026-12-01")]
    sfa = [make("sfa", 0.35, 0, "2026-12-01", topk=8), make("sfa", 0.33, 0, "2026-12-01", topk=2)]
    extended = make("linear", 0.40, 0, "2026-12-01")
    extended["max_steps_changed_on_resume"] = {"checkpoint": 100, "now": 5000}
    assert not protocol_complete(extended)
    page = headline_markdown([*full, *sfa, extended])
    assert "| full | 37.00 ± 1.41 (n=2) |" in page  # seed 0's later run (36) and seed 1 (38)
    assert "| sfa (topk=2) | 33.00 (n=1) |" in page and "| sfa (topk=8) | 35.00 (n=1) |" in page
    assert "| linear |" not in page


def test_diverged_seeds_of_a_protocol_are_counted_beside_n_and_left_out_of_the_mean():
    from lra_sfa.report.headline import headline_markdown, protocol_diverged
    from lra_sfa.report.tables import _details, group_runs

    rng = random.Random(6)
    finished = protocol_record(rng, "lra_listops", "performer", 0.3645)
    nan = [protocol_record(rng, "lra_listops", "performer", None, status="diverged", steps=0,
                           reason=f"loss became nan by step {step}") for step in (2460, 4030)]
    explored = protocol_record(rng, "lra_listops", "linear", None, status="diverged", steps=0)
    explored["model"]["d_model"] = 256  # not the protocol's model: exploration, not a protocol outcome
    only_nan = protocol_record(rng, "lra_listops", "bigbird", None, status="diverged", steps=0)
    assert all(protocol_diverged(r) for r in (*nan, only_nan)) and not protocol_diverged(explored)
    page = headline_markdown([finished, *nan, explored, only_nan])
    assert "| performer | 36.45 (n=1; 2 diverged) |" in page and "| bigbird | diverged (1) |" in page
    assert "| linear |" not in page and "left out of the mean" in page
    appendix = _details(group_runs([finished, *nan]))
    assert "| 1 (diverged) | 36.45 |" in appendix and "nan" not in appendix.replace("diverged", "")
    assert "| 1 | " in _details(group_runs([finished]))  # no failures: the bare count


def test_withdrawn_records_stay_out_of_every_table_and_are_listed(tmp_path):
    from lra_sfa.report.load import load_inputs

    rng = random.Random(7)
    kept = protocol_record(rng, "lra_listops", "performer", 0.3645)
    bad = protocol_record(rng, "lra_listops", "performer", None, status="diverged", steps=0)
    store_record(kept, tmp_path / "runs")
    store_record(bad, tmp_path / "withdrawn")
    inputs = load_inputs(tmp_path, None, None)
    assert inputs.runs == [kept]
    ((name, reason),) = inputs.skipped
    assert name.startswith("withdrawn/") and reason.startswith("withdrawn: ")


def test_a_cut_run_is_superseded_by_its_cells_later_longer_run_and_listed(tmp_path):
    """A campaign cell cut by its slot and later resumed (or run again) counts once: the longer, later record;
    a cut run with no later run of its cell, and runs of other cells, stay."""
    from lra_sfa.report.load import load_inputs

    rng = random.Random(8)
    cell = "experiment=lra_listops attn=full seed=0"
    cut = protocol_record(rng, "lra_listops", "full", 0.30, steps=2170, stopped_by_time_budget=True, cell=cell,
                          date="2026-12-06T10:00:00+00:00")
    resumed = protocol_record(rng, "lra_listops", "full", 0.36, cell=cell, date="2026-12-06T11:00:00+00:00")
    alone = protocol_record(rng, "lra_listops", "sfa", 0.31, steps=900, stopped_by_time_budget=True,
                            cell="experiment=lra_listops attn=sfa seed=0", date="2026-12-06T12:00:00+00:00")
    earlier = protocol_record(rng, "lra_listops", "sfa", 0.20, steps=800, stopped_by_time_budget=True,
                              date="2026-12-05T12:00:00+00:00")  # no cell: not from a campaign
    for record in (cut, resumed, alone, earlier):
        store_record(record, tmp_path / "runs")
    inputs = load_inputs(tmp_path, None, None)
    assert sorted(r["test_accuracy"] for r in inputs.runs) == [0.20, 0.31, 0.36]
    ((name, reason),) = inputs.skipped
    assert name.startswith("runs/") and reason.startswith("superseded by runs/") and "step 2170" in reason


def test_command_line_is_a_hydra_app_that_leaves_no_files_behind(tmp_path):
    """``python -m lra_sfa.report key=value``: the records' folder in, the tables out, nothing else written
    in the working directory (no outputs/, no .hydra/, no log); bad keys and folders are one line, exit 2."""
    folder = tmp_path / "results"
    store_record(run_record(random.Random(5), "listops", "full", 2000, "lra_listops"), folder / "runs")
    ok = subprocess.run([sys.executable, "-m", "lra_sfa.report", f"in_dir={folder}", f"out_dir={tmp_path / 'o'}"],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "RESULTS.md").is_file() and "1 run + 0 bench records" in ok.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "results"]
    for bad, named in (("indir=x", "'indir=x'; use key=value with key in ('in_dir'"), ("+extra=1", "'+extra=1'"),
                       ("results", "'results'"), (f"in_dir={tmp_path / 'nope'}", "nope is not a folder")):
        run = subprocess.run([sys.executable, "-m", "lra_sfa.report", bad], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert run.returncode == 2 and named in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    shown = subprocess.run([sys.executable, "-m", "lra_sfa.report", "--help"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert shown.returncode == 0 and "make tables" in shown.stdout
    assert all(f"\n{key}: " in shown.stdout for key in report.app.KEYS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "results"]


def test_config_defaults_fill_in_as_documented(tmp_path):
    from lra_sfa.report.app import REPO_PUBLISHED, report_paths

    bare = tmp_path / "bare"
    bare.mkdir()
    paths = report_paths(report.report_config([f"in_dir={bare}"]))
    assert paths == {"in_dir": bare, "out_dir": bare, "published_dir": REPO_PUBLISHED,
                     "kernels_csv": bare / "kernels" / "sfa_vs_sdpa.csv"}
    store = write_published(tmp_path / "store" / "published").parent
    paths = report_paths(report.report_config([f"in_dir={store}", f"out_dir={tmp_path / 'o'}", "kernels_csv=k.csv"]))
    assert paths["published_dir"] == store / "published" and paths["out_dir"] == tmp_path / "o"
    assert paths["kernels_csv"] == Path("k.csv")
    assert report_paths(report.report_config([f"in_dir={store}", "published_dir="]))["published_dir"] is None
    with pytest.raises(ValueError, match=r"bad argument 'indir=x'; use key=value with key in \('in_dir'"):
        report.report_config(["indir=x"])
    assert make_report("in_dir=") == 2 and make_report(f"in_dir={tmp_path / 'nope'}") == 2


@pytest.mark.parametrize(("length", "label"), [(64, "64"), (1024, "1K"), (3072, "3K"), (1000, "1K"),
                                               (2**20, "1M"), (1536, "1536")])
def test_length_labels(length, label):
    assert length_label(length) == label


def test_runs_with_other_attention_arguments_are_not_averaged_as_seeds():
    """Two seeds of one config average into one row; a run of the same backend with other arguments
    (here SimHash codes) gets its own row, labelled by the arguments that differ."""
    from lra_sfa.report.tables import group_runs

    rng = random.Random(0)
    learned = {"codes": "learned", "D": 4096, "k": 16}
    runs = [run_record(rng, "needle", "sfa_wide", 128, "needle", attn_args=learned, test_accuracy=acc, seed=seed)
            for seed, acc in ((0, 1.0), (1, 0.9))]
    runs.append(run_record(rng, "needle", "sfa_wide", 128, "needle", test_accuracy=0.07,
                           attn_args={"codes": "simhash", "D": 131072, "k": 8}))
    runs.append(run_record(rng, "needle", "full", 128, "needle", test_accuracy=1.0))
    other_machine = run_record(rng, "needle", "full", 128, "needle", test_accuracy=0.5)
    other_machine["device"] = "cpu (x86_64, 2 threads)"  # not a seed of the run above: a row of its own
    assert len(group_runs(runs + [other_machine]).query("attn == 'full'")) == 2
    frame = group_runs(runs).set_index("attn")
    assert frame.loc["sfa_wide (D=4096, codes=learned, k=16)", "test_pct"] == 95.0
    assert frame.loc["sfa_wide (D=4096, codes=learned, k=16)", "runs"] == 2
    spread = frame.loc["sfa_wide (D=4096, codes=learned, k=16)", ["test_min_pct", "test_max_pct"]]
    assert spread.tolist() == [90.0, 100.0]
    assert frame.loc["sfa_wide (D=131072, codes=simhash, k=8)", "test_pct"] == 7.0
    assert frame.loc["full", "test_pct"] == 100.0


def test_runs_at_other_learning_rates_or_pair_counts_are_not_averaged_as_seeds():
    """A learning-rate sweep (MQAR's) is not a set of seeds: each lr, and each number of key-value pairs, gets a
    row labelled by what differs; runs that agree on both still average."""
    from lra_sfa.report.tables import group_runs

    rng = random.Random(1)
    runs = [run_record(rng, "mqar", "full", 256, "mqar", trainer={"lr": lr}, num_pairs=pairs, test_accuracy=acc,
                       seed=seed)
            for lr, pairs, acc, seed in ((4.6e-4, 16, 0.03, 0), (2.2e-3, 16, 1.0, 0), (2.2e-3, 16, 0.9, 1),
                                         (2.2e-3, 64, 0.5, 0))]
    frame = group_runs(runs).set_index("attn")
    assert frame.loc["full (lr=0.00046, pairs=16)", "test_pct"] == 3.0
    assert frame.loc["full (lr=0.0022, pairs=16)", ["runs", "test_pct"]].tolist() == [2, 95.0]
    assert frame.loc["full (lr=0.0022, pairs=64)", "test_pct"] == 50.0


def test_needle_by_length_plot_draws_runs_tested_at_other_lengths(tmp_path):
    from lra_sfa.report.plots import plot_needle, plot_needle_by_length

    rng = random.Random(1)
    tested = run_record(rng, "needle", "full", 128, "needle", test_accuracy=1.0,
                        test_accuracy_by_length={"128": 1.0, "512": 1.0, "2048": 0.98},
                        test_accuracy_by_depth={"0.0": 1.0, "1.0": 1.0})
    plain = run_record(rng, "needle", "sfa", 128, "needle", test_accuracy_by_length={"128": 0.5},
                       test_accuracy_by_depth={"0.0": 0.5, "1.0": 0.5})
    assert plot_needle_by_length([plain], tmp_path / "none.png") is None  # nothing tested elsewhere
    out = plot_needle_by_length([tested, plain], tmp_path / "by_length.png")
    assert out.is_file() and out.stat().st_size > 1000
    assert plot_needle([tested, plain], tmp_path / "heatmap.png").is_file()


def test_run_labels_tell_apart_seeds_and_step_counts():
    from lra_sfa.report.load import run_labels

    runs = [{"seed": 0, "steps": 3000}, {"seed": 1, "steps": 3000}, {"seed": 1, "steps": 2730}, {"seed": 0}]
    labels = {id(runs[0]): "full", id(runs[1]): "full", id(runs[2]): "full", id(runs[3]): "sfa"}
    got = run_labels(runs, labels)
    assert [got[id(r)] for r in runs] == ["full [seed 0]", "full [seed 1, 3000 steps]",
                                          "full [seed 1, 2730 steps]", "sfa"]


def test_appendix_marks_runs_configured_below_their_protocol_and_lists_only_backends_with_lra_runs():
    """A run set to fewer steps than its protocol's is shorter than the protocol (†) even though it reached
    its own max_steps; the cell shows the longest-trained group; a backend with only needle runs has no
    row in the LRA matrix."""
    from lra_sfa.report.protocols import protocol_settings
    from lra_sfa.report.tables import accuracy_section, group_runs

    protocol_steps = protocol_settings("lra_listops")[1]["max_steps"]
    rng = random.Random(0)
    probe = run_record(rng, "listops", "full", 2000, "lra_listops", steps=40, max_steps=40, test_accuracy=0.17,
                       date="2026-12-06T12:00:00+00:00")
    longer = run_record(rng, "listops", "sfa", 2000, "lra_listops", steps=protocol_steps, max_steps=protocol_steps,
                        test_accuracy=0.36, date="2026-12-01T12:00:00+00:00")
    earlier = run_record(rng, "listops", "sfa", 2000, "lra_listops", steps=80, max_steps=80, test_accuracy=0.2,
                         date="2026-12-05T12:00:00+00:00")
    needle_only = run_record(rng, "needle", "sfa_wide", 256, "needle")
    frame = group_runs([probe, longer, earlier, needle_only])
    assert frame.query("attn == 'full'")["short"].item()
    body, _ = accuracy_section([probe, longer, earlier, needle_only], {})
    matrix = body.split("### Test accuracy (%)")[1].split("###")[0]
    rows = {line.split("|")[1].strip(): line for line in matrix.splitlines() if line.startswith("| ")}
    assert "17.00 †" in rows["full"] and "36.00 |" in rows["sfa"]  # the longest-trained sfa group, not the latest
    assert "sfa_wide" not in rows


def test_speed_comes_from_solo_compiled_runs_where_some_seeds_ran_compiled():
    from lra_sfa.report.tables import summarise

    def run(rate, compiled, shared=1):
        return {"status": "ok", "test_accuracy": 0.3, "steps_per_second": rate, "train_seconds": 100 / rate,
                "compiled": compiled, "trainer": {"concurrent_runs": shared}, "device": "gpu", "date": "2026-12-06"}

    mixed = summarise([run(25.0, False), run(30.0, True), run(32.0, True), run(90.0, True, shared=3)])
    assert mixed["steps_per_second"] == 31.0 and mixed["runs"] == 4
    assert summarise([run(25.0, False), run(27.0, False)])["steps_per_second"] == 26.0
