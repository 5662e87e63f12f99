"""What a newcomer meets first: file modes under the umask, true progress rates, the sweep summary,
the CPU memory refusal, the --help texts and an install that lists every config folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lra_sfa.attention import AttentionBackend
from lra_sfa.fileio import new_file_mode
from lra_sfa.memory import cpu_refusal, score_bytes
from lra_sfa.progress import StepClock
from lra_sfa.sweep_summary import summary_rows

from .test_faults import cli
from .test_sweep import TRAINER, _user_conf

REPO = Path(__file__).resolve().parents[1]
TINY_LISTOPS = ["experiment=listops_reduced", "task.seq_len=24", "task.min_length=3", "task.max_length=20",
                "task.max_depth=2", "task.num_train=64", "task.num_val=16", "task.num_test=16", "task.workers=1",
                "trainer.max_steps=2", "trainer.batch_size=8", "trainer.eval_every=2", "trainer.device=cpu",
                "trainer.progress=false"]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_records_checkpoints_and_caches_follow_the_umask(tmp_path, umask_027):
    from lra_sfa.train import run

    assert new_file_mode() == 0o640
    with initialize_config_module("lra_sfa.conf", version_base=None):
        cfg = compose("config", overrides=[
            *TINY_LISTOPS, "trainer.checkpoint_every=1", f"run_dir={tmp_path / 'run'}",
            f"results_dir={tmp_path / 'store'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    assert run(cfg)["status"] == "ok"
    written = [tmp_path / "run" / "record.json", tmp_path / "run" / "checkpoint.pt",
               *(tmp_path / "store").glob("*.json"), *[p for p in (tmp_path / "cache").rglob("*") if p.is_file()]]
    assert len(written) >= 4
    assert {str(path.relative_to(tmp_path)): oct(_mode(path)) for path in written} == {
        str(path.relative_to(tmp_path)): oct(0o640) for path in written}


class _FakeClock:
    """Stands in for the ``time`` module in lra_sfa.progress: perf_counter reads a number the test sets."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def test_step_clock_counts_training_time_only(monkeypatch):
    from lra_sfa import progress as progress_module

    fake = _FakeClock()
    monkeypatch.setattr(progress_module, "time", fake)
    syncs = []
    clock = StepClock(sync=lambda: syncs.append(fake.now))
    assert clock.rate() is None  # no step yet
    for _ in range(2):  # warm-up steps, untimed: the rate is steps since the clock was made
        fake.now += 0.5
        clock.step()
    assert clock.rate() == pytest.approx(2 / 1.0)  # a short run never reads 0 steps/s
    clock.resume()
    for _ in range(10):
        fake.now += 0.1
        clock.step()
    assert clock.rate() == pytest.approx(10 / 1.0)  # the open segment counts
    assert clock.pause()
    fake.now += 5.0  # an evaluation, left out
    clock.resume()
    for _ in range(10):
        fake.now += 0.2
        clock.step()
    assert clock.pause() and not clock.pause()  # a second pause closes nothing
    assert (clock.steps, clock.seconds) == (20, pytest.approx(3.0))
    assert clock.rate() == pytest.approx(20 / 3.0)
    assert len(syncs) == 4  # the device is synchronised at every segment boundary, not at every reading


def test_progress_rate_agrees_with_the_record(tmp_path):
    from lra_sfa import progress as progress_module
    from lra_sfa.train import run

    rates = []

    class Spy(progress_module.TrainProgress):
        def update(self, step, loss, val, rate):
            super().update(step, loss, val, rate)
            rates.append(rate)

    with initialize_config_module("lra_sfa.conf", version_base=None):
        cfg = compose("config", overrides=[*TINY_LISTOPS, "trainer.max_steps=40", "trainer.eval_every=20",
                                           f"run_dir={tmp_path / 'run'}", "results_dir=null",
                                           f"paths.cache_dir={tmp_path / 'cache'}"])
    original = progress_module.TrainProgress
    import lra_sfa.train as train

    train.TrainProgress = Spy
    try:
        record = run(cfg)
    finally:
        train.TrainProgress = original
    assert rates and all(rate and rate > 0 for rate in rates)
    assert rates[-1] == pytest.approx(record["steps_per_second"])  # one clock: the bar ends on the record's number


