"""Bucket capacity for wide codes: each bucket keeps only its C highest-valued keys.

A bucket (g, f) is the posting list of feature f in group g. With ``capacity=C``
a real key j keeps its entry (j, f) only if its value kval(j, f) is among the
C largest of the bucket's real keys (ties: the earlier position first); the
other entries are dropped from the key's code for every query. Attention is
then the exact-overlap rule of ``reference`` on the pruned key codes:

* every query meets at most k * C keys (at most C per feature it holds),
  whatever the codes: the work is bounded by construction;
* a pair's score sums only its kept shared features, and a pair with no kept
  shared feature is not a candidate;
* with no bucket above C nothing changes (the plain exact-overlap result).

Why by value: a query's score contribution from a shared feature f is
qval(i, f) * kval(j, f), and qval(i, f) is the same for every key of the bucket,
so the C highest-valued keys are the C highest-scoring members of the bucket
for every query with qval(i, f) > 0 (always for SimHash codes, whose values are
bucket logits >= 0; learned codes keep their k largest logits, positive in
practice). Dropping the lowest-scoring members removes the smallest softmax
terms instead of random or distant ones (a positional window, ``cap``), in the
spirit of expert-choice routing (each expert picks its top tokens) rather than
token-order capacity dropping. Queries are never pruned: a query in a crowded
bucket still sees the bucket's C best keys.

Dropped key entries are marked ``PRUNED`` in the index tensor handed to the
attention paths: ``plan.build_plan`` puts them in no posting list and no query
index equals it, so the posting path and the Triton kernels compute the pruned
rule unchanged.
"""

from __future__ import annotations

import math

import torch

PRUNED = -3  # index of a dropped key entry: below every feature id and the kernels' masked-load fills (-1, -2)


def capacity_for(length: int, k: int, num_features: int, factor: float) -> int:
    """Per-bucket capacity: ``factor`` times the mean keys per bucket of isotropic codes, L k / D, rounded to
    the nearest int and at least 1: a query meets at most k C <= factor x L k^2 / D + k / 2 keys (k where C is
    held at 1). Rounded, not ceiled: a CLS token makes L = 2^n + 1, whose ceil would double C."""
    return max(1, math.floor(factor * length * k / num_features + 0.5))


def bucket_capacity_keep(k_idx: torch.Tensor, k_val: torch.Tensor, key_real: torch.Tensor | None,
                         num_features: int, capacity: int) -> torch.Tensor:
    """(G, L, k) bool: which key entries survive ``capacity`` (module docstring); k_idx, k_val: (G, L, k),
    key_real: (G, L) bool or None. Padding keys are never kept."""
    G, L, K = k_idx.shape
    dev = k_idx.device
    bucket = (torch.arange(G, device=dev)[:, None, None] * num_features + k_idx).reshape(-1)  # (G * L * K,)
    if key_real is not None:  # padding entries go to a bucket past every real one
        real = key_real[:, :, None].expand(G, L, K).reshape(-1)
        bucket = torch.where(real, bucket, G * num_features)
    by_value = torch.argsort(-k_val.detach().float().reshape(-1), stable=True)  # ties: the earlier entry first
    order = by_value[torch.argsort(bucket[by_value], stable=True)]  # by bucket, then value descending
    sorted_bucket = bucket[order]
    rank = torch.arange(order.numel(), device=dev) - torch.searchsorted(sorted_bucket, sorted_bucket)
    keep = torch.empty_like(rank, dtype=torch.bool)
    keep[order] = (rank < capacity) & (sorted_bucket < G * num_features)
    return keep.view(G, L, K)


def apply_capacity(q_idx: torch.Tensor, k_idx: torch.Tensor, k_val: torch.Tensor, key_real: torch.Tensor | None,
                   num_features: int, capacity: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pruned key indices (G, L, k) (dropped entries = PRUNED) and what the capacity dropped:
    ``incidences_total`` ((query, key, feature) triples before it), ``key_entries_total`` and
    ``key_entries_kept`` (real key entries before and after it)."""
    G = k_idx.shape[0]
    keep = bucket_capacity_keep(k_idx, k_val, key_real, num_features, capacity)
    group = torch.arange(G, device=k_idx.device)[:, None, None] * num_features
    real_keys = k_idx + group if key_real is None else torch.where(key_real[:, :, None], k_idx + group, -1)
    listed = torch.sort(real_keys.reshape(-1)).values  # every real key entry's bucket, sorted
    q_bucket = (q_idx + group).reshape(-1)
    sizes = torch.searchsorted(listed, q_bucket, right=True) - torch.searchsorted(listed, q_bucket)
    entries = k_idx.numel() if key_real is None else int(key_real.sum()) * k_idx.shape[-1]
    stats = {"incidences_total": sizes.sum(), "key_entries_total": torch.tensor(entries, device=k_idx.device),
             "key_entries_kept": keep.sum()}
    return torch.where(keep, k_idx, PRUNED), stats
