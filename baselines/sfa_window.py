"""SFA restricted to a sliding window: feature sparsity composed with token sparsity.

q and k are cut to their ``topk`` (``topk_k`` for k) largest-magnitude
features by the SFA sparsifier (``lra_sfa.kernels.sfa.reference.sparsify``: signs
kept, gradient masked to the kept support, scale 1/sqrt(full head dim)); then
exact windowed attention runs on the sparse codes. Exactness as in SFA: a
pair inside the window with no shared feature scores 0 (not -inf) and still
takes part in the softmax; pairs outside the window are excluded.

Same engines as ``windowed`` (FlexAttention on CUDA, sharing its compiled
kernel; blocked PyTorch on CPU). The top-k is ``torch.topk``, a sizeable
share of the forward on the GPU (results/kernels/NOTES.md). Defaults: k/d = 1/8 at head_dim 64 (the SFA
paper's choice), window as ``longformer``.
"""

from __future__ import annotations

import torch

from lra_sfa.baselines._patterns import BandGlobalPattern, SparsePattern
from lra_sfa.baselines._sparse_backend import BlockSparseAttention, band_tile
from lra_sfa.kernels.sfa.reference import sparsify


class SFAWindowAttention(BlockSparseAttention):
    """Sparse Feature Attention inside a sliding window of ``window`` keys each side."""

    def __init__(self, topk: int = 8, topk_k: int | None = None, window: int = 256, impl: str = "auto") -> None:
        super().__init__(impl)
        for name, value in (("topk", topk), ("topk_k", topk if topk_k is None else topk_k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SFAWindowAttention: {name} must be an int >= 1, got {value!r}")
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"SFAWindowAttention: window must be an int >= 0 (keys on each side), got {window!r}")
        self.topk = topk
        self.topk_k = topk if topk_k is None else topk_k
        self.window = window
        self.blocked_tile = band_tile(window)

    def make_pattern(self, seq_len: int, device: torch.device) -> SparsePattern:
        return BandGlobalPattern(seq_len, device, radius=self.window, global_tokens=[])

    def prepare_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head_dim = q.shape[-1]
        if self.topk > head_dim or self.topk_k > head_dim:
            raise ValueError(
                f"SFAWindowAttention: topk={self.topk}, topk_k={self.topk_k} must be <= head_dim={head_dim}"
            )
        return sparsify(q, self.topk), sparsify(k, self.topk_k)

    def extra_repr(self) -> str:
        return f"topk={self.topk}, topk_k={self.topk_k}, window={self.window}, impl={self.impl!r}"
