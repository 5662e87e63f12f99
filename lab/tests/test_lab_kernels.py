"""The lab's kernels on the CPU interpreter: losing forward designs, stage ablations, every decode design.

Not collected by ``make test`` (pyproject testpaths is tests/); run with
``python -m pytest -q -p no:xdist lab/tests`` from the repository root.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported by the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from lra_sfa.kernels.sfa import check as sfa_check  # noqa: E402
from lra_sfa.kernels.sfa.reference import sfa_chunked  # noqa: E402
from lra_sfa.kernels.sfa.topk_pack import topk_pack  # noqa: E402

HEAD_DIM = 16


def _inputs(batch, heads, length, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=gen).to(dtype) for _ in range(3)]


@pytest.fixture(autouse=True)
def _require_interpreter():
    from lra_sfa.kernels.sfa import triton_fwd

    if type(triton_fwd._flash_sfa_fwd_kernel).__name__ != "InterpretedFunction":
        pytest.skip("Triton kernels were compiled for GPU before TRITON_INTERPRET=1 was set")


@pytest.mark.parametrize("name", ["gather", "packed_k", "pointer_loads"])
def test_losing_designs_compute_the_same_function(name):
    from lab.kernels.fwd_variants import run_variant

    q, k, v = _inputs(1, 2, 64, HEAD_DIM, torch.float32, seed=13)
    packs = {}
    for prefix, t in (("q", q), ("k", k)):
        vals, idx, dense = topk_pack(t[0], 4)
        packs.update({f"{prefix}_vals": vals, f"{prefix}_idx": idx, f"{prefix}_dense": dense})
    out = run_variant(name, packs, v[0].contiguous(), block_m=32, block_n=32, num_warps=4, num_stages=1)
    assert sfa_check.rel_err(out, sfa_chunked(q.double(), k.double(), v.double(), 4)[0]) < 1e-5


def test_backward_stage_ablations_whole_kernels_match_the_real_ones():
    """The stage-ablation kernels (benchmark only) cut at 'whole' compute the real backward kernels' dK, dV and
    dQ before the support masks; the cut stages run and return finite values."""
    from lab.kernels.bwd_stages import DKDV_STAGES, DQ_STAGES, bwd_stage_runner
    from lra_sfa.kernels.sfa.launcher import launch_backward, launch_forward
    from lra_sfa.kernels.sfa.tiles import key_padding

    q, k, v = (t[0].contiguous() for t in _inputs(1, 2, 64, HEAD_DIM, torch.float32, seed=19))  # (B*H, L, D)
    (_, q_idx, qd), (_, k_idx, kd) = topk_pack(q, 4), topk_pack(k, 4)
    padding = key_padding(None, q.device)
    out, lse2 = launch_forward(qd, kd, v, padding, 2, False)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    dq, dk, dv = launch_backward((qd, kd, v, out, lse2, padding, q_idx, k_idx), dout, 2, False, 4, 4)
    delta = (out * dout).sum(-1)
    stage_out = {(name, stage): bwd_stage_runner(name, stage, qd, kd, v, dout, lse2, delta, 32, 32, 4, 1)()
                 for name, stages in (("dkdv", DKDV_STAGES), ("dq", DQ_STAGES)) for stage in stages}
    whole_dk, whole_dv = stage_out[("dkdv", "whole")]
    (whole_dq,) = stage_out[("dq", "whole")]
    assert torch.allclose(whole_dv, dv, rtol=1e-5, atol=1e-6)
    assert torch.allclose(whole_dk * (kd != 0), dk, rtol=1e-5, atol=1e-6)
    assert torch.allclose(whole_dq * (qd != 0), dq, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(whole_dk, whole_dk * (kd != 0))  # the ablation really skips the mask
    for variant in ("whole, masked lse/delta loads", "whole, delta loaded first"):
        assert all(torch.equal(a, b) for a, b in zip(stage_out[("dkdv", variant)], (whole_dk, whole_dv)))
    assert all(torch.isfinite(t).all() for outs in stage_out.values() for t in outs)
    with pytest.raises(ValueError, match="unknown kernel/stage"):
        bwd_stage_runner("dq", "+dV", qd, kd, v, dout, lse2, delta, 32, 32, 4, 1)


def test_forward_stage_ablation_whole_matches_the_bounded_kernel():
    """The forward's stage-ablation kernel (benchmark only) cut at 'whole' computes what the real kernel's
    bounded path computes (output and lse2); every cut stage runs, and the stages that keep exp2 give a
    finite lse2."""
    from lab.kernels.fwd_stages import FWD_STAGES, fwd_stage_runner
    from lra_sfa.kernels.sfa import triton_fwd as fwd
    from lra_sfa.kernels.sfa.launcher import launch_forward
    from lra_sfa.kernels.sfa.tiles import key_padding

    q, k, v = (t[0].contiguous() for t in _inputs(1, 2, 64, HEAD_DIM, torch.float32, seed=23))  # (B*H, L, D)
    (_, _, qd), (_, _, kd) = topk_pack(q, 4), topk_pack(k, 4)
    out, lse2 = launch_forward(qd, kd, v, key_padding(None, q.device), 2, False,
                               config=fwd.fwd_config(32, 32, 4, 1, bounded=True))
    got = {stage: fwd_stage_runner(stage, qd, kd, v, 32, 32, 4, 1)() for stage in FWD_STAGES}
    whole_out, whole_lse = got["whole"]
    assert torch.allclose(whole_out, out, rtol=1e-5, atol=1e-6)
    assert torch.allclose(whole_lse, lse2, rtol=1e-6, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(got["whole, q in registers"], got["whole"]))
    for stage in ("+exp2", "whole, no Q.K^T"):
        assert torch.isfinite(got[stage][1]).all()
    assert not torch.allclose(got["whole, no exp2"][0], whole_out)  # the cut stage really computes less
    with pytest.raises(ValueError, match="unknown stage"):
        fwd_stage_runner("+dV", qd, kd, v, 32, 32, 4, 1)


@pytest.mark.parametrize("design", ["single_pass", "two_pass", "bounded", "prefetch"])
@pytest.mark.parametrize("length,padding", [(1, False), (100, True), (257, False)])
def test_every_decode_design_passes_against_float64(length, padding, design):
    """Each decode design of the lab's launcher (the shipped one keeps the single pass and the bounded one with
    prefetch) passes DESIGN.md's rule against float64."""
    from lab.kernels.decode_designs import cache_key_range, pack_k_cache, sfa_decode

    gen = torch.Generator().manual_seed(length)
    q = torch.randn(2, 2, 2, 32, generator=gen)
    k, v = (torch.randn(2, 2, length, 32, generator=gen) for _ in range(2))
    mask = (torch.rand(2, length, generator=gen) > 0.3) if padding else None
    if mask is not None:
        mask[:, 0] = True
    k_vals, k_idx = pack_k_cache(k, 4)
    k_range = cache_key_range(k_vals, k_idx, 32) if design in ("bounded", "prefetch") else None
    out = sfa_decode(q, k_vals, k_idx, v, 4, key_padding_mask=mask, num_splits=3, two_pass=design == "two_pass",
                     k_range=k_range, prefetch=design == "prefetch")
    _, _, qd = topk_pack(q, 4)
    kd = torch.zeros_like(k).scatter(-1, k_idx.long(), k_vals)
    exact = sfa_check.plain_attention(qd.double(), kd.double(), v.double(), mask)  # (B, H, T, D)
    plain = sfa_check.plain_attention(qd, kd, v, mask)
    assert sfa_check.passes(sfa_check.rel_err(out, exact), sfa_check.rel_err(plain, exact), torch.float32)
