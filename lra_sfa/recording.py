"""Building a run's record from its config and results, and the task from its config."""

from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa import distributed as dist
from lra_sfa.records import (
    REQUIRED_FIELDS,
    config_hash,
    finite_or_null,
    git_commit,
    now_iso,
    store_record,
    write_json_atomic,
)
from lra_sfa.tasks.base import Task


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory since the last reset, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def library_versions(device: torch.device) -> dict[str, str | None]:
    """Triton's and cuDNN's versions (null where absent or not used)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    return {"triton_version": triton_version, "cudnn_version": str(cudnn) if cudnn else None}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def hydra_job() -> tuple[dict, list[str]]:
    """The Hydra job's group choices and command-line overrides (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, []
    hydra_cfg = HydraConfig.get()
    return dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task)


def job_overrides(cfg: DictConfig) -> list[str]:
    """The overrides the run config was composed with (``job_overrides``, see lra_sfa.compose), else the running
    Hydra job's."""
    kept = OmegaConf.select(cfg, "job_overrides", default=None, throw_on_missing=False)
    return [str(item) for item in kept] if kept is not None else hydra_job()[1]


def attn_name(cfg: DictConfig) -> str:
    """The record's ``attn``: the attn group's choice that composition put in ``attn_name`` (``full``, ``sfa``,
    ...; see lra_sfa.compose), else the class name of ``attn._target_`` (an attention given by its target alone)."""
    name = OmegaConf.select(cfg, "attn_name", default=None, throw_on_missing=False)
    target = OmegaConf.select(cfg, "attn._target_", default=None, throw_on_missing=False)
    return str(name or (str(target).rsplit(".", 1)[-1] if target else "custom"))


def build_task(task_cfg: DictConfig) -> Task:
    """Instantiate ``conf/task/<name>.yaml``; a bad value gets a clear error naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        task = instantiate(task_cfg)
    except InstantiationException as exc:
        raise ValueError(f"task config ({task_cfg.get('_target_')}): {exc}") from None
    if not isinstance(task, Task):
        raise ValueError(f"task config: _target_ {task_cfg.get('_target_')} did not build an lra_sfa Task")
    return task


class RecordWriteError(OSError):
    """A finished run whose record could not be written everywhere (the message says what was kept)."""


class RunRecord:
    """Accumulates one flat record; ``finish`` writes it (rank 0 only) and returns it."""

    def __init__(self, cfg: DictConfig, device: torch.device, dtype: torch.dtype, world_size: int) -> None:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        attn = dict(resolved["attn"])
        target = attn.pop("_target_", None)  # missing: build_attention names the problem
        self.results_dir = cfg.results_dir
        self.data = {
            "kind": "run",
            "task": str(resolved["task"]["_target_"]).rsplit(".", 1)[-1].lower(),
            "attn": attn_name(cfg),
            "attn_target": target,
            "attn_args": attn,
            "seq_len": int(cfg.task.seq_len),
            "model": resolved["model"],
            "trainer": resolved["trainer"],
            "protocol": cfg.get("protocol", "custom"),
            "dtype": str(dtype).replace("torch.", ""),
            "device": device_name(device),
            "world_size": world_size,
            "seed": int(cfg.seed),
            "batch_size": int(cfg.trainer.batch_size),
            "max_steps": int(cfg.trainer.max_steps),
            "status": "error",
            "reason": None,
            "val_accuracy": None,
            "test_accuracy": None,
            "train_seconds": None,
            "steps_per_second": None,
            "tokens_per_second": None,
            "peak_memory_mb": None,
            "steps": 0,
            "git_commit": git_commit(),
            "config_hash": config_hash(resolved),
            "date": now_iso(),
            "torch_version": torch.__version__,
            **library_versions(device),
            "cell": cfg.get("cell"),  # the campaign cell this run belongs to (lra_sfa.campaign), or null
            "overrides": job_overrides(cfg),  # the overrides it was composed with (a sweep's axes)
        }
        self.device = device
        self.started = time.monotonic()

    def update(self, **fields) -> None:
        self.data.update(fields)

    def set_timing(self, seconds: float, steps: int, batch_size: int, seq_len: int) -> None:
        """Training throughput over the timed steps (tokens include padding)."""
        self.data["train_seconds"] = round(seconds, 4)
        self.data["timed_steps"] = steps
        if seconds > 0 and steps > 0:
            self.data["steps_per_second"] = steps / seconds
            self.data["tokens_per_second"] = steps * batch_size * seq_len / seconds

    def finish(self, status: str, reason: str | None, run_dir: Path, env: dist.DistEnv) -> dict:
        """Set the status, replace NaN/Inf by null, write record.json and the store copy (rank 0); return it.

        A run whose headline numbers (the required fields, the final loss) were NaN or Inf is not ``ok``:
        it becomes ``error`` with a reason naming them. Both copies are attempted even if one fails; then
        an OSError names what failed and what was kept.
        """
        self.data["wall_seconds"] = round(time.monotonic() - self.started, 1)  # this process, set-up included
        if self.data["peak_memory_mb"] is None:
            self.data["peak_memory_mb"] = peak_memory_mb(self.device)
        self.data, replaced = finite_or_null(self.data)
        if replaced:
            self.data["non_finite_fields"] = replaced
            headline = [key for key in replaced if key in REQUIRED_FIELDS or key == "final_train_loss"]
            if status == "ok" and headline:
                status, reason = "error", f"non-finite {', '.join(headline)} (recorded as null)"
        self.data["status"], self.data["reason"] = status, reason
        if env.is_main:
            write_record_copies(self.data, Path(run_dir) / "record.json", self.results_dir)
        return self.data


def write_record_copies(data: dict, run_file: Path, results_dir: str | None) -> list[Path]:
    """Write ``run_file`` and the results-store copy, each attempted whatever befell the other; returns the
    written paths, or raises OSError naming what failed and what was kept."""
    written, failed = [], []
    writers = [(str(run_file), lambda: write_json_atomic(run_file, data))]
    if results_dir:
        writers.append((str(results_dir), lambda: store_record(data, results_dir)))
    for where, write in writers:
        try:
            written.append(write())
        except OSError as exc:
            failed.append(str(exc) if where in str(exc) else f"{where}: {exc}")
    if failed:
        kept = [f"the record in {', '.join(map(str, written))}"] if written else []
        checkpoint = Path(run_file).parent / "checkpoint.pt"
        kept += [f"the checkpoint {checkpoint}"] if checkpoint.is_file() else []
        raise RecordWriteError(f"could not write the run record: {'; '.join(failed)}; kept: "
                               f"{' and '.join(kept) or 'nothing'}")
    return written
