"""SFA as SDPA on the zero-filled codes (impl="sdpa", kernels/sfa/codes.py) against the float64 definition, and
where impl="auto" takes it (dispatch.uses_sdpa), on the CPU (the top-k kernel in the Triton interpreter)."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported by the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from lra_sfa.kernels.sfa import (  # noqa: E402
    api,
    codes,  # noqa: E402
    dispatch,
)
from lra_sfa.kernels.sfa.codes import codes_of, sparse_codes  # noqa: E402
from lra_sfa.sfa import SFAAttention  # noqa: E402

from .test_kernels_sfa import assert_matches_float64_definition  # noqa: E402

CUDA = torch.device("cuda")


def _leaves(length: int, head_dim: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, length, head_dim, generator=gen).requires_grad_(True) for _ in range(3)]


def _mask(length: int, kind: str) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "right":
        return torch.arange(length)[None, :] < torch.tensor([length, length // 2])[:, None]
    mask = torch.rand(2, length, generator=torch.Generator().manual_seed(length)) > 0.3
    mask[1] = False  # a row with no real key gives 0
    return mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", ["none", "holes", "right"])
@pytest.mark.parametrize("head_dim,topk", [(16, 4), (32, 8), (4, 2)])
def test_sdpa_on_codes_matches_the_float64_definition(head_dim, topk, padding, causal):
    """Output and the gradients of q, k and v (q's and k's on their top-k support only) equal the dense float64
    definition of SFA, with and without padding (padding rows 0 under skip_padding), causal or not, and at a
    head dim the top-k kernel does not take (4: padded for the top-k only)."""
    length = 37
    q, k, v = _leaves(length, head_dim, seed=head_dim + length)
    mask = _mask(length, padding)
    skip = mask is not None
    out = api.sfa_attention(q, k, v, topk, key_padding_mask=mask, impl="sdpa", skip_padding=skip, causal=causal)
    got = assert_matches_float64_definition(out, (q, k, v), topk, mask, causal, zero_padding_rows=skip)
    for mine in got[:2]:  # q's and k's gradients live on their top-k supports
        assert int((mine != 0).sum(-1).max()) <= topk


def test_sparse_codes_keep_the_top_k_and_pass_gradients_on_their_support_only():
    x = torch.zeros(1, 16)
    x[0, [2, 7, 11, 12]] = torch.tensor([-3.0, 2.0, 2.5, 0.5])
    x.requires_grad_(True)
    codes, ids = sparse_codes(x, 3)
    assert sorted(ids[0].tolist()) == [2, 7, 11]  # the three largest magnitudes, signs kept
    assert torch.equal(codes.detach(), torch.where(torch.isin(torch.arange(16), ids[0].long()), x.detach(), 0.0))
    (codes * torch.arange(16.0)).sum().backward()
    expected = torch.zeros(1, 16)
    expected[0, [2, 7, 11]] = torch.tensor([2.0, 7.0, 11.0])
    assert torch.equal(x.grad, expected)


def test_codes_of_a_head_dim_past_the_top_k_kernel_or_off_cuda_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="head_dim 512 exceeds"):
        codes_of(torch.randn(2, 512), 4)
    monkeypatch.setattr(codes, "interpreting", lambda: False)
    with pytest.raises(ValueError, match="needs CUDA .* on cpu"):
        codes_of(torch.randn(2, 16), 4)


@pytest.fixture
def cuda_call(monkeypatch):
    """dispatch sees a CUDA device outside the interpreter; SDPA at d = 64 up to 4096 and from 16384 on."""
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    monkeypatch.setattr(dispatch, "USE_SDPA", True)
    monkeypatch.setattr(dispatch, "SDPA_LENGTHS", {kind: {64: ((1, 4096), (16384, None))}
                                                   for kind in ("fwd", "train", "causal")})


@pytest.mark.parametrize("length,head_dim,dtype,mask,expected", [
    (4096, 64, torch.bfloat16, False, True),
    (4096, 64, torch.float16, False, True),
    (8192, 64, torch.bfloat16, False, False),  # between the ranges: the kernels
    (65536, 64, torch.bfloat16, False, True),  # an open-ended range
    (1024, 128, torch.bfloat16, False, False),  # a head dim with no limit set
    (1024, 64, torch.float32, False, False),  # fp32 SDPA is no vendor engine
    (1024, 64, torch.bfloat16, True, False),  # a padding mask: the kernels skip it, SDPA would not
])
def test_auto_takes_sdpa_only_within_the_measured_limits(cuda_call, length, head_dim, dtype, mask, expected):
    for backward in (False, True):
        for causal in (False, True):
            assert dispatch.uses_sdpa(CUDA, dtype, length, head_dim, mask, backward, causal) == expected


def test_sdpa_is_off_on_the_cpu_and_under_the_environment_switch(cuda_call, monkeypatch):
    assert not dispatch.uses_sdpa(torch.device("cpu"), torch.bfloat16, 1024, 64, False, True)
    monkeypatch.setattr(dispatch, "USE_SDPA", False)
    assert not dispatch.uses_sdpa(CUDA, torch.bfloat16, 1024, 64, False, True)


def test_the_backend_names_the_sdpa_path():
    attn = SFAAttention(topk=4, impl="sdpa")
    q, k, v = (t.detach() for t in _leaves(20, 16, seed=1))
    attn(q, k, v)
    assert attn.last_path == "sdpa"
    attn(q, k, v, torch.ones(2, 20, dtype=torch.bool))
    assert attn.last_path == "sdpa+mask"
    assert api.sfa_path(q, k, v, impl="sdpa") == "sdpa"


@pytest.mark.parametrize("length,head_dim,backward,causal,expected", [
    (1024, 64, True, False, True), (1025, 64, True, False, True),  # the Text model's CLS token: L + 1 goes with L
    (2048, 64, True, False, False), (2049, 64, True, False, False), (8193, 64, True, False, True),
    (1025, 128, True, False, False), (4097, 128, True, False, True),
    (2049, 128, False, False, True), (4097, 128, False, False, False),
    (257, 64, True, True, True), (1024, 32, True, False, False),  # an unmeasured head dim keeps the kernels
])
def test_the_measured_table_puts_l_plus_one_with_l(monkeypatch, length, head_dim, backward, causal, expected):
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    monkeypatch.setattr(dispatch, "USE_SDPA", True)
    assert dispatch.uses_sdpa(CUDA, torch.bfloat16, length, head_dim, False, backward, causal) == expected
