"""Performer (FAVOR+): softmax attention approximated with positive orthogonal random features.

With x' = x / d^(1/4) and rows w_r of an (m, d) projection W,

    phi(x') = m^(-1/2) exp(W x' - |x'|^2 / 2)          (kernel: softmax, FAVOR+)
    phi(x') = relu(W x') + 1e-3                         (kernel: relu, generalized)
    out_i   = phi(q_i) . sum_j phi(k_j) v_j^T  /  phi(q_i) . sum_j phi(k_j)

so E[phi(q) . phi(k)] = exp(q . k / sqrt(d)) for the softmax kernel. W stacks
d x d blocks of orthogonal rows (QR of a Gaussian), each row rescaled by the
norm of a fresh Gaussian vector, so rows keep the Gaussian norm law.
O(L m d) time and O(L m) memory, never L x L; the same PyTorch code on CPU and
CUDA (``last_path = "torch"``); features and sums in float32 (float64 for
float64 inputs).

Stabilisers (they cancel exactly in the ratio): the query row factor
exp(-|q'|^2/2 - max_r w_r.q') and one key factor per (batch, head), the max
over real keys. Padded keys get zero features, so a fully padded row gives 0.

Causal (``causal``): the sums run over j <= i, by chunked prefix sums
(``_prefix.causal_feature_attention``; ``last_path = "torch+causal"``). The
softmax kernel's keys then carry no additive epsilon, so the key factor, a
maximum over every key, later ones included, cancels exactly and no key after
a query changes that query's output beyond rounding (the Performer authors'
causal FAVOR+ keeps the epsilon, through which a later key shifts earlier
outputs at the epsilon's scale).

``redraw_every`` > 0 redraws W every that many training steps (``on_step``),
deterministically from ``seed`` and the step. Defaults: 256 features as in LRA;
LRA's runs used the generalized ReLU kernel (``performer_relu.yaml``).
"""

from __future__ import annotations

import torch

from lra_sfa.attention import AttentionBackend
from lra_sfa.baselines._common import check_inputs, full_precision, working_dtype
from lra_sfa.baselines._prefix import causal_feature_attention

KERNELS = ("softmax", "relu")
RELU_EPS = 1e-3
SOFTMAX_EPS = 1e-6


def orthogonal_features(num_features: int, head_dim: int, generator: torch.Generator) -> torch.Tensor:
    """(num_features, head_dim) rows: orthogonal within each d-block, Gaussian row norms."""
    blocks = []
    for _ in range(-(-num_features // head_dim)):
        gaussian = torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float64)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T)  # rows orthonormal
    rows = torch.cat(blocks, dim=0)[:num_features]  # (m, d)
    norms = torch.randn(num_features, head_dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (rows * norms[:, None]).float()


class PerformerAttention(AttentionBackend):
    """FAVOR+ (softmax kernel) or generalized ReLU-kernel Performer attention."""

    compile_safe = True  # plain PyTorch ops
    supports_causal = True

    def __init__(
        self,
        head_dim: int,
        num_features: int = 256,
        kernel: str = "softmax",
        redraw_every: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"PerformerAttention: kernel={kernel!r} is not one of {KERNELS}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"PerformerAttention: num_features must be an int >= 1, got {num_features!r}")
        if not isinstance(redraw_every, int) or redraw_every < 0:
            raise ValueError(f"PerformerAttention: redraw_every must be an int >= 0 (0 = never), got {redraw_every!r}")
        self.head_dim, self.num_features, self.kernel = head_dim, num_features, kernel
        self.redraw_every, self.seed = redraw_every, seed
        self.redraws = 0
        self.register_buffer("projection", self._draw(0))

    def _draw(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return orthogonal_features(self.num_features, self.head_dim, generator)

    def on_step(self, step: int, max_steps: int) -> None:
        if self.redraw_every and step > 0 and step % self.redraw_every == 0:
            self.projection.copy_(self._draw(step))
            self.redraws += 1

    def stats(self) -> dict[str, float]:
        return {"performer_redraws": float(self.redraws)}

    def _features(self, x: torch.Tensor, is_query: bool, real: torch.Tensor | None) -> torch.Tensor:
        """phi(x): (B, H, L, m) in float32 (float64 for float64 x); ``real`` (B, 1, L, 1) zeroes padded keys."""
        x = x.to(working_dtype(x.dtype)) * self.head_dim**-0.25
        proj = x @ self.projection.T.to(x.dtype)  # (B, H, L, m)
        if self.kernel == "relu":
            feats = torch.relu(proj) + RELU_EPS
        elif is_query:
            feats = torch.exp(proj - proj.amax(-1, keepdim=True).detach()) + SOFTMAX_EPS
        else:
            logits = proj - 0.5 * (x * x).sum(-1, keepdim=True)  # (B, H, L, m)
            masked = logits if real is None else logits.masked_fill(~real, float("-inf"))
            stab = masked.amax(dim=(-1, -2), keepdim=True).detach()  # (B, H, 1, 1)
            stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))
            # exp of the masked logits: a padded key's logit may exceed the real keys' maximum, and its
            # exp would overflow to inf (inf * 0 = NaN where padded keys are zeroed below)
            feats = torch.exp(masked - stab) + (0.0 if self.causal else SOFTMAX_EPS)
        feats = feats * self.num_features**-0.5
        if real is not None and not is_query:
            feats = feats * real
        return feats

    def forward(self, q, k, v, key_padding_mask=None):
        check_inputs(type(self).__name__, q, k, v, key_padding_mask)
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"PerformerAttention: built for head_dim={self.head_dim}, got {q.shape[-1]}")
        real = None if key_padding_mask is None else key_padding_mask[:, None, :, None]  # (B, 1, L, 1)
        with full_precision(q.device):
            phi_q = self._features(q, True, None)  # (B, H, L, m)
            phi_k = self._features(k, False, real)  # (B, H, L, m)
            if self.causal:
                out = causal_feature_attention(phi_q, phi_k, v.to(phi_k.dtype))  # (B, H, L, Dv)
            else:
                kv = phi_k.transpose(-1, -2) @ v.to(phi_k.dtype)  # (B, H, m, Dv)
                k_sum = phi_k.sum(-2)  # (B, H, m)
                num = phi_q @ kv  # (B, H, L, Dv)
                den = (phi_q @ k_sum[..., None]).clamp_min(torch.finfo(phi_q.dtype).tiny)  # (B, H, L, 1)
                out = num / den
        self.last_path = "torch+causal" if self.causal else "torch"
        return out.to(v.dtype)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, num_features={self.num_features}, kernel={self.kernel!r}, "
            f"redraw_every={self.redraw_every}"
        )

