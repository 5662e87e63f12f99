"""No run ends ok with a wrong result, and resume never lies.

Config values out of range are one-line errors from the one config check;
records hold null (never NaN or Inf) and are written as strict JSON; resuming
with changed settings is refused (or, under ``resume=force``, recorded); a
finished run is left as it is; an attention YAML without ``_target_`` gets
build_attention's message.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from lra_sfa import checkpoint as ckpt
from lra_sfa import distributed as dist
from lra_sfa.faults import check_config_types
from lra_sfa.recording import RunRecord
from lra_sfa.records import finite_or_null, load_records, write_json_atomic
from lra_sfa.schema import ModelConfig, TrainerConfig
from lra_sfa.train import run

from .test_faults import TINY
from .test_hardening_files import parts


def strict_json(path) -> dict:
    def refuse(token):
        raise AssertionError(f"{path} holds the non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("override, fragments", [
    ("trainer.grad_clip=-1.0", ("trainer.grad_clip=-1.0", "greater than 0", "null for no clipping")),
    ("trainer.grad_clip=0", ("trainer.grad_clip=0", "greater than 0")),
    ("trainer.eval_batch_size=-3", ("trainer.eval_batch_size=-3", "at least 1")),
    ("model.num_heads=0", ("model.num_heads=0", "at least 1")),
    ("model.num_layers=0", ("model.num_layers=0", "at least 1")),
    ("model.d_model=-64", ("model.d_model=-64", "at least 1")),
    ("model.dropout=1.0", ("model.dropout=1.0", "in [0, 1)")),
    ("trainer.betas=[0.9]", ("trainer.betas=[0.9]", "a list of 2 numbers, each in [0, 1)")),
    ("trainer.betas=[0.9,1.5]", ("trainer.betas=[0.9, 1.5]", "each in [0, 1)")),
    ("trainer.lr=0", ("trainer.lr=0", "greater than 0")),
    ("trainer.lr=nan", ("trainer.lr=nan", "greater than 0")),
    ("trainer.weight_decay=-0.01", ("trainer.weight_decay=-0.01", "at least 0")),
    ("trainer.eps=-1e-9", ("trainer.eps=-1e-09", "greater than 0")),
    ("trainer.max_seconds=0", ("trainer.max_seconds=0", "greater than 0", "or null")),
    ("trainer.warmup_steps=-1", ("trainer.warmup_steps=-1", "at least 0")),
    ("trainer.test_lengths=[64,0]", ("trainer.test_lengths=[64, 0]", "at least 1")),
    ("task.num_val=0", ("task.num_val=0", "at least 1")),
    ("seed=-1", ("seed=-1", "at least 0")),
    ("resume=maybe", ("resume='maybe'", "true, false, auto or force")),
])
def test_out_of_range_values_are_one_line_errors(make_cfg, override, fragments):
    with pytest.raises(ValueError) as info:
        check_config_types(make_cfg(*TINY, override))
    message = str(info.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message


def test_every_numeric_config_key_has_a_range(make_cfg):
    ranged = {group: {spec.name for spec in dataclasses.fields(schema) if "range" in spec.metadata}
              for group, schema in (("model", ModelConfig), ("trainer", TrainerConfig))}
    cfg = make_cfg(*TINY)
    for group in ("model", "trainer"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) or key in ("betas", "max_seconds"):
                assert key in ranged[group], f"{group}.{key} is numeric and has no range in lra_sfa.schema"


def test_negative_grad_clip_stops_before_training(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="trainer.grad_clip=-1.0"):
        run(make_cfg(*TINY, "trainer.grad_clip=-1.0", "trainer.max_steps=3"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


def test_record_holds_null_never_nan(make_cfg, tmp_path):
    record = RunRecord(make_cfg(*TINY), torch.device("cpu"), torch.float32, world_size=1)
    record.update(val_accuracy=0.5, test_accuracy=float("nan"), history=[{"step": 5, "loss": float("inf")}])
    data = record.finish("ok", None, tmp_path / "run", dist.DistEnv(0, 1, torch.device("cpu")))
    on_disk = strict_json(tmp_path / "run" / "record.json")
    assert on_disk["test_accuracy"] is None and on_disk["history"][0]["loss"] is None
    assert on_disk["status"] == "error" and "test_accuracy" in on_disk["reason"]
    assert on_disk["non_finite_fields"] == ["test_accuracy", "history[0].loss"] == data["non_finite_fields"]
    valid, invalid = load_records(tmp_path / "store")
    assert [r["status"] for r in valid] == ["error"] and not invalid


def test_json_writer_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"a": float("nan")})
    assert not list(tmp_path.iterdir())
    clean, paths = finite_or_null({"a": [1.0, -math.inf], "b": {"c": math.nan}, "d": 2})
    assert clean == {"a": [1.0, None], "b": {"c": None}, "d": 2} and paths == ["a[1]", "b.c"]


def test_resume_with_changed_settings_is_refused_naming_the_keys(make_cfg, tmp_path):
    cfg = make_cfg(*TINY)
    model, optimizer, schedule, sampler = parts(cfg)
    ckpt.save(tmp_path, model, optimizer, schedule, sampler, ckpt.TrainState(step=4), cfg)
    changed = make_cfg(*TINY, "trainer.lr=0.002", "trainer.weight_decay=0.1", "seed=3")
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(tmp_path, *parts(changed), torch.device("cpu"), changed)
    message = str(info.value)
    assert "\n" not in message and "resume=force" in message
    for key in ("trainer.lr: 0.001 in the checkpoint, 0.002 now", "trainer.weight_decay", "seed: 0 in the checkpoint"):
        assert key in message, message
    longer = make_cfg(*TINY, "trainer.max_steps=50", "trainer.checkpoint_every=7", "trainer.device=cpu")
    assert ckpt.load(tmp_path, *parts(longer), torch.device("cpu"), longer).step == 4  # free to change


def test_resume_force_applies_and_records_the_new_values(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "trainer.warmup_steps=2", "trainer.max_steps=10")
    model, optimizer, schedule, sampler = parts(cfg)
    for _ in range(4):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        schedule.step()
    ckpt.save(tmp_path, model, optimizer, schedule, sampler, ckpt.TrainState(step=4), cfg)
    changed = make_cfg(*TINY, "trainer.warmup_steps=2", "trainer.max_steps=10", "trainer.lr=0.002",
                       "trainer.weight_decay=0.1", "resume=force")
    fresh = parts(changed)
    state = ckpt.load(tmp_path, *fresh, torch.device("cpu"), changed, force=True)
    assert state.resume_forced == {"trainer.lr": {"checkpoint": 0.001, "now": 0.002},
                                   "trainer.weight_decay": {"checkpoint": 0.01, "now": 0.1}}
    group = fresh[1].param_groups[0]
    assert group["weight_decay"] == 0.1 and group["initial_lr"] == 0.002
    assert group["lr"] == pytest.approx(2 * optimizer.param_groups[0]["lr"])  # same schedule point, new base lr
    assert fresh[2].last_epoch == 4
    assert torch.equal(fresh[1].state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_finished_run_is_left_as_it_is(make_cfg, tmp_path, capsys):
    args = (*TINY, "trainer.max_steps=5", "trainer.checkpoint_every=5")
    first = run(make_cfg(*args))
    assert first["status"] == "ok"
    record_bytes = (tmp_path / "run" / "record.json").read_bytes()
    stored = sorted(p.name for p in (tmp_path / "store").iterdir())
    capsys.readouterr()
    for resume in ("true", "auto", "force"):
        again = run(make_cfg(*args, f"resume={resume}"))
        assert again == json.loads(record_bytes)
        assert (tmp_path / "run" / "record.json").read_bytes() == record_bytes
        assert sorted(p.name for p in (tmp_path / "store").iterdir()) == stored
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already finished" in err[0] and "left as they are" in err[0]
    with pytest.raises(ckpt.CheckpointError, match="trainer.lr"):  # an unfinished resume still checks settings
        run(make_cfg(*TINY, "trainer.max_steps=8", "trainer.checkpoint_every=5", "trainer.lr=0.01", "resume=true"))
    forced = run(make_cfg(*TINY, "trainer.max_steps=8", "trainer.checkpoint_every=5", "trainer.lr=0.01",
                          "resume=force"))
    assert forced["status"] == "ok" and forced["steps"] == 8 and forced["resumed_from_step"] == 5
    assert forced["resume_forced"] == {"trainer.lr": {"checkpoint": 0.001, "now": 0.01}}
    assert strict_json(tmp_path / "run" / "record.json")["resume_forced"] == forced["resume_forced"]


def test_a_resumed_run_names_its_earlier_commits_and_a_changed_max_steps(make_cfg, tmp_path, monkeypatch):
    """Each stretch of training keeps its commit in the checkpoint; the record of a run resumed under other code
    lists the earlier ones, and one resumed under another max_steps (a schedule that spans the run) says so."""
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "aaaa111")
    args = (*TINY, "trainer.checkpoint_every=5")
    assert run(make_cfg(*args, "trainer.max_steps=5"))["status"] == "ok"
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["commits"] == ["aaaa111"]
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "bbbb222")
    longer = run(make_cfg(*args, "trainer.max_steps=10", "resume=true"))
    assert longer["status"] == "ok" and longer["resumed_from_step"] == 5 and longer["git_commit"] == "bbbb222"
    assert longer["earlier_commits"] == ["aaaa111"]
    assert longer["max_steps_changed_on_resume"] == {"checkpoint": 5, "now": 10}
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["commits"] == ["aaaa111", "bbbb222"]


def test_attn_yaml_without_target_gets_build_attention_message(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="has no _target_; set it to an importable AttentionBackend class"):
        run(make_cfg(*TINY, "~attn._target_", "trainer.max_steps=2"))
    assert not (tmp_path / "run" / "record.json").exists()


def test_bench_record_holds_null_never_nan(tmp_path):
    from lra_sfa.bench.common import write_bench_record

    cell = {"kind": "bench", "mode": "sweep", "attn": "full", "part": "attention", "op": "fwd", "seq_len": 1024,
            "date": "2026-12-01T10:00:00+00:00", "status": "ok", "ms": float("nan"), "peak_memory_mb": 12.5}
    on_disk = strict_json(write_bench_record(cell, tmp_path))
    assert on_disk["ms"] is None and on_disk["peak_memory_mb"] == 12.5 and on_disk["non_finite_fields"] == ["ms"]
    assert on_disk["status"] == "error" and "ms" in on_disk["reason"]
