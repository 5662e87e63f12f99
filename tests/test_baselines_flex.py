"""FlexAttention in the window, Longformer and BigBird baselines: the block mask covers exactly each pattern,
FlexAttention with it equals the blocked engine, compiled and zero-padded to small head dims."""

from __future__ import annotations

import warnings

import pytest
import torch

from lra_sfa.baselines._engines import FLEX_TILE, blocked_attention, build_block_mask, key_validity
from lra_sfa.baselines._patterns import dense_pattern_mask
from lra_sfa.baselines.bigbird import BigBirdAttention
from lra_sfa.baselines.longformer import LongformerAttention
from lra_sfa.baselines.windowed import WindowedAttention

from .test_baselines import padding_mask, rand_qkv

# ----------------------------------------------------------------------------- the FlexAttention block mask


def _computed_pairs(block_mask, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) element maps (B', H', L, L) of the tiles the kernel visits."""
    B, H, tiles = block_mask.kv_num_blocks.shape
    part = torch.zeros(B, H, tiles, tiles, dtype=torch.int64)
    full = torch.zeros_like(part)
    for target, num, ids in ((part, block_mask.kv_num_blocks, block_mask.kv_indices),
                             (full, block_mask.full_kv_num_blocks, block_mask.full_kv_indices)):
        used = torch.arange(ids.shape[-1]) < num[..., None]  # (B, H, T, S)
        target.scatter_add_(-1, ids.long(), used.long())
    assert part.max() <= 1 and full.max() <= 1, "a tile is listed twice"
    part, full = part.bool(), full.bool()
    assert not (part & full).any(), "a tile is both partial and full"
    expand = lambda x: x.repeat_interleave(FLEX_TILE, -1).repeat_interleave(FLEX_TILE, -2)[..., :L, :L]
    return expand(part), expand(full)


FLEX_CASES = [
    ("windowed", lambda H: WindowedAttention(window=7), 300),
    ("windowed_wide", lambda H: WindowedAttention(window=200), 700),
    ("longformer", lambda H: LongformerAttention(window=150, global_tokens=[0, 5, -1]), 700),
    ("longformer_cls", lambda H: LongformerAttention(window=100), 700),
    ("bigbird64", lambda H: BigBirdAttention(num_heads=H, block_size=64), 700),
    ("bigbird32", lambda H: BigBirdAttention(num_heads=H, block_size=32, global_blocks=[1]), 520),
    ("bigbird256", lambda H: BigBirdAttention(num_heads=H, block_size=256, num_random_blocks=1), 1100),
]


@pytest.mark.parametrize("name,make,L", FLEX_CASES, ids=[c[0] for c in FLEX_CASES])
@pytest.mark.parametrize("padded", [False, True])
def test_flex_block_mask_covers_exactly_the_pattern(name, make, L, padded):
    B, H = 2, 3
    backend = make(H)
    pattern = backend.pattern(L, torch.device("cpu"))
    mask = padding_mask(B, L, [L, L // 3]) if padded else None
    block_mask = build_block_mask(pattern, mask, B)
    part, full = _computed_pairs(block_mask, L)
    valid, _ = key_validity(mask, B, pattern)
    pos = torch.arange(L)
    mask_mod = pattern.mask_mod(None if mask is None else valid.to(torch.int32))
    mod = mask_mod(torch.arange(B).view(B, 1, 1, 1), torch.arange(pattern.heads).view(1, -1, 1, 1),
                   pos.view(1, 1, L, 1), pos.view(1, 1, 1, L))  # (B, H', L, L)
    real = torch.ones(B, L, dtype=torch.bool) if mask is None else mask
    expected = dense_pattern_mask(pattern)[None] & real[:, None, None, :]
    assert torch.equal(full | (part & mod), expected)
    assert torch.equal(mod.expand_as(expected), expected), "mask_mod must equal the pattern with padding"


@pytest.mark.parametrize("name,make,L", FLEX_CASES[:5], ids=[c[0] for c in FLEX_CASES[:5]])
def test_eager_flex_attention_with_our_block_mask_equals_blocked(name, make, L):
    from torch.nn.attention.flex_attention import flex_attention

    B, H, D = 2, 2, 16
    backend = make(H)
    pattern = backend.pattern(L, torch.device("cpu"))
    mask = padding_mask(B, L, [L, L // 2])
    q, k, v = rand_qkv(B, H, L, D, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, block_mask=build_block_mask(pattern, mask, B), scale=D**-0.5)
    ref = blocked_attention(q, k, v, pattern, backend.blocked_tile, mask, D**-0.5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_flex_impl_on_cpu_is_a_clear_error():
    q, k, v = rand_qkv(1, 1, 8, 16)
    with pytest.raises(ValueError, match="impl='flex' needs CUDA"):
        WindowedAttention(window=2, impl="flex")(q, k, v)
    assert WindowedAttention(window=2, impl="flex").unsupported_reasons(q, k, v)
    with pytest.raises(ValueError, match="impl='nope' is not one of"):
        WindowedAttention(impl="nope")


def test_compiled_flex_equals_blocked_and_refuses_its_unfused_fallback(monkeypatch):
    """The compiled FlexAttention (forward, on CPU) matches the blocked engine; past the recompile limit
    it raises a clear error instead of running the eager path that builds the L x L scores."""
    import torch._dynamo

    from lra_sfa.baselines import _engines

    torch._dynamo.reset()
    monkeypatch.setattr(_engines, "FLEX_RECOMPILE_LIMIT", 1)
    backend = LongformerAttention()
    scale = 16**-0.5
    with torch._dynamo.config.patch(recompile_limit=1):
        for length, raises in ((256, False), (512, True)):
            q, k, v = (torch.randn(1, 2, length, 16) for _ in range(3))
            pattern = backend.pattern(length, q.device)
            block_mask = build_block_mask(pattern, None, 1)
            if raises:
                with pytest.raises(RuntimeError, match="recompile limit .1. was hit for flex_attention"):
                    _engines.flex_attention_sparse(q, k, v, block_mask, scale)
            else:
                _engines.flex_attention_sparse(q, k, v, block_mask, scale)
                out = _engines.flex_attention_sparse(q, k, v, block_mask, scale)  # same variant: no recompile
                expected = blocked_attention(q, k, v, pattern, backend.blocked_tile, None, scale)
                torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_flex_path_zero_pads_small_head_dims_exactly(monkeypatch):
    """Head dim 4 (LRA Pathfinder) runs FlexAttention zero-padded to 16 and equals the blocked engine."""
    from torch.nn.attention.flex_attention import flex_attention

    from lra_sfa.baselines import _engines

    # eager FlexAttention: the CPU inductor cannot compile this mask_mod (a C++ codegen error in torch 2.13)
    monkeypatch.setattr(_engines, "compiled_flex", lambda: flex_attention)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 200, 4) for _ in range(3))
    mask = torch.ones(2, 200, dtype=torch.bool)
    mask[1, 150:] = False
    expected = BigBirdAttention(num_heads=2, block_size=16, impl="blocked")(q, k, v, mask)
    flex = BigBirdAttention(num_heads=2, block_size=16, impl="blocked")
    monkeypatch.setattr(flex, "resolve_impl", lambda q: "flex")  # the flex path on CPU tensors (forward only)
    out = flex(q, k, v, mask)
    assert out.shape == expected.shape and flex.last_path == "flex"
    real = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], expected[real], atol=1e-5, rtol=1e-5)
