"""Hydra multirun sweeps: every job gets a record, a failing job (bad value, exception, OOM) is recorded
as such and the others finish; the launcher configs compose and a missing plugin is named."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lra_sfa.records import load_records

from .test_faults import cli

TRAINER = ["model=tiny", "trainer.max_steps=4", "trainer.batch_size=8", "trainer.eval_every=2",
           "trainer.progress=false", "trainer.device=cpu"]
TINY_TASKS = {
    "listops_tiny": "defaults: [listops]\nseq_len: 16\nmax_depth: 2\nmin_length: 3\nmax_length: 13\n"
                    "num_train: 200\nnum_val: 32\nnum_test: 32\nworkers: 1\n",
    "needle_tiny": "defaults: [needle]\nseq_len: 32\nnum_keys: 8\nnum_values: 4\nnum_depths: 3\n"
                   "num_train: 200\nnum_val: 32\nnum_test: 32\n",
}


def _user_conf(root: Path) -> str:
    """A user's config folder holding tiny task variants, added with hydra.searchpath."""
    folder = root / "user_conf" / "task"
    folder.mkdir(parents=True)
    for name, text in TINY_TASKS.items():
        (folder / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{root / 'user_conf'}]"


def _job_records(sweep: Path) -> dict[str, dict]:
    """record.json of every job folder, by folder name."""
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(sweep.glob("*/record.json"))}


def test_task_by_attn_sweep_writes_one_record_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("-m", "task=listops_tiny,needle_tiny", "attn=full,sfa", *TRAINER, _user_conf(tmp_path),
                 f"hydra.sweep.dir={sweep}", root=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _job_records(sweep)
    assert sorted(jobs) == ["0_listops_tiny_full", "1_listops_tiny_sfa", "2_needle_tiny_full", "3_needle_tiny_sfa"]
    assert {(r["task"], r["attn"], r["status"], r["steps"]) for r in jobs.values()} == {
        (task, attn, "ok", 4) for task in ("listops", "needle") for attn in ("full", "sfa")}
    assert "test_accuracy_by_depth" in jobs["2_needle_tiny_full"]
    valid, invalid = load_records(tmp_path / "store")
    assert len(valid) == 4 and not invalid


FAULTY_JOBS = """
import torch
import lra_sfa.train as train
_build = train._build_model
def _faulty(cfg, task, device):
    if cfg.seed == 1:
        raise RuntimeError("injected crash")
    model = _build(cfg, task, device)
    if cfg.seed == 2:
        def _oom(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        model.forward = _oom
    return model
train._build_model = _faulty
"""


def test_failed_jobs_are_recorded_and_the_sweep_finishes(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("-m", "seed=0,1,2", "trainer.max_steps=4,abc", *TRAINER[0:1], *TRAINER[2:], _user_conf(tmp_path),
                 "task=listops_tiny", f"hydra.sweep.dir={sweep}", root=tmp_path, cache=tmp_path / "cache",
                 prelude=FAULTY_JOBS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    jobs = _job_records(sweep)
    assert len(jobs) == 6
    by_overrides = {tuple(sorted(o for o in r["overrides"] if o.startswith(("seed", "trainer.max_steps")))): r
                    for r in jobs.values()}
    assert by_overrides[("seed=0", "trainer.max_steps=4")]["status"] == "ok"
    crash = by_overrides[("seed=1", "trainer.max_steps=4")]
    assert crash["status"] == "error" and crash["reason"] == "RuntimeError: injected crash"
    oom = by_overrides[("seed=2", "trainer.max_steps=4")]
    assert oom["status"] == "oom" and oom["oom_shape"] == [8, 16] and "9.00 GiB" in oom["reason"]
    for seed in range(3):
        bad = by_overrides[(f"seed={seed}", "trainer.max_steps=abc")]
        assert bad["status"] == "error" and "trainer.max_steps='abc'" in bad["reason"]
        assert bad["task"] == "listops" and bad["attn"] == "full"
    valid, invalid = load_records(tmp_path / "store")
    assert sorted(r["status"] for r in valid) == ["error"] * 4 + ["ok", "oom"] and not invalid


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                    reason="hydra-joblib-launcher not installed (pip install 'lra-sfa[launchers]')")
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("-m", "hydra/launcher=lra_joblib", "attn=full,sfa", "trainer.max_steps=4,abc", *TRAINER[0:1],
                 *TRAINER[2:], _user_conf(tmp_path), "task=listops_tiny", f"hydra.sweep.dir={sweep}",
                 root=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    jobs = _job_records(sweep)
    assert sorted((r["attn"], r["status"]) for r in jobs.values()) == [
        ("full", "error"), ("full", "ok"), ("sfa", "error"), ("sfa", "ok")]
    valid, invalid = load_records(tmp_path / "store")
    assert len(valid) == 4 and not invalid


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher not installed (pip install 'lra-sfa[launchers]')")
def test_slurm_launcher_config_composes(tmp_path):
    result = cli("hydra/launcher=lra_slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p",
                 "hydra.launcher", root=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SlurmLauncher" in result.stdout and "partition: gpu" in result.stdout
    assert "gpus_per_node: 1" in result.stdout and "timeout_min: 240" in result.stdout


def test_missing_launcher_plugin_is_named(monkeypatch):
    from lra_sfa import __main__ as cli_main

    monkeypatch.setitem(cli_main.LAUNCHER_PLUGINS, "lra_joblib", ("hydra_plugins.not_installed", "hydra-x-launcher"))
    problem = cli_main._check_launcher(["-m", "hydra/launcher=lra_joblib", "attn=full,sfa"])
    assert "hydra-x-launcher" in problem and "lra-sfa[launchers]" in problem
    assert cli_main._check_launcher(["-m", "attn=full,sfa"]) is None
