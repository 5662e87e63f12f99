"""The efficiency benchmarks on the CPU: sweep records, failures, the Table 2 protocol, harness overhead."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

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
    small = ",".join(f"'{item}'" for item in ("model.d_model=32", "model.num_heads=2", "model.num_layers=1",
                                                "model.mlp_dim=64"))
    args = ["bench=lra_table2", "device=cpu", "bench.attns=[full,sfa]", "bench.lengths=[64,128]", "bench.batch=2",
            f"bench.overrides=[{small}]", "bench.warmup_steps=1", "bench.timed_steps=2",
            f"hydra.run.dir={tmp_path / 'out'}"]
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
        assert record["experiment"] == "lra_text" and record["model"]["init"] == "lra"  # the composed model
        assert record["tokens_per_second"] == pytest.approx(record["steps_per_second"] * 2 * record["seq_len"])
        # the bytes hold no padding: no key padding mask, so full attention runs SDPA's unmasked kernels
        assert record["key_padding_mask"] is False
        assert record["attn_path"] == {"full": "sdpa", "sfa": "reference"}[record["attn"]]


def test_table2_model_and_optimizer_are_the_text_experiments():
    from lra_sfa.bench.table2 import OPTIMIZER_KEYS, text_protocol
    from lra_sfa.compose import compose_config

    def table2(*overrides: str):
        with initialize_config_module("lra_sfa.conf", version_base=None):
            return compose("bench", overrides=["bench=lra_table2", *overrides]).bench

    bench = text_protocol(table2())
    text = compose_config(["experiment=lra_text"])
    assert bench.model == text.model and bench.pooling == text.task.pooling == "cls"
    assert dict(bench.optimizer) == {key: text.trainer[key] for key in OPTIMIZER_KEYS}
    model = bench.model
    assert (model.d_model, model.num_heads, model.num_layers, model.mlp_dim) == (256, 4, 4, 1024)
    assert bench.optimizer.schedule == "rsqrt" and bench.optimizer.lr == 0.05
    small = text_protocol(table2("bench.overrides=['model.d_model=32']"))
    assert small.model.d_model == 32 and small.model.num_layers == text.model.num_layers
    with pytest.raises(ValueError, match="bench.experiment='nosuch'"):
        text_protocol(table2("bench.experiment=nosuch"))


def test_harness_overhead_on_cpu(tmp_path):
    overrides = ["task.seq_len=64", "task.num_train=64", "task.num_val=16", "task.num_test=16",
                 "model.d_model=32", "model.num_heads=2", "model.num_layers=1", "model.mlp_dim=64",
                 "trainer.batch_size=4", f"paths.cache_dir={tmp_path / 'cache'}"]
    with initialize_config_module("lra_sfa.conf", version_base=None):
        cfg = compose("bench_overhead", overrides=["steps=4", "repeats=1", f"out={tmp_path / 'store'}",
                                                   "overrides=[" + ",".join(f"'{item}'" for item in overrides) + "]"])
    record = overhead.run_overhead(cfg)
    assert record["runner_step_ms"] > 0 and record["bare_step_ms"] > 0
    assert math.isfinite(record["overhead_fraction"]) and record["overhead_fraction"] < 1
    assert record["overhead_fraction"] == pytest.approx(1 - record["bare_step_ms"] / record["runner_step_ms"])
    assert record["seq_len"] == 64 and record["task"] == "needle" and record["batch"] == 4
    stored, invalid = load_records(tmp_path / "store", kind="bench")
    assert not invalid and len(stored) == 1 and bench_problem(stored[0]) is None


def test_table2_compiles_the_model_as_training_does(monkeypatch):
    """bench.compile=true runs the timed steps through torch.compile (here its aot_eager backend, the CPU being
    slow to build inductor code) and the record says so; auto stays eager off CUDA; a bad value is named."""
    from lra_sfa.bench.common import load_attn_cfg
    from lra_sfa.bench.table2 import run_train_cell, text_protocol

    real, compiled, modes = torch.compile, [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, **_: compiled.append(model) or modes.append(mode)
                        or real(model, backend="aot_eager"))

    def bench(choice: str, mode: str = "default"):
        small = "bench.overrides=['model.d_model=32','model.num_heads=2','model.num_layers=1','model.mlp_dim=64']"
        with initialize_config_module("lra_sfa.conf", version_base=None):
            cfg = compose("bench", overrides=["bench=lra_table2", small, "bench.batch=2", "bench.warmup_steps=1",
                                              "bench.timed_steps=2", f"bench.compile={choice}",
                                              f"bench.compile_mode={mode}"]).bench
        return text_protocol(cfg)

    attn = load_attn_cfg("sfa", {"impl": "triton"})
    record = run_train_cell(attn, 64, bench("true"), torch.device("cpu"), torch.float32)
    assert record["status"] == "ok" and record["compiled"] is True and len(compiled) == 1, record
    assert record["compile_mode"] == "default" and modes == ["default"]
    record = run_train_cell(attn, 64, bench("true", "reduce-overhead"), torch.device("cpu"), torch.float32)
    assert record["compile_mode"] == "reduce-overhead" and modes[-1] == "reduce-overhead"
    assert record["memory_source"].endswith("_from_capture")  # graph replays allocate nothing: the window opens early
    record = run_train_cell(attn, 64, bench("auto"), torch.device("cpu"), torch.float32)
    assert record["status"] == "ok" and record["compiled"] is False and len(compiled) == 2
    assert record["compile_mode"] is None
    with pytest.raises(ValueError, match="bench.compile='sometimes' must be true, false or auto"):
        run_train_cell(attn, 64, bench("sometimes"), torch.device("cpu"), torch.float32)
    from lra_sfa.bench.table2 import run_table2

    with pytest.raises(ValueError, match="bench.compile_mode='fast' is not one of torch.compile's modes"):
        run_table2(OmegaConf.create({"bench": bench("true", "fast")}), torch.device("cpu"), torch.float32)


def test_table2_report_sets_compiled_runs_against_compiled_full():
    """Compiled (per torch.compile mode) and eager Table 2 records of one card get sections of their own, each
    ratio against full measured the same way; records from before the option (no `compiled`) keep theirs."""
    from lra_sfa.report.efficiency import table2_section

    def record(attn, sps, compiled, date="2026-12-06"):
        fields = {"mode": "lra_table2", "device": "NVIDIA H100 80GB HBM3", "attn": attn, "seq_len": 1024,
                  "status": "ok", "steps_per_second": sps, "peak_memory_mb": 100.0, "dtype": "bfloat16",
                  "batch": 32, "date": date}
        return fields if compiled is None else {**fields, "compiled": compiled}

    records = [record("full", 10.0, False), record("sfa", 8.0, False), record("full", 20.0, True),
               record("sfa", 25.0, True), record("full", 5.0, None, "2026-11-29"),
               record("sfa", 4.0, None, "2026-11-29"),
               {**record("full", 30.0, True), "compile_mode": "reduce-overhead"},
               {**record("sfa", 36.0, True), "compile_mode": "reduce-overhead"}]
    text = table2_section(records, {})
    assert text.count("### Measured on NVIDIA H100 80GB HBM3") == 4
    assert "model under torch.compile (mode reduce-overhead)" in text and "36.00 (1.20x)" in text
    assert "model under torch.compile" in text and "eager" in text
    assert "25.00 (1.25x)" in text and "8.00 (0.80x)" in text and "4.00 (0.80x)" in text
    unmasked = [{**record("full", 40.0, False, "2026-12-08"), "key_padding_mask": False}]  # no full of its own
    text = table2_section([*records, unmasked[0], {**unmasked[0], "attn": "sfa", "steps_per_second": 20.0}], {})
    assert text.count("### Measured on NVIDIA H100 80GB HBM3") == 5 and "no key padding mask" in text
    assert "20.00 (0.50x)" in text and "8.00 (0.80x)" in text  # each against the full of its own setting


def test_table2_report_shows_no_memory_for_graph_replays_measured_without_their_capture():
    """A CUDA-graph replay (reduce-overhead) allocates nothing: its peak memory means the step's only where the
    window opened before the capture (memory_source ..._from_capture); otherwise the table says so."""
    from lra_sfa.report.efficiency import table2_section

    def record(attn, source):
        return {"mode": "lra_table2", "device": "NVIDIA H100 80GB HBM3", "attn": attn, "seq_len": 1024,
                "status": "ok", "steps_per_second": 10.0, "peak_memory_mb": 41.0, "dtype": "bfloat16", "batch": 32,
                "date": "2026-12-07", "compiled": True, "compile_mode": "reduce-overhead", "memory_source": source}

    text = table2_section([record("full", "cuda_max_memory_allocated"), record("sfa", "cuda_max_memory_allocated")],
                          {})
    assert "not measured" in text and "41" not in text
    source = "cuda_max_memory_allocated_from_capture"
    text = table2_section([record("full", source), record("sfa", source)], {})
    assert "not measured" not in text and "41 (1.00x)" in text
