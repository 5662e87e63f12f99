"""Wide-code SFA's functional entry point: the posting-list path (PyTorch) or the Triton kernels."""

from __future__ import annotations

import math

import torch

from lra_sfa.kernels.wide.capacity import apply_capacity
from lra_sfa.kernels.wide.posting import wide_posting_attention

IMPLS = ("posting", "triton")


def wide_attention(
    q_idx: torch.Tensor,
    q_val: torch.Tensor,
    k_idx: torch.Tensor,
    k_val: torch.Tensor,
    v: torch.Tensor,
    num_features: int,
    scale: float | None = None,
    mode: str = "overlap",
    cap: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    impl: str = "posting",
    capacity: int | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Functional entry point: ``impl`` "posting" (PyTorch) or "triton" (CUDA or TRITON_INTERPRET=1).

    ``scale`` defaults to 1/sqrt(k). Returns (out, stats) with stats
    ``candidates`` (counted query-key pairs), ``incidences_total`` and
    ``incidences_kept`` ((query, key, feature) triples before/after the cap or capacity).

    ``capacity=C`` (overlap mode, no ``cap``): each bucket keeps its C highest-valued keys
    (``capacity``); stats then also hold ``key_entries_total`` and ``key_entries_kept``.
    ``causal`` (overlap mode, no ``cap``, no ``capacity``, whose choice of keys would depend on later
    ones): query i attends keys j <= i only.
    """
    if impl not in IMPLS:
        raise ValueError(f"wide_attention: impl={impl!r} must be one of {IMPLS}")
    scale = 1.0 / math.sqrt(q_idx.shape[-1]) if scale is None else scale
    dropped = {}
    if capacity is not None:
        if not isinstance(capacity, int) or capacity < 1 or mode != "overlap" or cap is not None:
            raise ValueError(f"wide_attention: capacity={capacity!r} must be an int >= 1, with mode='overlap' and "
                             f"cap=None (got mode={mode!r}, cap={cap!r})")
        if causal:
            raise ValueError(f"wide_attention: causal=True takes no capacity (a bucket's kept keys would depend "
                             f"on later keys), got capacity={capacity}")
        k_idx, dropped = _pruned_keys(q_idx, k_idx, k_val, key_padding_mask, num_features, capacity)
    if impl == "posting":
        out, stats = wide_posting_attention(q_idx, q_val, k_idx, k_val, v, num_features, scale, mode, cap,
                                            key_padding_mask, causal=causal)
    else:
        from lra_sfa.kernels.wide.triton_kernel import wide_triton_attention  # imports triton

        out, stats = wide_triton_attention(q_idx, q_val, k_idx, k_val, v, num_features, scale, mode, cap,
                                           key_padding_mask, causal=causal)
    return out, {**stats, **dropped}


def _pruned_keys(q_idx, k_idx, k_val, key_padding_mask, num_features: int, capacity: int):
    """(B, H, L, k) key indices with the entries over capacity marked PRUNED, and the capacity's stats."""
    if q_idx.dim() != 4 or k_idx.shape != q_idx.shape or k_val.shape != k_idx.shape:
        raise ValueError(f"wide_attention: q_idx, k_idx, k_val must share one (B, H, L, k) shape; got "
                         f"{tuple(q_idx.shape)}, {tuple(k_idx.shape)}, {tuple(k_val.shape)}")
    B, H, L, K = k_idx.shape
    real = None if key_padding_mask is None else key_padding_mask[:, None, :].expand(B, H, L).reshape(B * H, L)
    pruned, stats = apply_capacity(q_idx.reshape(B * H, L, K), k_idx.reshape(B * H, L, K),
                                   k_val.reshape(B * H, L, K), real, num_features, capacity)  # (G, L, K)
    return pruned.view(B, H, L, K), stats
