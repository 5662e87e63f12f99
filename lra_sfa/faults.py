"""Faults a run checks for up front, and the record of a job that failed.

Each check raises ``ValueError`` (or ``OSError`` for the file system) with one
line naming the key, file or value and what is valid; ``python -m lra_sfa``
prints that line and exits with code 2 (a sweep records the job as ``error``
and goes on). Checked before any training step:

- config values of the wrong type or out of range (``trainer.max_steps=abc``,
  ``trainer.grad_clip=-1``, ``model.num_heads=0``, ``trainer.betas=[0.9]``),
- output folders that cannot be written (run dir, results store),
- inputs outside the vocabulary, labels outside the classes, NaN or Inf in a
  floating-point split (checked once per split at load, in chunks).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa.recording import RecordWriteError, RunRecord, hydra_job, peak_memory_mb
from lra_sfa.records import REQUIRED_FIELDS, git_commit, now_iso, store_record, write_json_atomic
from lra_sfa.tasks.base import IGNORE_INDEX

# key -> (expected kind, allow null). Kinds: int, float (ints accepted), bool, str, floats (a list of floats),
# ints (a list of integers). A key absent from the composed config (a task without it) is not checked.
CONFIG_TYPES: dict[str, tuple[str, bool]] = {
    "seed": ("int", False),
    "task.seq_len": ("int", False),
    "task.num_train": ("int", False),
    "task.num_val": ("int", False),
    "task.num_test": ("int", False),
    "task.seed": ("int", False),
    "task.workers": ("int", True),
    "task.n_workers": ("int", True),
    "task.resolution": ("int", False),
    "task.min_length": ("int", False),
    "task.max_length": ("int", False),
    "task.max_depth": ("int", False),
    "task.max_args": ("int", False),
    "trainer.max_steps": ("int", False),
    "trainer.max_seconds": ("float", True),
    "trainer.batch_size": ("int", False),
    "trainer.eval_batch_size": ("int", True),
    "trainer.eval_every": ("int", False),
    "trainer.log_every": ("int", False),
    "trainer.lr": ("float", False),
    "trainer.schedule": ("str", False),
    "trainer.warmup_steps": ("int", False),
    "trainer.weight_decay": ("float", False),
    "trainer.betas": ("floats", False),
    "trainer.eps": ("float", False),
    "trainer.grad_clip": ("float", True),
    "trainer.timing_warmup_steps": ("int", False),
    "trainer.checkpoint_every": ("int", False),
    "trainer.progress": ("bool", False),
    "trainer.device": ("str", False),
    "trainer.precision": ("str", False),
    "trainer.test_lengths": ("ints", True),
    "model.d_model": ("int", False),
    "model.num_heads": ("int", False),
    "model.num_layers": ("int", False),
    "model.mlp_dim": ("int", False),
    "model.qkv_dim": ("int", True),
    "model.dropout": ("float", False),
    "model.attn_dropout": ("float", False),
    "model.norm_eps": ("float", False),
}


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key (of each item for a list kind): bounds inclusive unless ``*_open``,
    None = unbounded; ``length`` fixes a list's length; ``hint`` says what to use instead."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None
    hint: str = ""

    def holds(self, value) -> bool:
        if isinstance(value, (list, tuple)):
            return (self.length is None or len(value) == self.length) and all(self.holds(v) for v in value)
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        else:
            text = "finite"
        if self.length is not None:
            text = f"a list of {self.length} numbers, each {text}"
        return text + (f" ({self.hint})" if self.hint else "")


AT_LEAST_1, AT_LEAST_0 = Range(low=1), Range(low=0)
# Every numeric key of CONFIG_TYPES has its range here (a float key without one must at least be finite).
CONFIG_RANGES: dict[str, Range] = {
    "seed": AT_LEAST_0, "task.seed": AT_LEAST_0, "task.seq_len": AT_LEAST_1, "task.num_train": AT_LEAST_1,
    "task.num_val": AT_LEAST_1, "task.num_test": AT_LEAST_1, "task.workers": AT_LEAST_1,
    "task.n_workers": AT_LEAST_1, "task.resolution": AT_LEAST_1, "task.min_length": AT_LEAST_0,
    "task.max_length": AT_LEAST_1, "task.max_depth": AT_LEAST_1, "task.max_args": Range(low=2),
    "trainer.max_steps": AT_LEAST_1, "trainer.max_seconds": Range(low=0, low_open=True, hint="or null for none"),
    "trainer.batch_size": AT_LEAST_1, "trainer.eval_batch_size": Range(low=1, hint="or null for batch_size"),
    "trainer.eval_every": AT_LEAST_1, "trainer.log_every": AT_LEAST_1,
    "trainer.lr": Range(low=0, low_open=True), "trainer.warmup_steps": AT_LEAST_0,
    "trainer.weight_decay": AT_LEAST_0, "trainer.betas": Range(low=0, high=1, high_open=True, length=2),
    "trainer.eps": Range(low=0, low_open=True),
    "trainer.grad_clip": Range(low=0, low_open=True, hint="the max gradient norm; null for no clipping"),
    "trainer.timing_warmup_steps": AT_LEAST_0, "trainer.checkpoint_every": Range(low=0, hint="0 for none"),
    "trainer.test_lengths": AT_LEAST_1, "model.d_model": AT_LEAST_1, "model.num_heads": AT_LEAST_1,
    "model.num_layers": AT_LEAST_1, "model.mlp_dim": AT_LEAST_1, "model.qkv_dim": Range(low=1, hint="or null"),
    "model.dropout": Range(low=0, high=1, high_open=True), "model.attn_dropout": Range(low=0, high=1, high_open=True),
    "model.norm_eps": Range(low=0, low_open=True),
}
RESUME_CHOICES = (True, False, "auto", "force")
_ABSENT = object()
KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "floats": "a list of numbers", "ints": "a list of integers"}


def _has_kind(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    item_kind = "int" if kind == "ints" else "float"
    return isinstance(value, (list, tuple)) and all(_has_kind(item, item_kind) for item in value)


def check_config_types(cfg: DictConfig) -> None:
    """Raise ValueError naming the first key whose value has the wrong type or range (one line each).

    The one place where config values are checked before a run: types from
    ``CONFIG_TYPES``, ranges from ``CONFIG_RANGES`` (NaN and Inf are never valid).
    """
    for key, (kind, nullable) in CONFIG_TYPES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value is None and nullable:
            continue
        if not _has_kind(value, kind):
            expected = KIND_WORDS[kind] + (" or null" if nullable else "")
            raise ValueError(f"config {key}={value!r} has the wrong type: expected {expected}")
        bound = CONFIG_RANGES.get(key, Range() if kind in ("float", "floats") else None)
        if bound is not None and not bound.holds(value):
            raise ValueError(f"config {key}={value!r} must be {bound.describe()}")
    resume = cfg.get("resume")
    if resume not in RESUME_CHOICES:
        raise ValueError(f"config resume={resume!r} has the wrong type: expected true, false, auto or force")


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
    attn = OmegaConf.select(cfg, "attn.name", default=None, throw_on_missing=False) or choices.get("attn", "unknown")
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
    data.update(status="error", reason=reason, overrides=hydra_job()[1])
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
