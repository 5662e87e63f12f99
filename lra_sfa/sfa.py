"""SFA attention backends (the subject of the project, not baselines).

``SFAAttention`` wraps ``lra_sfa.sfa_attention``: each query and key keeps its
``topk`` largest-magnitude features and attention is exact on those codes.
"""

from __future__ import annotations

from lra_sfa.attention import AttentionBackend
from lra_sfa.kernels.sfa.api import IMPLS, kernel_head_dim, resolve_impl, sfa_attention, sfa_path


class SFAAttention(AttentionBackend):
    """Sparse Feature Attention, paper form (top-k of each d-dim q and k).

    topk: features kept per query (and per key unless ``topk_k`` is given).
    impl: "auto" (on CUDA SDPA on the zero-filled codes where ``kernels.sfa.dispatch.uses_sdpa`` measured it
    faster, else the Gluon kernels where ``kernels.sfa.dispatch`` allows, else Triton; the reference on CPU),
    "gluon" (Gluon or an unsupported reason saying why not), "triton", "sdpa" or "reference".
    ``last_path`` names what ran: "reference", "sdpa" ("sdpa+mask" with a padding mask), "triton", "gluon",
    or for a training call whose forward
    and backward differ, "triton_fwd+gluon_bwd" / "gluon_fwd+triton_bwd"; "+packed" where the kernels ran on
    real tokens packed first, padding rows skipped (the model reads none: ``padding_rows_read``), and
    "+trimmed" where they skipped the padding rows after each row's last real token without packing (the
    padding is right padding: ``padding_is_suffix``). Causal (``causal``) on the Triton kernels or the
    reference; ``impl=gluon`` refuses it.
    """

    supports_causal = True

    def __init__(self, topk: int = 8, topk_k: int | None = None, impl: str = "auto", head_dim: int | None = None):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"attn sfa: impl={impl!r} must be one of {IMPLS}")
        for key, value in (("topk", topk), ("topk_k", topk_k)):
            if value is None:
                continue
            if not isinstance(value, int) or value < 1 or (head_dim is not None and value > head_dim):
                raise ValueError(
                    f"attn sfa: {key}={value!r} must be an int in 1..head_dim={head_dim} "
                    f"(the model's d_model / num_heads)"
                )
        self.topk, self.topk_k, self.impl = topk, topk_k, impl

    def unsupported_reasons(self, q, k, v, key_padding_mask=None):
        reasons = super().unsupported_reasons(q, k, v, key_padding_mask)
        if max(self.topk, self.topk_k or 0) > q.shape[-1]:
            reasons.append(f"SFAAttention: topk={self.topk} exceeds head_dim {q.shape[-1]}")
        if resolve_impl(self.impl, q.device) in ("triton", "gluon"):
            from lra_sfa.kernels.sfa.launcher import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS

            if q.shape[-1] > max(SUPPORTED_HEAD_DIMS):  # smaller ones run zero-padded, exactly
                reasons.append(f"SFAAttention: the Triton kernels take head_dim up to {max(SUPPORTED_HEAD_DIMS)} "
                               f"({SUPPORTED_HEAD_DIMS}; smaller ones zero-padded), got {q.shape[-1]}; "
                               "use attn.impl=reference")
            if q.dtype not in SUPPORTED_DTYPES:
                reasons.append(f"SFAAttention: the Triton kernels take dtypes {SUPPORTED_DTYPES}, got {q.dtype}")
        if resolve_impl(self.impl, q.device) == "sdpa" and q.shape[-1] > 256:
            reasons.append(f"SFAAttention: impl=sdpa takes head_dim up to 256 (its top-k kernel), got {q.shape[-1]}")
        if self.impl == "gluon" and not reasons:
            reasons.extend(self._gluon_reasons(q, key_padding_mask))
        return reasons

    def _gluon_reasons(self, q, key_padding_mask) -> list[str]:
        """Why impl=gluon cannot run q's shape (the dispatch rules; the backward's too while training)."""
        from lra_sfa.kernels.sfa.dispatch import gluon_reasons

        _, _, length, head_dim = q.shape
        shape = (q.device, q.dtype, length, kernel_head_dim(head_dim), key_padding_mask is not None)
        parts = [False, True] if self.training else [False]
        reasons = [reason for backward in parts
                   for reason in gluon_reasons(*shape, backward=backward, causal=self.causal)]
        return [f"SFAAttention: impl=gluon: {reason}" for reason in dict.fromkeys(reasons)]

    compile_safe = True  # the kernels are custom operators (kernels.sfa.autograd): opaque nodes in one graph

    def forward(self, q, k, v, key_padding_mask=None):
        # rows nobody reads are skipped: 0 there, the kernels running on the real tokens packed first ("+packed"),
        # or, under right padding, on the rows up to each sequence's last real token ("+trimmed")
        skip = not self.padding_rows_read and key_padding_mask is not None
        path = sfa_path(q, k, v, key_padding_mask, self.impl, self.causal)
        if path == "sdpa" and key_padding_mask is not None:
            path = "sdpa+mask"  # SDPA visits every key; padding rows are zeroed, not skipped
        elif skip and path != "reference":
            path += "+trimmed" if self.padding_is_suffix else "+packed"
        self.last_path = path
        return sfa_attention(q, k, v, self.topk, self.topk_k, key_padding_mask, impl=self.impl, skip_padding=skip,
                             padding_is_suffix=self.padding_is_suffix, causal=self.causal)

    def extra_repr(self) -> str:
        return f"topk={self.topk}, topk_k={self.topk_k}, impl={self.impl}"
