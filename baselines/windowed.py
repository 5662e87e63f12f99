"""Sliding-window (local) attention: query i attends keys j with |i - j| <= window.

Causal (``causal``): keys i - window <= j <= i, the query and the ``window``
keys before it (Zoology's sliding-window attention).

Exact softmax inside the window; memory O(L * window), never L x L. CUDA:
FlexAttention with a band block mask; CPU: the blocked engine
(``_engines.py``). LRA's "Local Attention" used blocks of 50 keys; the default
window of 25 on each side gives each query the same 51-key budget, sliding.
"""

from __future__ import annotations

import torch

from lra_sfa.baselines._patterns import BandGlobalPattern, SparsePattern
from lra_sfa.baselines._sparse_backend import BlockSparseAttention, band_tile


class WindowedAttention(BlockSparseAttention):
    """Local attention over a sliding window of ``window`` keys on each side (before the query, causal)."""

    supports_causal = True

    def __init__(self, window: int = 25, impl: str = "auto") -> None:
        super().__init__(impl)
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"WindowedAttention: window must be an int >= 0 (keys on each side), got {window!r}")
        self.window = window
        self.blocked_tile = band_tile(window)

    def make_pattern(self, seq_len: int, device: torch.device) -> SparsePattern:
        return BandGlobalPattern(seq_len, device, radius=self.window, global_tokens=[], causal=self.causal)

    def extra_repr(self) -> str:
        return f"window={self.window}, impl={self.impl!r}"
