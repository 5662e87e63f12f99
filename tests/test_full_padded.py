"""Full attention on padded batches (baselines/full.py, baselines/_padded.py): every engine equals sdpa+mask.

CPU only. The FlashAttention varlen engine is checked through its packing:
the same code runs with a PyTorch variable-length kernel that leaves NaN in
the gradient of the packed slots a real kernel never visits, and on meta
tensors with the real aten op (shapes and autograd wiring). The FlexAttention
engine is checked through its block mask (which pairs the kernel computes)
and with eager ``flex_attention``. The kernels themselves are timed and
checked on the GPU by ``python -m lab.padded_full_probe``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from omegaconf import OmegaConf

from lra_sfa.attention import build_attention
from lra_sfa.baselines._engines import FLEX_TILE
from lra_sfa.baselines._padded import (
    flex_padded,
    pack_real_keys,
    padding_block_mask,
    sdpa_masked,
    varlen_attention,
)
from lra_sfa.baselines.full import PADDED_PATHS, FullAttention

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def padding_masks(L: int, seed: int) -> torch.Tensor:
    """(5, L): all real, suffix padding, padding first, scattered padding, all padding."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.arange(L)
    scattered = torch.rand(L, generator=gen) < 0.6
    scattered[0] = False
    return torch.stack([pos >= 0, pos < L // 3, pos >= L - 5, scattered, pos < 0])


def rand_qkv(B, H, L, D, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=gen).to(dtype).requires_grad_() for _ in range(3)]


class PoisonUnvisited(torch.autograd.Function):
    """Identity whose backward writes NaN into the rows at or past ``end``, as a kernel leaves them unset."""

    @staticmethod
    def forward(ctx, x, end):
        ctx.save_for_backward(end)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (end,) = ctx.saved_tensors
        unvisited = torch.arange(grad.shape[0]) >= end  # (N,)
        return grad.masked_fill(unvisited[:, None, None], float("nan")), None


def reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
    """A variable-length kernel in PyTorch with static shapes: row r's queries see row r's keys only."""
    rows = cu_seqlens_q.numel() - 1

    def row_of(n, cu):
        return (torch.arange(n)[:, None] >= cu[None, 1:]).sum(-1)  # (n,), rows for past the end

    k, v = PoisonUnvisited.apply(k, cu_seqlens_k[-1]), PoisonUnvisited.apply(v, cu_seqlens_k[-1])
    rq, rk = row_of(q.shape[0], cu_seqlens_q), row_of(k.shape[0], cu_seqlens_k)
    allowed = (rq[:, None] == rk[None, :]) & (rk < rows)[None, :]  # (Nq, Nk)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale  # (H, Nq, Nk)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)  # (Nq, H, D)


def _check_equal(run, dtype, D, L, seed=0, backward=True):
    """``run`` equals sdpa+mask on fresh inputs (forward, and dq, dk, dv); padding gets exact zeros."""
    mask = padding_masks(L, seed)
    q, k, v = rand_qkv(mask.shape[0], 2, L, D, dtype, seed)
    if not backward:
        q, k, v = (t.detach() for t in (q, k, v))
    grad = torch.randn(mask.shape[0], 2, L, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    results = []
    for fn in (sdpa_masked, run):
        out = fn(q, k, v, mask)
        grads = torch.autograd.grad(out, (q, k, v), grad) if backward else ()
        results.append((out, *grads))
    for got, want, name in zip(results[1], results[0], ("out", "dq", "dk", "dv")):
        assert torch.isfinite(got).all(), f"{name} is not finite"
        torch.testing.assert_close(got, want, **TOLERANCE[dtype], msg=lambda m, name=name: f"{name}: {m}")
    assert (results[1][0][-1] == 0).all(), "a row with no real key gives 0"
    if not backward:
        return
    out, dq, dk, dv = results[1]
    assert (out[-1] == 0).all() and (dq[-1] == 0).all(), "a row with no real key gives 0 and no gradient"
    padded_keys = ~mask[:, None, :, None]
    assert (dk.masked_select(padded_keys) == 0).all() and (dv.masked_select(padded_keys) == 0).all()


# ----------------------------------------------------------------------------- varlen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 12])
def test_varlen_packing_equals_sdpa_mask(dtype, D):
    _check_equal(lambda q, k, v, m: varlen_attention(q, k, v, m, kernel=reference_varlen), dtype, D, L=37)


def test_pack_real_keys_lists_each_rows_real_keys_in_order():
    mask = padding_masks(11, seed=3)
    order, cu, used = pack_real_keys(mask)
    B, L = mask.shape
    assert cu.dtype == torch.int32 and cu[0] == 0 and torch.equal(order.sort().values, torch.arange(B * L))
    for b in range(B):
        keys = order[cu[b]:cu[b + 1]]
        expected = mask[b].nonzero().flatten() if mask[b].any() else torch.tensor([0])  # an empty row keeps key 0
        assert torch.equal(keys, b * L + expected)
    assert torch.equal(used, torch.arange(B * L) < cu[-1])


def test_varlen_runs_the_flash_op_on_meta_tensors():
    """The real aten op, shapes only: packing, the op's outputs and its backward line up."""
    B, H, L, D = 3, 2, 50, 12
    mask = padding_masks(L, seed=1)[:B].to("meta")
    q, k, v = (torch.randn(B, H, L, D, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = varlen_attention(q, k, v, mask)
    assert out.shape == (B, H, L, D) and out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert [g.shape for g in grads] == [q.shape] * 3


# ----------------------------------------------------------------------------- flex


def test_padding_block_mask_computes_exactly_the_real_keys():
    L = 3 * FLEX_TILE + 44
    mask = padding_masks(L, seed=2)
    mask[1, : 2 * FLEX_TILE] = True  # two full tiles, then padding: full, dropped and partial tiles all occur
    block_mask = padding_block_mask(mask)
    B, _, T = block_mask.kv_num_blocks.shape
    visited = []
    for num, ids in ((block_mask.kv_num_blocks, block_mask.kv_indices),
                     (block_mask.full_kv_num_blocks, block_mask.full_kv_indices)):
        tiles = torch.zeros(B, 1, T, T, dtype=torch.int64)
        tiles.scatter_add_(-1, ids.long(), (torch.arange(ids.shape[-1]) < num[..., None]).long())
        assert tiles.max() <= 1, "a tile is listed twice"
        visited.append(tiles.bool().repeat_interleave(FLEX_TILE, -1).repeat_interleave(FLEX_TILE, -2)[..., :L, :L])
    partial, full = visited
    assert not (partial & full).any()
    pos = torch.arange(L)
    allowed = block_mask.mask_mod(torch.arange(B).view(B, 1, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long),
                                  pos.view(1, 1, L, 1), pos.view(1, 1, 1, L))  # (B, 1, L, L)
    expected = mask[:, None, None, :].expand(B, 1, L, L)
    assert torch.equal(full | (partial & allowed), expected)
    assert not full[-1].any() and not partial[-1].any(), "an all-padding row visits no tile"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 12])
def test_eager_flex_with_padding_block_mask_equals_sdpa_mask(dtype, D):
    """Forward only: FlexAttention has no backward on the CPU (the GPU probe checks it)."""
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused
        _check_equal(lambda q, k, v, m: flex_padded(q, k, v, m, flex=flex_attention), dtype, D, L=FLEX_TILE + 30,
                     backward=False)


# ----------------------------------------------------------------------------- torch.compile


def test_padded_engines_trace_whole_under_torch_compile():
    """fullgraph=True: the packing, the block mask and the flex call trace without a graph break."""
    torch._dynamo.reset()
    L = FLEX_TILE + 7
    mask = padding_masks(L, seed=4)
    q, k, v = (t.detach() for t in rand_qkv(mask.shape[0], 2, L, 16, torch.float32, seed=4))
    varlen = torch.compile(lambda *a: varlen_attention(*a, kernel=reference_varlen), backend="eager", fullgraph=True)
    flex = torch.compile(flex_padded, backend="eager", fullgraph=True)
    want = sdpa_masked(q, k, v, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in (varlen, flex):
            torch.testing.assert_close(fn(q, k, v, mask), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the backend and its config


def test_auto_runs_sdpa_mask_on_cpu_and_records_the_path():
    backend = FullAttention()
    mask = padding_masks(20, seed=5)
    q, k, v = (t.detach() for t in rand_qkv(mask.shape[0], 2, 20, 8, torch.float32, seed=5))
    torch.testing.assert_close(backend(q, k, v, mask), sdpa_masked(q, k, v, mask))
    assert backend.last_path == "sdpa+mask"
    backend(q, k, v)
    assert backend.last_path == "sdpa"


@pytest.mark.parametrize("path", ["flex", "varlen"])
def test_cuda_paths_on_cpu_are_a_clear_reason(path):
    backend = FullAttention(padded_path=path)
    mask = padding_masks(20, seed=6)
    q, k, v = (t.detach() for t in rand_qkv(mask.shape[0], 2, 20, 8, torch.float32, seed=6))
    reasons = backend.unsupported_reasons(q, k, v, mask)
    assert reasons and all(f"padded_path={path} needs CUDA" in r for r in reasons)
    assert backend.unsupported_reasons(q, k, v, None) == []  # no padding: plain SDPA runs anywhere
    with pytest.raises(ValueError, match=f"padded_path={path} needs CUDA"):
        backend(q, k, v, mask)


def test_padded_path_from_the_config(make_cfg):
    cfg = make_cfg("attn=full")
    assert cfg.attn.padded_path == "auto" and set(PADDED_PATHS) == {"auto", "flex", "sdpa_mask", "varlen"}
    for path in PADDED_PATHS:
        cfg = make_cfg("attn=full", f"attn.padded_path={path}")
        backend = build_attention(cfg.attn, num_heads=2, head_dim=8, max_seq_len=16)
        assert isinstance(backend, FullAttention) and backend.padded_path == path
    bad = OmegaConf.merge(make_cfg("attn=full").attn, {"padded_path": "flash"})
    with pytest.raises(ValueError, match=r"padded_path='flash' must be one of \('auto', 'flex', 'sdpa_mask'"):
        build_attention(bad, num_heads=2, head_dim=8, max_seq_len=16)


def test_a_run_records_the_padded_path(tmp_path):
    from tests.conftest import train_smoke

    listops = ["task=listops", "task.seq_len=16", "task.max_depth=2", "task.min_length=3", "task.max_length=13",
               "task.num_train=64", "task.num_val=16", "task.num_test=16", "task.workers=1"]
    record = train_smoke(tmp_path, [*listops, "attn=full", "attn.padded_path=sdpa_mask"])
    assert record["attn_path"] == "sdpa+mask" and record["attn_args"]["padded_path"] == "sdpa_mask"
