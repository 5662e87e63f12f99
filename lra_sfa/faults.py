"""Recording a failed job, so that a sweep keeps a trace of every job it ran."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from lra_sfa import distributed as dist
from lra_sfa.recording import RunRecord


def record_failure(cfg: DictConfig, exc: BaseException) -> dict:
    """Write an ``error`` record for a job that raised ``exc`` before it could record itself."""
    record = RunRecord(cfg, torch.device("cpu"), torch.float32, world_size=1)
    env = dist.DistEnv(rank=0, world_size=1, device=torch.device("cpu"))
    return record.finish("error", f"{type(exc).__name__}: {exc}", Path(cfg.run_dir), env)
