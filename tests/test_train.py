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


def test_a_run_stops_at_the_evaluation_that_reaches_its_target(make_cfg, tmp_path):
    """trainer.stop_at_val_accuracy (Zoology's MQAR stops at 0.99): the first evaluation at or above the target ends
    training; the record says so and counts as trained to its end, and resuming it has nothing left to do."""
    from lra_sfa.checkpoint import finished_record
    from lra_sfa.records import trained_to_end

    cfg = make_cfg(*EASY_LISTOPS, "attn=full", "trainer.max_steps=40", "trainer.eval_every=10",
                   "trainer.stop_at_val_accuracy=0.01")  # every model of 10 classes beats 1% on 300 samples
    record = run(cfg)
    assert record["status"] == "ok" and record["steps"] == 10 and record["stopped_at_val_accuracy"] is True
    assert [point["step"] for point in record["history"]] == [10]
    assert trained_to_end(record) and finished_record(tmp_path / "run", cfg) is not None
    unset = run(make_cfg(*EASY_LISTOPS, "attn=full", "trainer.max_steps=20", "trainer.eval_every=10"))
    assert unset["steps"] == 20 and unset["stopped_at_val_accuracy"] is False


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


NEEDLE = ["task=needle", "model=tiny", "task.seq_len=64", "task.num_train=256", "task.num_val=32",
          "task.num_test=40", "attn=full", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=16"]


def test_test_lengths_rerun_the_test_split_at_other_lengths(make_cfg):
    """trainer.test_lengths: the trained model is tested on the needle test split made at each length
    (the split at the training length is the very test split, so its accuracy is test_accuracy);
    a length the task cannot make is recorded with its reason, not raised."""
    cfg = make_cfg(*NEEDLE, "trainer.test_lengths=[64,200,8]")
    record = run(cfg)
    assert record["status"] == "ok"
    by_length = record["test_accuracy_by_length"]
    assert by_length["64"] == record["test_accuracy"]
    assert 0.0 <= by_length["200"] <= 1.0
    assert set(record["test_accuracy_by_depth_at_length"]["200"]) == set(record["test_accuracy_by_depth"])
    assert "too short" in record["test_lengths_unsupported"]["8"]
    assert set(record["test_seconds_by_length"]) == {"64", "200"} and min(record["test_seconds_by_length"].values()) > 0
    assert record["attn_stats_by_length"] == {"64": {}, "200": {}}  # full attention keeps no stats


def test_test_lengths_record_the_attention_stats_at_each_length(make_cfg):
    """attn_stats_by_length: the backend's stats after the last test batch at each length, so sfa_wide
    reports its candidates per query on the trained model's own codes at every tested length."""
    wide = ["attn=sfa_wide", "attn.codes=simhash", "attn.D=256", "attn.k=4"]
    cfg = make_cfg(*[arg for arg in NEEDLE if arg != "attn=full"], *wide, "trainer.test_lengths=[64,256]")
    record = run(cfg)
    stats = record["attn_stats_by_length"]
    assert set(stats) == {"64", "256"}
    for length in ("64", "256"):
        assert 0 < stats[length]["layer0.mean_candidates"] <= int(length)
    assert stats["256"]["layer0.mean_candidates"] != stats["64"]["layer0.mean_candidates"]


def test_a_time_budget_counts_set_up_and_a_cut_run_skips_the_other_lengths(make_cfg, monkeypatch):
    """trainer.max_seconds runs from the run's start: set-up that outlasts the budget leaves one step (the first
    check); the cut run's record is no result, so trainer.test_lengths are not tested."""
    import time

    from lra_sfa.tasks.needle import Needle

    load = Needle.load
    monkeypatch.setattr(Needle, "load", lambda self, cache: (time.sleep(1.5), load(self, cache))[1])
    record = run(make_cfg(*NEEDLE, "trainer.max_seconds=1", "trainer.log_every=1", "trainer.max_steps=200",
                          "trainer.test_lengths=[200]"))
    assert record["stopped_by_time_budget"] and record["steps"] == 1
    assert "200" not in record.get("test_accuracy_by_length", {}) and "max_seconds" in record["test_lengths_skipped"]


def test_a_budget_spent_at_the_last_step_is_no_cut(make_cfg, monkeypatch):
    """Set-up that outlasts the budget makes the first check out of time; with one step to train, that check is
    the last step's, so the run trained to its end: not stopped by the budget, and its other lengths are tested."""
    import time

    from lra_sfa.tasks.needle import Needle

    load = Needle.load
    monkeypatch.setattr(Needle, "load", lambda self, cache: (time.sleep(1.5), load(self, cache))[1])
    record = run(make_cfg(*NEEDLE, "trainer.max_seconds=1", "trainer.log_every=1", "trainer.max_steps=1",
                          "trainer.test_lengths=[200]"))
    assert record["steps"] == record["max_steps"] == 1 and record["stopped_by_time_budget"] is False
    assert "200" in record["test_accuracy_by_length"] and "test_lengths_skipped" not in record


def test_test_lengths_need_sinusoidal_positions(make_cfg):
    cfg = make_cfg(*NEEDLE, "model.pos=learned", "trainer.test_lengths=[128]")
    record = run(cfg)
    assert record["status"] == "ok" and "128" not in record["test_accuracy_by_length"]
    assert "pos=learned" in record["test_lengths_unsupported"]["128"]


def test_needle_test_split_does_not_depend_on_the_train_split_size(tmp_path):
    """test_lengths builds the task with no train or val split: its test split must be the same."""
    from lra_sfa.tasks.needle import Needle

    full = Needle(seq_len=96, num_train=50, num_val=10, num_test=20).load(tmp_path).test
    test_only = Needle(seq_len=96, num_train=0, num_val=0, num_test=20).load(tmp_path).test
    assert np.array_equal(full.inputs, test_only.inputs) and np.array_equal(full.labels, test_only.labels)
