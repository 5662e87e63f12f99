"""Causal kernelised attention by chunked prefix sums, shared by the linear and Performer backends.

For nonnegative features phi_q, phi_k (B, H, L, F) and values v (B, H, L, Dv):

    out_i = phi_q_i . S_i / phi_q_i . z_i,   S_i = sum_{j <= i} phi_k_j v_j^T,   z_i = sum_{j <= i} phi_k_j

A running S per position would hold L x F x Dv numbers; instead the sequence is
cut into chunks of ``CHUNK`` positions. Within a chunk the pairs j <= i are a
masked (CHUNK, CHUNK) product; across chunks each query adds the exclusive
prefix of the chunks' sums phi_k^T v before it, so memory is
O(L F + (L / CHUNK) F Dv) and time O(L CHUNK F + L F Dv), never L x L.
"""

from __future__ import annotations

import torch

CHUNK = 64  # positions per chunk: the (CHUNK, CHUNK) in-chunk products stay small beside the F x Dv states


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of the entries before each index along ``dim`` (0 at the first), without subtracting."""
    total = x.cumsum(dim)
    shifted = total.narrow(dim, 0, x.shape[dim] - 1)
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), shifted], dim)


def causal_feature_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, L, Dv): each query's kernelised attention over the keys at or before it (module docstring).

    Inputs share one floating dtype; a query whose keys have zero features in total gives 0.
    """
    B, H, L, F = phi_q.shape
    Dv = v.shape[-1]
    pad = -L % CHUNK  # zero rows: a zero key adds nothing, a zero query row is sliced off
    if pad:
        phi_q, phi_k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v))
    N = (L + pad) // CHUNK
    qc = phi_q.reshape(B, H, N, CHUNK, F)
    kc = phi_k.reshape(B, H, N, CHUNK, F)
    vc = v.reshape(B, H, N, CHUNK, Dv)
    scores = (qc @ kc.transpose(-1, -2)).tril()  # (B, H, N, C, C): pairs j <= i inside the chunk
    num = scores @ vc  # (B, H, N, C, Dv)
    den = scores.sum(-1)  # (B, H, N, C)
    states = _exclusive_cumsum(kc.transpose(-1, -2) @ vc, dim=2)  # (B, H, N, F, Dv): the chunks before
    key_sums = _exclusive_cumsum(kc.sum(3), dim=2)  # (B, H, N, F)
    num = num + qc @ states
    den = den + (qc @ key_sums[..., None]).squeeze(-1)
    out = num / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]  # (B, H, N, C, Dv)
    return out.reshape(B, H, N * CHUNK, Dv)[:, :, :L]
