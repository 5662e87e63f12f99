"""Linformer: keys and values projected along the sequence to ``proj_dim`` rows.

    K' = E K,  V' = F V     (E, F: learned (proj_dim, max_seq_len), shared by heads)
    out = softmax(Q K'^T / sqrt(d)) V'

O(L * proj_dim) time and memory, never L x L. Padded keys and values are
zeroed before the projection, so padding never reaches the output; a
sequence shorter than ``max_seq_len`` uses the first L columns of E and F; a
longer one is an error. The attention over the projected rows is
``scaled_dot_product_attention`` (cuDNN/flash on CUDA, math on CPU;
``last_path = "sdpa"``). E and F start as Xavier-normal. ``share_kv`` uses E
for both. LRA's configs used proj_dim 16 (32 for Text); the default here is
256, the Linformer paper's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lra_sfa.attention import AttentionBackend
from lra_sfa.baselines._common import check_inputs


class LinformerAttention(AttentionBackend):
    """Low-rank (sequence-projected) attention; needs ``max_seq_len``."""

    compile_safe = True  # plain PyTorch ops

    def __init__(self, max_seq_len: int, proj_dim: int = 256, share_kv: bool = False) -> None:
        super().__init__()
        if not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"LinformerAttention: max_seq_len must be an int >= 1, got {max_seq_len!r}")
        if not isinstance(proj_dim, int) or proj_dim < 1:
            raise ValueError(f"LinformerAttention: proj_dim must be an int >= 1, got {proj_dim!r}")
        self.max_seq_len, self.proj_dim, self.share_kv = max_seq_len, proj_dim, share_kv
        std = math.sqrt(2.0 / (max_seq_len + proj_dim))
        self.proj_k = nn.Parameter(torch.randn(proj_dim, max_seq_len) * std)
        self.proj_v = None if share_kv else nn.Parameter(torch.randn(proj_dim, max_seq_len) * std)

    def forward(self, q, k, v, key_padding_mask=None):
        check_inputs(type(self).__name__, q, k, v, key_padding_mask)
        L = q.shape[2]
        if L > self.max_seq_len:
            raise ValueError(f"LinformerAttention: sequence length {L} exceeds max_seq_len={self.max_seq_len}")
        if key_padding_mask is not None:
            real = key_padding_mask[:, None, :, None].to(k.dtype)  # (B, 1, L, 1)
            k, v = k * real, v * real
        proj_k = self.proj_k[:, :L].to(k.dtype)  # (P, L)
        proj_v = proj_k if self.proj_v is None else self.proj_v[:, :L].to(v.dtype)
        k_low = proj_k @ k  # (B, H, P, D)
        v_low = proj_v @ v  # (B, H, P, Dv)
        self.last_path = "sdpa"
        return F.scaled_dot_product_attention(q, k_low, v_low)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, proj_dim={self.proj_dim}, share_kv={self.share_kv}"
