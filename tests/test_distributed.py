"""Data parallelism on the CPU: torchrun with 2 gloo processes against 1 process, sharding, DDP resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lra_sfa.baselines.full import FullAttention
from lra_sfa.data import EpochSampler

from .test_faults import TINY, cli, cli_env

REPO = Path(__file__).resolve().parents[1]
DDP_ARGS = [*TINY, "task.num_train=800", "trainer.batch_size=16", "trainer.max_steps=40", "trainer.eval_every=20",
            "trainer.lr=3e-3", "trainer.warmup_steps=5", "model.dropout=0.0", "model.attn_dropout=0.0"]


class FullWithUnusedParameter(FullAttention):
    """Full attention holding a parameter that no loss touches (DDP must be told to expect it)."""

    def __init__(self, padded_path: str = "auto") -> None:
        super().__init__(padded_path=padded_path)
        self.idle = torch.nn.Parameter(torch.randn(4))


def torchrun(*args: str, root: Path, cache: Path, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lra_sfa", *args]
    env = cli_env(root, cache) | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def test_sampler_shards_are_disjoint_and_cover_the_global_batch():
    single = EpochSampler(100, 12, seed=3)
    ranks = [EpochSampler(100, 12, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(20):  # crosses epochs (8 batches of 12 per epoch of 100)
        expected = np.sort(single.next_indices())
        shards = [sampler.next_indices() for sampler in ranks]
        assert all(len(shard) == 4 for shard in shards)
        assert np.array_equal(np.sort(np.concatenate(shards)), expected)
    state = ranks[1].state_dict()
    restored = EpochSampler(100, 12, seed=3, rank=1, world_size=3)
    restored.load_state_dict(state)
    assert np.array_equal(restored.next_indices(), ranks[1].next_indices())
    with pytest.raises(ValueError, match="divisible by world size 5"):
        EpochSampler(100, 12, seed=3, rank=0, world_size=5)


def test_two_gloo_processes_match_one_process(tmp_path):
    cache = tmp_path / "cache"
    one = cli(*DDP_ARGS, f"hydra.run.dir={tmp_path / 'one'}", root=tmp_path, cache=cache)
    assert one.returncode == 0, one.stderr
    two = torchrun(*DDP_ARGS, f"hydra.run.dir={tmp_path / 'two'}", root=tmp_path, cache=cache)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("lra-sfa: status=ok") == 1 and "world_size=2" in two.stdout  # rank 0 alone reports
    a = json.loads((tmp_path / "one" / "record.json").read_text())
    b = json.loads((tmp_path / "two" / "record.json").read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert b["steps"] == a["steps"] == 40 and b["batch_size"] == a["batch_size"] == 16
    assert b["ddp_find_unused_parameters"] is False
    # same seed and global batch, no dropout: the same run up to float summation order
    losses_a, losses_b = [h["loss"] for h in a["history"]], [h["loss"] for h in b["history"]]
    assert np.allclose(losses_a, losses_b, rtol=1e-3), (losses_a, losses_b)
    assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 2 / 64
    assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 2 / 64
    records = sorted((tmp_path / "store").glob("*.json"))
    assert len(records) == 2  # one per run: rank 1 wrote nothing
    assert not (tmp_path / "outputs").exists()  # rank 1 made no Hydra folder of its own


def test_unused_parameters_are_found_and_ddp_runs(tmp_path):
    target = f"attn._target_={__name__}.FullWithUnusedParameter"
    result = torchrun(*DDP_ARGS, "trainer.max_steps=6", target, f"hydra.run.dir={tmp_path / 'run'}",
                      root=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["ddp_find_unused_parameters"] is True
    assert any(name.endswith("attention.idle") for name in record["ddp_unused_parameters"])


def test_ddp_checkpoint_resumes_with_the_same_world_size_only(tmp_path):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    args = [*DDP_ARGS, "trainer.checkpoint_every=10", f"hydra.run.dir={run_dir}"]
    first = torchrun(*args, "trainer.max_steps=20", root=tmp_path, cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2 and payload["step"] == 20
    assert not torch.equal(payload["rng"][0]["torch"], payload["rng"][1]["torch"])  # each rank's own stream
    single = cli(*args, "trainer.max_steps=40", "resume=true", root=tmp_path, cache=cache)
    assert single.returncode == 2 and "made by 2 process(es)" in single.stderr
    assert "Traceback" not in single.stderr
    resumed = torchrun(*args, "trainer.max_steps=40", "resume=true", root=tmp_path, cache=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((run_dir / "record.json").read_text())
    assert record["steps"] == 40 and record["resumed_from_step"] == 20 and record["world_size"] == 2
    assert [h["step"] for h in record["history"]] == [20, 40]


def test_submitit_slurm_tasks_become_torchrun_ranks(monkeypatch):
    """Inside a 2-task submitit SLURM job, task 1 of node gpu[3-4] gets RANK=1 and gpu3 as master."""
    pytest.importorskip("submitit")
    from lra_sfa import distributed

    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[3-4]", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    monkeypatch.setattr(os, "environ", environ | slurm)
    distributed._export_submitit_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "0")
    assert os.environ["MASTER_ADDR"] == "gpu3" and int(os.environ["MASTER_PORT"]) > 0


OOM_ON_RANK_0 = """
import os
import torch
from lra_sfa.model import LRAClassifier
_forward, _calls = LRAClassifier.forward, [0]
def _forward_or_oom(self, tokens):
    _calls[0] += 1  # call 1: the unused-parameter probe, 2: step 1, 3: step 2
    if os.environ.get("RANK") == "0" and _calls[0] == 3:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
    return _forward(self, tokens)
LRAClassifier.forward = _forward_or_oom
"""


def test_oom_on_one_rank_records_and_ends_the_job(tmp_path):
    """Rank 0 runs out of memory while rank 1 waits in the gradient all-reduce: the job ends, recorded."""
    prelude_file = tmp_path / "sitecustomize.py"  # runs first in every torchrun worker
    prelude_file.write_text(OOM_ON_RANK_0)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lra_sfa",
               *DDP_ARGS, f"hydra.run.dir={tmp_path / 'run'}"]
    env = cli_env(tmp_path, tmp_path / "cache") | {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "rank 0 CUDA out of memory in train step at tokens shape (8, 16)" in result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "oom" and record["oom_shape"] == [8, 16] and record["world_size"] == 2
