"""Optimiser and learning-rate schedules (LRA's rsqrt, cosine, linear, constant), all with warmup."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("rsqrt", "cosine", "linear", "constant")


def lr_factor(step: int, schedule: str, warmup_steps: int, max_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at 1-based ``step``.

    rsqrt is the LRA release's schedule: min(1, step / warmup) / sqrt(max(step, warmup)),
    so base lr 0.05 with warmup 1000 peaks at about 1.6e-3.
    """
    step = max(step, 1)
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "rsqrt":
        return warm / math.sqrt(max(step, warmup_steps, 1))
    if schedule == "constant" or step <= warmup_steps:
        return warm
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    raise ValueError(f"trainer.schedule={schedule!r} must be one of {SCHEDULES}")


def build_optimizer(model: torch.nn.Module, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with decoupled weight decay and a LambdaLR following ``lr_factor``."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"trainer.schedule={cfg.schedule!r} must be one of {SCHEDULES}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg.lr), betas=tuple(cfg.betas), eps=float(cfg.eps),
        weight_decay=float(cfg.weight_decay),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda index: lr_factor(index + 1, cfg.schedule, int(cfg.warmup_steps), int(cfg.max_steps)),
    )
    return optimizer, schedule
