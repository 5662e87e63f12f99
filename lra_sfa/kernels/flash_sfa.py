"""FlashSFA launcher and autograd.Function: ``flash_sfa(q, k, v, topk_q, topk_k, mask)``.

Pipeline (forward): ``topk_pack`` on q and on k (one fused pass each: packed
values + int8/int16 indices + zero-filled codes), then the FlashSFA forward
kernel (``flash_sfa_fwd.py``; on Hopper, for the shapes ``gluon_eligible``
names, the warp-specialised Gluon kernel of ``flash_sfa_gluon.py``) on the
codes and dense v. Without autograd
(inference, evaluation) and for 16-bit inputs, q's top-k runs inside the
forward kernel instead (``fuse_topk_q``, both kernels): one pass over q fewer.
Backward: the three kernels of ``flash_sfa_bwd.py`` (on Hopper, for the shapes
``gluon_bwd_eligible`` names, delta there and dK/dV and dQ by the Gluon kernels
of ``flash_sfa_bwd_gluon.py``); dQ and dK are masked to the top-k support (the
training path keeps topk_pack for q: the backward needs its ids).

The launcher checks device, dtypes, head dim, shapes and the mask, and raises
a ValueError naming the offending value; it never falls back to another
implementation. Kernels run on CUDA, or on CPU when TRITON_INTERPRET=1.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from lra_sfa.kernels import flash_sfa_bwd as bwd
from lra_sfa.kernels import flash_sfa_fwd as fwd
from lra_sfa.kernels.topk_pack import topk_pack

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TUNE_LENGTH_CAP = 16384  # autotune once per power-of-two L up to this; longer L reuse the 16K choice
# The Gluon kernels (flash_sfa_gluon, flash_sfa_bwd_gluon) run where they apply; LRA_SFA_GLUON=0 keeps every
# shape on the Triton kernels
USE_GLUON = os.environ.get("LRA_SFA_GLUON", "1") != "0"
GLUON_TILE = 64  # L must be a multiple of this for the Gluon forward
# Its launch (``flash_sfa_gluon.gluon_ws_forward`` arguments) by L's alignment, first match: two compute
# warpgroups of 64 query rows over 128-key tiles where L allows, else one over 64-key tiles. H200, 2026-11-29,
# L=16K, d=128, k=8, B*H=16 (results/kernels/gluon_fwd_probe_2026-11-29_s11*.csv): 3.17 vs 3.44 ms, cuDNN 3.18;
# at 32K 13.32 vs 13.73, cuDNN 12.74.
GLUON_CONFIGS = ((128, dict(block_m=64, block_n=128, stages=2, consumers=2, maxnreg=168, consumer_regs=240)),
                 (GLUON_TILE, dict(block_m=64, block_n=64, stages=3, consumers=1, maxnreg=128)))


# The backward's dK/dV and dQ run the Gluon kernels (flash_sfa_bwd_gluon) at D = 64 or 128 with L a multiple of
# 128 (two compute warpgroups of 64 rows; ``gluon_bwd_eligible``); LRA_SFA_GLUON_BWD=0 keeps them on the Triton
# kernels.
# H200, 2026-11-29, L=16K, d=128, k=8, B*H=16 (results/kernels/sfa_explore_2026-11-29_s11_gluon_{dq,bwd}.csv):
# dQ 64x128 tiles, 2 stages 4.14-4.21 ms; 64x64 3 stages 4.37, 4 stages 4.42, 2 stages 4.48; one warpgroup
# 4.59-6.09; Triton 128x64 w8 s3 4.70. dK/dV 64 queries x 64 keys per warpgroup, 4 stages 6.18 ms; 3 stages 6.23,
# 2 stages 6.34; one warpgroup 6.62 (2 stages), 9.26 (3); Triton 64x128 w8 s4 6.52. Loading lse2 one iteration
# ahead (``..._s11_gluon_dkdv_prefetch.csv``): 6.08 ms (3 stages), 6.10 (4), against 6.32 in the same call; delta
# too: 6.92-7.44 (the registers spill). Whole backward 10.51 ms against 11.29 with the Triton kernels (session 9).
# d=64, L=32K, k=16 (``..._s11_gluon_d64.csv``): dQ 10.53 ms, dK/dV 16.12 (prefetch off: 20.16), the Triton
# backward 27.72; the d=64 Gluon forward (9.02 ms, kernel only) is not faster than the Triton one (8.51 with top-k).
USE_GLUON_BWD = os.environ.get("LRA_SFA_GLUON_BWD", "1") != "0"
GLUON_DQ_CONFIG = dict(block_m=64, block_n=128, stages=2, maxnreg=168, consumer_regs=240)
GLUON_DKDV_CONFIG = dict(block_m=64, block_n=64, stages=3, maxnreg=168, consumer_regs=240, prefetch=1)


def gluon_bwd_eligible(x: torch.Tensor, has_bias: bool) -> bool:
    """Whether the backward of x (..., L, D) runs the Gluon kernels: D = 64 or 128, L a multiple of 128, and what
    the forward's needs besides (the d=64 forward stays on the Triton kernel, faster there)."""
    return USE_GLUON_BWD and x.shape[-1] in (64, 128) and x.shape[-2] % 128 == 0 and _gluon_device(x, has_bias)


