"""torch.distributed set-up for data-parallel training under torchrun (or a multi-task submitit job).

NCCL on GPUs, gloo on CPU. Without torchrun's environment this is a single
process and every helper is a no-op. Every collective here is called by all
ranks at the same point of the loop; the decisions that steer the loop (the
logged loss, divergence, the time budget, the best validation step) are made
from reduced values, so the ranks never disagree about what to do next.
"""

from __future__ import annotations

import copy
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
    owns_group: bool = False  # this process initialised the process group (and destroys it)

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


def _export_submitit_env() -> None:
    """A submitit SLURM job with several tasks: export torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(device_choice: str) -> DistEnv:
    """Initialise the process group when launched by torchrun; pick this rank's device."""
    _export_submitit_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_choice, local_rank)
    owns_group = False
    if world_size > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns_group = True
    return DistEnv(rank, world_size, device, owns_group)


def teardown(env: DistEnv) -> None:
    """Destroy the process group this run created (torchrun warns about one left open)."""
    if env.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def unused_parameters(model: torch.nn.Module, tokens: torch.Tensor) -> list[str]:
    """Names of trainable parameters that get no gradient from one step (forward + extra losses).

    Probed on a copy, under a forked RNG, so the real model, its attention
    modules' state and the random streams are untouched. DDP needs
    ``find_unused_parameters=True`` exactly when this is not empty.
    """
    probe = copy.deepcopy(model)
    devices = [tokens.device.index] if tokens.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        loss = probe(tokens).float().sum()
        extras = [t for t in (m.extra_loss() for m in probe.attention_modules()) if t is not None]
        (loss + sum(extras) if extras else loss).backward()
    names = [name for name, p in probe.named_parameters() if p.requires_grad and p.grad is None]
    del probe
    return names


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def merge_flags(flags: np.ndarray, env: DistEnv) -> np.ndarray:
    """Element-wise OR of a bool array across ranks (each rank fills its own examples)."""
    if env.world_size == 1:
        return flags
    tensor = torch.from_numpy(flags.astype(np.uint8)).to(env.device)
    tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
    return tensor.cpu().numpy().astype(bool)


def sum_across(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Element-wise sum of a float tensor over ranks (a copy; the input is untouched)."""
    values = values.detach().clone().float()
    if env.world_size > 1:
        tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    return values


def max_across(value: float, env: DistEnv) -> float:
    if env.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=env.device)
    tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
    return float(tensor.item())


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if env.world_size == 1:
        return [obj]
    gathered = [None] * env.world_size
    tdist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every rank."""
    if env.world_size == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        tdist.barrier()
