"""Which FlashSFA kernels run a call: the Gluon (Hopper) kernels or the Triton ones, and their launches.

``kernels`` is "auto" (Gluon where its rules below allow, Triton elsewhere),
"gluon" (Gluon or a ValueError naming the rule that fails) or "triton".
The Gluon forward needs CUDA sm_90, fp16 / bf16, D = 128, L a multiple of 64
and no padding mask; the Gluon backward D = 64 or 128 and L a multiple of 128
with the same device, dtype and mask rules. Both are bidirectional: causal
attention runs on the Triton kernels. The d = 64 forward stays on the
Triton kernel, which is as fast there. Under "auto" the environment variables
LRA_SFA_GLUON=0 (forward and backward) and LRA_SFA_GLUON_BWD=0 (backward)
keep every shape on the Triton kernels; "gluon" and "triton" ignore them.
Launch choices were measured on an H200 (results/kernels/README.md). ``uses_sdpa``: where
``sfa_attention(impl="auto")`` leaves the kernels for SDPA on the codes (``codes``), LRA_SFA_SDPA=0 keeps it off.
"""

from __future__ import annotations

import functools
import os

import torch

from lra_sfa.kernels.sfa.triton_fwd import interpreting

KERNELS = ("auto", "gluon", "triton")
USE_GLUON = os.environ.get("LRA_SFA_GLUON", "1") != "0"
USE_GLUON_BWD = os.environ.get("LRA_SFA_GLUON_BWD", "1") != "0"
USE_SDPA = os.environ.get("LRA_SFA_SDPA", "1") != "0"
# impl="auto" runs SFA as SDPA on the zero-filled codes (``codes.sdpa_sfa``) at the lengths of these inclusive
# ranges, per call kind ("fwd": no autograd; "train": forward for a backward; "causal": causal, either) and head
# dim; other lengths and head dims run the FlashSFA kernels. From the interleaved comparison of both paths at
# powers of two (lab.sfa_sdpa_probe, batch x heads = 256 up to 8K; results/kernels/short_seq/README.md): SDPA where
# its whole spread was faster or its median clearly so, the kernels where they were or the two tied. A range
# ends (or starts) halfway, geometrically, between the measured lengths where the faster path changes, so a
# model's L + 1 (a CLS token) falls with L.
SDPA_LENGTHS = {
    "fwd": {64: ((1, 1536),), 128: ((1, 3072),)},
    "train": {64: ((1, 1536), (6144, None)), 128: ((3072, None),)},
    "causal": {64: ((1, None),)},
}
GLUON_TILE = 64  # L must be a multiple of this for the Gluon forward
# The Gluon forward's launch (``gluon_fwd.gluon_ws_forward`` arguments) by L's alignment, first match: two compute
# warpgroups of 64 query rows over 128-key tiles where L allows, else one over 64-key tiles.
GLUON_CONFIGS = ((128, dict(block_m=64, block_n=128, stages=2, consumers=2, maxnreg=168, consumer_regs=240)),
                 (GLUON_TILE, dict(block_m=64, block_n=64, stages=3, consumers=1, maxnreg=128)))
# The Gluon backward: dQ over 64x128 tiles, dK/dV over 64 queries x 64 keys per warpgroup with lse2 loaded one
# iteration ahead; two compute warpgroups each.
GLUON_DQ_CONFIG = dict(block_m=64, block_n=128, stages=2, maxnreg=168, consumer_regs=240)
GLUON_DKDV_CONFIG = dict(block_m=64, block_n=64, stages=3, maxnreg=168, consumer_regs=240, prefetch=1)


def gluon_config(length: int) -> dict:
    """The Gluon forward's launch arguments for sequence length ``length`` (a multiple of GLUON_TILE)."""
    return next(config for align, config in GLUON_CONFIGS if length % align == 0)


@functools.cache
def _gluon_available() -> bool:
    try:
        import lra_sfa.kernels.sfa.gluon_fwd  # noqa: F401  (Gluon's API is experimental; a Triton without it)
    except (ImportError, AttributeError):
        return False
    return True


def _device_reasons(device: torch.device, dtype: torch.dtype, has_bias: bool) -> list[str]:
    """What every Gluon kernel here needs: CUDA sm_90, fp16 / bf16, no padding mask, not the interpreter."""
    reasons = []
    if interpreting() or device.type != "cuda":
        reasons.append(f"Gluon needs a CUDA sm_90 GPU (tensors on {device}"
                       f"{', TRITON_INTERPRET=1' if interpreting() else ''})")
    elif torch.cuda.get_device_capability(device) != (9, 0):
        reasons.append(f"Gluon needs compute capability sm_90 (H100/H200), got "
                       f"sm_{''.join(map(str, torch.cuda.get_device_capability(device)))}")
    if dtype not in (torch.float16, torch.bfloat16):
        reasons.append(f"Gluon takes fp16 / bf16, got {dtype}")
    if has_bias:
        reasons.append("Gluon takes no key_padding_mask")
    if not reasons and not _gluon_available():
        reasons.append("this Triton has no Gluon (triton.experimental.gluon)")
    return reasons


