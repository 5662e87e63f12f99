"""The public SFA function ``sfa_attention``: validation, then the reference or the FlashSFA kernels.

``impl`` picks the implementation: "reference" (chunked PyTorch, any
device), "triton" (the FlashSFA Triton kernels), "gluon" (the Hopper Gluon
kernels, or a ValueError saying why they cannot run), "sdpa" (torch SDPA on
the zero-filled codes, ``codes``), "auto" (on CUDA: "sdpa" where
``dispatch.uses_sdpa`` measured it faster, else Gluon where ``dispatch``
allows, else Triton; the reference elsewhere).
``sfa_path`` names what a call runs, for the run record's ``attn_path``.
"""

from __future__ import annotations

import torch

from lra_sfa.kernels.sfa.reference import sfa_chunked

IMPLS = ("auto", "reference", "triton", "gluon", "sdpa")
KERNEL_HEAD_DIMS = (16, 32, 64, 128)  # launcher.SUPPORTED_HEAD_DIMS, without importing triton


def check_qkv(name: str, q, k, v, key_padding_mask) -> None:
    """Raise a ValueError naming ``name`` on misshapen (B, H, L, D) q, k, v or a bad (B, L) bool mask."""
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name}: q, k, v must be (batch, heads, length, head_dim) with equal batch, heads and length "
            f"and q.shape == k.shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_padding_mask is not None:
        expected = (q.shape[0], q.shape[2])
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"{name}: key_padding_mask must be bool of shape (batch, length)={expected} with "
                f"True = real token; got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )


def _validate(q, k, v, topk_q: int, topk_k: int, key_padding_mask, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"sfa_attention: impl={impl!r} is not one of {IMPLS}")
    check_qkv("sfa_attention", q, k, v, key_padding_mask)
    head_dim = q.shape[-1]
    for name, value in (("topk_q", topk_q), ("topk_k", topk_k)):
        if not isinstance(value, int) or not 1 <= value <= head_dim:
            raise ValueError(f"sfa_attention: {name}={value!r} must be an int in 1..head_dim={head_dim}")


def resolve_impl(impl: str, device: torch.device) -> str:
    """``auto`` is the kernels ("triton": Triton or Gluon, or SDPA on the codes where ``_auto_sdpa`` says) on
    CUDA and the PyTorch reference elsewhere."""
    if impl == "auto":
        return "triton" if device.type == "cuda" else "reference"
    return impl


def kernels_of(impl: str) -> str:
    """The FlashSFA ``kernels`` argument for ``impl``: "gluon" and "triton" force theirs, "auto" chooses."""
    return impl if impl in ("gluon", "triton") else "auto"


def kernel_head_dim(head_dim: int) -> int:
    """The head dim the kernels run for ``head_dim``: itself, or the next kernel size it is zero-padded to."""
    if head_dim in KERNEL_HEAD_DIMS or head_dim > max(KERNEL_HEAD_DIMS):
        return head_dim
    return min(size for size in KERNEL_HEAD_DIMS if size > head_dim)


def sfa_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
             impl: str = "auto", causal: bool = False) -> str:
    """What ``sfa_attention(q, k, v, ..., impl=impl)`` runs: "reference", "sdpa", "triton", "gluon", or, for a
    call with a backward whose halves differ, "gluon_fwd+triton_bwd" / "triton_fwd+gluon_bwd"
    (``dispatch.kernel_path``). Raises the ValueError the call would raise when impl="gluon" cannot run here."""
    chosen = resolve_impl(impl, q.device)
    if chosen in ("reference", "sdpa"):
        return chosen
    from lra_sfa.kernels.sfa.autograd import needs_backward  # imports triton
    from lra_sfa.kernels.sfa.dispatch import kernel_path

    if impl == "auto" and _auto_sdpa(q, k, v, key_padding_mask, causal):
        return "sdpa"
    _, _, length, head_dim = q.shape
    return kernel_path(q.device, q.dtype, length, kernel_head_dim(head_dim), key_padding_mask is not None,
                       kernels_of(impl), needs_backward(q, k, v), causal)


def _auto_sdpa(q, k, v, key_padding_mask, causal: bool) -> bool:
    """Whether impl="auto" runs this CUDA call as SDPA on the codes (``dispatch.uses_sdpa``)."""
    from lra_sfa.kernels.sfa.autograd import needs_backward  # imports triton
    from lra_sfa.kernels.sfa.dispatch import uses_sdpa

    return uses_sdpa(q.device, q.dtype, q.shape[2], q.shape[3], key_padding_mask is not None,
                     needs_backward(q, k, v), causal)


