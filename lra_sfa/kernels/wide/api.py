"""Wide-code SFA's functional entry point: the posting-list path (PyTorch) or the Triton kernels."""

from __future__ import annotations

import math

import torch

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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Functional entry point: ``impl`` "posting" (PyTorch) or "triton" (CUDA or TRITON_INTERPRET=1).

    ``scale`` defaults to 1/sqrt(k). Returns (out, stats) with stats
    ``candidates`` (counted query-key pairs), ``incidences_total`` and
    ``incidences_kept`` ((query, key, feature) triples before/after the cap).
    """
    if impl not in IMPLS:
        raise ValueError(f"wide_attention: impl={impl!r} must be one of {IMPLS}")
    scale = 1.0 / math.sqrt(q_idx.shape[-1]) if scale is None else scale
    if impl == "posting":
        return wide_posting_attention(q_idx, q_val, k_idx, k_val, v, num_features, scale, mode, cap, key_padding_mask)
    from lra_sfa.kernels.wide.triton_kernel import wide_triton_attention  # imports triton

    return wide_triton_attention(q_idx, q_val, k_idx, k_val, v, num_features, scale, mode, cap, key_padding_mask)
