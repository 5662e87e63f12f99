"""sfa_attention (reference path) against a dense fp64 SFA reference, forward and gradient."""

from __future__ import annotations

import pytest
import torch

import lra_sfa.kernels.sfa.reference as sfa_ref
from lra_sfa import sfa_attention
from lra_sfa.kernels import sfa_dense_reference


def _inputs(B, H, L, D, dtype, pad, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(3))
    mask = None
    if pad:
        mask = torch.rand(B, L, generator=gen) > 0.3
        mask[:, 0] = True
    return q, k, v, mask


@pytest.mark.parametrize("L", [1, 17, 100, 257])
@pytest.mark.parametrize("topk", [1, 4, 16])
@pytest.mark.parametrize("pad", [False, True])
def test_reference_matches_dense_fp64(L, topk, pad):
    q, k, v, mask = _inputs(2, 3, L, 16, torch.float64, pad, seed=L * 31 + topk)
    out = sfa_attention(q, k, v, topk, key_padding_mask=mask, impl="reference")
    ref = sfa_dense_reference(q, k, v, topk, key_padding_mask=mask)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_error_within_rule(dtype):
    """err(reference in dtype) <= 2 x err(plain dense PyTorch in dtype) + margin, both vs fp64."""
    q, k, v, mask = _inputs(2, 2, 100, 32, torch.float64, True, seed=7)
    exact = sfa_dense_reference(q, k, v, 8, key_padding_mask=mask)
    low = [t.detach().to(dtype) for t in (q, k, v)]
    # the top-k support is taken from the fp64 values so both sides sparsify identically
    out = sfa_attention(*low, 8, key_padding_mask=mask, impl="reference").double()
    plain = sfa_dense_reference(*low, 8, key_padding_mask=mask).double()
    margin = 1e-6 if dtype == torch.float32 else 1e-2
    assert (out - exact).abs().max() <= 2 * (plain - exact).abs().max() + margin


def test_chunking_is_exact_and_bounded(monkeypatch):
    """Force many small chunks: same result, and no chunk holds all L x L scores."""
    q, k, v, mask = _inputs(1, 2, 300, 16, torch.float64, True, seed=3)
    seen = []
    original = sfa_ref._chunk_size

    def small(batch_heads, length, budget=None):
        rows = original(batch_heads, length, 4096)
        seen.append(rows)
        return rows

    monkeypatch.setattr(sfa_ref, "_chunk_size", small)
    out = sfa_attention(q, k, v, 4, key_padding_mask=mask, impl="reference")
    out.backward(torch.randn_like(out))
    assert seen and max(seen) < 300
    torch.testing.assert_close(out, sfa_dense_reference(q, k, v, 4, key_padding_mask=mask))


def test_gradient_masked_to_topk_support():
    q, k, v, _ = _inputs(1, 2, 20, 16, torch.float64, False, seed=11)
    out = sfa_attention(q, k, v, 3, impl="reference")
    out.backward(torch.randn_like(out))
    for x in (q, k):
        support = sfa_ref.topk_support(x.detach(), 3)
        assert torch.all(x.grad[~support] == 0)
        assert x.grad[support].abs().sum() > 0


def test_no_shared_feature_scores_zero_not_minus_inf():
    """A query sharing no feature with any key attends uniformly (scores 0), as SFA defines."""
    D = 8
    q = torch.zeros(1, 1, 5, D, dtype=torch.float64)
    q[..., 0] = 2.0
    k = torch.randn(1, 1, 5, D, dtype=torch.float64)
    k[..., 0] = 0.0  # keys' top-1 is elsewhere
    v = torch.randn(1, 1, 5, D, dtype=torch.float64)
    out = sfa_attention(q, k, v, 1, impl="reference")
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand(1, 1, 5, D))


def test_all_padding_row_gives_zero_without_nan():
    q, k, v, _ = _inputs(2, 1, 6, 8, torch.float64, False, seed=5)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    out = sfa_attention(q, k, v, 2, key_padding_mask=mask, impl="reference")
    out.sum().backward()
    assert torch.all(out[1] == 0) and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("bad", [0, 17, 2.5])
def test_bad_topk_is_a_clear_error(bad):
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="topk_q"):
        sfa_attention(q, q, q, bad, impl="reference")


def test_bad_mask_and_impl_are_clear_errors():
    q = torch.randn(2, 1, 4, 8)
    with pytest.raises(ValueError, match="key_padding_mask"):
        sfa_attention(q, q, q, 2, key_padding_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="impl"):
        sfa_attention(q, q, q, 2, impl="cuda")


def test_backend_reports_triton_head_dim_limit():
    """attn=sfa with impl=triton names the kernel's head dims instead of failing mid-run."""
    from lra_sfa.sfa import SFAAttention

    probe = torch.zeros(1, 2, 8, 256)
    reasons = SFAAttention(topk=2, impl="triton", head_dim=256).unsupported_reasons(probe, probe, probe)
    assert any("head_dim up to 128" in reason and "impl=reference" in reason for reason in reasons)
    assert SFAAttention(topk=2, impl="reference", head_dim=256).unsupported_reasons(probe, probe, probe) == []
    small = torch.zeros(1, 2, 8, 4)  # below the kernel sizes: runs zero-padded, so supported
    assert SFAAttention(topk=2, impl="triton", head_dim=4).unsupported_reasons(small, small, small) == []


@pytest.mark.parametrize("head_dim", [4, 24])
def test_triton_pads_small_head_dims_exactly(head_dim):
    """A head dim between the kernel sizes runs the kernels zero-padded and equals the reference."""
    torch.manual_seed(head_dim)
    q, k, v = (torch.randn(2, 2, 19, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[1, 13:] = False
    grad = torch.randn(2, 2, 19, head_dim, dtype=torch.float64)
    outs = []
    for impl in ("reference", "triton"):
        args = [t.float().detach().requires_grad_() for t in (q, k, v)]
        out = sfa_attention(*args, 2, key_padding_mask=mask, impl=impl)
        out.backward(grad.float())
        outs.append([out.detach()] + [t.grad for t in args])
    for ref, got in zip(*outs):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=2e-3)
