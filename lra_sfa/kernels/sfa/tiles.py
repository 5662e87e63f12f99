"""Tensor layouts the FlashSFA kernels read: aligned rows, TMA descriptors, padded rows, the key-code range.

Host-side helpers shared by the Triton and Gluon launchers (no kernels here).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from lra_sfa.kernels.sfa.triton_bwd import ROW_PAD


def aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """Contiguous, 16-byte aligned view of x (copies only when needed, e.g. a strided slice)."""
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


class KeyPadding(NamedTuple):
    """What the kernels read of a key padding mask: ``bias`` (B, L) fp32, 0 for real tokens and -inf for
    padding, and ``key_end`` (B,) int32, one past each sequence's last real key (0 when it has none). Key tiles
    from ``key_end`` on hold padding only, so the Triton kernels stop their key loops there (and skip those
    key blocks in dK/dV); padding before it is masked by the bias. Without a mask both are 1-element dummies
    the kernels never read."""
    bias: torch.Tensor
    key_end: torch.Tensor


def key_padding(key_padding_mask: torch.Tensor | None, device: torch.device) -> KeyPadding:
    """The kernels' ``KeyPadding`` of a (B, L) bool mask (True = real token), or dummies for None."""
    if key_padding_mask is None:
        return KeyPadding(torch.zeros(1, dtype=torch.float32, device=device),
                          torch.zeros(1, dtype=torch.int32, device=device))
    mask = key_padding_mask.to(device)
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=device).masked_fill_(~mask, float("-inf"))
    positions = torch.arange(1, mask.shape[1] + 1, dtype=torch.int32, device=device)  # (L,)
    key_end = torch.where(mask, positions, 0).amax(dim=1).to(torch.int32)  # (B,)
    return KeyPadding(bias, key_end)


def tile_descriptor(x: torch.Tensor, rows: int) -> TensorDescriptor:
    """TMA descriptor over a (B*H, L, D) tensor, ``rows`` rows at a time (configs reset the block shape)."""
    batch_heads, length, head_dim = x.shape
    return TensorDescriptor(x, [batch_heads, length, head_dim], [length * head_dim, head_dim, 1], [1, rows, head_dim])


def row_descriptor(x: torch.Tensor) -> TensorDescriptor:
    """TMA descriptor over a (B*H, L_PAD) fp32 tensor, one row block at a time (the block set by the config)."""
    batch_heads, length = x.shape
    return TensorDescriptor(x, [batch_heads, length], [length, 1], [1, 16])


def pad_rows(x: torch.Tensor, value: float) -> torch.Tensor:
    """(B*H, L) fp32 -> (B*H, L_PAD) with L_PAD a multiple of ``ROW_PAD``, ``value`` in the padding: the layout
    the backward kernels read lse2 (padded with +inf) and delta (with 0) in, without masks."""
    length = x.shape[1]
    return torch.nn.functional.pad(x, (0, triton.cdiv(length, ROW_PAD) * ROW_PAD - length), value=value)


def check_key_range(name: str, key_range: torch.Tensor, kd: torch.Tensor) -> None:
    """Raise ValueError naming ``name`` unless key_range is a (B*H, 2, D) fp32 contiguous tensor on kd's device."""
    expected = (kd.shape[0], 2, kd.shape[-1])
    if (tuple(key_range.shape) != expected or key_range.dtype != torch.float32 or not key_range.is_contiguous()
            or key_range.device != kd.device):
        raise ValueError(f"{name}: key_range must be a contiguous float32 tensor of shape {expected} on {kd.device} "
                         f"(topk_pack(k, topk, key_range=True) or key_code_range(kd)); got {key_range.dtype} "
                         f"{tuple(key_range.shape)} on {key_range.device}")


def key_code_range(kd: torch.Tensor) -> torch.Tensor:
    """(B*H, 2, D) fp32: per batch*head the column-wise max (row 0) and min (row 1) of the key codes kd (B*H, L, D).

    The forward's BOUNDED configs turn it into a per-query upper bound on the
    scores, so they can skip the online softmax's running max and rescaling.
    A second pass over kd: FlashSFA takes the same range from ``topk_pack(k,
    topk, key_range=True)`` instead; this is the reference, and the fallback for
    callers that pass kd alone.
    """
    kmin, kmax = torch.aminmax(kd, dim=1)  # (B*H, D) each
    return torch.stack((kmax, kmin), dim=1).float()
