"""Optimiser and learning-rate schedules (LRA's rsqrt, cosine, linear, constant), all with warmup."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("rsqrt", "cosine", "linear", "constant")


def lr_factor(index: int, schedule: str, warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate for the optimiser step with 0-based ``index``.

    rsqrt is the LRA release's schedule, read at the 0-based step as the release does:
    min(1, index / warmup) / sqrt(max(index, warmup)), so the first step has lr 0 and base lr 0.05
    with warmup 1000 peaks at about 1.6e-3. The other schedules count steps from 1 (step = index + 1),
    so their first step already has a warmup learning rate.
    """
    if schedule == "rsqrt":
        warm = min(1.0, index / warmup_steps) if warmup_steps > 0 else 1.0
        return warm / math.sqrt(max(index, warmup_steps, 1))
    step = index + 1
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant" or step <= warmup_steps:
        return warm
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    raise ValueError(f"trainer.schedule={schedule!r} must be one of {SCHEDULES}")


def build_optimizer(model: torch.nn.Module, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with decoupled weight decay (the fused kernel on CUDA) and a LambdaLR following ``lr_factor``."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"trainer.schedule={cfg.schedule!r} must be one of {SCHEDULES}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg.lr), betas=tuple(cfg.betas), eps=float(cfg.eps),
        weight_decay=float(cfg.weight_decay), fused=next(model.parameters()).is_cuda,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda index: lr_factor(index, cfg.schedule, int(cfg.warmup_steps), int(cfg.max_steps)),
    )
    return optimizer, schedule
