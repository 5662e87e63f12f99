"""Faults name their file: a full disk while writing a checkpoint or a record, and malformed task files.

A full disk is simulated by making ``os.fsync`` (or ``torch.save``) fail with
errno 28 for files in one folder; everything else runs for real.
"""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch

from lra_sfa import checkpoint as ckpt
from lra_sfa import distributed as dist
from lra_sfa.recording import RecordWriteError, RunRecord
from lra_sfa.records import load_records
from lra_sfa.tasks.base import TaskDataError
from lra_sfa.tasks.listops import read_tsv
from lra_sfa.tasks.text import Text
from lra_sfa.train import run

from .test_faults import TINY
from .test_hardening_files import parts
from .test_tasks_text import write_aclimdb

CPU = dist.DistEnv(0, 1, torch.device("cpu"))


def disk_full_under(monkeypatch, folder) -> None:
    """``os.fsync`` of any file below ``folder`` fails with errno 28 (No space left on device)."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_on_a_checkpoint_names_it_and_keeps_the_previous(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*TINY)
    model, optimizer, schedule, sampler = parts(cfg)
    state = ckpt.TrainState(step=5)
    ckpt.save(tmp_path, model, optimizer, schedule, sampler, state, cfg)
    disk_full_under(monkeypatch, tmp_path)
    state.step = 10
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        ckpt.save(tmp_path, model, optimizer, schedule, sampler, state, cfg)
    message = str(info.value)
    assert str(tmp_path / "checkpoint.pt") in message and "at step 10" in message
    assert "No space left on device" in message and "the checkpoint of step 5 is kept" in message
    monkeypatch.undo()
    assert ckpt.load(tmp_path, *parts(cfg), torch.device("cpu"), cfg).step == 5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_run_goes_on_when_a_checkpoint_cannot_be_written(make_cfg, tmp_path, monkeypatch, capsys):
    def fail(payload, path):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file data/0: "
                           "file write failed")

    monkeypatch.setattr(ckpt.torch, "save", fail)
    record = run(make_cfg(*TINY, "trainer.max_steps=6", "trainer.checkpoint_every=3"))
    assert record["status"] == "ok" and record["steps"] == 6
    path = tmp_path / "run" / "checkpoint.pt"
    assert len(record["checkpoint_errors"]) == 2
    assert all(str(path) in e and "no checkpoint is kept" in e for e in record["checkpoint_errors"])
    assert f"lra-sfa: warning: could not write checkpoint {path} at step 3" in capsys.readouterr().err
    assert not path.exists() and not list((tmp_path / "run").glob(".checkpoint.*"))


@pytest.mark.parametrize("full", ["run", "store"])
def test_full_disk_on_one_record_copy_still_writes_the_other(make_cfg, tmp_path, monkeypatch, full):
    record = RunRecord(make_cfg(*TINY), torch.device("cpu"), torch.float32, world_size=1)
    record.update(val_accuracy=0.5, test_accuracy=0.25)
    run_dir, store = tmp_path / "run", tmp_path / "store"
    run_dir.mkdir()
    store.mkdir()
    disk_full_under(monkeypatch, run_dir if full == "run" else store)
    with pytest.raises(RecordWriteError) as info:
        record.finish("ok", None, run_dir, CPU)
    message = str(info.value)
    monkeypatch.undo()
    assert "No space left on device" in message and "\n" not in message
    if full == "run":
        assert f"cannot write {run_dir / 'record.json'}" in message
        assert not (run_dir / "record.json").exists()
        valid, invalid = load_records(store)
        assert [r["test_accuracy"] for r in valid] == [0.25] and not invalid
        assert f"kept: the record in {store}" in message
    else:
        assert str(store) in message
        assert json.loads((run_dir / "record.json").read_text())["test_accuracy"] == 0.25
        assert not [p for p in store.iterdir() if p.suffix == ".json"]
        assert f"kept: the record in {run_dir / 'record.json'}" in message


def write_tsv_bytes(path, rows: list[bytes]) -> None:
    path.write_bytes(b"Source\tTarget\n" + b"".join(row + b"\n" for row in rows))


@pytest.mark.parametrize("bad, fragments", [
    (b"( [MAX 2 \xff 3 ] )\t3", ("line 3", "byte 0xff", "not UTF-8")),
    ("( [MIN 2 3 ] )\t\u0663".encode(), ("line 3", "Target", "is not an integer 0..9")),
    ("( [MIN 2 3 ] )\t\u00b2".encode(), ("line 3", "Target", "is not an integer 0..9")),
    (b"( [SM " + b"1 " * 5_000_000 + b"] )\t1", ("line 3", "longer than")),
], ids=["non-utf8-byte", "arabic-indic-digit", "superscript-digit", "10MB-line"])
def test_listops_bad_lines_name_file_and_line(tmp_path, bad, fragments):
    path = tmp_path / "basic_train.tsv"
    write_tsv_bytes(path, [b"( [MAX 2 9 ] )\t9", bad, b"( [MIN 4 5 ] )\t4"])
    with pytest.raises(TaskDataError) as info:
        read_tsv(path, 32)
    message = str(info.value)
    assert str(path) in message and all(f in message for f in fragments) and len(message) < 400, message


def test_fifo_among_reviews_is_refused_not_waited_on(tmp_path):
    folder, _ = write_aclimdb(tmp_path)
    fifo = folder / "train" / "pos" / "999_9.txt"
    os.mkfifo(fifo)

    def hung(*_):
        raise TimeoutError("reading the aclImdb tree hung on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(TaskDataError) as info:
            Text(seq_len=32, data_dir=str(folder)).load(tmp_path / "cache")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert str(fifo) in str(info.value) and "not a regular file" in str(info.value)
