"""Batching for the explicit training loop: shuffled epochs with a resumable position.

Arrays stay numpy (possibly memory-mapped, narrow integer dtypes); a batch is
gathered and converted to int64 tensors on the training device. A split small
enough to sit on the GPU (``resident_split``) is copied there once in its
narrow dtype and batches are gathered on the device: no host copy per step. The sampler's
state (epoch, position) is saved in checkpoints so that a resumed run sees the
same batches as an uninterrupted one. Under data parallelism each rank takes
a disjoint strided shard of every global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from lra_sfa.tasks.base import Split


class EpochSampler:
    """Yields index batches of ``batch_size`` from shuffled epochs (drops the ragged tail)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or batch_size > num_examples:
            raise ValueError(
                f"trainer.batch_size={batch_size} must be between 1 and the training set size {num_examples}"
            )
        if batch_size % world_size:
            raise ValueError(f"trainer.batch_size={batch_size} (global) must be divisible by world size {world_size}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng((self.seed, self.epoch)).permutation(self.num_examples)

    def next_indices(self) -> np.ndarray:
        """The next global batch's indices for this rank, (batch_size // world_size,)."""
        if self.position + self.batch_size > self.num_examples:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return np.sort(batch[self.rank :: self.world_size])  # sorted: friendlier to memory-mapped reads

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def resident_split(split: Split, device: torch.device) -> Split:
    """``split`` with inputs and labels as tensors on ``device`` (narrow dtypes kept; meta stays numpy)."""

    def on_device(array: np.ndarray) -> torch.Tensor:
        array = np.ascontiguousarray(array)
        if array.dtype.kind == "u" and array.dtype != np.uint8:  # torch indexes few unsigned types
            array = array.astype(np.int64)
        return torch.from_numpy(array).to(device)

    return Split(on_device(split.inputs), on_device(split.labels), split.meta)


def split_bytes(split: Split) -> int:
    return int(split.inputs.nbytes + split.labels.nbytes)


def to_tensors(split: Split, indices: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather examples and move them to ``device`` as int64 (tokens, labels)."""
    if isinstance(split.inputs, torch.Tensor):  # resident on the device already
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(split.inputs.device)
        return split.inputs[index].long(), split.labels[index].long()
    tokens = torch.from_numpy(np.ascontiguousarray(split.inputs[indices]).astype(np.int64))
    labels = torch.from_numpy(np.asarray(split.labels[indices], dtype=np.int64))
    if device.type == "cuda":
        tokens, labels = tokens.pin_memory(), labels.pin_memory()
    return tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def eval_batches(num_examples: int, batch_size: int, rank: int = 0, world_size: int = 1):
    """Contiguous index batches covering this rank's share of a split exactly once."""
    indices = np.arange(rank, num_examples, world_size)
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]
