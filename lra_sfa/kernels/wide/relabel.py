"""Dense feature ids for wide codes whose feature space is too large to index.

The posting path and the Triton kernels index buckets as g * D + f and the kernels keep one row pointer per
bucket (G * D + 1 of them), so D must stay within memory and int32. A code space that grows with the
sequence (``SFAWideAttention``'s ``D_grow_from``: D doubled per doubling of L) reaches D = 2^29 at 1M
tokens, yet a group's queries and keys use at most 2 L k distinct features. ``relabel_features`` renumbers
each group's features 0, 1, ... in increasing order of the original ids. Attention depends only on which
entries share a feature (and on their values), which a per-group one-to-one relabelling keeps; being
increasing, it also keeps every posting list's order and so the kernels' summation order.
"""

from __future__ import annotations

import torch


def relabel_features(q_idx: torch.Tensor, k_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Feature ids (B, H, L, k) of queries and keys, renumbered per (batch, head) group to 0..n_g - 1 in
    increasing order of the originals, jointly for q and k (a query and a key share a new id exactly where
    they shared an old one). Returns (q_idx, k_idx, num_features) with num_features = max over groups of n_g,
    the feature space the attention paths then index."""
    if q_idx.shape != k_idx.shape or q_idx.dim() != 4:
        raise ValueError(f"relabel_features: q_idx and k_idx must share one (B, H, L, k) shape, got "
                         f"{tuple(q_idx.shape)} and {tuple(k_idx.shape)}")
    B, H, L, K = q_idx.shape
    both = torch.cat([q_idx.reshape(B * H, L * K), k_idx.reshape(B * H, L * K)], dim=1)  # (G, 2 L k)
    ordered, order = torch.sort(both, dim=1)
    starts = torch.ones_like(ordered, dtype=torch.long)
    starts[:, 0] = 0
    starts[:, 1:] = (ordered[:, 1:] != ordered[:, :-1]).long()  # 1 where a new id begins
    rank = torch.cumsum(starts, dim=1)  # (G, 2 L k) new id of each sorted entry
    relabelled = torch.empty_like(rank).scatter_(1, order, rank)
    num_features = int(rank[:, -1].max()) + 1 if rank.numel() else 1
    q_new, k_new = relabelled.split(L * K, dim=1)
    return q_new.reshape(B, H, L, K), k_new.reshape(B, H, L, K), num_features