def gluon_config(length: int) -> dict:
    """The Gluon forward's launch arguments for sequence length ``length`` (a multiple of GLUON_TILE)."""
    return next(config for align, config in GLUON_CONFIGS if length % align == 0)


@functools.cache
def _gluon_available() -> bool:
    try:
        import lra_sfa.kernels.flash_sfa_gluon  # noqa: F401  (Gluon's API is experimental; a Triton without it)
    except (ImportError, AttributeError):
        return False
    return True


def _gluon_device(x: torch.Tensor, has_bias: bool) -> bool:
    """What every Gluon kernel here needs: CUDA sm_90, fp16 / bf16, no padding mask, not the interpreter."""
    if not USE_GLUON or fwd.interpreting() or has_bias or x.device.type != "cuda":
        return False
    if x.dtype not in (torch.float16, torch.bfloat16):
        return False
    return torch.cuda.get_device_capability(x.device) == (9, 0) and _gluon_available()


def gluon_eligible(x: torch.Tensor, has_bias: bool) -> bool:
    """Whether the forward of x (..., L, D) runs the Gluon kernel (``flash_sfa_gluon``): CUDA sm_90, fp16 / bf16,
    D = 128, L a multiple of 64, no padding mask, and not under the interpreter. Other shapes run the Triton
    kernel, which the Gluon one matches bit for bit in its one-warpgroup launch and within ~4e-5 relative in its
    two-warpgroup launch (row sums over 128 keys at a time; GPU probe and checks)."""
    return x.shape[-1] == 128 and x.shape[-2] % GLUON_TILE == 0 and _gluon_device(x, has_bias)


def check_inputs(q, k, v, topk_q: int, topk_k: int, key_padding_mask) -> None:
    """Raise ValueError for anything the kernels do not support."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"flash_sfa: {name} must be a 4-d tensor (batch, heads, length, head_dim)")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"flash_sfa: {name}.dtype={t.dtype} is not one of {SUPPORTED_DTYPES}")
        if t.device.type != "cuda" and not fwd.interpreting():
            raise ValueError(f"flash_sfa: {name} is on {t.device}; the Triton kernels need CUDA "
                             "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_sfa: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"flash_sfa: q, k, v must share one shape (B, H, L, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    batch, _, length, head_dim = q.shape
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_sfa: head_dim={head_dim} is not one of {SUPPORTED_HEAD_DIMS}")
    if length < 1 or batch < 1 or q.shape[1] < 1:
        raise ValueError(f"flash_sfa: empty input of shape {tuple(q.shape)}")
    for name, value in (("topk_q", topk_q), ("topk_k", topk_k)):
        if not isinstance(value, int) or not 1 <= value <= head_dim:
            raise ValueError(f"flash_sfa: {name}={value!r} must be an int in 1..head_dim={head_dim}")
    if key_padding_mask is not None:
        expected = (batch, length)
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != expected:
            raise ValueError(f"flash_sfa: key_padding_mask must be bool of shape {expected} (True = real "
                             f"token); got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")


def aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """Contiguous, 16-byte aligned view of x (copies only when needed, e.g. a strided slice)."""
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


def pad_bias(key_padding_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(B, L) fp32 additive bias, 0 for real tokens and -inf for padding; a 1-element dummy if no mask."""
    if key_padding_mask is None:
        return torch.zeros(1, dtype=torch.float32, device=device)
    bias = torch.zeros(key_padding_mask.shape, dtype=torch.float32, device=device)
    return bias.masked_fill_(~key_padding_mask.to(device), float("-inf"))


