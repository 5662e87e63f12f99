"""Checkpoints for resume: model, optimiser, schedule, RNG states and data position, written atomically.

``<run_dir>/checkpoint.pt`` is replaced through a temp file, fsync and rename,
so a kill mid-write leaves the previous checkpoint intact (the stray temp file
is removed by the next save or resume); a failed write (a full disk) raises
CheckpointWriteError naming the file and the checkpoint that was kept. Under
data parallelism rank 0 writes it with every rank's RNG states; a resume needs
the same number of ranks.

A checkpoint holds tensors, numbers, strings and containers only (the RNG
states too, as tensors), and is read with ``torch.load(weights_only=True)``:
a planted or tampered file is refused without running any of its code.

It records every setting that changes the computation (``resume_settings``:
model, attention, task, trainer hyperparameters, seed). Resuming with other
values is an error naming the keys, unless ``resume=force``: then this run's
trainer hyperparameters apply from the resumed step and the record lists both
values (``resume_forced``). A corrupt, missing or foreign file gives a clear
error (CheckpointError, one line).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from lra_sfa import distributed as dist
from lra_sfa.fileio import chmod_like_open

CHECKPOINT_NAME = "checkpoint.pt"
PAYLOAD_KEYS = ("model", "optimizer", "schedule", "sampler", "step", "settings", "rng")
# trainer keys that change neither the model, the data order nor the optimisation: free to change on resume
# (max_steps and max_seconds extend or budget a run; the rest are bookkeeping, evaluation after training, or where
# and how it runs).
RESUME_FREE = frozenset({"max_steps", "max_seconds", "checkpoint_every", "progress", "timing_warmup_steps",
                         "log_every", "device", "find_unused_parameters", "test_lengths", "compile", "compile_mode",
                         "data_on_device", "concurrent_runs"})
# settings older checkpoints hold that are no longer part of the config (attn.name: the attn choice names the backend)
RETIRED_SETTINGS = frozenset({"attn.name"})
# settings newer than some checkpoints, with the value that computes what those checkpoints ran: a checkpoint
# without the key is taken to hold that value
ADDED_SETTINGS = {"attn.capacity_factor": None, "attn.D_grow_from": None, "attn.padded_path": "auto"}
# attention keys that pick a kernel for the same function (full's padded path): free to change on resume
KERNEL_CHOICES = frozenset({"attn.padded_path"})


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt or made for another model."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (the previous one, if any, is intact)."""


@dataclass
class TrainState:
    step: int = 0
    start_step: int = 0
    best_val: float = -1.0
    best_step: int | None = None
    best_weights: dict | None = None
    last_loss: float = float("nan")
    history: list = field(default_factory=list)
    saved_step: int | None = None  # step of the checkpoint on disk (None: none written or read yet)
    resume_forced: dict = field(default_factory=dict)  # key -> {"checkpoint": old, "now": new} under resume=force
    commits: list = field(default_factory=list)  # the code commit of each stretch of training, in order, once each
    saved_max_steps: int | None = None  # trainer.max_steps of the checkpoint's run (None: none read, or older file)


def _flatten(value, prefix: str, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def resume_settings(cfg) -> dict:
    """Every setting that changes the computation, as dotted key -> resolved value.

    Model, attention and task configs in full, the seed, and the trainer
    settings except ``RESUME_FREE`` (budget, bookkeeping, device).
    """
    keep = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "attn", "task")}
    keep["trainer"] = {key: value for key, value in OmegaConf.to_container(cfg.trainer, resolve=True).items()
                       if key not in RESUME_FREE}
    keep["seed"] = cfg.seed
    return _flatten(keep, "", {})


def settings_changes(saved: dict, now: dict) -> dict:
    """key -> {"checkpoint": saved value, "now": current value} for every key that differs ("absent" if missing)."""
    saved = {**{key: value for key, value in ADDED_SETTINGS.items() if key in now}, **saved}
    keys = sorted(((set(saved) - RETIRED_SETTINGS) | set(now)) - KERNEL_CHOICES)
    return {key: {"checkpoint": saved.get(key, "absent"), "now": now.get(key, "absent")}
            for key in keys if saved.get(key, "absent") != now.get(key, "absent")}


