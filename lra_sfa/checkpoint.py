"""Checkpoints for resume: model, optimiser, schedule, RNG states and data position, written atomically.

``<run_dir>/checkpoint.pt`` is replaced through a temp file and rename, so a
kill mid-write leaves the previous checkpoint intact. A checkpoint records the
config hash of the model and task it was made with; resuming with another
model shape, a corrupt file or a missing file gives a clear error.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from lra_sfa.records import config_hash

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt or made for another model."""


@dataclass
class TrainState:
    step: int = 0
    start_step: int = 0
    best_val: float = -1.0
    best_step: int | None = None
    best_weights: dict | None = None
    last_loss: float = float("nan")
    history: list = field(default_factory=list)


def _shape_key(cfg) -> str:
    """What must match to resume: model, attention, task and batch settings."""
    keep = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "attn", "task")}
    keep["batch_size"] = int(cfg.trainer.batch_size)
    return config_hash(keep)


def save(run_dir: Path, model, optimizer, schedule, sampler, state: TrainState, cfg) -> Path:
    path = Path(run_dir) / CHECKPOINT_NAME
    payload = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "sampler": sampler.state_dict(), "step": state.step, "best_val": state.best_val,
        "best_step": state.best_step, "best_weights": state.best_weights, "last_loss": state.last_loss,
        "history": state.history, "shape_key": _shape_key(cfg),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(run_dir: Path, model, optimizer, schedule, sampler, device, cfg) -> TrainState:
    """Restore everything from ``<run_dir>/checkpoint.pt``; returns the train state to continue from."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"resume=true but there is no checkpoint at {path}; start without resume=true")
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc})") from None
    if payload.get("shape_key") != _shape_key(cfg):
        raise CheckpointError(
            f"checkpoint {path} was made with a different model/attention/task/batch config; "
            "resume with the same settings or use a new hydra.run.dir"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    sampler.load_state_dict(payload["sampler"])
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])
    return TrainState(step=payload["step"], start_step=payload["step"], best_val=payload["best_val"],
                      best_step=payload["best_step"], best_weights=payload["best_weights"],
                      last_loss=payload["last_loss"], history=payload["history"])
