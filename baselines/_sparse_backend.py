"""Base class of the token-sparse backends (windowed, Longformer, BigBird, SFA-window).

A subclass builds a ``SparsePattern`` for a sequence length; this class picks
the engine, caches patterns and FlexAttention block masks, and records the
path that ran in ``last_path``:

* ``impl: auto`` -- "flex" on CUDA for head dims up to 256, else "blocked".
  The choice is a fixed rule, recorded in ``last_path``; nothing is retried
  on failure. FlexAttention's kernels need a power-of-two head dim of at
  least 16; others (LRA Pathfinder's 4) run zero-padded to one, exactly:
  zero features add nothing to q.k, the scale stays 1/sqrt(real head dim),
  and the zero columns of the output are sliced off.
* ``impl: flex`` -- FlexAttention; a clear error on CPU or a head dim above 256.
* ``impl: blocked`` -- the blocked PyTorch engine on any device.
"""

from __future__ import annotations

import math

import torch

from lra_sfa.attention import AttentionBackend
from lra_sfa.baselines._common import check_inputs
from lra_sfa.baselines._engines import (
    FLEX_MAX_HEAD_DIM,
    blocked_attention,
    build_block_mask,
    flex_attention_sparse,
    flex_padded_head_dim,
    flex_supported_head_dim,
)
from lra_sfa.baselines._patterns import SparsePattern

IMPLS = ("auto", "flex", "blocked")


def band_tile(window: int) -> int:
    """Blocked-engine tile for a sliding window: 32 for narrow windows (fewer wasted keys), else 64."""
    return 32 if window <= 32 else 64


class BlockSparseAttention(AttentionBackend):
    """Exact softmax attention restricted to a token-level sparsity pattern."""

    blocked_tile: int = 64  # query/key tile of the blocked engine

    def __init__(self, impl: str = "auto") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"{type(self).__name__}: impl={impl!r} is not one of {IMPLS}")
        self.impl = impl
        self._patterns: dict[tuple[int, str, bool], SparsePattern] = {}
        self._block_masks: dict[tuple[int, str, bool, int], object] = {}

    def make_pattern(self, seq_len: int, device: torch.device) -> SparsePattern:
        raise NotImplementedError

    def prepare_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook to transform q and k before attention (SFA-window sparsifies them)."""
        return q, k

    def pattern(self, seq_len: int, device: torch.device) -> SparsePattern:
        key = (seq_len, str(device), self.causal)
        if key not in self._patterns:
            self._patterns[key] = self.make_pattern(seq_len, device)
        return self._patterns[key]

    def resolve_impl(self, q: torch.Tensor) -> str:
        head_dim = q.shape[-1]
        if self.impl == "auto":
            return "flex" if q.is_cuda and head_dim <= FLEX_MAX_HEAD_DIM else "blocked"
        if self.impl == "flex" and not q.is_cuda:
            raise ValueError(f"{type(self).__name__}: impl='flex' needs CUDA tensors, got {q.device}")
        if self.impl == "flex" and head_dim > FLEX_MAX_HEAD_DIM:
            raise ValueError(
                f"{type(self).__name__}: impl='flex' needs head_dim <= {FLEX_MAX_HEAD_DIM}, got {head_dim}"
            )
        return self.impl

    def unsupported_reasons(self, q, k, v, key_padding_mask=None) -> list[str]:
        reasons = super().unsupported_reasons(q, k, v, key_padding_mask)
        if self.impl == "flex" and not q.is_cuda:
            reasons.append(f"{type(self).__name__}: impl='flex' needs CUDA, got {q.device}")
        if self.impl == "flex" and q.shape[-1] > FLEX_MAX_HEAD_DIM:
            reasons.append(f"{type(self).__name__}: impl='flex' needs head_dim <= {FLEX_MAX_HEAD_DIM}")
        return reasons

    def _block_mask(self, pattern: SparsePattern, key_padding_mask: torch.Tensor | None, batch: int):
        if key_padding_mask is not None:
            return build_block_mask(pattern, key_padding_mask, batch)
        key = (pattern.seq_len, str(pattern.device), pattern.causal, batch)
        if key not in self._block_masks:
            self._block_masks[key] = build_block_mask(pattern, None, batch)
        return self._block_masks[key]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_inputs(type(self).__name__, q, k, v, key_padding_mask)
        B, _, L, D = q.shape
        path = self.resolve_impl(q)
        pattern = self.pattern(L, q.device)
        q, k = self.prepare_qk(q, k)
        scale = 1.0 / math.sqrt(D)
        if path == "flex":
            block_mask = self._block_mask(pattern, key_padding_mask, B)
            if flex_supported_head_dim(D):
                out = flex_attention_sparse(q, k, v, block_mask, scale)
            else:  # zero-padded to a kernel head dim (exact; see the module docstring)
                padding = (0, flex_padded_head_dim(D) - D)
                q, k, v = (torch.nn.functional.pad(t, padding) for t in (q, k, v))  # (B, H, L, P)
                out = flex_attention_sparse(q, k, v, block_mask, scale)[..., :D]  # (B, H, L, D)
        else:
            out = blocked_attention(q, k, v, pattern, self.blocked_tile, key_padding_mask, scale)
        self.last_path = path
        return out

