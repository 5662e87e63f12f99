"""GPU checks of every dispatched FlashSFA path against float64 (``pytest -m gpu``; skipped without CUDA).

Each case runs forward and backward through ``flash_sfa`` and compares out,
dQ, dK, dV and the forward-only output with the float64 reference by
DESIGN.md's rule (``kernels.sfa.check.full_check``: err(kernel) <= 2 x
err(plain PyTorch in the same dtype) + a dtype margin). The cases cover the
Gluon forward's two launches and its loose-bound fallback, the Gluon and
Triton backward, the Triton kernels forced at the Gluon shapes, padding,
fp16 / fp32, d = 32, 64 and 128 and L from 1 to 32K; each asserts first that
``dispatch.kernel_path`` names the kernels it expects. With
LRA_SFA_GPU_SUMMARY=<file.csv> the module writes one row per case there.
"""

from __future__ import annotations

import csv
import os
from functools import partial

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run with pytest -m gpu on the GPU machine)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 runs no GPU kernel"),
]

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
# (L, D, topk, padding, dtype, input scale, kernels, path expected on an H100 / H200)
CASES = [
    (2048, 128, 8, False, torch.bfloat16, 1.0, "auto", "gluon"),  # two-warpgroup Gluon forward, Gluon backward
    (4096, 128, 8, False, torch.float16, 1.0, "auto", "gluon"),
    (1024, 128, 8, False, torch.bfloat16, 40.0, "auto", "gluon"),  # a bound so loose every block goes online
    (2048, 128, 128, False, torch.bfloat16, 1.0, "auto", "gluon"),  # topk = D
    (1984, 128, 16, False, torch.bfloat16, 1.0, "auto", "gluon_fwd+triton_bwd"),  # one-warpgroup forward
    (2048, 64, 16, False, torch.bfloat16, 1.0, "auto", "triton_fwd+gluon_bwd"),
    (32768, 128, 8, False, torch.bfloat16, 1.0, "auto", "gluon"),
    (32768, 64, 16, False, torch.bfloat16, 1.0, "auto", "triton_fwd+gluon_bwd"),
    (2048, 128, 8, False, torch.bfloat16, 1.0, "triton", "triton"),
    (32768, 128, 8, False, torch.bfloat16, 1.0, "triton", "triton"),
    (32768, 64, 16, False, torch.bfloat16, 1.0, "triton", "triton"),
    (4097, 64, 8, False, torch.bfloat16, 1.0, "auto", "triton"),
    (1000, 128, 16, True, torch.bfloat16, 1.0, "auto", "triton"),
    (8192, 128, 8, True, torch.bfloat16, 1.0, "auto", "triton"),
    (777, 32, 4, True, torch.float16, 1.0, "auto", "triton"),
    (300, 128, 8, True, torch.float32, 1.0, "auto", "triton"),
    (1, 64, 8, False, torch.bfloat16, 1.0, "auto", "triton"),
]
COLUMNS = ["L", "head_dim", "topk", "padding", "dtype", "scale", "kernels", "path", "device", "torch", "triton"] + [
    f"{name}_{kind}" for name in ("out", "dq", "dk", "dv", "out_nograd") for kind in ("err", "torch_err")] + ["ok"]


@pytest.fixture(scope="module")
def summary():
    rows: list[dict] = []
    yield rows
    path = os.environ.get("LRA_SFA_GPU_SUMMARY")
    if path and rows:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def _qkv(length: int, dim: int, dtype: torch.dtype, scale: float, heads: int):
    gen = torch.Generator(device="cuda").manual_seed(length + dim)
    q, k, v = (torch.randn(1, heads, length, dim, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    return q * scale, k * scale, v


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"L{c[0]}-d{c[1]}-k{c[2]}-pad{int(c[3])}-"
                         f"{str(c[4]).removeprefix('torch.')}-x{c[5]:g}-{c[6]}")
def test_kernels_match_float64(case, summary):
    import triton

    from lra_sfa.kernels.sfa import check as sfa_check
    from lra_sfa.kernels.sfa.autograd import flash_sfa
    from lra_sfa.kernels.sfa.dispatch import kernel_path

    length, dim, topk, padding, dtype, scale, kernels, expected = case
    heads = 1 if length > 8192 else 2  # the plain-PyTorch comparison holds an L x L matrix per head
    q, k, v = _qkv(length, dim, dtype, scale, heads)
    mask = None
    if padding:
        mask = torch.rand(2, length, device="cuda") > 0.3
        mask[1] = False  # a batch row whose keys are all padding
        q, k, v = (torch.cat([t, t.flip(2)]) for t in (q, k, v))  # (2, H, L, D)
    path = kernel_path(q.device, dtype, length, dim, padding, kernels, backward=True)
    if HOPPER:
        assert path == expected
    res = sfa_check.full_check(q, k, v, topk, mask, partial(flash_sfa, kernels=kernels))
    names = ("out", "dq", "dk", "dv", "out_nograd")
    summary.append(dict(L=length, head_dim=dim, topk=topk, padding=padding, dtype=str(dtype).removeprefix("torch."),
                        scale=scale, kernels=kernels, path=path, device=torch.cuda.get_device_name(),
                        torch=torch.__version__, triton=triton.__version__, ok=res["ok"],
                        **{f"{n}_{kind}": f"{res[f'{n}_{kind}']:.2e}" for n in names for kind in ("err", "torch_err")}))
    assert res["topk_ok"], "topk_pack's kept magnitudes differ from torch.topk's"
    failed = {n: (res[f"{n}_err"], res[f"{n}_torch_err"]) for n in names if not res[f"{n}_ok"]}
    assert not failed, f"{path}: kernel error above 2 x plain PyTorch's + margin (kernel, torch): {failed}"


@pytest.mark.skipif(not HOPPER, reason="the Gluon kernels need sm_90 (H100 / H200)")
def test_attn_path_says_gluon_when_gluon_ran(monkeypatch):
    """SFAAttention's last_path (the record's attn_path) is "gluon" exactly when the Gluon kernels ran."""
    from lra_sfa.kernels.sfa import gluon_bwd, gluon_fwd
    from lra_sfa.sfa import SFAAttention

    calls = []
    for module, name in ((gluon_fwd, "gluon_ws_forward"), (gluon_bwd, "gluon_dq"), (gluon_bwd, "gluon_dkdv")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    q, k, v = (t.requires_grad_(True) for t in _qkv(2048, 128, torch.bfloat16, 1.0, 2))
    for impl, path, ran in (("auto", "gluon", {"gluon_ws_forward", "gluon_dq", "gluon_dkdv"}),
                            ("gluon", "gluon", {"gluon_ws_forward", "gluon_dq", "gluon_dkdv"}),
                            ("triton", "triton", set())):
        calls.clear()
        backend = SFAAttention(topk=8, impl=impl, head_dim=128)
        backend(q, k, v).sum().backward()
        assert backend.last_path == path and set(calls) == ran, (impl, backend.last_path, calls)
    with pytest.raises(ValueError, match="kernels='gluon' cannot run"):
        SFAAttention(topk=8, impl="gluon")(q.float(), k.float(), v.float())
    assert SFAAttention(topk=8, impl="gluon").unsupported_reasons(q[..., :64], k[..., :64], v[..., :64])
