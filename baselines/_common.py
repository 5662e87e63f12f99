"""Helpers shared by the baseline backends: input checks (``check_inputs``) and a masked softmax."""

from __future__ import annotations

import torch

from lra_sfa.kernels import check_qkv as check_inputs  # one validator for kernels and baselines

__all__ = ["check_inputs", "full_precision", "masked_softmax_pv", "working_dtype"]


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