def _rng_state() -> dict:
    """This process's RNG states as tensors and numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    state = rng["numpy"]
    np.random.set_state((state["kind"], state["keys"].cpu().numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["gauss"]))
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free there"
    except OSError:
        return "free space unknown"


def _write_atomic(payload: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        chmod_like_open(tmp)
        torch.save(payload, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(run_dir: Path, model, optimizer, schedule, sampler, state: TrainState, cfg,
         env: dist.DistEnv | None = None) -> Path | None:
    """Write ``<run_dir>/checkpoint.pt`` (rank 0) holding every rank's RNG states; all ranks must call it.

    Raises CheckpointWriteError (rank 0 only) when the file cannot be written; the previous checkpoint stays.
    """
    env = env or dist.DistEnv(0, 1, torch.device("cpu"))
    rng_states = dist.gather_objects(_rng_state(), env)
    if not env.is_main:
        return None
    path = Path(run_dir) / CHECKPOINT_NAME
    payload = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "sampler": sampler.state_dict(), "step": state.step, "best_val": state.best_val,
        "best_step": state.best_step, "best_weights": state.best_weights, "last_loss": state.last_loss,
        "history": state.history, "settings": resume_settings(cfg), "world_size": env.world_size,
        "rng": rng_states, "commits": state.commits, "max_steps": int(cfg.trainer.max_steps),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        _write_atomic(payload, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write (a full disk) as RuntimeError
        if path.is_file():
            kept = f"the checkpoint of step {state.saved_step}" if state.saved_step is not None else "the old file"
            kept = f"{kept} is kept"
        else:
            kept = "no checkpoint is kept"
        raise CheckpointWriteError(f"could not write checkpoint {path} at step {state.step} ({_first_line(exc)}; "
                                   f"{_free_space(path.parent)}); {kept}") from None
    state.saved_step = state.step
    return path


def _read(path: Path, device) -> dict:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        if "Weights only load failed" in str(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = found.group(1) if found else "a Python object"
            raise CheckpointError(
                f"checkpoint {path} refers to {what}, which an lra-sfa checkpoint never holds; it was refused "
                "without running it (made by another program or an older lra-sfa): delete it or use a new "
                "hydra.run.dir") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({_first_line(exc)}); "
                              "delete it to start over, or use a new hydra.run.dir") from None
    missing = [key for key in PAYLOAD_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an lra-sfa checkpoint of this version "
                              f"(missing {', '.join(missing)}); delete it or use a new hydra.run.dir")
    return payload


def _describe(changes: dict, limit: int = 6) -> str:
    parts = [f"{key}: {change['checkpoint']!r} in the checkpoint, {change['now']!r} now"
             for key, change in list(changes.items())[:limit]]
    more = f"; and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(parts) + more


def _load_optimizer(optimizer, schedule, payload: dict, keep_current: bool) -> None:
    """Restore optimiser and schedule. With ``keep_current`` (resume=force) the saved moments and step count
    go under this run's hyperparameters (lr, betas, eps, weight decay), and the schedule continues from the
    saved step with this run's base learning rate."""
    if not keep_current:
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
        return
    saved, fresh = payload["optimizer"], optimizer.state_dict()
    if len(saved["param_groups"]) != len(fresh["param_groups"]):
        raise ValueError(f"{len(saved['param_groups'])} parameter groups saved, {len(fresh['param_groups'])} now")
    groups = [{**old, **{key: value for key, value in new.items() if key != "params"}}
              for old, new in zip(saved["param_groups"], fresh["param_groups"])]
    optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})
    base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    last = int(payload["schedule"]["last_epoch"])
    lrs = [base * factor(last) for base, factor in zip(base_lrs, schedule.lr_lambdas)]
    schedule.load_state_dict({**payload["schedule"], "base_lrs": base_lrs, "_last_lr": lrs})
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


def load(run_dir: Path, model, optimizer, schedule, sampler, device, cfg,
         env: dist.DistEnv | None = None, force: bool = False) -> TrainState:
    """Restore everything from ``<run_dir>/checkpoint.pt``; returns the train state to continue from.

    Changed settings (``resume_settings``) are a CheckpointError naming them, unless ``force``.
    """
    env = env or dist.DistEnv(0, 1, torch.device("cpu"))
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"resume=true but there is no checkpoint at {path}; start without resume=true "
                              "(or use resume=auto)")
    payload = _read(path, device)
    changes = settings_changes(payload["settings"], resume_settings(cfg))
    if changes and not force:
        raise CheckpointError(
            f"checkpoint {path} was made with a different model/attention/task/trainer config ({_describe(changes)}); "
            "resume with the same settings, use a new hydra.run.dir, or resume=force to go on with the new values "
            "(both are recorded)")
    saved_world = int(payload.get("world_size", 1))
    if saved_world != env.world_size:
        raise CheckpointError(f"checkpoint {path} was made by {saved_world} process(es), this run has "
                              f"{env.world_size}; resume with torchrun --nproc_per_node={saved_world}")
    try:
        model.load_state_dict(payload["model"])
        _load_optimizer(optimizer, schedule, payload, keep_current=bool(changes))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit this model ({first})") from None
    sampler.load_state_dict(payload["sampler"])
    _set_rng_state(payload["rng"][env.rank])
    if env.is_main:
        remove_stale_temps(path.parent)
    return TrainState(step=payload["step"], start_step=payload["step"], best_val=payload["best_val"],
                      best_step=payload["best_step"], best_weights=payload["best_weights"],
                      last_loss=payload["last_loss"], history=payload["history"], saved_step=payload["step"],
                      resume_forced=changes, commits=list(payload.get("commits") or []),
                      saved_max_steps=payload.get("max_steps"))


def finished_record(run_dir: Path, cfg) -> dict | None:
    """The run directory's record when it holds a finished run (status ok, ``trainer.max_steps`` reached or
    stopped at ``trainer.stop_at_val_accuracy``, not stopped by the time budget), else None: resuming such a run
    has nothing left to do."""
    try:
        record = json.loads((Path(run_dir) / "record.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "ok" or record.get("stopped_by_time_budget"):
        return None
    steps = record.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps >= int(cfg.trainer.max_steps):
        return record
    if record.get("stopped_at_val_accuracy") is True:
        return record
    return None
