"""GPU correctness of the compiled kernels: out, dQ, dK and dV against float64 at shapes that take each path.

``CASES`` is the one list of float64 checks: ``mode=check`` runs it and writes
``sfa_gpu_checks.csv``, and ``tests/test_kernels_gpu.py`` (``pytest -m gpu``)
runs the same cases as tests. It covers every dispatched path: Gluon
(``kernels="auto"`` on sm_90) and Triton (``kernels="triton"``) at d = 64 and
128 and L = 1K, 8K and 32K in bf16, plus the Gluon forward's two launches and
its loose-bound fallback, top-k = D, padding, fp16 / fp32, d = 32 and L = 1;
and SDPA on the codes (``kernels="sdpa"``: ``codes.sdpa_sfa``, which
``sfa_attention(impl="auto")`` runs where ``dispatch.uses_sdpa`` allows).
Each row names the forward and the backward kernels (``dispatch.uses_gluon``,
the launcher's own choice) and the errors of out, dQ, dK, dV and the
forward-only output; the pass rule is DESIGN.md's (``kernels.sfa.check``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from lra_sfa.bench.kernels.rows import RowWriter
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa.autograd import flash_sfa
from lra_sfa.kernels.sfa.codes import sdpa_sfa
from lra_sfa.kernels.sfa.dispatch import kernel_path, uses_gluon
from lra_sfa.kernels.sfa.topk_pack import topk_pack

ERRORS = ("out", "dq", "dk", "dv", "out_nograd")


class CheckCase(NamedTuple):
    """One float64 check: shape, dtype, input scale, the ``kernels`` asked for ("auto", "triton", or "sdpa": SDPA
    on the codes) and the path expected on sm_90."""

    length: int
    dim: int
    topk: int
    padding: bool
    dtype: torch.dtype
    scale: float
    kernels: str
    expected: str

    @property
    def label(self) -> str:
        return (f"L{self.length}-d{self.dim}-k{self.topk}-pad{int(self.padding)}-"
                f"{str(self.dtype).removeprefix('torch.')}-x{self.scale:g}-{self.kernels}")


def _coverage() -> list[CheckCase]:
    """Gluon and Triton, d = 64 and 128, L = 1K, 8K and 32K, bf16, top-k 8: under "auto" on sm_90, d = 128
    runs Gluon both ways and d = 64 the Triton forward with the Gluon backward."""
    expected = {("auto", 128): "gluon", ("auto", 64): "triton_fwd+gluon_bwd"}
    return [CheckCase(length, dim, 8, False, torch.bfloat16, 1.0, kernels, expected.get((kernels, dim), "triton"))
            for length in (1024, 8192, 32768) for dim in (64, 128) for kernels in ("auto", "triton")]


CASES = _coverage() + [
    CheckCase(2048, 128, 8, False, torch.bfloat16, 1.0, "auto", "gluon"),  # two-warpgroup Gluon forward
    CheckCase(4096, 128, 8, False, torch.float16, 1.0, "auto", "triton_fwd+gluon_bwd"),
    CheckCase(256, 32, 8, False, torch.float16, 2.0, "auto", "triton"),  # a loose bound in fp16: runs online
    CheckCase(1024, 128, 8, False, torch.bfloat16, 40.0, "auto", "gluon"),  # a bound so loose every block goes online
    CheckCase(2048, 128, 128, False, torch.bfloat16, 1.0, "auto", "gluon"),  # topk = D
    CheckCase(1984, 128, 16, False, torch.bfloat16, 1.0, "auto", "gluon_fwd+triton_bwd"),  # one-warpgroup forward
    CheckCase(2048, 64, 16, False, torch.bfloat16, 1.0, "auto", "triton_fwd+gluon_bwd"),
    CheckCase(32768, 64, 16, False, torch.bfloat16, 1.0, "auto", "triton_fwd+gluon_bwd"),
    CheckCase(32768, 64, 16, False, torch.bfloat16, 1.0, "triton", "triton"),
    CheckCase(4097, 64, 8, False, torch.bfloat16, 1.0, "auto", "triton"),
    CheckCase(1000, 128, 16, True, torch.bfloat16, 1.0, "auto", "triton"),
    CheckCase(8192, 128, 8, True, torch.bfloat16, 1.0, "auto", "triton"),
    CheckCase(777, 32, 4, True, torch.float16, 1.0, "auto", "triton"),
    CheckCase(300, 128, 8, True, torch.float32, 1.0, "auto", "triton"),
    CheckCase(1, 64, 8, False, torch.bfloat16, 1.0, "auto", "triton"),
] + [CheckCase(length, dim, 8, False, torch.bfloat16, 1.0, "sdpa", "sdpa") for length in (1024, 8192)
     for dim in (64, 128)] + [
    CheckCase(1000, 64, 8, True, torch.bfloat16, 1.0, "sdpa", "sdpa"),
    CheckCase(2048, 32, 4, False, torch.float16, 2.0, "sdpa", "sdpa"),
]
CHECK_COLUMNS = ["L", "head_dim", "topk", "padding", "dtype", "scale", "kernels", "path", "fwd_path", "bwd_path",
                 "device", "git_commit", "torch_version", "triton_version", "cudnn_version"] + [
    f"{name}_{kind}" for name in ERRORS for kind in ("err", "torch_err")] + ["topk_ok", "ok"]


def case_inputs(case: CheckCase, device: str | torch.device = "cuda"):
    """q, k, v (B, H, L, D) and the padding mask (B, L) or None. One head past L = 8K (the plain-PyTorch
    comparison holds an L x L matrix per head), else two; with padding, a first batch row with random holes
    and its last third padding (the kernels' key loops end at its key end, inside a key tile), and a second
    row whose keys are all padding."""
    heads = 1 if case.length > 8192 else 2
    gen = torch.Generator(device=device).manual_seed(case.length + case.dim)
    q, k, v = (torch.randn(1, heads, case.length, case.dim, device=device, dtype=case.dtype, generator=gen)
               for _ in range(3))
    q, k = q * case.scale, k * case.scale
    if not case.padding:
        return q, k, v, None
    mask = torch.rand(2, case.length, device=device, generator=gen) > 0.3
    mask[0, max(1, 2 * case.length // 3 + 5):] = False
    mask[1] = False
    q, k, v = (torch.cat([t, t.flip(2)]) for t in (q, k, v))  # (2, H, L, D)
    return q, k, v, mask


def check_case(case: CheckCase, device: str | torch.device = "cuda") -> tuple[dict, dict]:
    """(the CSV row, ``full_check``'s result) of one case: the kernels' errors against float64 and which
    forward and backward kernels ran."""
    from lra_sfa.bench.kernels.protocol import provenance

    q, k, v, mask = case_inputs(case, device)
    if case.kernels == "sdpa":
        sides, path, fn = {"fwd_path": "sdpa", "bwd_path": "sdpa"}, "sdpa", sdpa_sfa
    else:
        shape = (q.device, q.dtype, case.length, case.dim, mask is not None, case.kernels)
        sides = {f"{part}_path": "gluon" if uses_gluon(*shape, backward=part == "bwd") else "triton"
                 for part in ("fwd", "bwd")}
        path, fn = kernel_path(*shape, backward=True), partial(flash_sfa, kernels=case.kernels)
    res = sfa_check.full_check(q, k, v, case.topk, mask, fn)
    info = provenance(q.device, "")
    row = dict(L=case.length, head_dim=case.dim, topk=case.topk, padding=case.padding,
               dtype=str(case.dtype).removeprefix("torch."), scale=case.scale, kernels=case.kernels,
               path=path, **sides, topk_ok=res["topk_ok"], ok=res["ok"],
               **{key: info[key] for key in ("device", "git_commit", "torch_version", "triton_version",
                                             "cudnn_version")},
               **{f"{n}_{kind}": f"{res[f'{n}_{kind}']:.2e}" for n in ERRORS for kind in ("err", "torch_err")})
    return row, res


def run_checks(out: Path, which: list[int] | None = None, device: str | torch.device = "cuda") -> bool:
    """``CASES`` (or the entries numbered ``which``) and the top-k edge rows, one row each into
    ``out/sfa_gpu_checks.csv`` (a fresh file); True when every one passes."""
    table = RowWriter(Path(out) / "sfa_gpu_checks.csv", CHECK_COLUMNS)
    all_ok = True
    for case in CASES if which is None else [CASES[i] for i in which]:
        row, _ = check_case(case, device)
        table.write(row)
        all_ok &= bool(row["ok"])
        print(f"check {case.label:44s} fwd={row['fwd_path']:6s} bwd={row['bwd_path']:6s} "
              + " ".join(f"{n}={row[n + '_err']}/{row[n + '_torch_err']}" for n in ERRORS)
              + f" ok={row['ok']}", flush=True)
    parts = topk_edge_rows(device)
    print("check topk_pack zero/subnormal rows " + " ".join(f"{name}={ok}" for name, ok in parts.items()), flush=True)
    return all_ok and all(parts.values())


def topk_edge_rows(device: str | torch.device = "cuda") -> dict[str, bool]:
    """topk_pack on the device on rows of zeros, of -0.0 and of bf16 subnormals, checked on the CPU:
    {check name: passed}."""
    x = torch.randn(4096, 128).to(torch.bfloat16)
    x[:1024] = 0.0
    x[1024:2048] = -0.0
    x[2048:3072] = (x[2048:3072].float() * torch.finfo(torch.bfloat16).smallest_normal / 16).to(torch.bfloat16)
    values, indices, dense = (t.cpu() for t in topk_pack(x.to(device), 8))
    ids = indices.long()
    return {"zero_rows_lowest_ids": bool((ids[:2048].sort(-1).values == torch.arange(8)).all()),
            "values_at_ids": torch.equal(torch.gather(x, -1, ids).view(torch.int16), values.view(torch.int16)),
            "dense_is_scatter": torch.equal(dense, torch.zeros_like(x).scatter(-1, ids, values)),
            "magnitudes_match_torch_topk": sfa_check.topk_agrees(x, values, 8)}
