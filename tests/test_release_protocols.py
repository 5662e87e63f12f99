"""Each lra_* experiment against the LRA release's values, so that a drift in a YAML fails CI.

RELEASE holds, per experiment, the release's values as read from google-research/long-range-arena
(file and commit in each entry's ``source``), expressed in this project's config keys. A protocol
choice the project makes on purpose (validation frequency, precision) is not listed; the
experiment YAML's header states those.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

_RELEASE_NUMERICS = {"model.init": "lra", "model.norm_eps": 1e-6, "model.gelu": "tanh", "model.proj_bias": False,
                     "model.padding": "release",
                     "model.pos": "sin", "trainer.betas": [0.9, 0.98], "trainer.eps": 1e-9,
                     "trainer.test_weights": "final"}
_LISTOPS = {
    "task.seq_len": 2000, "task.pooling": "cls", "model.d_model": 512, "model.num_heads": 8, "model.qkv_dim": None,
    "model.dropout": 0.1, "model.attn_dropout": 0.1, "trainer.batch_size": 32, "trainer.max_steps": 5000,
    "trainer.lr": 0.05, "trainer.schedule": "rsqrt", "trainer.warmup_steps": 1000, "trainer.weight_decay": 0.1,
    "trainer.grad_clip": None, **_RELEASE_NUMERICS,
}
_TEXT = {
    "task.pooling": "cls", "model.d_model": 256, "model.qkv_dim": None, "model.num_heads": 4, "model.num_layers": 4,
    "model.mlp_dim": 1024, "model.dropout": 0.1, "model.attn_dropout": 0.1, "trainer.batch_size": 32,
    "trainer.max_steps": 20000, "trainer.lr": 0.05, "trainer.schedule": "rsqrt", "trainer.warmup_steps": 8000,
    "trainer.weight_decay": 0.1, "trainer.grad_clip": None, **_RELEASE_NUMERICS,
}
RELEASE = {
    "lra_listops": {
        "source": "lra_benchmarks/listops/configs/base_listops_config.py @ cd31e5c (= 8d3dc39), listops/train.py",
        **_LISTOPS, "model.num_layers": 4, "model.mlp_dim": 1024,
    },
    "lra_listops_2020": {
        "source": "lra_benchmarks/listops/configs/base_listops_config.py @ 093bfc6 (parent of 8d3dc39)",
        **_LISTOPS, "model.num_layers": 6, "model.mlp_dim": 2048,
    },
    "lra_pathfinder": {
        "source": "lra_benchmarks/image/configs/pathfinder32/{base_pathfinder32_config,transformer_base}.py "
                  "@ cd31e5c, image/train.py",
        "task.seq_len": 1024, "task.resolution": 32, "task.difficulty": "hard", "task.pooling": "mean",
        "model.d_model": 32, "model.qkv_dim": 16, "model.num_heads": 4, "model.num_layers": 4, "model.mlp_dim": 32,
        "model.dropout": 0.2, "model.attn_dropout": 0.1, "trainer.batch_size": 512,
        "trainer.max_steps": 160000 // 512 * 200, "trainer.lr": 1e-3, "trainer.schedule": "cosine",
        "trainer.warmup_steps": 160000 // 512, "trainer.weight_decay": 0.0, "trainer.grad_clip": None,
        **_RELEASE_NUMERICS,
    },
    "lra_pathx": {
        "source": "lra_benchmarks/image/configs/pathfinder128/base_pathfinder128_config.py @ cd31e5c",
        "task.seq_len": 128 * 128, "task.pooling": "mean", "model.d_model": 32, "model.qkv_dim": 16,
        "model.num_heads": 2, "model.num_layers": 1, "model.mlp_dim": 32, "model.dropout": 0.1,
        "model.attn_dropout": 0.1, "trainer.batch_size": 64, "trainer.max_steps": 160000 // 64 * 200,
        "trainer.lr": 1e-3, "trainer.schedule": "cosine", "trainer.warmup_steps": 160000 // 64,
        "trainer.weight_decay": 0.0, "trainer.grad_clip": 1.0, **_RELEASE_NUMERICS, "model.pos": "learned",
    },
    "lra_image": {
        "source": "lra_benchmarks/image/configs/cifar10/{base_cifar10_config,transformer_base}.py @ cd31e5c",
        "task.seq_len": 1024, "task.pooling": "cls", "model.d_model": 128, "model.qkv_dim": 64,
        "model.num_heads": 8, "model.num_layers": 1, "model.mlp_dim": 128, "model.dropout": 0.3,
        "model.attn_dropout": 0.2, "trainer.batch_size": 256, "trainer.max_steps": 45000 // 256 * 200,
        "trainer.lr": 5e-4, "trainer.schedule": "cosine", "trainer.warmup_steps": 45000 // 256,
        "trainer.weight_decay": 0.0, "trainer.grad_clip": None, **_RELEASE_NUMERICS, "model.pos": "learned",
    },
    "lra_text_1000": {
        "source": "lra_benchmarks/text_classification/configs/base_tc_config.py @ cd31e5c, train.py",
        **_TEXT, "task.seq_len": 1000,
    },
    "lra_text": {"source": "as lra_text_1000, at the paper's 4K length", **_TEXT, "task.seq_len": 4096},
    "lra_retrieval": {
        "source": "lra_benchmarks/matching/configs/base_match_config.py @ cd31e5c, train.py",
        "task.seq_len": 4000, "task.pooling": "cls", "model.d_model": 128, "model.qkv_dim": None,
        "model.num_heads": 4, "model.num_layers": 4, "model.mlp_dim": 512, "model.dropout": 0.1,
        "model.attn_dropout": 0.1, "trainer.batch_size": 32, "trainer.max_steps": 5000, "trainer.lr": 0.05,
        "trainer.schedule": "rsqrt", "trainer.warmup_steps": 8000, "trainer.weight_decay": 0.1,
        "trainer.grad_clip": None, "model.dual_head": "release", **_RELEASE_NUMERICS,
    },
}


def _compose(experiment: str):
    with initialize_config_module("lra_sfa.conf", version_base=None):
        return compose("config", overrides=[f"experiment={experiment}"])


@pytest.mark.parametrize("experiment", sorted(RELEASE))
def test_experiment_matches_release(experiment):
    cfg = _compose(experiment)
    assert cfg.protocol == experiment
    drift = {}
    for key, expected in RELEASE[experiment].items():
        if key == "source":
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if value != expected:
            drift[key] = (value, expected)
    assert not drift, f"{experiment} drifts from the release ({RELEASE[experiment]['source']}): {drift}"

