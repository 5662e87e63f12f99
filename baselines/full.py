"""Full softmax attention through torch SDPA, with a choice of kernel for padded batches.

Without a key padding mask, SDPA picks cuDNN or FlashAttention on a GPU and
its fused or math kernel on the CPU: ``last_path`` "sdpa".

With a key padding mask, ``padded_path`` chooses the engine (all exact, all
equal; ``baselines/_padded.py`` describes them):

* ``varlen`` -- FlashAttention's variable-length kernel over the real keys
  only (CUDA, fp16/bf16, head dim up to 256, sm80 or newer): "varlen".
* ``flex`` -- FlexAttention with a padding block mask that skips key tiles
  holding only padding (CUDA): "flex+padding".
* ``sdpa_mask`` -- SDPA with a boolean mask, which visits every key tile and
  rules out the FlashAttention kernel; any device: "sdpa+mask".
* ``auto`` -- ``varlen`` where it can run, else ``sdpa_mask`` (the CPU, fp32).
  ``varlen`` is the default fast path because it skips padded keys exactly
  (no partially padded tiles) with a fixed CUDA kernel that needs no
  compilation or autotuning, and its packing has static shapes, so
  torch.compile traces it whole. The rule is fixed and recorded in
  ``last_path``; nothing is retried on failure.

Causal (``causal`` set by ``model.causal``): without a mask SDPA's own causal
kernels ("sdpa+causal"); with one, SDPA with the padding and the causal
triangle as one boolean mask ("sdpa+mask+causal"), any device. A query with no
real key at or before it gives 0.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lra_sfa.attention import AttentionBackend
from lra_sfa.baselines._engines import FLEX_MAX_HEAD_DIM
from lra_sfa.baselines._padded import (
    FLASH_DTYPES,
    FLASH_MAX_HEAD_DIM,
    flex_padded,
    sdpa_masked,
    varlen_attention,
)

PADDED_PATHS = ("auto", "flex", "sdpa_mask", "varlen")
AUTO_PATH = "varlen"  # what auto picks where it can run
PATH_LABELS = {"flex": "flex+padding", "sdpa_mask": "sdpa+mask", "varlen": "varlen"}


@torch.compiler.assume_constant_result
def _capability(device_index: int) -> int:
    """The CUDA device's compute capability as major * 10 + minor (a constant to torch.compile)."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return major * 10 + minor


def path_reasons(path: str, q: torch.Tensor) -> list[str]:
    """Why the padded-batch engine ``path`` cannot run inputs like ``q``; empty when it can."""
    where = f"attn full: padded_path={path}"
    if path == "sdpa_mask":
        return []
    if not q.is_cuda:
        return [f"{where} needs CUDA tensors, got {q.device}"]
    head_dim = q.shape[-1]
    if path == "flex":
        return [f"{where} takes head_dim up to {FLEX_MAX_HEAD_DIM}, got {head_dim}"] if (
            head_dim > FLEX_MAX_HEAD_DIM) else []
    reasons = []
    if q.dtype not in FLASH_DTYPES:
        reasons.append(f"{where} takes dtypes {FLASH_DTYPES}, got {q.dtype}")
    if head_dim > FLASH_MAX_HEAD_DIM:
        reasons.append(f"{where} takes head_dim up to {FLASH_MAX_HEAD_DIM}, got {head_dim}")
    if _capability(q.device.index if q.device.index is not None else torch.cuda.current_device()) < 80:
        reasons.append(f"{where} needs an sm80 or newer GPU (FlashAttention 2)")
    return reasons


class FullAttention(AttentionBackend):
    """softmax(q k^T / sqrt(d)) v over all real keys.

    padded_path: the engine for a batch with a key padding mask, one of
    ``PADDED_PATHS`` (see the module docstring).
    """

    compile_safe = True  # plain PyTorch ops, aten's flash kernel and FlexAttention: each traces whole
    supports_causal = True

    def __init__(self, padded_path: str = "auto") -> None:
        super().__init__()
        if padded_path not in PADDED_PATHS:
            raise ValueError(f"attn full: padded_path={padded_path!r} must be one of {PADDED_PATHS}")
        self.padded_path = padded_path

    def resolve_path(self, q: torch.Tensor) -> str:
        """The engine a padded batch like ``q`` runs on (a fixed rule; see the module docstring)."""
        if self.padded_path == "auto":
            return AUTO_PATH if not path_reasons(AUTO_PATH, q) else "sdpa_mask"
        reasons = path_reasons(self.padded_path, q)
        if reasons:
            raise ValueError("; ".join(reasons))
        return self.padded_path

    def unsupported_reasons(self, q, k, v, key_padding_mask=None) -> list[str]:
        reasons = super().unsupported_reasons(q, k, v, key_padding_mask)
        if key_padding_mask is not None and self.padded_path != "auto":
            reasons.extend(path_reasons(self.padded_path, q))
        return reasons

    def forward(self, q, k, v, key_padding_mask=None):
        if self.causal:
            return self._causal(q, k, v, key_padding_mask)
        if key_padding_mask is None:
            self.last_path = "sdpa"
            return F.scaled_dot_product_attention(q, k, v)
        path = self.resolve_path(q)
        self.last_path = PATH_LABELS[path]
        if path == "varlen":
            return varlen_attention(q, k, v, key_padding_mask)
        if path == "flex":
            return flex_padded(q, k, v, key_padding_mask)
        return sdpa_masked(q, k, v, key_padding_mask)

    def _causal(self, q, k, v, key_padding_mask):
        """Query i attends keys j <= i (see the module docstring)."""
        if key_padding_mask is None:
            self.last_path = "sdpa+causal"
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        self.last_path = "sdpa+mask+causal"
        length = q.shape[2]
        triangle = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()  # (L, L), True = attend
        attn_mask = key_padding_mask[:, None, None, :] & triangle  # (B, 1, L, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        seen = key_padding_mask.cumsum(1) > 0  # (B, L): some real key at or before the query
        return out.masked_fill(~seen[:, None, :, None], 0.0)

    def extra_repr(self) -> str:
        return f"padded_path={self.padded_path}"
