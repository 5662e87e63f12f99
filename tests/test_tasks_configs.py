"""Every task YAML (except listops, tested by its owner) instantiates; every LRA experiment composes."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from lra_sfa.tasks.base import Task

TASKS = {  # conf/task name -> (class name, seq_len, has_padding, dual)
    "text": ("Text", 4096, True, False), "text1000": ("Text", 1000, True, False),
    "text2000": ("Text", 2000, True, False), "retrieval": ("Retrieval", 4000, True, True),
    "image": ("Cifar10", 1024, False, False), "pathfinder": ("Pathfinder", 1024, False, False),
    "pathfinder64": ("Pathfinder", 4096, False, False), "pathfinder128": ("Pathfinder", 16384, False, False),
    "pathfinder256": ("Pathfinder", 65536, False, False), "pathx": ("PathX", 16384, False, False),
    "needle": ("Needle", 1024, True, False),
}
EXPERIMENTS = {  # experiment -> (task, d_model, num_layers, batch_size, schedule, pooling)
    "lra_text": ("text", 256, 4, 32, "rsqrt", "cls"), "lra_retrieval": ("retrieval", 128, 4, 32, "rsqrt", "cls"),
    "lra_image": ("image", 128, 1, 256, "cosine", "cls"),
    "lra_pathfinder": ("pathfinder", 32, 4, 512, "cosine", "mean"),
    "lra_pathx": ("pathx", 32, 1, 64, "cosine", "mean"), "lra_needle": ("needle", 128, 2, 32, "cosine", "cls"),
}


def _compose(overrides):
    with initialize_config_module("lra_sfa.conf", version_base=None):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_config_instantiates(name):
    cls, seq_len, has_padding, dual = TASKS[name]
    cfg = _compose([f"task={name}"])
    assert cfg.task.data_dir is None and cfg.task.seq_len == seq_len
    task = instantiate(cfg.task)
    assert isinstance(task, Task) and type(task).__name__ == cls
    assert (task.seq_len, task.has_padding, task.dual) == (seq_len, has_padding, dual)
    assert task.vocab_size > 1 and task.num_classes >= 2
    assert task.describe()["seq_len"] == seq_len


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_composes(name):
    task, d_model, layers, batch, schedule, pooling = EXPERIMENTS[name]
    cfg = _compose([f"experiment={name}"])
    assert cfg.protocol in (name, "needle")
    assert (cfg.model.d_model, cfg.model.num_layers, cfg.trainer.batch_size, cfg.trainer.schedule) == (
        d_model, layers, batch, schedule)
    assert set(cfg.model) >= {"d_model", "num_heads", "num_layers", "mlp_dim", "dropout", "attn_dropout", "pos"}
    assert instantiate(cfg.task).name == task and cfg.task.pooling == pooling
