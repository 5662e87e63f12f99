"""The efficiency benchmarks on the CPU: sweep records, failures, the Table 2 protocol, harness overhead."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_module

from lra_sfa.bench import common, overhead, sweep
from lra_sfa.bench.__main__ import run_bench
from lra_sfa.records import load_records
from lra_sfa.report.load import bench_problem

TINY = ["device=cpu", "bench.lengths=[64,128]", "bench.heads=2", "bench.head_dim=16", "bench.repeats=2",
        "bench.warmup=1", "bench.mlp_ratio=2"]


def _bench_cfg(tmp_path, *overrides: str):
    with initialize_config_module("lra_sfa.conf", version_base=None):
        return compose("bench", overrides=[f"out_dir={tmp_path / 'store'}", *TINY, *overrides])


def test_sweep_writes_one_valid_record_per_cell_including_unsupported(tmp_path):
    cfg = _bench_cfg(tmp_path, "bench.attns=[full,sfa,longformer]", "bench.attn_args={longformer:{impl:flex}}")
    returned = run_bench(cfg)
    records, invalid = load_records(tmp_path / "store", kind="bench")
    assert not invalid and len(records) == len(returned) == 2 * 4 * 2 + 4
    assert all(bench_problem(r) is None and r["kind"] == "bench" and r["mode"] == "sweep" for r in records)
    cells = {(r["attn"], r["part"], r["op"], r["seq_len"]): r for r in records}
    for attn, path in (("full", "sdpa"), ("sfa", "reference")):
        for part in ("attention", "block"):
            for op in ("fwd", "fwd_bwd"):
                for length in (64, 128):
                    record = cells[(attn, part, op, length)]
                    assert record["status"] == "ok" and record["attn_path"] == path
                    assert record["ms"] > 0 and record["ms_min"] <= record["ms"] <= record["ms_max"]
                    assert record["tokens_per_second"] == pytest.approx(length / (record["ms"] / 1e3))
                    assert record["peak_memory_mb"] > 0 and record["memory_source"].startswith("cpu_peak_rss")
                    assert record["device_type"] == "cpu" and record["dtype"] == "float32"
    unsupported = [r for r in records if r["attn"] == "longformer"]
    assert {r["seq_len"] for r in unsupported} == {64}  # the series stopped growing L
    assert all(r["status"] == "unsupported" and "flex" in r["reason"] for r in unsupported)
    assert cells[("sfa", "block", "fwd", 64)]["mlp_dim"] == 2 * 2 * 16
    assert cells[("sfa", "attention", "fwd", 64)]["attn_args"]["topk"] == 8


def test_oom_and_timeout_are_recorded_and_stop_the_series(tmp_path, monkeypatch):
    real = common.time_calls

    def fake(fn, device, warmup, repeats, max_seconds):
        if fake.calls == 1:
            fake.calls += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        fake.calls += 1
        return real(fn, device, warmup, repeats, max_seconds)

    fake.calls = 0
    monkeypatch.setattr(common, "time_calls", fake)
    cfg = _bench_cfg(tmp_path, "bench.attns=[linear]", "bench.parts=[attention]", "bench.ops=[fwd]",
                     "bench.lengths=[32,64,128]")
    statuses = [(r["seq_len"], r["status"]) for r in run_bench(cfg)]
    assert statuses == [(32, "ok"), (64, "oom")]
    monkeypatch.setattr(common, "time_calls", real)
    cfg = _bench_cfg(tmp_path, "bench.attns=[full]", "bench.parts=[block]", "bench.ops=[fwd_bwd]",
                     "bench.max_seconds=0")
    records = run_bench(cfg)
    assert [(r["seq_len"], r["status"]) for r in records] == [(64, "timeout")]
    assert "bench.max_seconds=0" in records[0]["reason"] and records[0]["second_call_ms"] > 0


def test_a_slow_first_call_is_compilation_not_a_timeout():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.2 if len(calls) == 1 else 0.001)  # the first call "compiles"

    timing = common.time_calls(fn, torch.device("cpu"), warmup=2, repeats=3, max_seconds=0.1)
    assert not timing["timed_out"] and timing["first_call_ms"] >= 200 and timing["second_call_ms"] < 100
    assert timing["repeats"] == 3 and timing["ms"] < 100 and len(calls) == 2 + 3


def test_bad_names_and_values_are_clear(tmp_path):
    with pytest.raises(ValueError, match="nosuch.*valid names.*full"):
        common.load_attn_cfg("nosuch")
    with pytest.raises(ValueError, match="bench.parts"):
        run_bench(_bench_cfg(tmp_path, "bench.attns=[full]", "bench.parts=[mlp]"))
    with pytest.raises(ValueError, match="bench.dtype"):
        run_bench(_bench_cfg(tmp_path, "dtype=fp8"))
    assert common.selected_attns(None) == common.attn_registry() and "sfa" in common.attn_registry()


def test_padding_mask_keeps_a_prefix():
    mask = sweep.padding_mask(6, 40, torch.device("cpu"))
    assert mask.shape == (6, 40) and mask[:, :21].all()
    kept = mask.sum(1)
    assert torch.equal(mask, torch.arange(40)[None, :] < kept[:, None])


def test_table2_protocol_from_the_cli(tmp_path):
    env = {**os.environ, "LRA_SFA_BENCH_RESULTS": str(tmp_path / "store")}
    args = ["bench=lra_table2", "device=cpu", "bench.attns=[full,sfa]", "bench.lengths=[64,128]", "bench.batch=2",
            "bench.model.d_model=32", "bench.model.num_heads=2", "bench.model.num_layers=1", "bench.model.mlp_dim=64",
            "bench.warmup_steps=1", "bench.timed_steps=2", f"hydra.run.dir={tmp_path / 'out'}"]
    result = subprocess.run([sys.executable, "-m", "lra_sfa.bench", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "relative to full" in result.stdout and "4 cells ok=4" in result.stdout
    records, invalid = load_records(tmp_path / "store", kind="bench")
    assert not invalid and len(records) == 4
    for record in records:
        assert record["mode"] == "lra_table2" and record["status"] == "ok" and bench_problem(record) is None
        assert record["steps_per_second"] > 0 and record["timed_steps"] == 2 and record["peak_memory_mb"] > 0
        assert record["batch"] == 2 and record["model"]["d_model"] == 32 and "synthetic" in record["data"]
        assert record["tokens_per_second"] == pytest.approx(record["steps_per_second"] * 2 * record["seq_len"])


def test_harness_overhead_on_cpu(tmp_path):
    overrides = ["task.seq_len=64", "task.num_train=64", "task.num_val=16", "task.num_test=16",
                 "model.d_model=32", "model.num_heads=2", "model.num_layers=1", "model.mlp_dim=64",
                 "trainer.batch_size=4", f"paths.cache_dir={tmp_path / 'cache'}"]
    record = overhead.main(["--steps", "4", "--repeats", "1", "--out", str(tmp_path / "store"), *overrides])
    assert record["runner_step_ms"] > 0 and record["bare_step_ms"] > 0
    assert math.isfinite(record["overhead_fraction"]) and record["overhead_fraction"] < 1
    assert record["overhead_fraction"] == pytest.approx(1 - record["bare_step_ms"] / record["runner_step_ms"])
    assert record["seq_len"] == 64 and record["task"] == "needle" and record["batch"] == 4
    stored, invalid = load_records(tmp_path / "store", kind="bench")
    assert not invalid and len(stored) == 1 and bench_problem(stored[0]) is None


def test_kernel_csv_rows_are_replaced_cell_by_cell(tmp_path):
    """sfa_vs_sdpa.csv holds FlashSFA and wide-code rows; a re-run replaces only the cells it measures
    (a partial sweep or another D keeps the rest), and the kernel report reads the FlashSFA rows only."""
    from lra_sfa.bench.kernels import KERNEL_CSV_COLUMNS, KERNEL_KEY, SFA_IMPL, RowWriter
    from lra_sfa.report.kernels import measured_kernels

    path = tmp_path / "sfa_vs_sdpa.csv"
    base = dict(op="fwd", batch=1, heads=8, head_dim=64, topk=16, dtype="bf16", baseline="sdpa_cudnn",
                device="test", date="2026-11-29")
    sweep = RowWriter(path, KERNEL_CSV_COLUMNS, key=KERNEL_KEY)
    sweep.write(dict(base, impl=SFA_IMPL, seq_len=1024, ms=1.0, baseline_ms=2.0, speedup=2.0))
    sweep.write(dict(base, impl=SFA_IMPL, seq_len=4096, ms=2.0, baseline_ms=3.0, speedup=1.5))
    wide = RowWriter(path, KERNEL_CSV_COLUMNS, key=KERNEL_KEY)
    for features, speedup in ((4096, 0.25), (131072, 1.1)):
        wide.write(dict(base, impl="sfa_wide", seq_len=2048, ms=4.0, baseline_ms=1.0, speedup=speedup,
                        mode="overlap", cap="null", D=features))
    again = RowWriter(path, KERNEL_CSV_COLUMNS, key=KERNEL_KEY)  # one FlashSFA cell re-measured
    again.write(dict(base, impl=SFA_IMPL, seq_len=4096, ms=1.0, baseline_ms=3.0, speedup=3.0, batch=2))
    rows = list(csv.DictReader(path.open()))
    assert [(r["impl"], r["seq_len"], r["D"], r["speedup"]) for r in rows] == [
        (SFA_IMPL, "1024", "", "2.0"), (SFA_IMPL, "4096", "", "3.0"),
        ("sfa_wide", "2048", "4096", "0.25"), ("sfa_wide", "2048", "131072", "1.1")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sfa_vs_sdpa.csv"]  # no temporary file left
    table = measured_kernels(path)
    assert "3.00" in table and "0.25" not in table
    RowWriter(path, KERNEL_CSV_COLUMNS)  # no key: a fresh file
    assert path.read_text().strip() == ",".join(KERNEL_CSV_COLUMNS)


def test_kernel_merge_brings_a_device_run_into_the_results(tmp_path):
    """--mode merge: a device run's CSVs replace their cells in results/kernels and keep every other row;
    a folder without benchmark CSVs is an error naming it."""
    from lra_sfa.bench.kernels import KERNEL_CSV_COLUMNS, KERNEL_KEY, RowWriter, main

    base = dict(impl="sfa_triton", op="decode", batch=8, heads=16, head_dim=128, topk=8, dtype="bf16",
                baseline="sdpa_cudnn", device="test")
    results, run = tmp_path / "results", tmp_path / "run"
    old = RowWriter(results / "sfa_vs_sdpa.csv", KERNEL_CSV_COLUMNS, key=KERNEL_KEY)
    for length in (8192, 131072):
        old.write(dict(base, seq_len=length, ms=1.5, baseline_ms=1.9, speedup=1.27, date="2026-11-28"))
    RowWriter(run / "sfa_vs_sdpa.csv", KERNEL_CSV_COLUMNS, key=KERNEL_KEY).write(
        dict(base, seq_len=131072, ms=1.2, baseline_ms=1.83, speedup=1.53, date="2026-11-29"))
    main(["--mode", "merge", "--src", str(run), "--out", str(results)])
    rows = list(csv.DictReader((results / "sfa_vs_sdpa.csv").open()))
    assert [(r["seq_len"], r["speedup"], r["date"]) for r in rows] == [
        ("8192", "1.27", "2026-11-28"), ("131072", "1.53", "2026-11-29")]
    assert (results / "sfa_vs_sdpa.png").is_file()
    with pytest.raises(SystemExit, match="none of"):
        main(["--mode", "merge", "--src", str(tmp_path / "empty"), "--out", str(results)])


def test_kernel_table_rewrites_the_readme_section(tmp_path):
    """--mode table: one line per (op, d, k, L) with cuDNN and FA2 side by side, fwd before decode and by L;
    only the section from '## Table' on is rewritten; a README without it is an error naming the file."""
    from lra_sfa.bench.kernels import KERNEL_CSV_COLUMNS, KERNEL_KEY, RowWriter, main

    rows = RowWriter(tmp_path / "sfa_vs_sdpa.csv", KERNEL_CSV_COLUMNS, key=KERNEL_KEY)
    base = dict(impl="sfa_triton", batch=1, heads=16, head_dim=128, topk=8, dtype="bf16", max_rel_err="2.0e-03",
                peak_mem_mb=900.0, device="test", date="2026-11-29")
    for op, length, ms in (("decode", 8192, 1.2), ("fwd", 32768, 14.0), ("fwd", 16384, 7.5)):
        for baseline, base_ms in (("sdpa_cudnn", 6.5), ("sdpa_fa2", 12.0)):
            rows.write(dict(base, op=op, seq_len=length, ms=ms, baseline=baseline, baseline_ms=base_ms,
                            speedup=round(base_ms / ms, 4)))
    (tmp_path / "README.md").write_text("# Kernels\n\nintro kept\n\n## Table\n\nold table\n")
    main(["--mode", "table", "--out", str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# Kernels\n\nintro kept\n\n## Table\n\n| op |") and "old table" not in text
    lines = [line for line in text.splitlines() if line.startswith("| fwd") or line.startswith("| decode")]
    assert [line.split("|")[4].strip() for line in lines] == ["16384", "32768", "8192"]
    assert "| 7.500 | 6.500 | 0.87 | 12.000 | 1.60 |" in lines[0]
    (tmp_path / "README.md").write_text("no section\n")
    with pytest.raises(SystemExit, match="README.md has no"):
        main(["--mode", "table", "--out", str(tmp_path)])