def tile_descriptor(x: torch.Tensor, rows: int) -> TensorDescriptor:
    """TMA descriptor over a (B*H, L, D) tensor, ``rows`` rows at a time (configs reset the block shape)."""
    batch_heads, length, head_dim = x.shape
    return TensorDescriptor(x, [batch_heads, length, head_dim], [length * head_dim, head_dim, 1], [1, rows, head_dim])


def row_descriptor(x: torch.Tensor) -> TensorDescriptor:
    """TMA descriptor over a (B*H, L_PAD) fp32 tensor, one row block at a time (the block set by the config)."""
    batch_heads, length = x.shape
    return TensorDescriptor(x, [batch_heads, length], [length, 1], [1, 16])


def pad_rows(x: torch.Tensor, value: float) -> torch.Tensor:
    """(B*H, L) fp32 -> (B*H, L_PAD) with L_PAD a multiple of ``flash_sfa_bwd.ROW_PAD``, ``value`` in the padding:
    the layout the backward kernels read lse2 (padded with +inf) and delta (with 0) in, without masks."""
    length = x.shape[1]
    return torch.nn.functional.pad(x, (0, triton.cdiv(length, bwd.ROW_PAD) * bwd.ROW_PAD - length), value=value)


def key_code_range(kd: torch.Tensor) -> torch.Tensor:
    """(B*H, 2, D) fp32: per batch*head the column-wise max (row 0) and min (row 1) of the key codes kd (B*H, L, D).

    The forward's BOUNDED configs turn it into a per-query upper bound on the
    scores, so they can skip the online softmax's running max and rescaling.
    """
    kmin, kmax = torch.aminmax(kd, dim=1)  # (B*H, D) each
    return torch.stack((kmax, kmin), dim=1).float()


# Whether the autotuned forward chose a BOUNDED config, per tuning key; until a key is tuned, assume it may.
_BOUNDED_CHOICE: dict[tuple, bool] = {}


def launch_forward(qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, heads: int,
                   has_bias: bool, config: triton.Config | None = None,
                   fuse_topk_q: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """qd, kd, v: (B*H, L, D) contiguous. Returns out (B*H, L, D) and lse2 (B*H, L) fp32 (base 2).

    With ``fuse_topk_q`` > 0 (16-bit inputs only), qd is the dense q and the
    kernel keeps each row's ``fuse_topk_q`` largest entries itself (the same
    selection as ``topk_pack``), saving topk_pack's pass over q. ``config``
    forces one tile configuration (benchmarks); by default the autotuned
    kernel runs on GPU and ``INTERPRETER_CONFIG`` under the interpreter.
    """
    batch_heads, length, head_dim = qd.shape
    if fuse_topk_q and qd.element_size() != 2:
        raise ValueError(f"launch_forward: fuse_topk_q needs fp16/bf16 q, got {qd.dtype}")
    if config is None and gluon_eligible(qd, has_bias):
        from lra_sfa.kernels.flash_sfa_gluon import gluon_ws_forward
        return gluon_ws_forward(qd, kd, v, topk_q=fuse_topk_q, **gluon_config(length))
    out = torch.empty_like(v)
    lse2 = torch.empty(batch_heads, length, dtype=torch.float32, device=qd.device)
    descs = {f"{name}_desc": tile_descriptor(t, 16) for name, t in (("Q", qd), ("K", kd), ("V", v), ("O", out))}
    if config is None and fwd.interpreting():
        config = fwd.INTERPRETER_CONFIG
    l_bucket = min(triton.next_power_of_2(length), TUNE_LENGTH_CAP)
    tune_key = (l_bucket, head_dim, has_bias, qd.dtype, fuse_topk_q)
    if config is not None:
        bounded = config.kwargs["BOUNDED"]
    else:  # the key range costs a pass over K: skip it once the tuner has chosen an online config
        bounded = _BOUNDED_CHOICE.get(tune_key, any(c.kwargs["BOUNDED"] for c in fwd.GPU_CONFIGS))
    kbound = key_code_range(kd) if bounded else bias  # a placeholder pointer when no config reads it
    args = dict(Bias=bias, Lse=lse2, KBound=kbound, L=length, H=heads,
                qk_scale=fwd.LOG2E / math.sqrt(head_dim), l_bucket=l_bucket,
                HEAD_DIM=head_dim, HAS_BIAS=has_bias, IEEE=qd.dtype == torch.float32,
                TOPK_Q=fuse_topk_q if fuse_topk_q < head_dim else 0, **descs)
    grid = lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), batch_heads)  # noqa: E731
    if config is not None:
        fwd.set_block_shapes({**args, **config.kwargs})
        fwd._flash_sfa_fwd_kernel[grid](**args, **config.kwargs, num_warps=config.num_warps,
                                        num_stages=config.num_stages)
    else:
        fwd.flash_sfa_fwd_tuned[grid](**args)
        _BOUNDED_CHOICE[tune_key] = bool(fwd.flash_sfa_fwd_tuned.best_config.kwargs["BOUNDED"])
    return out, lse2


