"""Forward explorations: where the bounded loop's time goes, and the Gluon forward's launches."""

from __future__ import annotations

from functools import partial

import torch

from lab.kernels.fwd_stages import FWD_STAGES, fwd_stage_runner
from lra_sfa.bench.kernels.calls import sdpa_call, time_ms
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa import triton_fwd as fwd
from lra_sfa.kernels.sfa.launcher import launch_forward
from lra_sfa.kernels.sfa.tiles import key_padding


def explore_forward_stages(args, record, packs: dict, v: torch.Tensor) -> None:
    """Where the bounded forward loop's time goes (``flash_sfa_fwd_stages``), at the tiles of the first
    --fwd-configs entry."""
    block_m, block_n, warps, stages = args.fwd_configs[0][:4]
    for stage in FWD_STAGES:
        run = fwd_stage_runner(stage, packs["q_dense"], packs["k_dense"], v, block_m, block_n, warps, stages)
        record("fwd_stage", f"bounded {block_m}x{block_n} w{warps} s{stages}: {stage}", time_ms(run)[0])


def explore_gluon(args, record, packs: dict, v: torch.Tensor) -> None:
    """The experimental warp-specialised Gluon forward (``flash_sfa_gluon``) per --gluon-configs, against the
    Triton kernel's output, beside cuDNN on the same sparsified data."""
    from lra_sfa.kernels.sfa.gluon_fwd import gluon_ws_forward

    qd, kd = packs["q_dense"], packs["k_dense"]
    ref, _ = launch_forward(qd, kd, v, key_padding(None, qd.device), qd.shape[0], False,
                            fwd.fwd_config(64, 64, 4, 3, bounded=True))  # the Triton kernel (a forced config)
    for block_m, block_n, stages, consumers, maxnreg, *regs in args.gluon_configs:
        run = partial(gluon_ws_forward, qd, kd, v, block_m, block_n, stages, consumers, maxnreg, *regs)
        label = f"gluon ws {block_m}x{block_n} s{stages} c{consumers} maxnreg {maxnreg}" + "".join(
            f" consumer_regs {r}" for r in regs)
        try:
            got, _ = run()
            rel = sfa_check.rel_err(got, ref)
            finite = bool(torch.isfinite(got).all())
            record("gluon", label, time_ms(run)[0], f"relerr_vs_triton={rel:.1e} finite={finite}")
        except Exception as exc:  # a config the compiler or the launch rejects is reported, not fatal
            record("gluon", label, float("nan"), repr(exc)[:300])
    batch_heads, length, dim = qd.shape
    shaped = [t.reshape(1, batch_heads, length, dim) for t in (qd, kd, v)]
    record("gluon", "cudnn fwd sparse (same codes)", time_ms(sdpa_call("cudnn", *shaped))[0])
