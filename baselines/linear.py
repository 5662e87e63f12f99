"""Linear attention (Katharopoulos et al. 2020) with the elu(x) + 1 feature map.

    phi(x) = elu(x) + 1
    out_i  = phi(q_i) . sum_j phi(k_j) v_j^T  /  phi(q_i) . sum_j phi(k_j)

O(L d^2) time and O(L d) memory, never L x L; the same PyTorch code on CPU
and CUDA (``last_path = "torch"``), sums in float32 (float64 for float64
inputs). Padded keys get zero features, so a fully padded row gives 0.
Causal (``causal``): the sums run over j <= i, by chunked prefix sums
(``_prefix.causal_feature_attention``; ``last_path = "torch+causal"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lra_sfa.attention import AttentionBackend
from lra_sfa.baselines._common import check_inputs, full_precision, working_dtype
from lra_sfa.baselines._prefix import causal_feature_attention


class LinearAttention(AttentionBackend):
    """Kernelised attention with phi = elu + 1 (no arguments)."""

    compile_safe = True  # plain PyTorch ops
    supports_causal = True

    def forward(self, q, k, v, key_padding_mask=None):
        check_inputs(type(self).__name__, q, k, v, key_padding_mask)
        work = working_dtype(q.dtype)
        with full_precision(q.device):
            phi_q = F.elu(q.to(work)) + 1.0  # (B, H, L, D)
            phi_k = F.elu(k.to(work)) + 1.0
            if key_padding_mask is not None:
                phi_k = phi_k * key_padding_mask[:, None, :, None]
            if self.causal:
                out = causal_feature_attention(phi_q, phi_k, v.to(work))  # (B, H, L, Dv)
            else:
                kv = phi_k.transpose(-1, -2) @ v.to(work)  # (B, H, D, Dv)
                den = phi_q @ phi_k.sum(-2)[..., None]  # (B, H, L, 1)
                out = (phi_q @ kv) / den.clamp_min(torch.finfo(work).tiny)
        self.last_path = "torch+causal" if self.causal else "torch"
        return out.to(v.dtype)
