"""Backward explorations: Triton dK/dV and dQ tile configs, their stage ablations, the Gluon backward launches."""

from __future__ import annotations

from functools import partial

import torch
import triton

from lab.kernels.bwd_stages import DKDV_STAGES, DQ_STAGES, bwd_stage_runner
from lra_sfa.bench.kernels.calls import time_ms
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa import triton_bwd as bwd
from lra_sfa.kernels.sfa import triton_fwd as fwd
from lra_sfa.kernels.sfa.launcher import launch_backward, launch_forward
from lra_sfa.kernels.sfa.tiles import key_padding, pad_rows, row_descriptor, tile_descriptor


def _backward_inputs(packs: dict, v: torch.Tensor, topk: int) -> tuple[tuple, torch.Tensor]:
    """What the backward explorations share: ``launch_backward``'s saved tensors at the explore shape (the
    forward's out and lse2 included) and a random dout."""
    qd, kd = packs["q_dense"], packs["k_dense"]  # (B*H, L, D)
    batch_heads, length, _ = qd.shape
    padding = key_padding(None, qd.device)
    out, lse2 = launch_forward(qd, kd, v, padding, batch_heads, False)
    q_idx, k_idx = (packs[f"{n}_idx"].reshape(batch_heads * length, topk) for n in ("q", "k"))
    return (qd, kd, v, out, lse2, padding, q_idx, k_idx), torch.randn_like(out)


def explore_backward(args, record, packs: dict, v: torch.Tensor, topk: int) -> None:
    """Each Triton backward kernel (dK/dV, dQ) alone at the explore shape, for each (BLOCK_M, BLOCK_N, warps,
    stages), against ``launch_backward`` (which runs the Gluon kernels where they apply)."""
    saved, dout = _backward_inputs(packs, v, topk)
    qd, kd, _, out, lse2, padding, q_idx, k_idx = saved
    batch_heads, length, dim = qd.shape
    ref = launch_backward(saved, dout, batch_heads, False, topk, topk)
    record("bwd", "launch_backward (delta, dK/dV, dQ; Gluon where eligible)",
           time_ms(partial(launch_backward, saved, dout, batch_heads, False, topk, topk))[0],
           f"dkdv {getattr(bwd.dkdv_tuned, 'best_config', None)} dq {getattr(bwd.dq_tuned, 'best_config', None)}")
    grads = {name: torch.empty_like(qd) for name in ("DQ", "DK", "DV")}
    descs = {f"{name}_desc": tile_descriptor(t, 16)
             for name, t in (("Q", qd), ("K", kd), ("V", v), ("DO", dout), *grads.items())}
    lse_pad = pad_rows(lse2, float("inf"))  # lse2 / delta rows as launch_backward lays them out
    delta = pad_rows((out.float() * dout.float()).sum(-1), 0.0)
    common = dict(Bias=padding.bias, KEnd=padding.key_end, L=length, H=batch_heads,
                  qk_scale=fwd.LOG2E / dim ** 0.5, sm_scale=1.0 / dim ** 0.5, l_bucket=length,
                  HEAD_DIM=dim, HAS_BIAS=False, IEEE=False, TOPK=topk, FULL_SUPPORT=False,
                  **{n: descs[n] for n in ("Q_desc", "K_desc", "V_desc", "DO_desc")})
    kernels = {"dkdv": (bwd.dkdv_kernel, dict(common, Kidx=k_idx, DK_desc=descs["DK_desc"], DV_desc=descs["DV_desc"],
                                             Lse_desc=row_descriptor(lse_pad), Delta_desc=row_descriptor(delta)),
                        "BLOCK_N", ("DK", "DV"), ref[1:]),
               "dq": (bwd.dq_kernel, dict(common, Qidx=q_idx, DQ_desc=descs["DQ_desc"], Lse=lse_pad, Delta=delta,
                                          L_PAD=lse_pad.shape[1]), "BLOCK_M", ("DQ",), ref[:1])}
    for name, configs in (("dkdv", args.dkdv_configs), ("dq", args.dq_configs)):
        kernel, kargs, grid_block, outs, expected = kernels[name]
        for block_m, block_n, warps, stages in configs:
            meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            grid = (triton.cdiv(length, meta[grid_block]), batch_heads)

            def run(kernel=kernel, grid=grid, kargs=kargs, meta=meta):
                bwd.set_bwd_block_shapes({**kargs, **meta})
                kernel[grid](**kargs, **meta)
            label = f"{name} {block_m}x{block_n} w{warps} s{stages}"
            try:
                ms = time_ms(run)[0]
                diff = max((grads[o].float() - e.float()).abs().max().item() for o, e in zip(outs, expected))
                rel = max(sfa_check.rel_err(grads[o], e) for o, e in zip(outs, expected))
                record("bwd", label, ms, f"maxdiff={diff:.1e} relerr={rel:.1e}")
            except Exception as exc:  # a config the compiler rejects is reported, not fatal
                record("bwd", label, float("nan"), repr(exc)[:160])