def gluon_reasons(device: torch.device, dtype: torch.dtype, length: int, head_dim: int, has_bias: bool,
                  backward: bool, causal: bool = False) -> list[str]:
    """Why the Gluon forward (or, with ``backward``, backward) cannot run this shape; empty when it can."""
    reasons = _device_reasons(device, dtype, has_bias)
    if causal:
        reasons.append("the Gluon kernels are bidirectional; causal attention runs on the Triton kernels")
    if backward and (head_dim not in (64, 128) or length % 128):
        reasons.append(f"the Gluon backward takes head_dim 64 or 128 and L a multiple of 128, got "
                       f"head_dim={head_dim}, L={length}")
    if not backward and (head_dim != 128 or length % GLUON_TILE):
        reasons.append(f"the Gluon forward takes head_dim 128 and L a multiple of {GLUON_TILE}, got "
                       f"head_dim={head_dim}, L={length}")
    if not backward and dtype == torch.float16:
        reasons.append("the Gluon forward's bounded softmax takes bf16, not fp16 (fp16's range loses the "
                       "weights of a row whose bound is loose; triton_fwd.FP16_CONFIG runs it online)")
    return reasons


def _x_reasons(x: torch.Tensor, has_bias: bool, backward: bool) -> list[str]:
    return gluon_reasons(x.device, x.dtype, x.shape[-2], x.shape[-1], has_bias, backward)


def gluon_eligible(x: torch.Tensor, has_bias: bool) -> bool:
    """Whether ``kernels="auto"`` runs the forward of x (..., L, D) on the Gluon kernel."""
    return USE_GLUON and not _x_reasons(x, has_bias, backward=False)


def gluon_bwd_eligible(x: torch.Tensor, has_bias: bool) -> bool:
    """Whether ``kernels="auto"`` runs the backward of x (..., L, D) (dQ and dK/dV) on the Gluon kernels."""
    return USE_GLUON and USE_GLUON_BWD and not _x_reasons(x, has_bias, backward=True)


def check_kernels(kernels: str) -> None:
    if kernels not in KERNELS:
        raise ValueError(f"flash_sfa: kernels={kernels!r} is not one of {KERNELS}")


def uses_gluon(device: torch.device, dtype: torch.dtype, length: int, head_dim: int, has_bias: bool,
               kernels: str, backward: bool, causal: bool = False) -> bool:
    """Whether the forward (or backward) runs Gluon under ``kernels``; "gluon" raises where it cannot run."""
    check_kernels(kernels)
    if kernels == "triton":
        return False
    reasons = gluon_reasons(device, dtype, length, head_dim, has_bias, backward, causal)
    if kernels == "gluon":
        if reasons:
            part = "backward" if backward else "forward"
            raise ValueError(f"flash_sfa: kernels='gluon' cannot run the {part} here: {'; '.join(reasons)} "
                             "(use impl=triton or impl=auto)")
        return True
    return USE_GLUON and (USE_GLUON_BWD or not backward) and not reasons


def uses_sdpa(device: torch.device, dtype: torch.dtype, length: int, head_dim: int, has_bias: bool,
              backward: bool, causal: bool = False) -> bool:
    """Whether ``sfa_attention(impl="auto")`` runs this call as SDPA on the codes rather than the FlashSFA
    kernels: a CUDA fp16 / bf16 call without a padding mask (the kernels skip padding, SDPA with a mask does
    not) whose length lies in a range of ``SDPA_LENGTHS`` for its kind and head dim. LRA_SFA_SDPA=0 turns it off."""
    if not USE_SDPA or has_bias or device.type != "cuda" or interpreting():
        return False
    if dtype not in (torch.float16, torch.bfloat16):
        return False
    kind = "causal" if causal else "train" if backward else "fwd"
    return any(low <= length and (high is None or length <= high)
               for low, high in SDPA_LENGTHS[kind].get(head_dim, ()))


def kernel_path(device: torch.device, dtype: torch.dtype, length: int, head_dim: int, has_bias: bool,
                kernels: str, backward: bool, causal: bool = False) -> str:
    """The kernels one call runs: "gluon", "triton", or for a call with a backward whose two halves differ,
    "gluon_fwd+triton_bwd" / "triton_fwd+gluon_bwd"."""
    shape = (device, dtype, length, head_dim, has_bias, kernels)
    fwd = "gluon" if uses_gluon(*shape, backward=False, causal=causal) else "triton"
    if not backward:
        return fwd
    bwd = "gluon" if uses_gluon(*shape, backward=True, causal=causal) else "triton"
    return fwd if fwd == bwd else f"{fwd}_fwd+{bwd}_bwd"
