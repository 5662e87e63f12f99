"""Where a run's work goes on CUDA: whether the model is compiled and whether the splits sit on the GPU.

Neither choice changes what is computed; both are recorded (``compiled``, ``data_on_device``).
"""

from __future__ import annotations

import torch

from lra_sfa.data import resident_split, split_bytes
from lra_sfa.model import LRAClassifier
from lra_sfa.recording import RunRecord


def compile_choice(cfg, model: LRAClassifier, device: torch.device, world_size: int) -> bool:
    """trainer.compile: true/false as given; auto compiles on one CUDA device when every backend traces whole
    (``compile_safe``)."""
    return compile_wanted(cfg.trainer.get("compile", False), model, device, world_size, "trainer.compile")


def compile_wanted(choice, model: LRAClassifier, device: torch.device, world_size: int, key: str) -> bool:
    """A compile setting (true, false or auto, at config ``key``) for this model and device; see compile_choice."""
    if choice == "auto":
        return device.type == "cuda" and world_size == 1 and all(
            m.compile_safe for m in model.attention_modules())
    if choice not in (True, False):
        raise ValueError(f"config {key}={choice!r} must be true, false or auto")
    return bool(choice)


def data_on_device(cfg, data, device: torch.device) -> bool:
    """trainer.data_on_device: true/false as given; auto keeps splits on a CUDA device when together they
    take at most a tenth of its memory."""
    choice = cfg.trainer.get("data_on_device", False)
    if choice == "auto":
        if device.type != "cuda":
            return False
        total = sum(split_bytes(split) for split in (data.train, data.val, data.test))
        return total <= torch.cuda.get_device_properties(device).total_memory // 10
    if choice not in (True, False):
        raise ValueError(f"config trainer.data_on_device={choice!r} must be true, false or auto")
    return bool(choice)


def place_data(cfg, data, device: torch.device, record: RunRecord) -> float:
    """Move the splits to the device when ``trainer.data_on_device`` asks for it; returns their MiB there."""
    resident = data_on_device(cfg, data, device)
    record.update(data_on_device=resident)
    if not resident:
        return 0.0
    for name in ("train", "val", "test"):
        setattr(data, name, resident_split(getattr(data, name), device))
    return sum(split_bytes(getattr(data, name)) for name in ("train", "val", "test")) / 2**20
