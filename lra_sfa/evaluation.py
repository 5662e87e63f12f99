"""Evaluation: accuracy of a model on a split (class labels or per-position answers), and the task loss.

A class label scores one answer per example; per-position labels (N, L) score every position that is
not ``IGNORE_INDEX`` (MQAR's queries), and the head runs on those positions alone. Accuracy is correct
answers over scored positions, overall and per value of each meta key, merged across ranks.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from lra_sfa import distributed as dist
from lra_sfa.data import eval_batches, to_tensors
from lra_sfa.model import cross_entropy
from lra_sfa.progress import TrainProgress
from lra_sfa.tasks.base import IGNORE_INDEX, Split


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def task_loss(model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on a batch; per-position labels (B, L) count only where asked (not IGNORE_INDEX),
    and the head runs on those positions alone."""
    if labels.dim() == 1:
        return cross_entropy(model(tokens), labels)
    select = labels != IGNORE_INDEX  # (B, L)
    return cross_entropy(model(tokens, select=select), labels[select])


def _batch_hits(model, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the number of correct answers and of scored positions (a class label: 0 or 1, and 1)."""
    if labels.dim() == 1:
        return (model(tokens).argmax(-1) == labels).float(), torch.ones_like(labels, dtype=torch.float32)
    select = labels != IGNORE_INDEX  # (B, L)
    hits = torch.zeros(labels.shape, device=labels.device)
    hits[select] = (model(tokens, select=select).argmax(-1) == labels[select]).float()
    return hits.sum(1), select.sum(1).float()


def _merge_counts(values: np.ndarray, env: dist.DistEnv) -> np.ndarray:
    """Sum per-example counts over ranks (each rank fills only its own examples)."""
    if env.world_size == 1:
        return values
    return dist.sum_across(torch.from_numpy(values).to(env.device), env).cpu().numpy()


@torch.no_grad()
def evaluate(model, split: Split, batch_size: int, device, dtype, env: dist.DistEnv,
             where: dict | None = None, progress: TrainProgress | None = None) -> dict[str, float]:
    """Accuracy on a split (reduced across ranks), plus accuracy per value of each meta key.

    Per-position tasks (labels (N, L)) score every asked position: accuracy is correct answers over
    all asked positions (per-query accuracy), per meta group likewise.

    With ``progress``, the batches show as a bar named after ``where["phase"]``.

    ``model`` is the plain module (not the DDP wrapper): ranks evaluate
    different numbers of batches, so no collective may run inside forward.
    """
    model.eval()
    correct = np.zeros(len(split), dtype=np.float32)  # correct answers per example
    asked = np.zeros(len(split), dtype=np.float32)  # scored positions per example (1 for a class label)
    seen = np.zeros(len(split), dtype=bool)
    batches = eval_batches(len(split), batch_size, env.rank, env.world_size)
    if progress is not None:
        total = math.ceil(len(range(env.rank, len(split), env.world_size)) / batch_size)
        batches = progress.track(batches, total, (where or {}).get("phase", "eval"))
    for indices in batches:
        tokens, labels = to_tensors(split, indices, device)
        if where is not None:
            where["shape"] = list(tokens.shape)
        with autocast(device, dtype):
            hits, count = _batch_hits(model, tokens, labels)
        correct[indices], asked[indices] = hits.cpu().numpy(), count.cpu().numpy()
        seen[indices] = True
    correct, asked, seen = _merge_counts(correct, env), _merge_counts(asked, env), dist.merge_flags(seen, env)
    model.train()
    result = {"accuracy": float(correct[seen].sum() / max(asked[seen].sum(), 1.0))}
    for key, values in split.meta.items():
        result[f"accuracy_by_{key}"] = {
            str(value): float(correct[values == value].sum() / max(asked[values == value].sum(), 1.0))
            for value in np.unique(values)
        }
    return result
