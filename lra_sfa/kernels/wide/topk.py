"""The k largest code logits of every token, ``code_topk(z, k) -> indices``, for learned wide codes.

Learned codes rank each token's D logits (D = 1024 to 4096, k = 8 or 16) for q and k in every layer, and
``torch.topk``'s multi-block radix select over such rows was the largest single cost of an MQAR training step
with learned codes; the Triton kernel of ``topk_triton.py`` reads the logits once (``lab.wide_topk_probe``
times the two). ``impl="auto"`` runs the kernel on CUDA where it applies (rows up to ``MAX_WIDTH`` logits, k up
to ``MAX_K``) and ``torch.topk`` elsewhere; ``"triton"`` insists on the kernel (CUDA, or the interpreter under
``TRITON_INTERPRET=1``), ``"torch"`` on PyTorch. Both give the indices largest value first; among equal values
their order may differ (the kernel takes the lower index). Triton is imported only when the kernel runs.
"""

from __future__ import annotations

import torch

IMPLS = ("auto", "triton", "torch")
MAX_WIDTH = 8192  # as topk_triton.MAX_WIDTH, kept here so that dispatch does not import Triton
MAX_K = 32


def code_topk(z: torch.Tensor, k: int, impl: str = "auto") -> torch.Tensor:
    """Indices (..., k) int64 of the k largest logits of z (..., D), largest first; no gradient."""
    if impl not in IMPLS:
        raise ValueError(f"code_topk: impl {impl!r} is not one of {IMPLS}")
    if impl == "auto":
        impl = "triton" if z.is_cuda and z.shape[-1] <= MAX_WIDTH and k <= MAX_K else "torch"
    with torch.no_grad():
        if impl == "torch":
            return torch.topk(z, k, dim=-1).indices
        from lra_sfa.kernels.wide.topk_triton import triton_row_topk

        return triton_row_topk(z, k)
