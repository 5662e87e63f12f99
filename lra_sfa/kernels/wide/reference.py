"""Dense reference for wide-code SFA (tests only: builds (B, H, L, L) tensors).

Wide codes: each query and key token carries ``k`` (feature index, value)
pairs in a space of ``D`` features (``idx``: (B, H, L, k) int64, distinct per
token; ``val``: (B, H, L, k) float). The score of query i and key j is

    s(i, j) = scale * sum over features f shared by i and j of qval(i, f) * kval(j, f)

* ``mode="overlap"``: only pairs sharing at least one feature enter the
  softmax; the rest get -inf (exactly zero weight).
* ``mode="exact"``: every real key enters the softmax; pairs sharing nothing
  score 0 (as in the SFA paper).
* ``cap=C`` (overlap mode only): a pair is a candidate only if key j lies in
  query i's window of the posting list of f*, the smallest feature i and j
  share. The posting list of f holds the real keys with feature f, in
  position order, cut into windows of C entries; i's window is
  ``min(rank // C, last window)`` with ``rank`` = number of keys in the list
  before position i.
* ``capacity=C`` (overlap mode only): each bucket keeps its C highest-valued
  real keys; the other key entries are dropped from the key codes before
  the rule above (``capacity``).
* ``causal``: query i attends keys j <= i only.
* Padding keys (``key_padding_mask`` False) are never attended.
* A query with no candidate (overlap) or no real key (exact) attends to
  itself: its output is its own value row v[i].
"""

from __future__ import annotations

import torch

from lra_sfa.kernels.wide.capacity import bucket_capacity_keep

MODES = ("overlap", "exact")


def dense_codes(idx: torch.Tensor, val: torch.Tensor, num_features: int) -> torch.Tensor:
    """Scatter (B, H, L, k) codes into a dense (B, H, L, D) tensor (differentiable in val)."""
    dense = torch.zeros(*idx.shape[:-1], num_features, dtype=val.dtype, device=val.device)
    return dense.scatter(-1, idx, val)


def _smallest_shared(q_idx: torch.Tensor, k_idx: torch.Tensor, num_features: int) -> torch.Tensor:
    """(B, H, Lq, Lk) smallest shared feature of each pair, ``num_features`` if none."""
    eq = q_idx[:, :, :, None, :, None] == k_idx[:, :, None, :, None, :]  # (B, H, Lq, Lk, k, k)
    feats = q_idx[:, :, :, None, :, None].expand_as(eq)
    return torch.where(eq, feats, num_features).amin(dim=(-1, -2))


def capped_candidates(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    num_features: int,
    cap: int,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, H, Lq, Lk) bool: candidate pairs under ``cap`` (see module docstring)."""
    B, H, L, _ = k_idx.shape
    real = torch.ones(B, L, dtype=torch.bool, device=k_idx.device) if key_padding_mask is None else key_padding_mask
    k_onehot = torch.zeros(B, H, L, num_features, dtype=torch.long, device=k_idx.device)
    k_onehot.scatter_(-1, k_idx, 1)
    k_onehot = k_onehot * real[:, None, :, None]  # (B, H, L, D)
    keys_before = torch.cumsum(k_onehot, dim=2) - k_onehot  # keys with f strictly before position
    list_len = k_onehot.sum(dim=2)  # (B, H, D)
    f_star = _smallest_shared(q_idx, k_idx, num_features)  # (B, H, Lq, Lk)
    shared = f_star < num_features
    f_safe = f_star.clamp(max=num_features - 1)
    rank_q = torch.gather(keys_before, 3, f_safe)  # (B, H, Lq, Lk): rank of position i in list f*
    rank_k = torch.gather(keys_before, 3, f_safe.transpose(2, 3)).transpose(2, 3)  # rank of key j in list f*
    lengths = torch.gather(list_len[:, :, None, :].expand(B, H, L, num_features), 3, f_safe)
    last_window = torch.div(lengths - 1, cap, rounding_mode="floor").clamp(min=0)
    window_q = torch.minimum(torch.div(rank_q, cap, rounding_mode="floor"), last_window)
    window_k = torch.div(rank_k, cap, rounding_mode="floor")
    return shared & (window_q == window_k) & real[:, None, None, :]


def wide_dense_reference(
    q_idx: torch.Tensor,
    q_val: torch.Tensor,
    k_idx: torch.Tensor,
    k_val: torch.Tensor,
    v: torch.Tensor,
    num_features: int,
    scale: float,
    mode: str = "overlap",
    cap: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    capacity: int | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Wide-code attention with an explicit score matrix; returns (B, H, L, dv)."""
    if mode not in MODES:
        raise ValueError(f"wide_dense_reference: mode={mode!r} must be one of {MODES}")
    if cap is not None and capacity is not None:
        raise ValueError(f"wide_dense_reference: cap={cap} and capacity={capacity} exclude each other")
    if (cap is not None or capacity is not None) and mode != "overlap":
        raise ValueError(f"wide_dense_reference: cap={cap}, capacity={capacity} apply to mode='overlap' only, "
                         f"got mode={mode!r}")
    B, H, L, K = q_idx.shape
    keep = torch.ones_like(k_val, dtype=torch.bool)
    if capacity is not None:
        real = None if key_padding_mask is None else key_padding_mask[:, None, :].expand(B, H, L).reshape(B * H, L)
        keep = bucket_capacity_keep(k_idx.reshape(B * H, L, K), k_val.reshape(B * H, L, K), real, num_features,
                                    capacity).view(B, H, L, K)
    qd = dense_codes(q_idx, q_val, num_features)
    kd = dense_codes(k_idx, k_val * keep, num_features)
    scores = (qd @ kd.transpose(-1, -2)) * scale  # (B, H, L, L)
    real = torch.ones(B, L, dtype=torch.bool, device=q_idx.device) if key_padding_mask is None else key_padding_mask
    allowed = real[:, None, None, :].expand(B, H, L, L)
    if mode == "overlap":
        if cap is None:
            ones_q = dense_codes(q_idx, torch.ones_like(q_val), num_features)
            ones_k = dense_codes(k_idx, keep.to(k_val.dtype), num_features)
            shared = (ones_q @ ones_k.transpose(-1, -2)) > 0
        else:
            shared = capped_candidates(q_idx, k_idx, num_features, cap, key_padding_mask)
        allowed = allowed & shared
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=q_idx.device).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    has_any = allowed.any(dim=-1, keepdim=True)  # (B, H, L, 1)
    probs = torch.softmax(scores.masked_fill(~has_any, 0.0), dim=-1)
    out = probs.to(v.dtype) @ v
    return torch.where(has_any, out, v)
