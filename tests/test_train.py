"""Short real training runs through run(cfg): learning, records, divergence, unsupported."""

from __future__ import annotations

import json

import numpy as np

from lra_sfa.records import REQUIRED_FIELDS, load_records
from lra_sfa.train import run

EASY_LISTOPS = [
    "task=listops", "model=tiny", "task.seq_len=16", "task.max_depth=2", "task.min_length=3",
    "task.max_length=13", "task.num_train=3000", "task.num_val=300", "task.num_test=300", "task.workers=1",
]


def _majority_rate(split) -> float:
    return float(np.bincount(split.labels).max() / len(split.labels))


def test_short_run_learns_above_chance(make_cfg, tmp_path):
    """One-operator ListOps: 250 steps of the tiny model must beat the majority class clearly."""
    cfg = make_cfg(*EASY_LISTOPS, "attn=full", "trainer.max_steps=250", "trainer.eval_every=125",
                   "trainer.lr=3e-3", "trainer.warmup_steps=20", "trainer.batch_size=64")
    record = run(cfg)
    from lra_sfa.recording import build_task

    data = build_task(cfg.task).load(cfg.paths.cache_dir)
    assert record["status"] == "ok"
    assert record["test_accuracy"] > _majority_rate(data.test) + 0.15, record["test_accuracy"]
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert on_disk["test_accuracy"] == record["test_accuracy"]
    assert all(field in on_disk for field in REQUIRED_FIELDS)
    stored, invalid = load_records(tmp_path / "store")
    assert len(stored) == 1 and not invalid


def test_sfa_run_records_its_path(make_cfg):
    cfg = make_cfg(*EASY_LISTOPS, "attn=sfa", "attn.topk=4", "trainer.max_steps=6", "trainer.eval_every=3")
    record = run(cfg)
    assert record["status"] == "ok"
    assert record["attn"] == "sfa" and record["attn_path"] == "reference"
    assert record["attn_args"]["topk"] == 4
    assert len(record["history"]) == 2 and record["steps"] == 6


def test_nan_loss_ends_as_diverged_with_record(make_cfg, tmp_path):
    cfg = make_cfg(*EASY_LISTOPS, "attn=full", "trainer.max_steps=40", "trainer.lr=1e12",
                   "trainer.grad_clip=null", "trainer.schedule=constant", "trainer.warmup_steps=0",
                   "trainer.log_every=1", "model.dropout=0.0")
    record = run(cfg)
    assert record["status"] == "diverged"
    assert "loss became" in record["reason"]
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "diverged"


def test_unsupported_backend_is_recorded_not_crashed(make_cfg, tmp_path):
    """head_dim 256 is above the Triton kernels' sizes: the run ends as `unsupported` with the reason."""
    cfg = make_cfg(*EASY_LISTOPS, "attn=sfa", "attn.topk=2", "attn.impl=triton", "model.qkv_dim=512",
                   "trainer.max_steps=2")
    record = run(cfg)
    assert record["status"] == "unsupported" and "impl=reference" in record["reason"]
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "unsupported"
