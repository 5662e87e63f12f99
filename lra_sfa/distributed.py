"""torch.distributed set-up for data-parallel training under torchrun.

NCCL on GPUs, gloo on CPU. Without torchrun's environment this is a single
process and every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto")
        return torch.device("cuda", local_rank)
    if choice != "cpu":
        raise ValueError(f"trainer.device={choice!r} must be one of auto, cuda, cpu")
    return torch.device("cpu")


def setup(device_choice: str) -> DistEnv:
    """Initialise the process group when launched by torchrun; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_choice, local_rank)
    if world_size > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, device)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def merge_flags(flags: np.ndarray, env: DistEnv) -> np.ndarray:
    """Element-wise OR of a bool array across ranks (each rank fills its own examples)."""
    if env.world_size == 1:
        return flags
    tensor = torch.from_numpy(flags.astype(np.uint8)).to(env.device)
    tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
    return tensor.cpu().numpy().astype(bool)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        tdist.barrier()
