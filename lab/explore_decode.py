"""Decode explorations: the block / warp / stage / split grid of each decode design, and the bounded loop's stages.

Runs ``lab.kernels.decode_designs``, the decode launcher with every design
kept (single pass, two pass, bounded, bounded with prefetch, stage ablations);
the shipped ``lra_sfa.kernels.decode`` keeps the single pass and the bounded
kernel with prefetch.
"""

from __future__ import annotations

from functools import partial

import torch

from lab.kernels.decode_designs import cache_key_range, pack_k_cache, sfa_decode
from lra_sfa.bench.kernels.calls import BACKENDS, DEVICE, random_qkv, sdpa_call, shape_for, time_ms

DECODE_DESIGNS = ("single", "twopass", "bounded", "prefetch")  # the optional fifth field of a decode config


def decode_launch(config: tuple[int, ...]) -> tuple[int, int, int, int, str]:
    """(BLOCK_N, warps, stages, programs per SM, design) from a config tuple whose fifth field is optional."""
    block_n, warps, stages, per_sm, *design = config
    return block_n, warps, stages, per_sm, DECODE_DESIGNS[design[0] if design else 0]


def explore_decode(args, record) -> None:
    """The decode kernel's block, warp, stage and split grid at the second-longest decode length, beside SDPA."""
    dim, topk = 128, args.topks[0]
    batch, heads = shape_for(args.decode_lengths[-2], args.decode_tokens)
    _, kc, vc = random_qkv(batch, heads, args.decode_lengths[-2], dim, torch.bfloat16, seed=3)
    qc = torch.randn(batch, heads, 1, dim, device=DEVICE, dtype=torch.bfloat16)
    k_vals, k_idx = pack_k_cache(kc, topk)
    ref = sfa_decode(qc, k_vals, k_idx, vc, topk)
    k_range = cache_key_range(k_vals, k_idx, dim)  # cache state, kept up to date on append: not timed
    decode_ms = {}
    for config in args.decode_configs:
        block_n, warps, stages, per_sm, design = decode_launch(config)
        run = partial(sfa_decode, qc, k_vals, k_idx, vc, topk, block_n=block_n, num_warps=warps, num_stages=stages,
                      programs_per_sm=per_sm, two_pass=design == "twopass",
                      k_range=k_range if design in ("bounded", "prefetch") else None, prefetch=design == "prefetch")
        name = f"sfa_decode L={kc.shape[2]} B*H={batch * heads} bn{block_n} w{warps} s{stages} p{per_sm}"
        name += f" {design}" * (design != "single")
        try:
            diff = (run().float() - ref.float()).abs().max().item()
            decode_ms[config] = time_ms(run)[0]
            record("decode", name, decode_ms[config], f"maxdiff={diff:.1e}")
        except Exception as exc:  # a config the compiler rejects is reported, not fatal
            record("decode", name, float("nan"), repr(exc)[:160])
    best = min(args.decode_configs, key=lambda c: decode_ms.get(c, float("inf")), default=None)
    if best is not None and decode_launch(best)[4] == "bounded":  # stage timing: take the V / score stage out
        block_n, warps, stages, per_sm, _ = decode_launch(best)
        for ablate, label in ((1, "without V (scores, exp2, sums)"), (2, "without scores (V stream, exp2)")):
            run = partial(sfa_decode, qc, k_vals, k_idx, vc, topk, block_n=block_n, num_warps=warps,
                          num_stages=stages, programs_per_sm=per_sm, k_range=k_range, _ablate=ablate)
            record("decode", f"bounded bn{block_n} w{warps} s{stages} p{per_sm} {label}", time_ms(run)[0],
                   "stage timing: output not checked")
    for name in BACKENDS:
        record("decode", f"{name} decode L={kc.shape[2]}", time_ms(sdpa_call(name, qc, kc, vc))[0])
