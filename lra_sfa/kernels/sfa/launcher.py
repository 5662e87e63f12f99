"""FlashSFA launchers: checked inputs in, the forward or backward kernels launched, gradients out.

``launch_forward`` runs the Triton forward (``triton_fwd``) or, where
``dispatch`` chooses it, the Gluon forward (``gluon_fwd``) on flattened
(B*H, L, D) codes; ``launch_backward`` runs the delta kernel and then dK/dV
and dQ by the Triton (``triton_bwd``) or Gluon (``gluon_bwd``) kernels.
``check_inputs`` raises a ValueError naming the offending value for anything
the kernels do not take; nothing falls back to another implementation.
"""

from __future__ import annotations

import math

import torch
import triton

from lra_sfa.kernels.sfa import triton_bwd as bwd
from lra_sfa.kernels.sfa import triton_fwd as fwd
from lra_sfa.kernels.sfa.dispatch import GLUON_DKDV_CONFIG, GLUON_DQ_CONFIG, gluon_config, uses_gluon
from lra_sfa.kernels.sfa.tiles import (
    KeyPadding,
    aligned_rows,
    check_key_range,
    key_code_range,
    pad_rows,
    row_descriptor,
    tile_descriptor,
)

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TUNE_LENGTH_CAP = 16384  # autotune once per power-of-two L up to this; longer L reuse the 16K choice


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


# Whether the autotuned forward chose a BOUNDED config, per tuning key; until a key is tuned, assume it may.
_BOUNDED_CHOICE: dict[tuple, bool] = {}