def explore_gluon_bwd(args, record, packs: dict, v: torch.Tensor, topk: int) -> None:
    """The Gluon backward kernels (``flash_sfa_bwd_gluon``) per --gluon-dq-configs / --gluon-dkdv-configs against
    the Triton kernels' outputs (``launch_backward`` with the Gluon backward turned off) and time."""
    from lra_sfa.kernels.sfa.gluon_bwd import gluon_dkdv, gluon_dq

    saved, dout = _backward_inputs(packs, v, topk)
    qd, kd, _, out, lse2, _, q_idx, k_idx = saved
    batch_heads = qd.shape[0]
    ref = launch_backward(saved, dout, batch_heads, False, topk, topk, kernels="triton")
    lse_pad = pad_rows(lse2, float("inf"))
    delta = pad_rows((out.float() * dout.float()).sum(-1), 0.0)
    for block_m, block_n, stages, maxnreg, *regs in args.gluon_dq_configs:
        run = partial(gluon_dq, qd, kd, v, dout, lse_pad, delta, q_idx, topk, block_m, block_n, stages, maxnreg,
                      *regs)
        label = f"gluon dq {block_m}x{block_n} s{stages} c2 maxnreg {maxnreg}" + "".join(
            f" consumer_regs {r}" for r in regs)
        try:
            got = run()
            record("gluon_bwd", label, time_ms(run)[0], f"relerr_vs_triton={sfa_check.rel_err(got, ref[0]):.1e} "
                   f"maxdiff={(got.float() - ref[0].float()).abs().max().item():.1e}")
        except Exception as exc:  # a config the compiler or the launch rejects is reported, not fatal
            record("gluon_bwd", label, float("nan"), repr(exc)[:300])
    for block_m, block_n, stages, maxnreg, *regs in args.gluon_dkdv_configs:
        run = partial(gluon_dkdv, qd, kd, v, dout, lse_pad, delta, k_idx, topk, block_m, block_n, stages,
                      maxnreg, *regs)
        label = f"gluon dkdv {block_m}x{block_n} s{stages} c2 maxnreg {maxnreg}" + "".join(
            f" {name} {r}" for name, r in zip(("consumer_regs", "prefetch"), regs))
        try:
            got = run()
            rel = max(sfa_check.rel_err(g, r) for g, r in zip(got, ref[1:]))
            finite = all(bool(torch.isfinite(g).all()) for g in got)
            record("gluon_bwd", label, time_ms(run)[0], f"relerr_vs_triton={rel:.1e} finite={finite}")
        except Exception as exc:  # a config the compiler or the launch rejects is reported, not fatal
            record("gluon_bwd", label, float("nan"), repr(exc)[:300])
    record("gluon_bwd", "launch_backward (Gluon where eligible)",
           time_ms(partial(launch_backward, saved, dout, batch_heads, False, topk, topk))[0])


def explore_backward_stages(args, record, packs: dict, v: torch.Tensor) -> None:
    """Where the backward's time goes: each kernel with stages taken out (``flash_sfa_bwd_stages``), at the first
    of --dkdv-configs / --dq-configs."""
    qd, kd = packs["q_dense"], packs["k_dense"]  # (B*H, L, D)
    out, lse2 = launch_forward(qd, kd, v, key_padding(None, qd.device), qd.shape[0], False)
    dout = torch.randn_like(out)
    delta = (out.float() * dout.float()).sum(-1)  # (B*H, L)
    for name, stages, config in (("dkdv", DKDV_STAGES, args.dkdv_configs[0]), ("dq", DQ_STAGES, args.dq_configs[0])):
        block_m, block_n, warps, num_stages = config
        for stage in stages:
            run = bwd_stage_runner(name, stage, qd, kd, v, dout, lse2, delta, block_m, block_n, warps, num_stages)
            record("bwd_stage", f"{name} {block_m}x{block_n} w{warps} s{num_stages}: {stage}", time_ms(run)[0])