def sfa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_q: int,
    topk_k: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    impl: str = "auto",
    skip_padding: bool = False,
    padding_is_suffix: bool = False,
    causal: bool = False,
) -> torch.Tensor:
    """Exact Sparse Feature Attention.

    q, k, v: (B, H, L, D); key_padding_mask: (B, L) bool, True = real token.
    Computes softmax(Q~ K~^T / sqrt(D)) V where Q~, K~ keep each row's top-k
    entries by magnitude (signs kept); gradients are masked to that support.
    ``impl``: "reference" (chunked PyTorch, any device), "triton" (the
    FlashSFA Triton kernels; CUDA, or CPU under TRITON_INTERPRET=1), "gluon"
    (the Hopper Gluon kernels; an sm_90 GPU), "sdpa" (torch SDPA on the
    zero-filled codes, ``codes.sdpa_sfa``; the codes by the Triton top-k
    kernel), or "auto" (module docstring).
    The kernels take head dims 16, 32, 64 and 128; a smaller or in-between
    head dim runs them exactly on zero-padded q, k, v (see _padded_flash_sfa).
    ``skip_padding`` (with a mask): padding rows output 0, constants, as
    FlashAttention's variable-length path gives them, for models that never
    read them (their keys are masked in every layer and pooling skips them).
    The kernels then run on the real tokens packed first (``pack_real_first``),
    so a batch costs its real tokens squared, not L squared, wherever its
    padding lies; the real rows are those without the option, up to the
    order of the sums. ``padding_is_suffix``: the caller's promise that each
    row's padding follows all its real tokens (right padding); the packing
    is then the identity and is skipped, and the kernels stop at each row's
    last real token. Were the promise broken, real rows would still be
    exact, and the kernels' padding rows before a row's last real token
    would hold their attention over the real keys instead of 0 (the
    reference path zeroes every padding row either way).
    ``causal``: query i attends keys j <= i only (Triton kernels or the
    reference; the packing keeps the real tokens' order, so it stays exact).
    Never builds an L x L tensor for the whole sequence.
    """
    topk_k = topk_q if topk_k is None else topk_k
    _validate(q, k, v, topk_q, topk_k, key_padding_mask, impl)
    skip = skip_padding and key_padding_mask is not None
    chosen = resolve_impl(impl, q.device)
    if chosen == "reference":
        out = sfa_chunked(q, k, v, topk_q, topk_k, key_padding_mask, causal)
        return out * key_padding_mask[:, None, :, None] if skip else out
    if chosen == "sdpa" or (impl == "auto" and _auto_sdpa(q, k, v, key_padding_mask, causal)):
        from lra_sfa.kernels.sfa.codes import sdpa_sfa  # imports triton

        return sdpa_sfa(q, k, v, topk_q, topk_k, key_padding_mask, zero_pad_rows=skip, causal=causal)
    from lra_sfa.kernels.sfa.autograd import flash_sfa  # imports triton

    kernels = kernels_of(impl)  # from impl, not chosen: "auto" chose the kernels, and dispatch picks which
    pack = skip and not padding_is_suffix
    if pack:
        order, (q, k, v), key_padding_mask = pack_real_first(key_padding_mask, q, k, v)
    if kernel_head_dim(q.shape[-1]) == q.shape[-1]:  # (an unsupported size raises in flash_sfa)
        out = flash_sfa(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows=skip, causal=causal)
    else:
        out = _padded_flash_sfa(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows=skip,
                                causal=causal)
    return unpack(out, order) if pack else out


def pack_real_first(key_padding_mask: torch.Tensor, *tensors: torch.Tensor):
    """Each batch row's real tokens first, in their order, then its padding: (order (B, L), the (B, H, L, D)
    tensors gathered along L by it, the mask gathered, whose real tokens now end at each row's count).
    Attention does not depend on its keys' order, so real rows attend as before (sums in another order)."""
    order = torch.argsort((~key_padding_mask).to(torch.uint8), dim=1, stable=True)  # (B, L)
    packed = tuple(t.gather(2, order[:, None, :, None].expand_as(t)) for t in tensors)
    return order, packed, key_padding_mask.gather(1, order)


def unpack(out: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``out`` (B, H, L, D) of packed rows back to the rows' own positions (the inverse of ``pack_real_first``)."""
    return torch.zeros_like(out).scatter(2, order[:, None, :, None].expand_as(out), out)


def _padded_flash_sfa(q, k, v, topk_q: int, topk_k: int, key_padding_mask, kernels: str,
                      zero_pad_rows: bool = False, causal: bool = False) -> torch.Tensor:
    """FlashSFA for a head dim between the kernels' sizes (e.g. LRA Pathfinder's 4): exact, by zero padding.

    q, k, v are zero-padded to the next kernel size P. Padded features are zero, so they never beat a
    nonzero feature in the top-k and add nothing to a score; zero V columns are sliced off. The kernel
    scales by 1/sqrt(P), so q is first multiplied by sqrt(P/D) (a positive factor: same top-k support).
    """
    from lra_sfa.kernels.sfa.autograd import flash_sfa  # imports triton

    head_dim = q.shape[-1]
    padded = kernel_head_dim(head_dim)
    q = q * (padded / head_dim) ** 0.5
    q, k, v = (torch.nn.functional.pad(t, (0, padded - head_dim)) for t in (q, k, v))  # (B, H, L, P)
    out = flash_sfa(q, k, v, topk_q, topk_k, key_padding_mask, kernels, zero_pad_rows, causal)  # (B, H, L, P)
    return out[..., :head_dim]  # (B, H, L, D)
