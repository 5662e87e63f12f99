"""Full softmax attention through torch SDPA.

On a GPU, SDPA picks cuDNN or FlashAttention when there is no mask, and the
memory-efficient kernel (or cuDNN) with a key padding mask; on the CPU it runs
its fused or math kernel. ``last_path`` says "sdpa" or "sdpa+mask".
"""

from __future__ import annotations

from torch.nn import functional as F

from lra_sfa.attention import AttentionBackend


class FullAttention(AttentionBackend):
    """softmax(q k^T / sqrt(d)) v over all real keys."""

    compile_safe = True  # plain PyTorch ops

    def forward(self, q, k, v, key_padding_mask=None):
        if key_padding_mask is None:
            self.last_path = "sdpa"
            return F.scaled_dot_product_attention(q, k, v)
        self.last_path = "sdpa+mask"
        attn_mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, L), True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        no_keys = ~key_padding_mask.any(-1)  # (B,) rows with no real key -> 0, not NaN
        return out.masked_fill(no_keys[:, None, None, None], 0.0)