def test_multirun_ends_with_a_summary_table(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("-m", "task=listops_tiny", "attn=full,sfa", *TRAINER, _user_conf(tmp_path),
                 f"hydra.sweep.dir={sweep}", root=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lra-sfa multirun: 2 jobs" in result.stdout
    for column in ("job", "task", "attn", "status", "val acc", "test acc", "steps/s"):
        assert column in result.stdout
    rows = summary_rows(sweep)
    assert [(row["job"], row["task"], row["attn"], row["status"]) for row in rows] == [
        ("0_listops_tiny_full", "listops", "full", "ok"), ("1_listops_tiny_sfa", "listops", "sfa", "ok")]
    assert all(0 <= row["test_accuracy"] <= 1 and row["steps_per_second"] > 0 for row in rows)
    assert (sweep / "summary.md").read_text().count("listops_tiny") == 2


def test_summary_lists_a_job_that_left_no_record(tmp_path):
    (tmp_path / "0_a_full" / ".hydra").mkdir(parents=True)
    (tmp_path / "1_a_sfa").mkdir()
    (tmp_path / "1_a_sfa" / "record.json").write_text('{"task": "a", "attn": "sfa", "status": "oom"}')
    assert [(row["job"], row["status"]) for row in summary_rows(tmp_path)] == [("0_a_full", "no record"),
                                                                              ("1_a_sfa", "oom")]


class DenseScores(AttentionBackend):
    score_matrices = 3

    def forward(self, q, k, v, key_padding_mask=None):
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def _cfg(*overrides: str):
    with initialize_config_module("lra_sfa.conf", version_base=None):
        return compose("config", overrides=list(overrides))


def test_dense_scores_estimate_from_batch_heads_length_and_dtype():
    cfg = _cfg("task=listops", "model=small", "trainer.batch_size=32")
    needed, shape = score_bytes(DenseScores(), cfg, torch.float32)
    assert shape == [32, 4, 2000, 2000]
    assert needed == (4 * 3 + 2) * 32 * 4 * 2000 * 2000 * 4
    assert score_bytes(DenseScores(), cfg, torch.bfloat16)[0] == needed // 2
    assert score_bytes(DenseScores(), cfg, torch.float32, world_size=2)[1] == [16, 4, 2000, 2000]


def test_cpu_run_that_cannot_fit_is_refused_with_its_shape(monkeypatch):
    import lra_sfa.memory as memory

    cfg = _cfg("task=listops", "model=small")
    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)
    reason, fields = cpu_refusal(DenseScores(), cfg, torch.device("cpu"), torch.float32)
    assert "(32, 4, 2000, 2000)" in reason and "8.0 GiB available" in reason
    assert fields["oom_shape"] == [32, 4, 2000, 2000] and fields["oom_phase"] == "memory estimate"
    small = _cfg("experiment=listops_reduced")
    assert cpu_refusal(DenseScores(), small, torch.device("cpu"), torch.float32) is None
    assert cpu_refusal(AttentionBackend(), cfg, torch.device("cpu"), torch.float32) is None  # declares no scores
    assert cpu_refusal(DenseScores(), cfg, torch.device("meta"), torch.float32) is None  # not a CPU run


def test_refused_run_writes_an_oom_record_in_seconds(tmp_path, monkeypatch):
    import lra_sfa.memory as memory
    from lra_sfa.train import run

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**16)  # the tiny run's scores need 504 KiB
    with initialize_config_module("lra_sfa.conf", version_base=None):
        cfg = compose("config", overrides=[*TINY_LISTOPS, f"run_dir={tmp_path / 'run'}", "results_dir=null",
                                           f"paths.cache_dir={tmp_path / 'cache'}"])
    cfg.attn = OmegaConf.create({"_target_": f"{__name__}.DenseScores"})
    record = run(cfg)
    assert record["status"] == "oom" and record["oom_shape"] == [8, 2, 24, 24] and record["steps"] == 0
    assert not (tmp_path / "cache").exists()  # refused before the data was generated


def test_help_introduces_the_project_without_the_bench_group():
    result = subprocess.run([sys.executable, "-m", "lra_sfa", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("lra-sfa:") and "powered by Hydra" not in result.stdout
    groups = result.stdout.split("== Config")[1]
    assert "task: " in groups and "attn: " in groups and "sfa_wide" in groups
    assert "\nbench:" not in groups and "lra_table2" not in groups


def test_report_help_works():
    result = subprocess.run([sys.executable, "-m", "lra_sfa.report", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "make tables" in result.stdout


def test_every_config_folder_is_an_installed_package():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"lra_sfa.conf." + ".".join(path.relative_to(REPO / "conf").parts)
               for path in (REPO / "conf").rglob("*") if path.is_dir() and any(path.glob("*.yaml"))}
    assert folders <= set(setuptools["packages"])
    assert isinstance(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"], str)
