"""The Hydra CLI end to end: official-format data, record fields, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lra_sfa.records import REQUIRED_FIELDS
from lra_sfa.tasks import listops


def _cli(*args: str, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LRA_SFA_RESULTS": str(cwd / "store"), "LRA_SFA_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "lra_sfa", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _official_dir(folder):
    rows = listops.generate(140, 10, 120, seed=4, workers=1)
    for split, part in zip(listops.SPLITS, (rows[:100], rows[100:120], rows[120:])):
        listops.write_tsv(folder / f"basic_{split}.tsv", part)
    return folder


def test_cli_trains_on_official_files_and_writes_record(tmp_path):
    data = _official_dir(tmp_path / "listops")
    out = tmp_path / "out"
    result = _cli("task=listops", "attn=sfa", f"task.data_dir={data}", "trainer.max_steps=30", f"hydra.run.dir={out}",
                  "model=tiny", "task.seq_len=128", "trainer.eval_every=10", "trainer.batch_size=8",
                  "trainer.progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "record.json").read_text())
    assert all(field in record for field in REQUIRED_FIELDS)
    assert record["status"] == "ok" and record["steps"] == 30 and record["task"] == "listops"
    assert record["attn"] == "sfa" and record["data_source"] == str(data)
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["steps_per_second"] > 0
    assert list((tmp_path / "store").glob("*.json"))


def test_unknown_attn_lists_valid_names(tmp_path):
    result = _cli("attn=nosuch", cwd=tmp_path)
    assert result.returncode != 0
    assert "nosuch" in result.stderr and "full" in result.stderr and "sfa" in result.stderr


def test_topk_above_head_dim_is_one_clear_line(tmp_path):
    # the default task (96k generated ListOps) would take minutes: the attention config must fail before it
    result = _cli("attn=sfa", "attn.topk=64", "model=tiny", "trainer.max_steps=1", cwd=tmp_path, timeout=90)
    assert result.returncode == 2
    assert "topk=64" in result.stderr and "head_dim=32" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_data_file_names_file_and_line(tmp_path):
    data = _official_dir(tmp_path / "bad")
    lines = (data / "basic_val.tsv").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tnine"
    (data / "basic_val.tsv").write_text("\n".join(lines) + "\n")
    result = _cli("model=tiny", f"task.data_dir={data}", "task.seq_len=128", cwd=tmp_path)
    assert result.returncode == 2
    assert "basic_val.tsv line 4" in result.stderr and "Traceback" not in result.stderr


def test_exit_on_bad_input_prints_one_line_and_exits_2_for_the_named_errors_only(capsys):
    from lra_sfa.cli import exit_on_bad_input

    with pytest.raises(SystemExit) as stop, exit_on_bad_input("lra-sfa thing"):
        raise ValueError("key x=3 must be one of (1, 2)")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "lra-sfa thing: error: key x=3 must be one of (1, 2)\n"
    with pytest.raises(KeyError), exit_on_bad_input("lra-sfa thing"):
        raise KeyError("not a bad-input error: it propagates")
