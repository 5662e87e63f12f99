"""Helpers shared by the baseline backends: input checks and a masked softmax."""

from __future__ import annotations

import torch


def check_inputs(name: str, q, k, v, key_padding_mask) -> None:
    """Raise a ValueError naming the backend on misshapen q, k, v or mask."""
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name}: q, k, v must be (batch, heads, length, head_dim) with equal batch/heads/length; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_padding_mask is not None:
        expected = (q.shape[0], q.shape[2])
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"{name}: key_padding_mask must be bool of shape (batch, length)={expected} with True = real "
                f"token; got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, else the dtype itself (float64 references stay float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def masked_softmax_pv(scores: torch.Tensor, ok: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim restricted to ``ok``, times v; all-masked rows give 0, never NaN."""
    s = scores.to(working_dtype(scores.dtype)).masked_fill(~ok, float("-inf"))
    row_max = s.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(s - row_max)
    p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return p.to(v.dtype) @ v


def full_precision(device: torch.device):
    """Context that turns autocast off, for backends whose sums must stay in float32 under bf16 autocast."""
    return torch.autocast(device_type=device.type, enabled=False)
