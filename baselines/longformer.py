"""Longformer attention: a sliding window plus global tokens.

Every query attends keys within ``window`` positions on each side; global
tokens (the CLS position 0 by default) attend every key and are attended by
every query. Exact softmax over that set; memory O(L * window + |G| * L).
CUDA: FlexAttention (band + global block mask, one kernel shared with the
windowed backend); CPU: the blocked engine, global rows computed densely.
Negative positions count from the end.
"""

from __future__ import annotations

import torch

from lra_sfa.baselines._patterns import BandGlobalPattern, SparsePattern
from lra_sfa.baselines._sparse_backend import BlockSparseAttention, band_tile


class LongformerAttention(BlockSparseAttention):
    """Sliding window of ``window`` keys each side plus global token positions."""

    def __init__(
        self, window: int = 256, global_tokens: list[int] | tuple[int, ...] = (0,), impl: str = "auto"
    ) -> None:
        super().__init__(impl)
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"LongformerAttention: window must be an int >= 0 (keys on each side), got {window!r}")
        tokens = list(global_tokens)
        if not all(isinstance(t, int) for t in tokens):
            raise ValueError(
                f"LongformerAttention: global_tokens must be a list of int positions, got {global_tokens!r}"
            )
        self.window = window
        self.blocked_tile = band_tile(window)
        self.global_tokens = tokens

    def make_pattern(self, seq_len: int, device: torch.device) -> SparsePattern:
        return BandGlobalPattern(seq_len, device, radius=self.window, global_tokens=self.global_tokens)

    def extra_repr(self) -> str:
        return f"window={self.window}, global_tokens={self.global_tokens}, impl={self.impl!r}"