def launch_forward(qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor, padding: KeyPadding, heads: int,
                   has_bias: bool, config: triton.Config | None = None,
                   fuse_topk_q: int = 0, kernels: str = "auto",
                   key_range: torch.Tensor | None = None,
                   zero_pad_rows: bool = False, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """qd, kd, v: (B*H, L, D) contiguous; ``padding`` from ``tiles.key_padding`` (read when ``has_bias``).
    Returns out (B*H, L, D) and lse2 (B*H, L) fp32 (base 2); with ``zero_pad_rows`` (and a mask) the rows
    from each sequence's key end on are 0 and cost nothing (``triton_fwd``'s ZERO_PAD_ROWS); with ``causal``
    row i attends keys j <= i (the Triton kernel's CAUSAL; the Gluon forward is bidirectional only).

    With ``fuse_topk_q`` > 0 (16-bit inputs only), qd is the dense q and the
    kernel keeps each row's ``fuse_topk_q`` largest entries itself (the same
    selection as ``topk_pack``), saving topk_pack's pass over q. ``config``
    forces one Triton tile configuration (benchmarks); by default the
    autotuned kernel runs on GPU and ``INTERPRETER_CONFIG`` under the
    interpreter. ``kernels`` ("auto", "gluon", "triton") picks Gluon or Triton
    (``dispatch.uses_gluon``). ``key_range`` (B*H, 2, D) fp32 is kd's
    per-feature max / min (``topk_pack(k, topk, key_range=True)``), read by
    the bounded configs and the Gluon forward; when None it is computed from
    kd (``tiles.key_code_range``, a pass over kd) if a bounded kernel may run.
    """
    batch_heads, length, head_dim = qd.shape
    if fuse_topk_q and qd.element_size() != 2:
        raise ValueError(f"launch_forward: fuse_topk_q needs fp16/bf16 q, got {qd.dtype}")
    if key_range is not None:
        check_key_range("launch_forward", key_range, kd)
    if config is None and uses_gluon(qd.device, qd.dtype, length, head_dim, has_bias, kernels, backward=False,
                                     causal=causal):
        from lra_sfa.kernels.sfa.gluon_fwd import gluon_ws_forward
        return gluon_ws_forward(qd, kd, v, topk_q=fuse_topk_q, key_range=key_range, **gluon_config(length))
    out = torch.empty_like(v)
    lse2 = torch.empty(batch_heads, length, dtype=torch.float32, device=qd.device)
    descs = {f"{name}_desc": tile_descriptor(t, 16) for name, t in (("Q", qd), ("K", kd), ("V", v), ("O", out))}
    if config is None and fwd.interpreting():
        config = fwd.INTERPRETER_CONFIG
    elif config is None and qd.dtype == torch.float16:
        config = fwd.FP16_CONFIG
    l_bucket = min(triton.next_power_of_2(length), TUNE_LENGTH_CAP)
    tune_key = (l_bucket, head_dim, has_bias, qd.dtype, fuse_topk_q, causal)
    if causal:  # the causal loop runs the online softmax whatever the config
        bounded = False
    elif config is not None:
        bounded = config.kwargs["BOUNDED"]
    else:  # a range not given costs a pass over K: skip it once the tuner has chosen an online config
        bounded = _BOUNDED_CHOICE.get(tune_key, any(c.kwargs["BOUNDED"] for c in fwd.GPU_CONFIGS))
    if key_range is None:  # a placeholder pointer when no config reads it
        key_range = key_code_range(kd) if bounded else padding.bias
    args = dict(Bias=padding.bias, KEnd=padding.key_end, Lse=lse2, KBound=key_range, L=length, H=heads,
                qk_scale=fwd.LOG2E / math.sqrt(head_dim), l_bucket=l_bucket,
                HEAD_DIM=head_dim, HAS_BIAS=has_bias, IEEE=qd.dtype == torch.float32,
                TOPK_Q=fuse_topk_q if fuse_topk_q < head_dim else 0, ZERO_PAD_ROWS=zero_pad_rows and has_bias,
                CAUSAL=causal, **descs)
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


def launch_backward(saved: tuple, dout: torch.Tensor, heads: int, has_bias: bool, topk_q: int, topk_k: int,
                    kernels: str = "auto", zero_pad_rows: bool = False, causal: bool = False):
    """``saved``: qd, kd, v, out (B*H, L, D), lse2 (B*H, L), the ``KeyPadding``, q's and k's top-k ids.
    Returns dq, dk, dv as (B*H, L, D), dq/dk masked to the top-k supports; ``kernels``, ``zero_pad_rows`` and
    ``causal`` as in launch_forward (the rows it zeroed are constants: no gradient flows through them)."""
    qd, kd, v, out, lse2, padding, q_idx, k_idx = saved
    batch_heads, length, head_dim = qd.shape
    dout = aligned_rows(dout.reshape(batch_heads, length, head_dim))  # (B*H, L, D)
    lse_pad = pad_rows(lse2, float("inf"))  # (B*H, L_PAD): the kernels read lse2 / delta rows without masks
    l_pad = lse_pad.shape[1]
    delta = torch.zeros(batch_heads, l_pad, dtype=torch.float32, device=qd.device)
    rows = batch_heads * length
    block_r = max(1, 4096 // head_dim)
    bwd.delta_kernel[(triton.cdiv(rows, block_r),)](out, dout, delta, rows, length, l_pad, HEAD_DIM=head_dim,
                                                    BLOCK_R=block_r)
    if uses_gluon(qd.device, qd.dtype, length, head_dim, has_bias, kernels, backward=True, causal=causal):
        from lra_sfa.kernels.sfa.gluon_bwd import gluon_dkdv, gluon_dq
        dk, dv = gluon_dkdv(qd, kd, v, dout, lse_pad, delta, k_idx, topk_k, **GLUON_DKDV_CONFIG)
        return gluon_dq(qd, kd, v, dout, lse_pad, delta, q_idx, topk_q, **GLUON_DQ_CONFIG), dk, dv
    dq, dk, dv = torch.empty_like(qd), torch.empty_like(kd), torch.empty_like(v)
    descs = {f"{name}_desc": tile_descriptor(t, 16)
             for name, t in (("Q", qd), ("K", kd), ("V", v), ("DO", dout), ("DQ", dq), ("DK", dk), ("DV", dv))}
    common = dict(Bias=padding.bias, KEnd=padding.key_end, L=length, H=heads,
                  qk_scale=fwd.LOG2E / math.sqrt(head_dim), sm_scale=1.0 / math.sqrt(head_dim),
                  l_bucket=min(triton.next_power_of_2(length), TUNE_LENGTH_CAP), HEAD_DIM=head_dim, HAS_BIAS=has_bias,
                  IEEE=qd.dtype == torch.float32, ZERO_PAD_ROWS=zero_pad_rows and has_bias, CAUSAL=causal,
                  **{n: descs[n] for n in ("Q_desc", "K_desc", "V_desc", "DO_desc")})
    dkdv_args = dict(common, DK_desc=descs["DK_desc"], DV_desc=descs["DV_desc"], Lse_desc=row_descriptor(lse_pad),
                     Delta_desc=row_descriptor(delta), Kidx=k_idx, TOPK=topk_k, FULL_SUPPORT=topk_k == head_dim)
    _run_bwd_kernel(bwd.dkdv_tuned, bwd.dkdv_kernel,
                    lambda meta: (triton.cdiv(length, meta["BLOCK_N"]), batch_heads), dkdv_args)
    dq_args = dict(common, DQ_desc=descs["DQ_desc"], Lse=lse_pad, Delta=delta, L_PAD=l_pad, Qidx=q_idx, TOPK=topk_q,
                   FULL_SUPPORT=topk_q == head_dim)
    _run_bwd_kernel(bwd.dq_tuned, bwd.dq_kernel,
                    lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), batch_heads), dq_args)
    return dq, dk, dv


