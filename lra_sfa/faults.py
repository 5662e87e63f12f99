"""Faults a run checks for up front, and the record of a job that failed.

Each check raises ``ValueError`` (or ``OSError`` for the file system) with one
line naming the key, file or value and what is valid; ``python -m lra_sfa``
prints that line and exits with code 2 (a sweep records the job as ``error``
and goes on). Checked before any training step:

- config values of the wrong type or out of range (``trainer.max_steps=abc``,
  ``trainer.grad_clip=-1``, ``model.num_heads=0``, ``trainer.betas=[0.9]``), against the
  schema in ``lra_sfa.schema``,
- output folders that cannot be written (run dir, results store),
- inputs outside the vocabulary, labels outside the classes, NaN or Inf in a
  floating-point split (checked once per split at load, in chunks).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa.recording import RecordWriteError, RunRecord, attn_name, hydra_job, job_overrides, peak_memory_mb
from lra_sfa.records import REQUIRED_FIELDS, git_commit, now_iso, store_record, write_json_atomic
from lra_sfa.schema import validate_config
from lra_sfa.tasks.base import IGNORE_INDEX

# The config check is the schema's (types and ranges in one place); run() calls it by this name.
check_config_types = validate_config


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; OSError naming it otherwise."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OSError(f"{what} {folder} is not writable ({reason}); choose another folder") from None
    return folder


def _first_bad(chunk: np.ndarray, low: int, high: int) -> tuple[int, object] | None:
    """(row in chunk, value) of the first non-finite, non-integral or out-of-range entry, or None."""
    flat = chunk.reshape(len(chunk), -1)  # (rows, values per example)
    if np.issubdtype(flat.dtype, np.floating):
        bad = ~np.isfinite(flat) | (flat != np.round(flat)) | (flat < low) | (flat >= high)
    else:
        bad = (flat < low) | (flat >= high)
    rows = np.flatnonzero(bad.any(axis=1))
    if not len(rows):
        return None
    return int(rows[0]), flat[rows[0]][bad[rows[0]]][0].item()


def check_split(split, split_name: str, task_name: str, vocab_size: int, num_classes: int,
                chunk: int = 4096, ignore_label: int | None = None) -> None:
    """Token ids in [0, vocab_size), labels in [0, num_classes) (or ``ignore_label``, for per-position
    labels), no NaN/Inf; ValueError naming the example."""
    for field, array, high, what in (("inputs", split.inputs, vocab_size, "token id"),
                                     ("labels", split.labels, num_classes, "label")):
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"task {task_name}: {split_name} {field} have dtype {array.dtype}, expected numbers")
        for start in range(0, len(array), chunk):
            values = np.asarray(array[start : start + chunk])
            if field == "labels" and ignore_label is not None:
                values = np.where(values == ignore_label, 0, values)  # unscored positions are valid
            found = _first_bad(values, 0, high)
            if found is not None:
                row, value = found
                raise ValueError(
                    f"task {task_name}: {split_name} {field} of example {start + row} hold {what} {value}, "
                    f"expected a finite integer in [0, {high})"
                )


def check_task_data(data, task) -> None:
    """Validate every split of a loaded task once (cheap next to training)."""
    for name in ("train", "val", "test"):
        check_split(getattr(data, name), name, getattr(task, "name", type(task).__name__),
                    int(task.vocab_size), int(task.num_classes),
                    ignore_label=IGNORE_INDEX if getattr(task, "token_level", False) else None)


def describe_oom(exc: BaseException, where: dict, cfg: DictConfig, dtype: torch.dtype) -> tuple[str, dict]:
    """The record's reason and ``oom`` fields for a CUDA out-of-memory error at ``where``."""
    shape = list(where.get("shape") or [])
    model = {key: cfg.model.get(key) for key in ("d_model", "num_heads", "num_layers", "mlp_dim")}
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    reason = (f"CUDA out of memory in {where.get('phase', 'setup')} at tokens shape {tuple(shape)} "
              f"(seq_len={cfg.task.seq_len}, {dtype}, model {model}): {detail}")
    return reason, {"oom_phase": where.get("phase", "setup"), "oom_shape": shape}


def _minimal_record(cfg: DictConfig) -> dict:
    """The required fields from a config that RunRecord cannot read (a value of the wrong type)."""
    record = {key: None for key in REQUIRED_FIELDS}
    choices, _ = hydra_job()
    target = OmegaConf.select(cfg, "task._target_", default=None, throw_on_missing=False)
    task = str(target).rsplit(".", 1)[-1].lower() if target else choices.get("task", "unknown")
    attn = attn_name(cfg)
    record.update(kind="run", task=task, attn=attn, attn_args={}, model={}, steps=0, date=now_iso(), world_size=1,
                  git_commit=git_commit())
    return record


def record_failure(cfg: DictConfig, exc: BaseException) -> dict:
    """Write an ``error`` record for a job that raised ``exc`` before it could record itself.

    Never raises: a folder that cannot be written (possibly the job's very
    fault) is skipped with a note on stderr, and the other copy is still made.
    """
    if isinstance(exc, RecordWriteError):  # the job's own record could not be written: do not add a second
        print(f"lra-sfa: no error record written: {exc}", file=sys.stderr)
        return {}
    reason = f"{type(exc).__name__}: {exc}"
    try:
        data = RunRecord(cfg, torch.device("cpu"), torch.float32, world_size=1).data
        data["peak_memory_mb"] = peak_memory_mb(torch.device("cpu"))
    except Exception:  # the config itself is what failed: keep what can be read
        data = _minimal_record(cfg)
    data.update(status="error", reason=reason, overrides=job_overrides(cfg))
    targets = []
    if cfg.get("run_dir"):
        targets.append(lambda: write_json_atomic(Path(str(cfg.run_dir)) / "record.json", data))
    if cfg.get("results_dir"):
        targets.append(lambda: store_record(data, str(cfg.results_dir)))
    for write in targets:
        try:
            write()
        except OSError as write_error:
            print(f"lra-sfa: could not write the error record: {write_error}", file=sys.stderr)
    return data
