"""A CPU run that clearly cannot fit in memory is refused before training, with its shape.

On the CPU an allocation beyond the machine's memory is not an exception:
the kernel's OOM killer ends the process with no message and no record. For
backends that build dense (batch, heads, L, L) scores (``score_matrices`` >
0 on the class) the training step's score memory is known in advance:
``(layers x score_matrices + 2) x batch x heads x L x L x itemsize``: the
tensors kept for backward, plus the layer being computed (its matmul output,
or in backward the scores' gradient); evaluation, without autograd, holds
two per batch. When that lower bound alone
exceeds the memory available now, the run is recorded as ``oom`` before the
data is loaded. Backends that never build the L x L scores declare 0 and are
never refused here.
"""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from lra_sfa.attention import AttentionBackend


def available_bytes() -> int | None:
    """Memory available to a new allocation (MemAvailable of /proc/meminfo; free pages elsewhere), or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def score_bytes(backend: AttentionBackend, cfg: DictConfig, dtype: torch.dtype, world_size: int = 1
                ) -> tuple[int, list[int]]:
    """Bytes of dense scores a training step (or an evaluation batch, if larger) holds, and the step's shape."""
    heads, layers, length = int(cfg.model.num_heads), int(cfg.model.num_layers), int(cfg.task.seq_len)
    batch = max(1, int(cfg.trainer.batch_size) // world_size)
    eval_batch = max(1, int(cfg.trainer.eval_batch_size or cfg.trainer.batch_size) // world_size)
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_matrix = heads * length * length * itemsize
    train = (layers * backend.score_matrices + 2) * batch * per_matrix  # kept for backward + the live layer's
    evaluation = 2 * eval_batch * per_matrix  # no autograd: one layer's scores and softmax at a time
    return max(train, evaluation), [batch, heads, length, length]


def cpu_refusal(backend: AttentionBackend, cfg: DictConfig, device: torch.device, dtype: torch.dtype,
                world_size: int = 1) -> tuple[str, dict] | None:
    """(reason, record fields) when a CPU run's dense scores alone exceed the available memory, else None."""
    if device.type != "cpu" or backend.score_matrices <= 0:
        return None
    available = available_bytes()
    needed, shape = score_bytes(backend, cfg, dtype, world_size)
    if available is None or needed <= available:
        return None
    name = type(backend).__name__
    reason = (f"CPU out of memory (estimated before training): {name} keeps {backend.score_matrices} score "
              f"tensors of shape (batch, heads, L, L) = {tuple(shape)} in {str(dtype).replace('torch.', '')} per "
              f"layer x {int(cfg.model.num_layers)} layers, at least {needed / 2**30:.1f} GiB, more than the "
              f"{available / 2**30:.1f} GiB available; lower trainer.batch_size or task.seq_len, or use a GPU")
    fields = {"oom_phase": "memory estimate", "oom_shape": shape, "estimated_memory_mb": round(needed / 2**20),
              "available_memory_mb": round(available / 2**20)}
    return reason, fields
