"""Posting lists of wide codes (``build_plan``) and the input checks both wide-code paths share.

Per flattened group g = (batch, head): every real key token j contributes one
entry per active feature f; the entries are sorted by (g * D + f, j), giving
one posting list per bucket (g, f) in position order (``key_tok``). Every
query entry (token i, slot t) with feature f gets a key range [lo, hi) in
``key_tok``: the whole list of (g, f), or with ``cap=C`` the
window of C entries that holds i's rank in the list (see ``reference``), or
with ``causal`` the list's keys at positions up to i (a prefix of the list, as
it is in position order).
Key entries with a negative index (``capacity.PRUNED``) are in no list.
The lists are found per query entry, by a table of every bucket's start where
the G * D buckets are no more than the query entries, else by binary search:
with wide codes (D = 131072) almost every bucket is empty, and a pass over all
of them would take much of a training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lra_sfa.kernels.wide.reference import MODES


@dataclass
class WidePlan:
    """Posting lists and per-query-entry key ranges for G groups of L tokens."""

    num_features: int
    groups: int
    length: int
    key_tok: torch.Tensor  # (E,) flat token id (g * L + j) of each posting entry
    key_ent: torch.Tensor  # (E,) flat code entry id ((g * L + j) * k + u) of each posting entry
    list_len: torch.Tensor  # (N * k,) length of query entry tok * k + t's whole bucket list
    entry_lo: torch.Tensor  # (N * k,) first key_tok position for query entry tok * k + t
    entry_hi: torch.Tensor  # (N * k,) one past the last
    key_count: torch.Tensor  # (G,) real keys per group
    full_lo: torch.Tensor  # (N * k,) entry ranges before the cap
    full_hi: torch.Tensor

    @property
    def incidences_total(self) -> torch.Tensor:
        return (self.full_hi - self.full_lo).sum()

    @property
    def incidences_kept(self) -> torch.Tensor:
        return (self.entry_hi - self.entry_lo).sum()


def validate_codes(q_idx, q_val, k_idx, k_val, v, num_features: int, mode: str, cap, key_padding_mask,
                   causal: bool = False) -> None:
    """Raise ValueError naming the bad argument."""
    if mode not in MODES:
        raise ValueError(f"wide attention: mode={mode!r} must be one of {MODES}")
    if causal and (mode != "overlap" or cap is not None):
        raise ValueError(f"wide attention: causal=True needs mode='overlap' and cap=None, got mode={mode!r}, "
                         f"cap={cap!r}")
    if cap is not None and (not isinstance(cap, int) or cap < 1 or mode != "overlap"):
        raise ValueError(f"wide attention: cap={cap!r} must be None or an int >= 1, and only with mode='overlap'")
    if q_idx.dim() != 4 or q_idx.shape != k_idx.shape or q_val.shape != q_idx.shape or k_val.shape != k_idx.shape:
        raise ValueError(
            "wide attention: q_idx, q_val, k_idx, k_val must share one (B, H, L, k) shape; got "
            f"{tuple(q_idx.shape)}, {tuple(q_val.shape)}, {tuple(k_idx.shape)}, {tuple(k_val.shape)}"
        )
    if v.dim() != 4 or v.shape[:3] != q_idx.shape[:3]:
        raise ValueError(f"wide attention: v must be (B, H, L, dv) matching codes {tuple(q_idx.shape[:3])}")
    if q_idx.dtype != torch.int64 or k_idx.dtype != torch.int64:
        raise ValueError(f"wide attention: indices must be int64, got {q_idx.dtype}, {k_idx.dtype}")
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (q_idx.shape[0], q_idx.shape[2])
    ):
        raise ValueError("wide attention: key_padding_mask must be bool (B, L), True = real token")
    if not 1 <= q_idx.shape[-1] <= num_features:
        raise ValueError(f"wide attention: k={q_idx.shape[-1]} must be in 1..D={num_features}")


def build_plan(
    q_idx: torch.Tensor, k_idx: torch.Tensor, key_real: torch.Tensor | None, num_features: int, cap: int | None,
    causal: bool = False,
) -> WidePlan:
    """Posting lists from flattened codes q_idx, k_idx: (G, L, k); key_real: (G, L) bool or None; ``causal``
    (no cap): each query entry's range ends after the last key at or before its position."""
    if causal and cap is not None:
        raise ValueError(f"build_plan: causal=True takes no cap, got cap={cap}")
    G, L, K = k_idx.shape
    dev = k_idx.device
    group = torch.arange(G, device=dev)[:, None, None]
    pos = torch.arange(L, device=dev)[None, :, None]
    key_comp = ((group * num_features + k_idx) * L + pos).reshape(-1)  # (G * L * K,) sort key (bucket, position)
    # an entry dropped by a bucket capacity (capacity.PRUNED, a negative index) sorts after every bucket, so
    # no list holds it; a where, not a boolean index, so the unpadded path stays free of host syncs
    past_all = G * num_features * L
    key_comp = torch.where(k_idx.reshape(-1) >= 0, key_comp, past_all)
    entries = torch.arange(key_comp.numel(), device=dev)
    if key_real is not None:
        real = key_real[:, :, None].expand(G, L, K).reshape(-1)
        key_comp, entries = key_comp[real], entries[real]  # (E,)
    sorted_comp, perm = torch.sort(key_comp)  # (E,)
    key_ent = entries[perm]
    bucket_of = torch.div(sorted_comp, L, rounding_mode="floor")  # (E,) g * D + f
    key_tok = torch.div(bucket_of, num_features, rounding_mode="floor") * L + sorted_comp % L
    key_tok = torch.where(sorted_comp < past_all, key_tok, 0)  # dropped entries: a valid token, never in a range
    q_bucket = (group * num_features + q_idx).reshape(-1)  # (N * K,)
    if G * num_features <= q_bucket.numel():  # each bucket's start, in order, then read by the query entries
        bucket_ptr = torch.searchsorted(sorted_comp, torch.arange(G * num_features + 1, device=dev) * L)
        lo, hi = bucket_ptr[q_bucket], bucket_ptr[q_bucket + 1]
    else:  # most of the G * D buckets are empty: two binary searches per query entry instead
        lo = torch.searchsorted(sorted_comp, q_bucket * L)
        hi = torch.searchsorted(sorted_comp, (q_bucket + 1) * L)
    list_len = hi - lo
    if causal:  # one past the list's last key at a position <= i: part of the definition, not a drop
        q_comp = ((group * num_features + q_idx) * L + pos).reshape(-1)  # (N * K,)
        hi = torch.minimum(hi, torch.searchsorted(sorted_comp, q_comp, right=True))
    full_lo, full_hi = lo, hi
    if cap is not None:
        q_comp = (group * num_features + q_idx) * L + pos  # (G, L, K)
        rank = torch.searchsorted(sorted_comp, q_comp.reshape(-1)) - lo
        last = torch.div(hi - lo - 1, cap, rounding_mode="floor").clamp(min=0)
        window = torch.minimum(torch.div(rank, cap, rounding_mode="floor"), last)
        lo = torch.minimum(lo + window * cap, hi)
        hi = torch.minimum(lo + cap, hi)
    key_count = torch.full((G,), L, device=dev) if key_real is None else key_real.sum(1)
    return WidePlan(num_features, G, L, key_tok, key_ent, list_len, lo, hi, key_count, full_lo, full_hi)
