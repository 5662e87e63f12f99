"""Explore the SFA kernels on the GPU: tile configs, losing designs, stage ablations, Gluon launches, decode grids.

    python -m lab.kernel_explore --out $OUT [--sections fwd gluon ...]

Each section times its candidates at one long shape (``--explore-length``,
``--explore-dim``) and writes a row per candidate to ``$OUT/sfa_explore.csv``
(section, name, ms, note: the output's difference from the shipped kernel).
Sections: checks (the GPU checks of ``lra_sfa.bench.kernels mode=check``, into sfa_gpu_checks.csv),
topk, fwd, fwd_stages, gluon, variants, bwd, bwd_stages, gluon_bwd, full, decode.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from lab.explore_bwd import explore_backward, explore_backward_stages, explore_gluon_bwd
from lab.explore_decode import explore_decode
from lab.explore_fwd import explore_forward_stages, explore_gluon
from lab.kernels.fwd_variants import ABLATION_MODES, run_variant
from lra_sfa.bench.kernels.calls import (
    BACKENDS,
    DEVICE,
    leaf,
    random_qkv,
    sdpa_call,
    sfa_call,
    time_ms,
    torch_topk_codes,
)
from lra_sfa.bench.kernels.check import run_checks
from lra_sfa.bench.kernels.prefill import forward_config
from lra_sfa.bench.kernels.rows import RowWriter
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa import triton_bwd as bwd
from lra_sfa.kernels.sfa import triton_fwd as fwd
from lra_sfa.kernels.sfa.launcher import launch_forward
from lra_sfa.kernels.sfa.tiles import key_padding
from lra_sfa.kernels.sfa.topk_pack import topk_pack

SECTIONS = ("checks", "topk", "fwd", "fwd_stages", "gluon", "variants", "bwd", "bwd_stages", "gluon_bwd", "full",
            "decode")


def row_log(out: str):
    """record(section, name, ms, note): one row of sfa_explore.csv, echoed to stdout."""
    log = RowWriter(Path(out) / "sfa_explore.csv", ["section", "name", "ms", "note"])

    def record(section: str, name: str, ms: float, note: str = "") -> None:
        log.write(dict(section=section, name=name, ms=round(ms, 4), note=note))
        print(f"{section:8s} {name:44s} {ms:9.4f} ms  {note}", flush=True)

    return record


def _topk_both(q: torch.Tensor, k: torch.Tensor, topk: int) -> None:
    topk_pack(q, topk)
    topk_pack(k, topk)


def explore(args) -> None:
    """GPU correctness on small shapes, then the forward designs and configs at one long shape, then decode.

    ``--sections`` picks the parts (see EXPLORE_SECTIONS), so one device call can time just one of them.
    """
    record, sections = row_log(args.out), set(args.sections)
    if "checks" in sections:
        run_checks(Path(args.out))
    if "topk" in sections:
        x = torch.randn(args.topk_rows, 128, device=DEVICE, dtype=torch.bfloat16)
        for topk in args.topks:
            record("topk", f"topk_pack {x.shape[0]}x128 k={topk}", time_ms(partial(topk_pack, x, topk))[0])
            for elems, warps in args.topk_launches:
                record("topk", f"topk_pack {x.shape[0]}x128 k={topk} elems={elems} w{warps}",
                       time_ms(partial(topk_pack, x, topk, True, elems, warps))[0])
            record("topk", f"torch.topk+scatter {x.shape[0]}x128 k={topk}",
                   time_ms(partial(torch_topk_codes, x, topk))[0])
        del x
    if sections & {"fwd", "fwd_stages", "gluon", "variants", "bwd", "bwd_stages", "gluon_bwd", "full"}:
        explore_prefill(args, record, sections)
    if "decode" in sections:
        explore_decode(args, record)


def explore_prefill(args, record, sections: set[str]) -> None:
    """Forward tile configs (design A), the losing designs and ablations, then the full op beside SDPA."""
    length, dim, topk = args.explore_length, args.explore_dim, args.topks[0]
    q, k, v = random_qkv(1, 16, length, dim, torch.bfloat16, seed=1)
    flat = (16, length, dim)
    packs = {}
    for name, t in (("q", q), ("k", k)):
        vals, idx, dense = topk_pack(t, topk)
        packs.update({f"{name}_vals": vals.reshape(16, length, topk), f"{name}_idx": idx.reshape(16, length, topk),
                      f"{name}_dense": dense.reshape(flat)})
    vf, padding = v.reshape(flat), key_padding(None, q.device)
    ref, _ = launch_forward(packs["q_dense"], packs["k_dense"], vf, padding, 16, False)
    for bm, bn, warps, stages, ws, *extra in args.fwd_configs if "fwd" in sections else ():
        bounded, fused, rowsum_2d = (bool(x) for x in (list(extra) + [0, 0, 0])[:3])
        cfg = fwd.fwd_config(bm, bn, warps, stages, bool(ws), bounded, rowsum_2d)
        name = (f"tma {bm}x{bn} w{warps} s{stages} ws{ws}{' bounded' * bounded}"
                f"{' fused_q_topk' * fused}{' rowsum_2d' * rowsum_2d}")
        q_in = q.reshape(flat) if fused else packs["q_dense"]  # dense q: the kernel selects its top-k
        run = partial(launch_forward, q_in, packs["k_dense"], vf, padding, 16, False, cfg, topk if fused else 0)
        try:
            ms = time_ms(run)[0]
            got, _ = run()
            record("design_A", name, ms, f"maxdiff={(got.float() - ref.float()).abs().max().item():.1e} "
                   f"relerr={sfa_check.rel_err(got, ref):.1e}")
        except Exception as exc:  # a config the compiler rejects is reported, not fatal
            record("design_A", name, float("nan"), repr(exc)[:160])
    if "fwd_stages" in sections:
        explore_forward_stages(args, record, packs, vf)
    if "gluon" in sections:
        explore_gluon(args, record, packs, vf)
    for name in ("gather", "packed_k", *ABLATION_MODES) if "variants" in sections else ():
        for bn, stages in ((64, 3), (128, 2)):
            ms = time_ms(partial(run_variant, name, packs, vf, 128, bn, 8, stages))[0]
            got = run_variant(name, packs, vf, 128, bn, 8, stages)
            record("variant", f"{name} 128x{bn} w8 s{stages}", ms,
                   f"maxdiff={(got.float() - ref.float()).abs().max().item():.1e}")
    if "bwd" in sections:
        explore_backward(args, record, packs, vf, topk)
    if "bwd_stages" in sections:
        explore_backward_stages(args, record, packs, vf)
    if "gluon_bwd" in sections:
        explore_gluon_bwd(args, record, packs, vf, topk)
    if "full" not in sections:
        return
    record("full", "flash_sfa fwd (top-k + forward kernel)", time_ms(sfa_call(q, k, v, topk))[0],
           forward_config(q))
    record("full", "topk_pack q and k", time_ms(partial(_topk_both, q, k, topk))[0])
    record("full", "topk_pack k (the forward-only path's)", time_ms(partial(topk_pack, k, topk))[0])
    grad = torch.randn_like(q)
    leaves = tuple(leaf(t) for t in (q, k, v))
    record("full", "flash_sfa fwd+bwd", time_ms(sfa_call(*leaves, topk, grad))[0],
           f"dkdv {bwd.dkdv_tuned.best_config} dq {bwd.dq_tuned.best_config}")
    sparse = (packs["q_dense"].reshape(q.shape), packs["k_dense"].reshape(k.shape), v)
    for name in BACKENDS:
        for label, inputs in (("random", (q, k, v)), ("sparse", sparse)):
            record("sdpa", f"{name} fwd {label}", time_ms(sdpa_call(name, *inputs))[0])
            record("sdpa", f"{name} fwd+bwd {label}", time_ms(sdpa_call(name, *(leaf(t) for t in inputs), grad))[0])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--explore-length", type=int, default=16384)
    parser.add_argument("--explore-dim", type=int, default=128, help="head dim of the prefill sections")
    parser.add_argument("--topks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--topk-rows", type=int, default=2**20)
    parser.add_argument("--decode-lengths", type=int, nargs="+", default=[2**13, 2**15, 2**17, 2**19])
    parser.add_argument("--decode-tokens", type=int, default=2**24, help="batch*heads*L per decode shape")
    parser.add_argument("--decode-configs", type=_ints, nargs="+",
                        default=[(32, 4, 3, 16), (32, 4, 3, 16, 2), (32, 4, 3, 32, 2), (32, 4, 3, 16, 3),
                                 (32, 4, 3, 32, 3), (32, 4, 3, 64, 3), (64, 4, 3, 32, 3)],
                        help="BLOCK_N,warps,stages,programs_per_sm[,design] tuples; design 0 single pass, 1 two "
                        "pass, 2 bounded, 3 bounded with register prefetch (explore_decode.DECODE_DESIGNS)")
    parser.add_argument("--topk-launches", type=_ints, nargs="+", default=[(4096, 4), (2048, 4), (8192, 8), (4096, 8)],
                        help="elements_per_program,warps tuples for the topk section")
    parser.add_argument("--fwd-configs", type=_ints, nargs="+",
                        default=[(128, 128, 8, 3, 0), (128, 64, 8, 3, 0), (64, 64, 4, 3, 0), (128, 128, 8, 3, 0, 1),
                                 (128, 64, 8, 3, 0, 1), (64, 64, 4, 3, 0, 1), (64, 128, 4, 3, 0, 1)],
                        help="BLOCK_M,BLOCK_N,warps,stages,warp_specialize[,bounded[,fused_q_topk[,rowsum_2d]]]")
    parser.add_argument("--gluon-configs", type=_ints, nargs="+",
                        default=[(64, 64, 3, 1, 128), (64, 64, 4, 2, 168, 240), (64, 128, 2, 2, 168, 240)],
                        help="BLOCK_M,BLOCK_N,stages,consumers,maxnreg[,consumer_regs] of the Gluon forward")
    parser.add_argument("--gluon-dq-configs", type=_ints, nargs="+",
                        default=[(64, 128, 2, 168, 240), (64, 64, 3, 168, 240)],
                        help="BLOCK_M,BLOCK_N,stages,maxnreg[,consumer_regs] of the Gluon dQ kernel")
    parser.add_argument("--gluon-dkdv-configs", type=_ints, nargs="+",
                        default=[(64, 64, 3, 168, 240, 1), (64, 64, 4, 168, 240, 1), (64, 64, 3, 168, 240)],
                        help="BLOCK_M,BLOCK_N,stages,maxnreg[,consumer_regs[,prefetch]] of the Gluon dK/dV kernel")
    parser.add_argument("--dkdv-configs", type=_ints, nargs="+",
                        default=[(64, 128, 8, 4), (64, 128, 8, 3), (32, 64, 4, 4)],
                        help="BLOCK_M,BLOCK_N,warps,stages of the Triton dK/dV kernel")
    parser.add_argument("--dq-configs", type=_ints, nargs="+",
                        default=[(128, 64, 8, 3), (64, 128, 4, 3), (128, 32, 4, 3)],
                        help="BLOCK_M,BLOCK_N,warps,stages of the Triton dQ kernel")
    return parser.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv=None) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("lab.kernel_explore needs a CUDA device")
    explore(parse_args(argv))


if __name__ == "__main__":
    main()
