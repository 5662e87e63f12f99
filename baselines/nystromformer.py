"""Nystromformer: softmax attention through the Nystrom approximation with landmarks.

With m landmarks (segment means of q and of k over m equal segments),

    F1 = softmax(Q K~^T s),  A = softmax(Q~ K~^T s),  F3 = softmax(Q~ K^T s + pad)
    out = F1 pinv(A) (F3 V),   s = 1 / sqrt(d)

pinv(A) by the iterative (Newton-Schulz style) scheme of the Nystromformer
paper, ``pinv_iterations`` steps from Z0 = A^T / (max col sum * max row sum).
Landmarks average only real tokens (a segment with none gives a zero
landmark), and F3 masks padded keys, so padding never reaches the output; a
fully padded row gives 0. O(L m) memory, never L x L; m = min(num_landmarks,
L). The same PyTorch code on CPU and CUDA (``last_path = "torch"``), computed in
float32. Not included: the paper's optional depthwise convolution on V.
"""

from __future__ import annotations

import math

import torch

from lra_sfa.attention import AttentionBackend
from lra_sfa.baselines._common import check_inputs, full_precision, masked_softmax_pv, working_dtype


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Approximate Moore-Penrose inverse of a batch of row-stochastic matrices (..., m, m)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    col = a.abs().sum(-2).amax(-1, keepdim=True)[..., None]  # (..., 1, 1)
    row = a.abs().sum(-1).amax(-1, keepdim=True)[..., None]
    z = a.transpose(-1, -2) / (col * row)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(x: torch.Tensor, segments: int, real: torch.Tensor | None) -> torch.Tensor:
    """Means of x over ``segments`` contiguous segments of the length axis, real tokens only.

    x: (B, H, L, D); real: (B, L) bool or None. Returns (B, H, segments, D).
    """
    L = x.shape[2]
    seg = torch.arange(L, device=x.device) * segments // L  # (L,) segment id, sizes differ by <= 1
    weight = torch.ones(x.shape[0], L, dtype=x.dtype, device=x.device) if real is None else real.to(x.dtype)
    sums = torch.zeros(*x.shape[:2], segments, x.shape[3], dtype=x.dtype, device=x.device)
    sums = sums.index_add(2, seg, x * weight[:, None, :, None])
    counts = torch.zeros(x.shape[0], segments, dtype=x.dtype, device=x.device).index_add(1, seg, weight)
    return sums / counts.clamp_min(1.0)[:, None, :, None]


class NystromformerAttention(AttentionBackend):
    """Nystrom-approximated softmax attention with segment-mean landmarks."""

    compile_safe = True  # plain PyTorch ops

    def __init__(self, num_landmarks: int = 64, pinv_iterations: int = 6) -> None:
        super().__init__()
        if not isinstance(num_landmarks, int) or num_landmarks < 1:
            raise ValueError(f"NystromformerAttention: num_landmarks must be an int >= 1, got {num_landmarks!r}")
        if not isinstance(pinv_iterations, int) or pinv_iterations < 1:
            raise ValueError(f"NystromformerAttention: pinv_iterations must be an int >= 1, got {pinv_iterations!r}")
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations

    def forward(self, q, k, v, key_padding_mask=None):
        check_inputs(type(self).__name__, q, k, v, key_padding_mask)
        B, H, L, D = q.shape
        m = min(self.num_landmarks, L)
        scale = 1.0 / math.sqrt(D)
        work = working_dtype(q.dtype)
        with full_precision(q.device):
            qf, kf, vf = q.to(work), k.to(work), v.to(work)
            q_land = segment_means(qf, m, key_padding_mask)  # (B, H, m, D)
            k_land = segment_means(kf, m, key_padding_mask)  # (B, H, m, D)
            kernel_1 = torch.softmax(qf @ k_land.transpose(-1, -2) * scale, dim=-1)  # (B, H, L, m)
            kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2) * scale, dim=-1)  # (B, H, m, m)
            ok = torch.ones(1, 1, 1, L, dtype=torch.bool, device=q.device)
            if key_padding_mask is not None:
                ok = key_padding_mask[:, None, None, :]
            kernel_3v = masked_softmax_pv(q_land @ kf.transpose(-1, -2) * scale, ok, vf)  # (B, H, m, Dv)
            out = kernel_1 @ (iterative_pinv(kernel_2, self.pinv_iterations) @ kernel_3v)
        self.last_path = "torch"
        return out.to(v.dtype)

    def extra_repr(self) -> str:
        return f"num_landmarks={self.num_landmarks}, pinv_iterations={self.pinv_iterations}"
