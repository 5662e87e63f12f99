"""Checkpoints for resume: model, optimiser, schedule, RNG states and data position, written atomically.

``<run_dir>/checkpoint.pt`` is replaced through a temp file, fsync and rename,
so a kill mid-write leaves the previous checkpoint intact (the stray temp file
is removed by the next save or resume). Under data parallelism rank 0 writes
it with every rank's RNG states; a resume needs the same number of ranks. A
checkpoint records the config hash of the model and task it was made with;
resuming with another model shape, a corrupt file or a missing file gives a
clear error (CheckpointError, one line).
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

from lra_sfa import distributed as dist
from lra_sfa.records import config_hash

CHECKPOINT_NAME = "checkpoint.pt"
PAYLOAD_KEYS = ("model", "optimizer", "schedule", "sampler", "step", "shape_key", "rng")


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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temp files left by a checkpoint write that was killed (the checkpoint itself is intact)."""
    stale = sorted(Path(run_dir).glob(".checkpoint.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def exists(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_NAME).is_file()


def save(run_dir: Path, model, optimizer, schedule, sampler, state: TrainState, cfg,
         env: dist.DistEnv | None = None) -> Path | None:
    """Write ``<run_dir>/checkpoint.pt`` (rank 0) holding every rank's RNG states; all ranks must call it."""
    env = env or dist.DistEnv(0, 1, torch.device("cpu"))
    rng_states = dist.gather_objects(_rng_state(), env)
    if not env.is_main:
        return None
    path = Path(run_dir) / CHECKPOINT_NAME
    payload = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "sampler": sampler.state_dict(), "step": state.step, "best_val": state.best_val,
        "best_step": state.best_step, "best_weights": state.best_weights, "last_loss": state.last_loss,
        "history": state.history, "shape_key": _shape_key(cfg), "world_size": env.world_size,
        "rng": rng_states,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: Path, device) -> dict:
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {first}); "
                              "delete it to start over, or use a new hydra.run.dir") from None
    missing = [key for key in PAYLOAD_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an lra-sfa checkpoint (missing {', '.join(missing)})")
    return payload


def load(run_dir: Path, model, optimizer, schedule, sampler, device, cfg,
         env: dist.DistEnv | None = None) -> TrainState:
    """Restore everything from ``<run_dir>/checkpoint.pt``; returns the train state to continue from."""
    env = env or dist.DistEnv(0, 1, torch.device("cpu"))
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"resume=true but there is no checkpoint at {path}; start without resume=true "
                              "(or use resume=auto)")
    payload = _read(path, device)
    if payload["shape_key"] != _shape_key(cfg):
        raise CheckpointError(
            f"checkpoint {path} was made with a different model/attention/task/batch config; "
            "resume with the same settings or use a new hydra.run.dir"
        )
    saved_world = int(payload.get("world_size", 1))
    if saved_world != env.world_size:
        raise CheckpointError(f"checkpoint {path} was made by {saved_world} process(es), this run has "
                              f"{env.world_size}; resume with torchrun --nproc_per_node={saved_world}")
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit this model ({first})") from None
    schedule.load_state_dict(payload["schedule"])
    sampler.load_state_dict(payload["sampler"])
    _set_rng_state(payload["rng"][env.rank])
    if env.is_main:
        remove_stale_temps(path.parent)
    return TrainState(step=payload["step"], start_step=payload["step"], best_val=payload["best_val"],
                      best_step=payload["best_step"], best_weights=payload["best_weights"],
                      last_loss=payload["last_loss"], history=payload["history"])
