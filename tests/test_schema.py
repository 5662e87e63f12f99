"""The config schema (lra_sfa.schema) and the attn name a composed config carries (lra_sfa.compose).

Types and ranges come from dataclasses in Hydra's ConfigStore: a wrong value is
one line naming the key, the value and what is valid; nullable keys take null;
a value OmegaConf converts is stored converted. The record's ``attn`` is the
attn group's choice, filled as the config is composed, or the class name of a
backend given by its ``_target_`` alone.
"""

from __future__ import annotations

import pytest
import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lra_sfa import checkpoint as ckpt
from lra_sfa.attention import build_attention
from lra_sfa.compose import compose_config
from lra_sfa.recording import RunRecord, attn_name
from lra_sfa.schema import validate_config

from .conftest import CONF, attn_names
from .test_faults import TINY


@pytest.mark.parametrize("override, fragments", [
    ("trainer.lr=abc", ("config trainer.lr='abc'", "expected a number")),
    ("trainer.max_steps=2.5", ("trainer.max_steps=2.5", "expected an integer")),
    ("trainer.betas=[0.9,x]", ("trainer.betas=[0.9, 'x']", "expected a list of numbers")),
    ("trainer.test_lengths=[64,x]", ("trainer.test_lengths=[64, 'x']", "a list of integers or null")),
    ("model.qkv_dim=wide", ("model.qkv_dim='wide'", "an integer or null")),
    ("+model.proj_bias=sometimes", ("model.proj_bias='sometimes'", "true or false")),
    ("task.max_args=1", ("task.max_args=1", "at least 2")),
    ("trainer.test_weights=last", ("trainer.test_weights='last'", "best_val or final")),
    ("trainer.compile_mode=fast", ("trainer.compile_mode='fast'", "default, reduce-overhead")),
    ("trainer.max_steps=null", ("trainer.max_steps=None", "expected an integer")),
    ("seed=[1]", ("seed=[1]", "expected an integer")),
])
def test_bad_values_are_one_line_naming_key_value_and_what_is_valid(make_cfg, override, fragments):
    with pytest.raises(ValueError) as info:
        validate_config(make_cfg(*TINY, override))
    message = str(info.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message


def test_nullable_keys_take_null(make_cfg):
    cfg = make_cfg(*TINY, "trainer.grad_clip=null", "trainer.max_seconds=null", "trainer.eval_batch_size=null",
                   "trainer.test_lengths=null", "model.qkv_dim=null", "task.workers=null", "task.data_dir=null",
                   "cell=null", "results_dir=null")
    validate_config(cfg)
    assert cfg.trainer.grad_clip is None and cfg.model.qkv_dim is None and cfg.task.workers is None


def test_converted_values_are_stored_with_the_declared_type(make_cfg):
    cfg = make_cfg(*TINY, "trainer.max_steps='7'", "trainer.lr='2e-3'", "trainer.betas=['0.8',0.9]",
                   "protocol=2020")
    validate_config(cfg)
    assert cfg.trainer.max_steps == 7 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.trainer.lr == 0.002 and list(cfg.trainer.betas) == [0.8, 0.9] and cfg.protocol == "2020"


def test_a_missing_value_is_named():
    cfg = OmegaConf.create({"seed": 0, "trainer": {"lr": "???"}})
    with pytest.raises(ValueError, match=r"^config trainer.lr is missing \(\?\?\?\): expected a number$"):
        validate_config(cfg)


def test_keys_the_schema_does_not_declare_pass_and_absent_ones_are_not_required():
    validate_config(OmegaConf.create({"seed": 1, "task": {"difficulty": "hard"}, "trainer": {"lr": 1}}))


def test_every_shipped_config_passes(make_cfg):
    for group in ("task", "model", "attn"):
        for path in sorted((CONF / group).glob("*.yaml")):
            validate_config(make_cfg(f"{group}={path.stem}"))


def test_the_schema_is_in_the_config_store_and_a_config_file_may_inherit_it(tmp_path):
    assert {"run.yaml", "task.yaml", "model.yaml", "trainer.yaml"} <= set(ConfigStore.instance().list("schema"))
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "checked.yaml").write_text(
        "defaults:\n  - /trainer/default@_here_\n  - /schema/trainer@_here_\n  - _self_\nlr: 2.0e-3\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    assert compose_config(["trainer=checked", search]).trainer.lr == 0.002
    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer=checked", search, "trainer.lr=fast"])


# ---------------------------------------------------------------- the record's attn: the attn choice


@pytest.mark.parametrize("name", attn_names())
def test_composed_config_names_its_attn_choice_and_the_yaml_holds_no_name(name):
    cfg = compose_config([f"attn={name}"])
    assert cfg.attn_name == name and attn_name(cfg) == name
    assert "name" not in OmegaConf.load(CONF / "attn" / f"{name}.yaml")


def test_record_attn_is_the_choice_and_attn_args_hold_only_arguments(make_cfg):
    record = RunRecord(make_cfg(*TINY, "attn=performer_relu"), torch.device("cpu"), torch.float32, 1).data
    assert record["attn"] == "performer_relu" and record["attn_target"].endswith("PerformerAttention")
    assert "name" not in record["attn_args"] and record["attn_args"]["kernel"] == "relu"


def test_a_backend_given_by_its_target_alone_is_named_by_its_class():
    cfg = compose_config(["attn=full", "attn._target_=lra_sfa.baselines.linear.LinearAttention"])
    assert cfg.attn_name is None and attn_name(cfg) == "LinearAttention"
    assert attn_name(OmegaConf.create({"attn": {"_target_": "my.pkg.MyAttention"}})) == "MyAttention"
    assert attn_name(compose_config(["attn=full", "attn_name=mine"])) == "mine"  # an explicit name stays


def test_a_stale_name_key_in_a_user_yaml_says_what_to_do():
    cfg = OmegaConf.create({"_target_": "lra_sfa.baselines.full.FullAttention", "name": "full"})
    with pytest.raises(ValueError, match=r"attention config 'mine'.*\['name'\].*name: key is gone.*delete it"):
        build_attention(cfg, num_heads=2, head_dim=8, max_seq_len=16, name="mine")


def test_resuming_a_checkpoint_that_saved_attn_name_is_no_change(make_cfg):
    now = ckpt.resume_settings(make_cfg(*TINY))
    assert not ckpt.settings_changes({**now, "attn.name": "full"}, now)


@pytest.mark.parametrize("attn", ["full", "sfa_wide"])
def test_a_checkpoint_older_than_a_new_attn_key_resumes_when_it_ran_the_default(make_cfg, attn):
    """Keys added since a checkpoint was made (full's padded_path, sfa_wide's capacity_factor) are taken at the
    value that computes what the checkpoint ran; another value is a change, except a kernel choice."""
    now = ckpt.resume_settings(make_cfg(*TINY, f"attn={attn}"))
    added = "attn.padded_path" if attn == "full" else "attn.capacity_factor"
    old = {key: value for key, value in now.items() if key != added}
    assert not ckpt.settings_changes(old, now)
    if attn == "full":
        assert not ckpt.settings_changes(now, {**now, added: "flex"})  # the same function on another kernel
    else:
        assert set(ckpt.settings_changes(old, {**now, added: 2.0})) == {added}
