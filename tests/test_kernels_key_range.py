"""The key-code range computed inside ``topk_pack`` (key_range=True) against ``tiles.key_code_range``.

The range (per batch*head, row 0 = column max, row 1 = column min of the
zero-filled key codes) feeds the forward's bounded softmax offset; the fused
one must equal the reference on the dense codes exactly, and FlashSFA must
take it from the packing of k instead of a second pass over the codes.
Runs on the CPU interpreter (TRITON_INTERPRET=1, set by conftest.py).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported by the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from lra_sfa.kernels.sfa.tiles import key_code_range  # noqa: E402
from lra_sfa.kernels.sfa.topk_pack import topk_pack  # noqa: E402


@pytest.fixture(autouse=True)
def _require_interpreter():
    from lra_sfa.kernels.sfa import triton_fwd

    if type(triton_fwd._flash_sfa_fwd_kernel).__name__ != "InterpretedFunction":
        pytest.skip("Triton kernels were compiled for GPU before TRITON_INTERPRET=1 was set")


def _keys(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random keys of both signs with a column of zeros, one always kept and negative, one always kept and
    positive (large magnitudes), so some code columns are all zero, all negative or all positive."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    x[..., 1] = 0.0
    x[..., 2] = -(50.0 + torch.rand(shape[:-1], generator=gen))
    x[..., 5] = 40.0 + torch.rand(shape[:-1], generator=gen)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("dim,topk", [(16, 3), (16, 16), (64, 8), (64, 64), (128, 8), (128, 128)])
def test_fused_range_equals_key_code_range(dtype, dim, topk):
    """(B, H, L, D) keys with L = 37 (not a multiple of any row block): the fused range is key_code_range of
    the codes, and the other outputs are those of the plain call."""
    x = _keys((2, 3, 37, dim), dtype, seed=dim * 7 + topk)
    vals, idx, dense, rng = topk_pack(x, topk, key_range=True)
    plain = topk_pack(x, topk)
    assert rng.shape == (6, 2, dim) and rng.dtype == torch.float32
    assert torch.equal(rng, key_code_range(dense.reshape(6, 37, dim)))  # (B*H, L, D)
    assert all(torch.equal(a, b) for a, b in zip((vals, idx, dense), plain))
    assert bool((rng[:, 0, 2] < 0).all()) and bool((rng[:, 1, 5] > 0).all())  # all-negative, all-positive columns
    assert bool((rng[:, :, 1] == 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("length", [1, 37, 100])
def test_fused_range_across_many_row_blocks(dtype, length):
    """Small programs (4 rows each), so each head's range is folded from many blocks by atomic max / min,
    the last block of each head partly padding; also without writing the codes."""
    x = _keys((5, length, 16), dtype, seed=length)
    _, _, dense, rng = topk_pack(x, 4, block_elems=64, key_range=True)
    expected = key_code_range(dense)
    assert torch.equal(rng, expected)
    vals, idx, none, rng_only = topk_pack(x, 4, write_dense=False, block_elems=64, key_range=True)
    assert none is None and torch.equal(rng_only, expected)


def test_fused_range_layouts_and_bad_input():
    """A (L, D) input is one group; a non-contiguous (B, H, L, D) view is taken in its logical order; x without
    an L axis, or with L = 0, is refused with the shape named."""
    x = _keys((40, 32), torch.bfloat16, seed=3)
    _, _, dense, rng = topk_pack(x, 5, key_range=True)
    assert rng.shape == (1, 2, 32) and torch.equal(rng, key_code_range(dense[None]))
    y = _keys((2, 21, 4, 32), torch.float16, seed=4).transpose(1, 2)  # (B, H, L, D), not contiguous
    _, _, dense, rng = topk_pack(y, 6, key_range=True)
    assert torch.equal(rng, key_code_range(dense.reshape(8, 21, 32)))
    with pytest.raises(ValueError, match=r"key_range needs x of shape \(..., L, D\).*\(32,\)"):
        topk_pack(torch.randn(32), 4, key_range=True)
    with pytest.raises(ValueError, match=r"L >= 1; got \(2, 0, 32\)"):
        topk_pack(torch.randn(2, 0, 32), 4, key_range=True)


@pytest.mark.parametrize("dtype,padded", [(torch.bfloat16, False), (torch.float32, True)])
def test_flash_sfa_takes_the_range_from_the_packing(dtype, padded, monkeypatch):
    """With a bounded forward config, flash_sfa (training and forward-only paths) never calls key_code_range
    and gives bit for bit what launch_forward gives on the same codes with the range computed from kd."""
    from lra_sfa.kernels.sfa import autograd, launcher
    from lra_sfa.kernels.sfa import triton_fwd as fwd
    from lra_sfa.kernels.sfa.tiles import key_padding

    bounded = fwd.fwd_config(32, 32, 4, 1, bounded=True)
    monkeypatch.setattr(fwd, "INTERPRETER_CONFIG", bounded)
    q, k, v = _keys((1, 2, 45, 16), dtype, seed=11), _keys((1, 2, 45, 16), dtype, seed=12), _keys(
        (1, 2, 45, 16), dtype, seed=13)
    mask = torch.arange(45)[None, :] < 30 if padded else None
    calls = []
    monkeypatch.setattr(launcher, "key_code_range", lambda kd: calls.append(kd) or key_code_range(kd))
    trained = autograd.flash_sfa(*(t.clone().requires_grad_(True) for t in (q, k, v)), 4, 4, mask).detach()
    out, _ = autograd.flash_sfa_forward(q, k, v, 4, 4, mask)
    assert not calls
    flat = (2, 45, 16)
    qd, kd = (topk_pack(t, 4)[2].reshape(flat) for t in (q, k))  # (B*H, L, D)
    ref, _ = launcher.launch_forward(qd, kd, v.reshape(flat), key_padding(mask, q.device), 2, padded)
    assert len(calls) == 1
    assert torch.equal(trained, ref.reshape(q.shape)) and torch.equal(out, ref.reshape(q.shape))


def test_launchers_refuse_a_misshapen_range():
    """launch_forward and the Gluon launcher name key_range and the shape they need."""
    from lra_sfa.kernels.sfa.launcher import launch_forward
    from lra_sfa.kernels.sfa.tiles import key_padding

    qd = torch.randn(2, 64, 16)
    with pytest.raises(ValueError, match=r"launch_forward: key_range must be .* shape \(2, 2, 16\)"):
        launch_forward(qd, qd, qd, key_padding(None, qd.device), 2, False, key_range=torch.zeros(2, 16, 2))
    gluon_fwd = pytest.importorskip("lra_sfa.kernels.sfa.gluon_fwd")
    rows = torch.randn(2, 128, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"gluon_ws_forward: key_range must be a contiguous float32"):
        gluon_fwd.gluon_ws_forward(rows, rows, rows, key_range=torch.zeros(2, 2, 128, dtype=torch.bfloat16))


def test_more_row_groups_than_the_grid_takes_is_refused_and_flash_sfa_falls_back_to_the_launcher(monkeypatch):
    """key_range puts batch*heads on the grid's second axis (at most MAX_ROW_GROUPS): beyond it topk_pack raises,
    and FlashSFA packs k without the range (the launcher then takes it from the codes)."""
    from lra_sfa.kernels.sfa import autograd
    from lra_sfa.kernels.sfa import topk_pack as pack

    x = torch.randn(4, 1, 3, 16)
    monkeypatch.setattr(pack, "MAX_ROW_GROUPS", 2)
    with pytest.raises(ValueError, match="at most 2 groups"):
        pack.topk_pack(x, 4, key_range=True)
    monkeypatch.setattr(autograd, "MAX_ROW_GROUPS", 2)
    assert autograd._pack_keys(x, 4)[3] is None
    monkeypatch.setattr(pack, "MAX_ROW_GROUPS", 4)
    monkeypatch.setattr(autograd, "MAX_ROW_GROUPS", 4)
    assert autograd._pack_keys(x, 4)[3].shape == (4, 2, 16)
