"""Every config composes on its own and instantiates."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lra_sfa.attention import AttentionBackend, build_attention
from lra_sfa.recording import build_task
from lra_sfa.tasks.base import Task

from .conftest import CONF, attn_names


def _names(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", attn_names())
def test_every_attn_config_builds(make_cfg, name):
    cfg = make_cfg(f"attn={name}", "model=tiny")
    backend = build_attention(cfg.attn, num_heads=2, head_dim=32, max_seq_len=64)
    assert isinstance(backend, AttentionBackend)


@pytest.mark.parametrize("name", _names("task"))
def test_every_task_config_instantiates(make_cfg, name):
    task = build_task(make_cfg(f"task={name}").task)
    assert isinstance(task, Task) and task.vocab_size > 0 and task.num_classes >= 2


@pytest.mark.parametrize("name", _names("experiment"))
def test_every_experiment_composes_and_builds(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.protocol != "custom"
    assert isinstance(build_task(cfg.task), Task)
    heads = cfg.model.num_heads
    build_attention(cfg.attn, num_heads=heads, head_dim=cfg.model.d_model // heads, max_seq_len=cfg.task.seq_len)


@pytest.mark.parametrize("name", _names("model"))
def test_every_model_config_builds_a_model(make_cfg, name):
    from lra_sfa.model import LRAClassifier

    cfg = make_cfg(f"model={name}")
    model = LRAClassifier(vocab_size=20, num_classes=10, seq_len=16, attn_cfg=cfg.attn,
                          **OmegaConf.to_container(cfg.model))
    assert model(torch.randint(1, 20, (2, 16))).shape == (2, 10)


def test_contract_keys_exist(make_cfg):
    cfg = make_cfg("model=tiny")
    for key in ("task.data_dir", "task.seq_len", "trainer.max_steps", "trainer.batch_size", "trainer.eval_every"):
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or key == "task.data_dir"


def test_lra_listops_protocol_values(make_cfg):
    cfg = make_cfg("experiment=lra_listops")
    assert (cfg.model.num_layers, cfg.model.num_heads, cfg.model.d_model, cfg.model.mlp_dim) == (4, 8, 512, 1024)
    trainer = cfg.trainer
    assert (trainer.batch_size, trainer.max_steps, trainer.lr, trainer.schedule) == (32, 5000, 0.05, "rsqrt")
    assert cfg.trainer.warmup_steps == 1000 and cfg.trainer.weight_decay == 0.1 and cfg.task.pooling == "cls"


def _differences(a, b, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two plain nested dicts."""
    keys = set(a) | set(b)
    out = set()
    for key in keys:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            out |= _differences(left, right, f"{prefix}{key}.")
        elif left != right:
            out.add(f"{prefix}{key}")
    return out


@pytest.mark.parametrize(("child", "parent", "differs"), [
    ("experiment=pathfinder_40k", "experiment=lra_pathfinder",
     {"protocol", "task.num_train", "task.num_val", "task.num_test", "trainer.eval_every"}),
    ("experiment=needle_4k", "experiment=lra_needle", {"task.seq_len"}),
    ("experiment=needle_long", "experiment=lra_needle",
     {"task.seq_len", "trainer.max_steps", "trainer.test_lengths"}),
    ("attn=sfa_wide_simhash", "attn=sfa_wide", {"attn.codes", "attn.D", "attn.k", "attn_name"}),
])
def test_gpu_presets_inherit_and_differ_only_where_they_say(child, parent, differs):
    from lra_sfa.compose import compose_config

    composed = [OmegaConf.to_container(compose_config([item]), resolve=False) for item in (child, parent)]
    for config in composed:  # the overrides each was composed with (the record's), not a setting
        assert config.pop("job_overrides") == [child if config is composed[0] else parent]
    assert _differences(*composed) == differs


def test_attn_config_gives_an_inheriting_file_whole_and_open_to_new_keys():
    from lra_sfa.bench.common import load_attn_cfg
    from lra_sfa.compose import attn_config

    cfg = attn_config("sfa_wide_simhash")
    assert (cfg.codes, cfg.D, cfg.k) == ("simhash", 131072, 8) and "defaults" not in cfg
    assert cfg._target_ == OmegaConf.load(CONF / "attn" / "sfa_wide.yaml")._target_
    merged = load_attn_cfg("sfa_wide_simhash", {"bits_start": 2, "new_key": 1})
    assert merged.bits_start == 2 and merged.new_key == 1 and merged.D == 131072
