"""The benchmark and tool entry points are Hydra apps: help, configs, and one line for the old argparse form."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from lra_sfa.oldargs import replacement

APPS = {  # module -> (primary config, a word its --help prints)
    "lra_sfa.bench.baselines": ("bench_baselines", "cuDNN SDPA"),
    "lra_sfa.bench.overhead": ("bench_overhead", "bare loop"),
    "lra_sfa.bench.wide": ("bench_wide", "wide-code SFA"),
    "lra_sfa.tasks.pathfinder": ("pathfinder_tools", "make pathfinder-samples"),
}


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("module", APPS)
def test_help_names_the_app_and_its_keys(module, tmp_path):
    config, words = APPS[module]
    result = _run(module, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert words in result.stdout and "powered by Hydra" not in result.stdout and "key=value" in result.stdout
    assert not any(tmp_path.iterdir())  # no .hydra/, no log file


@pytest.mark.parametrize("module", APPS)
def test_every_app_config_composes(module):
    with initialize_config_module("lra_sfa.conf", version_base=None):
        cfg = compose(APPS[module][0], return_hydra_config=True)
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None and cfg.hydra.job.chdir is False


@pytest.mark.parametrize(("module", "old", "new"), [
    ("lra_sfa.tasks.pathfinder", ["samples", "--out", "p.png"], "mode=samples out=p.png"),
    ("lra_sfa.bench.overhead", ["--steps", "100", "attn=sfa"], "steps=100 \"overrides=['attn=sfa']\""),
])
def test_old_argparse_form_prints_one_line_with_its_replacement(module, old, new, tmp_path):
    result = _run(module, *old, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"python -m {module} {new}")
    assert f"conf/{APPS[module][0]}.yaml" in lines[0]


def test_replacement_translates_lists_switches_and_passed_overrides():
    options = {"names": "names", "lengths": "lengths", "dry-run": "dry_run", "head-dim": "head_dim"}
    line = replacement("app", "conf/a.yaml", ["--names", "bigbird", "performer", "--lengths=1024,4096",
                                              "--dry-run", "--head-dim", "128"], options, lists=("names", "lengths"))
    assert line.endswith("app names=[bigbird,performer] lengths=[1024,4096] dry_run=true head_dim=128")
    assert replacement("app", "conf/a.yaml", ["names=[a]", "lengths=[1]"], options) is None  # the Hydra form
    assert replacement("app", "conf/a.yaml", ["--help"], options) is None  # Hydra's own flags
    assert "--nope is no option" in replacement("app", "conf/a.yaml", ["--names", "a", "--nope"], options)
    line = replacement("app", "conf/a.yaml", ["task.seq_len=64", "steps=3"], {"steps": "steps"}, rest="overrides",
                       keys=("steps", "overrides"))
    assert line.endswith("app steps=3 \"overrides=['task.seq_len=64']\"")
    assert replacement("app", "conf/a.yaml", ["steps=3", "hydra.run.dir=x"], {"steps": "steps"}, rest="overrides",
                       keys=("steps", "overrides")) is None


def test_the_replacement_line_runs(tmp_path):
    line = replacement("python -m lra_sfa.tasks.pathfinder", "conf/pathfinder_tools.yaml",
                       ["samples", "--out", str(tmp_path / "s.png"), "--num", "4", "--difficulty", "easy"],
                       {name: name for name in ("out", "num", "difficulty")},
                       positional=("mode", ("samples", "bench", "export")))
    args = line.split("python -m lra_sfa.tasks.pathfinder ")[-1].split()
    result = _run("lra_sfa.tasks.pathfinder", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.png").stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]