def _run_bwd_kernel(tuned, plain, grid, args: dict) -> None:
    if fwd.interpreting():
        config = bwd.INTERPRETER_BWD_CONFIG
        bwd.set_bwd_block_shapes({**args, **config.kwargs})
        plain[grid](**args, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    else:
        tuned[grid](**args)


def launch_backward(saved: tuple, dout: torch.Tensor, heads: int, has_bias: bool, topk_q: int, topk_k: int):
    """Returns dq, dk, dv as (B*H, L, D), dq/dk masked to the top-k supports."""
    qd, kd, v, out, lse2, bias, q_idx, k_idx = saved
    batch_heads, length, head_dim = qd.shape
    dout = aligned_rows(dout.reshape(batch_heads, length, head_dim))  # (B*H, L, D)
    lse_pad = pad_rows(lse2, float("inf"))  # (B*H, L_PAD): the kernels read lse2 / delta rows without masks
    l_pad = lse_pad.shape[1]
    delta = torch.zeros(batch_heads, l_pad, dtype=torch.float32, device=qd.device)
    rows = batch_heads * length
    block_r = max(1, 4096 // head_dim)
    bwd.delta_kernel[(triton.cdiv(rows, block_r),)](out, dout, delta, rows, length, l_pad, HEAD_DIM=head_dim,
                                                    BLOCK_R=block_r)
    if gluon_bwd_eligible(qd, has_bias):
        from lra_sfa.kernels.flash_sfa_bwd_gluon import gluon_dkdv, gluon_dq
        dk, dv = gluon_dkdv(qd, kd, v, dout, lse_pad, delta, k_idx, topk_k, **GLUON_DKDV_CONFIG)
        return gluon_dq(qd, kd, v, dout, lse_pad, delta, q_idx, topk_q, **GLUON_DQ_CONFIG), dk, dv
    dq, dk, dv = torch.empty_like(qd), torch.empty_like(kd), torch.empty_like(v)
    descs = {f"{name}_desc": tile_descriptor(t, 16)
             for name, t in (("Q", qd), ("K", kd), ("V", v), ("DO", dout), ("DQ", dq), ("DK", dk), ("DV", dv))}
    common = dict(Bias=bias, L=length, H=heads,
                  qk_scale=fwd.LOG2E / math.sqrt(head_dim), sm_scale=1.0 / math.sqrt(head_dim),
                  l_bucket=min(triton.next_power_of_2(length), TUNE_LENGTH_CAP), HEAD_DIM=head_dim, HAS_BIAS=has_bias,
                  IEEE=qd.dtype == torch.float32, **{n: descs[n] for n in ("Q_desc", "K_desc", "V_desc", "DO_desc")})
    dkdv_args = dict(common, DK_desc=descs["DK_desc"], DV_desc=descs["DV_desc"], Lse_desc=row_descriptor(lse_pad),
                     Delta_desc=row_descriptor(delta), Kidx=k_idx, TOPK=topk_k, FULL_SUPPORT=topk_k == head_dim)
    _run_bwd_kernel(bwd.dkdv_tuned, bwd.dkdv_kernel,
                    lambda meta: (triton.cdiv(length, meta["BLOCK_N"]), batch_heads), dkdv_args)
    dq_args = dict(common, DQ_desc=descs["DQ_desc"], Lse=lse_pad, Delta=delta, L_PAD=l_pad, Qidx=q_idx, TOPK=topk_q,
                   FULL_SUPPORT=topk_q == head_dim)
    _run_bwd_kernel(bwd.dq_tuned, bwd.dq_kernel,
                    lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), batch_heads), dq_args)
    return dq, dk, dv


class FlashSFAFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves the codes, indices, out and lse2; backward runs the kernels."""

    @staticmethod
    def forward(ctx, q, k, v, topk_q, topk_k, key_padding_mask):
        batch, heads, length, head_dim = q.shape
        flat = (batch * heads, length, head_dim)
        _, q_idx, qd = topk_pack(q, topk_q)
        _, k_idx, kd = topk_pack(k, topk_k)
        v_flat = aligned_rows(v).reshape(flat)  # (B*H, L, D)
        bias = pad_bias(key_padding_mask, q.device)
        qd, kd = aligned_rows(qd).reshape(flat), aligned_rows(kd).reshape(flat)  # (B*H, L, D)
        out, lse2 = launch_forward(qd, kd, v_flat, bias, heads, key_padding_mask is not None)
        ctx.save_for_backward(qd, kd, v_flat, out, lse2, bias, q_idx, k_idx)
        ctx.meta = (q.shape, heads, key_padding_mask is not None, topk_q, topk_k)
        return out.reshape(q.shape)  # (B, H, L, D)

    @staticmethod
    def backward(ctx, dout):
        shape, heads, has_bias, topk_q, topk_k = ctx.meta
        dq, dk, dv = launch_backward(ctx.saved_tensors, dout, heads, has_bias, topk_q, topk_k)
        return dq.reshape(shape), dk.reshape(shape), dv.reshape(shape), None, None, None  # (B, H, L, D)


def _forward_only(q, k, v, topk_q: int, topk_k: int, key_padding_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """No autograd: (out (B, H, L, D), lse2 (B*H, L) base 2). For fp16 / bf16 the forward kernel selects q's
    top-k itself (one pass over q fewer); only k goes through ``topk_pack``."""
    batch, heads, length, head_dim = q.shape
    flat = (batch * heads, length, head_dim)
    fuse = topk_q if q.element_size() == 2 and topk_q < head_dim else 0
    with torch.no_grad():
        qd = q if fuse else topk_pack(q, topk_q)[2]
        _, _, kd = topk_pack(k, topk_k)
        qd, kd, v_flat = (aligned_rows(t).reshape(flat) for t in (qd, kd, v))  # (B*H, L, D)
        out, lse2 = launch_forward(qd, kd, v_flat, pad_bias(key_padding_mask, q.device), heads,
                                   key_padding_mask is not None, fuse_topk_q=fuse)
    return out.reshape(q.shape), lse2


def flash_sfa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int | None = None,
              key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact SFA, softmax(Q~K~^T/sqrt(D)) V, by the FlashSFA Triton kernels; differentiable.

    q, k, v: (B, H, L, D) fp16/bf16/fp32 with D in 16, 32, 64, 128;
    key_padding_mask: (B, L) bool, True = real token. Rows whose keys are all
    padding give 0. Without autograd (no grad mode, or no input needing a
    gradient) it runs the forward-only path, which fuses q's top-k.
    """
    topk_k = topk_q if topk_k is None else topk_k
    check_inputs(q, k, v, topk_q, topk_k, key_padding_mask)
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return _forward_only(q, k, v, topk_q, topk_k, key_padding_mask)[0]
    return FlashSFAFunction.apply(q, k, v, topk_q, topk_k, key_padding_mask)


def flash_sfa_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_q: int, topk_k: int | None = None,
                      key_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward only: (out (B, H, L, D), logsumexp (B, H, L) fp32, natural log; 0 for all-padding rows)."""
    topk_k = topk_q if topk_k is None else topk_k
    check_inputs(q, k, v, topk_q, topk_k, key_padding_mask)
    out, lse2 = _forward_only(q, k, v, topk_q, topk_k, key_padding_mask)
    return out, (lse2 / fwd.LOG2E).reshape(q.shape[:3])  # (B, H, L, D), (B, H, L)
