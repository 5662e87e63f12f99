"""GPU correctness of the compiled kernels: forward and dQ/dK/dV against float64 at shapes that take each path.

``--mode check`` runs ``GPU_CHECKS`` (every dispatched path: the Gluon forward's
two launches, the Gluon and Triton backward, padding, fp16 / fp32, a loose
score bound) and the top-k edge rows, writing one row each to
``sfa_explore.csv``; the pass rule is DESIGN.md's (``kernels.sfa.check``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lra_sfa.bench.kernels.calls import DEVICE, random_qkv
from lra_sfa.bench.kernels.rows import RowWriter
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa.autograd import flash_sfa
from lra_sfa.kernels.sfa.dispatch import gluon_bwd_eligible, gluon_eligible
from lra_sfa.kernels.sfa.topk_pack import topk_pack

# (L, D, topk, padding, dtype[, input scale]). On an H100/H200, 2048, 4096 and 1024 at D=128 (the last with a bound
# so loose that every block takes the online fallback) run the Gluon forward's two-warpgroup launch and the Gluon
# backward, 1984 (a multiple of 64, not of 128) the one-warpgroup forward and the Triton backward
# (dispatch.gluon_config), 2048 at D=64 the Triton forward and the Gluon backward
GPU_CHECKS = [(1, 64, 8, False, torch.bfloat16), (100, 128, 8, True, torch.bfloat16),
              (1000, 128, 16, True, torch.bfloat16), (4097, 64, 8, False, torch.bfloat16),
              (777, 32, 4, True, torch.float16), (300, 128, 8, True, torch.float32),
              (2048, 128, 128, False, torch.bfloat16), (4096, 128, 8, False, torch.bfloat16),
              (1024, 128, 8, False, torch.bfloat16, 40.0), (1984, 128, 16, False, torch.bfloat16),
              (2048, 64, 16, False, torch.bfloat16)]


def row_log(out: str):
    """record(section, name, ms, note): one row of sfa_explore.csv, echoed to stdout."""
    log = RowWriter(Path(out) / "sfa_explore.csv", ["section", "name", "ms", "note"])

    def record(section: str, name: str, ms: float, note: str = "") -> None:
        log.write(dict(section=section, name=name, ms=round(ms, 4), note=note))
        print(f"{section:8s} {name:44s} {ms:9.4f} ms  {note}", flush=True)

    return record


def gpu_checks(record, which: list[int] | None = None) -> bool:
    """Forward and backward of the compiled kernels against the float64 reference at GPU_CHECKS (or the
    entries numbered ``which``)."""
    all_ok = True
    for length, dim, topk, pad, dtype, *scale in (GPU_CHECKS if which is None else
                                                  [GPU_CHECKS[i] for i in which]):
        q, k, v = random_qkv(2, 3, length, dim, dtype, seed=length)
        if scale:
            q, k = q * scale[0], k * scale[0]
        mask = (torch.rand(2, length, device=DEVICE) > 0.3) if pad else None
        if mask is not None:
            mask[1] = False
        res = sfa_check.full_check(q, k, v, topk, mask, flash_sfa)
        errs = " ".join(f"{n}={res[n + '_err']:.1e}/{res[n + '_torch_err']:.1e}"
                        for n in ("out", "dq", "dk", "dv", "out_nograd"))
        paths = " ".join(f"{op}={'gluon' if test(q, pad) else 'triton'}"
                         for op, test in (("fwd", gluon_eligible), ("bwd", gluon_bwd_eligible)))
        record("check", f"L={length} d={dim} k={topk} pad={pad} {dtype} scale={(scale or [1.0])[0]} {paths}", 0.0,
               f"{errs} ok={res['ok']}")
        all_ok &= bool(res["ok"])
    parts = topk_edge_rows()
    record("check", "topk_pack zero/subnormal rows", 0.0, " ".join(f"{name}={ok}" for name, ok in parts.items()))
    return all_ok and all(parts.values())


def topk_edge_rows() -> dict[str, bool]:
    """topk_pack on the GPU on rows of zeros, of -0.0 and of bf16 subnormals, checked on the CPU:
    {check name: passed}."""
    x = torch.randn(4096, 128).to(torch.bfloat16)
    x[:1024] = 0.0
    x[1024:2048] = -0.0
    x[2048:3072] = (x[2048:3072].float() * torch.finfo(torch.bfloat16).smallest_normal / 16).to(torch.bfloat16)
    values, indices, dense = (t.cpu() for t in topk_pack(x.to(DEVICE), 8))
    ids = indices.long()
    return {"zero_rows_lowest_ids": bool((ids[:2048].sort(-1).values == torch.arange(8)).all()),
            "values_at_ids": torch.equal(torch.gather(x, -1, ids).view(torch.int16), values.view(torch.int16)),
            "dense_is_scatter": torch.equal(dense, torch.zeros_like(x).scatter(-1, ids, values)),
            "magnitudes_match_torch_topk": sfa_check.topk_agrees(x, values, 8)}
