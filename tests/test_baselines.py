"""Attention baselines (baselines/*.py, conf/attn/*.yaml): exactness, padding, FAVOR+ error, tiny model.

CPU only, fresh random inputs, small sizes. The FlexAttention (CUDA) path is
checked here through its block mask: the kernel computes a pair iff its tile
is full, or partial and the mask_mod allows it; that set must equal the
pattern. The kernels themselves are checked on the GPU by
``python -m lra_sfa.bench.baselines``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from lra_sfa.attention import build_attention
from lra_sfa.baselines._engines import FLEX_TILE, blocked_attention, build_block_mask, key_validity
from lra_sfa.baselines._patterns import dense_pattern_mask
from lra_sfa.baselines.bigbird import BigBirdAttention
from lra_sfa.baselines.linear import LinearAttention
from lra_sfa.baselines.linformer import LinformerAttention
from lra_sfa.baselines.longformer import LongformerAttention
from lra_sfa.baselines.nystromformer import NystromformerAttention
from lra_sfa.baselines.performer import PerformerAttention
from lra_sfa.baselines.sfa_window import SFAWindowAttention
from lra_sfa.baselines.windowed import WindowedAttention
from lra_sfa.compose import attn_config
from lra_sfa.kernels.sfa.reference import sparsify

ATTN_DIR = Path(__file__).resolve().parents[1] / "conf" / "attn"
ATTN_YAMLS = sorted(ATTN_DIR.glob("*.yaml"))
MINE = {"windowed", "bigbird", "longformer", "performer", "performer_relu", "linformer", "nystromformer", "linear",
        "sfa_window"}


def rand_qkv(B: int, H: int, L: int, D: int, dtype=torch.float64, seed: int | None = None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return tuple(torch.randn(B, H, L, D, dtype=dtype, generator=gen) for _ in range(3))


def padding_mask(B: int, L: int, lengths: list[int]) -> torch.Tensor:
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)


def softmax_reference(q, k, v, allowed=None, key_padding_mask=None):
    """Plain dense softmax attention in the inputs' dtype; rows with no key give 0."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, L)
    ok = torch.ones_like(scores, dtype=torch.bool)
    if allowed is not None:
        ok = ok & allowed
    if key_padding_mask is not None:
        ok = ok & key_padding_mask[:, None, None, :]
    probs = torch.softmax(scores.masked_fill(~ok, float("-inf")), dim=-1).nan_to_num(0.0)
    return probs @ v


def band(L: int, radius: int, global_tokens=()) -> torch.Tensor:
    i = torch.arange(L)
    ok = (i[:, None] - i[None, :]).abs() <= radius
    g = torch.zeros(L, dtype=torch.bool)
    g[list(global_tokens)] = True
    return ok | g[:, None] | g[None, :]


# ----------------------------------------------------------------------------- exactness vs full


@pytest.mark.parametrize("L", [1, 37, 150])
def test_windowed_with_window_at_least_length_equals_full(L):
    q, k, v = rand_qkv(2, 3, L, 8)
    mask = padding_mask(2, L, [L, max(1, L // 2)])
    backend = WindowedAttention(window=L)
    for m in (None, mask):
        out = backend(q, k, v, m)
        assert backend.last_path == "blocked"
        torch.testing.assert_close(out, softmax_reference(q, k, v, key_padding_mask=m), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [5, 130, 200])
def test_bigbird_with_every_block_global_equals_full(L):
    block = 32
    blocks = -(-L // block)
    q, k, v = rand_qkv(2, 2, L, 8)
    mask = padding_mask(2, L, [L, L - 3])
    backend = BigBirdAttention(num_heads=2, block_size=block, global_blocks=list(range(blocks)), num_random_blocks=1)
    torch.testing.assert_close(backend(q, k, v, mask), softmax_reference(q, k, v, key_padding_mask=mask))


@pytest.mark.parametrize("L", [3, 150])
def test_longformer_with_every_token_global_equals_full(L):
    q, k, v = rand_qkv(2, 2, L, 8)
    mask = padding_mask(2, L, [L, L - 2])
    backend = LongformerAttention(window=1, global_tokens=list(range(L)))
    torch.testing.assert_close(backend(q, k, v, mask), softmax_reference(q, k, v, key_padding_mask=mask))


# ----------------------------------------------------------------------------- patterns, exact


@pytest.mark.parametrize("L,window", [(1, 0), (70, 0), (200, 9), (257, 64)])
def test_windowed_equals_dense_band(L, window):
    q, k, v = rand_qkv(2, 2, L, 8)
    mask = padding_mask(2, L, [L, max(1, L - 40)])
    out = WindowedAttention(window=window)(q, k, v, mask)
    torch.testing.assert_close(out, softmax_reference(q, k, v, band(L, window), mask))


def test_longformer_equals_dense_band_plus_global():
    L = 190
    q, k, v = rand_qkv(2, 2, L, 8)
    mask = padding_mask(2, L, [L, 120])
    out = LongformerAttention(window=10, global_tokens=[0, 77, -1])(q, k, v, mask)
    torch.testing.assert_close(out, softmax_reference(q, k, v, band(L, 10, [0, 77, L - 1]), mask))


def test_bigbird_pattern_follows_block_rules():
    L, block, heads = 300, 16, 3
    backend = BigBirdAttention(num_heads=heads, block_size=block, global_blocks=[0, -1], num_random_blocks=3, seed=5)
    pattern = backend.pattern(L, torch.device("cpu"))
    n = -(-L // block)
    rand = pattern.random_blocks[:, :n, :3]  # (H, n, 3)
    a = torch.arange(n)
    expected = ((a[:, None] - a[None, :]).abs() <= 1)[None].repeat(heads, 1, 1)
    expected[:, [0, n - 1], :] = True
    expected[:, :, [0, n - 1]] = True
    expected.scatter_(-1, rand, True)
    for h in range(heads):
        for row in range(1, n - 1):  # random blocks of non-global rows: distinct, outside window and globals
            picks = set(rand[h, row].tolist())
            assert len(picks) == 3 and not picks & {0, n - 1, row - 1, row, row + 1}
    assert not torch.equal(rand[0], rand[1]), "random blocks should differ between heads"
    dense = expected.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :L, :L]
    assert torch.equal(dense_pattern_mask(pattern), dense)
    q, k, v = rand_qkv(2, heads, L, 8)
    mask = padding_mask(2, L, [L, 211])
    torch.testing.assert_close(backend(q, k, v, mask), softmax_reference(q, k, v, dense[None], mask))


def test_sfa_window_equals_dense_sfa_in_window():
    L, D, topk = 160, 16, 3
    q, k, v = rand_qkv(2, 2, L, D)
    mask = padding_mask(2, L, [L, 100])
    out = SFAWindowAttention(topk=topk, topk_k=5, window=20)(q, k, v, mask)
    qs, ks = sparsify(q, topk), sparsify(k, 5)
    assert ((qs != 0).sum(-1) == topk).all()
    torch.testing.assert_close(out, softmax_reference(qs, ks, v, band(L, 20), mask))
    no_shared = (qs != 0).double() @ (ks != 0).double().transpose(-1, -2) == 0  # (B, H, L, L)
    assert (no_shared & band(L, 20)).any(), "the test needs in-window pairs with no shared feature (score 0)"


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


# ----------------------------------------------------------------------------- every YAML: padding, finiteness


def attn_cfg(path: Path, **overrides):
    cfg = attn_config(path.stem)  # composed: a file may inherit another (defaults: [sfa_wide])
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def build_from_yaml(path: Path, num_heads: int, head_dim: int, max_seq_len: int):
    return build_attention(attn_cfg(path), num_heads=num_heads, head_dim=head_dim, max_seq_len=max_seq_len)


def test_every_baseline_has_a_yaml():
    names = {p.stem for p in ATTN_YAMLS}
    assert MINE <= names
    for path in ATTN_YAMLS:
        cfg = attn_config(path.stem)
        assert str(cfg._target_).startswith("lra_sfa."), f"{path}: _target_ must be an lra_sfa class"


@pytest.mark.parametrize("path", ATTN_YAMLS, ids=[p.stem for p in ATTN_YAMLS])
def test_key_padding_mask_is_respected(path):
    B, H, L, D = 3, 2, 75, 16
    torch.manual_seed(0)
    backend = build_from_yaml(path, H, D, L).eval()
    q, k, v = rand_qkv(B, H, L, D, dtype=torch.float32)
    mask = padding_mask(B, L, [L, 40, 0])  # full, half, fully padded
    with torch.no_grad():
        out = backend(q, k, v, mask)
        k2, v2 = k.clone(), v.clone()
        pad = ~mask[:, None, :, None]
        k2 = torch.where(pad, torch.randn_like(k) * 3, k)
        v2 = torch.where(pad, torch.randn_like(v) * 3, v)
        out2 = backend(q, k2, v2, mask)
    assert backend.last_path not in ("", "none"), f"{path.stem}: forward must set last_path"
    assert torch.isfinite(out).all() and torch.isfinite(out2).all()
    real_rows = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real_rows], out2[real_rows], rtol=1e-5, atol=1e-5)
    if path.stem in MINE:
        assert out[2].abs().max() == 0, f"{path.stem}: a row with no real key must give 0"


def tiny_model(path: Path, seq_len: int = 40):
    from lra_sfa.model import LRAClassifier

    return LRAClassifier(vocab_size=20, num_classes=10, seq_len=seq_len, attn_cfg=attn_cfg(path), d_model=32,
                         num_heads=2, num_layers=1, mlp_dim=32, pooling="cls", dropout=0.0, attn_dropout=0.0)


@pytest.mark.parametrize("path", ATTN_YAMLS, ids=[p.stem for p in ATTN_YAMLS])
def test_forward_backward_finite_in_tiny_model(path):
    torch.manual_seed(0)
    model = tiny_model(path)
    tokens = torch.randint(1, 20, (3, 40))
    tokens[1, 25:] = 0  # padding
    tokens[2, 5:] = 0
    for module in model.attention_modules():
        module.on_step(0, 2)
    logits = model(tokens)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3]))
    for module in model.attention_modules():
        extra = module.extra_loss()
        loss = loss + (extra if extra is not None else 0.0)
        assert module.last_path not in ("", "none")
        assert all(math.isfinite(value) for value in module.stats().values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    qkv_grad = model.blocks[0].attn.qkv.weight.grad
    assert qkv_grad is not None and qkv_grad.abs().sum() > 0, f"{path.stem}: no gradient reached q/k/v"


# ------------------------------------------------------------ Performer, Nystromformer, Linear, Linformer


def performer_error(num_features: int, seeds: range, scale: float = 0.6) -> float:
    """Mean relative error of FAVOR+ against softmax attention over projection seeds."""
    q, k, v = rand_qkv(2, 2, 128, 16, dtype=torch.float32, seed=123)
    q, k = q * scale, k * scale
    ref = softmax_reference(q.double(), k.double(), v.double()).float()
    errors = []
    for seed in seeds:
        out = PerformerAttention(head_dim=16, num_features=num_features, seed=seed)(q, k, v)
        errors.append(((out - ref).norm() / ref.norm()).item())
    return sum(errors) / len(errors)


def test_performer_error_shrinks_as_features_grow():
    errors = [performer_error(m, range(6)) for m in (8, 32, 128, 512)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.45 * errors[0], errors  # about 1/sqrt(m): 8x expected over 64x features
    assert errors[-1] < 0.3, errors


def test_performer_relu_kernel_and_redraw():
    q, k, v = rand_qkv(1, 2, 30, 16, dtype=torch.float32)
    relu = PerformerAttention(head_dim=16, num_features=64, kernel="relu")
    phi = lambda x: torch.relu(x * 16**-0.25 @ relu.projection.T) + 1e-3  # (B, H, L, m)
    attn = phi(q) @ phi(k).transpose(-1, -2)  # explicit L x L reference
    torch.testing.assert_close(relu(q, k, v), (attn / attn.sum(-1, keepdim=True)) @ v, rtol=1e-4, atol=1e-5)
    perf = PerformerAttention(head_dim=16, num_features=32, redraw_every=3)
    first = perf.projection.clone()
    perf.on_step(1, 10)
    assert torch.equal(perf.projection, first)
    perf.on_step(3, 10)
    assert not torch.equal(perf.projection, first) and perf.stats()["performer_redraws"] == 1.0
    again = PerformerAttention(head_dim=16, num_features=32, redraw_every=3)
    again.on_step(3, 10)
    assert torch.equal(again.projection, perf.projection), "redraws must be deterministic"
    with pytest.raises(ValueError, match="kernel='cosine' is not one of"):
        PerformerAttention(head_dim=16, kernel="cosine")


def test_performer_features_are_orthogonal_within_blocks():
    w = PerformerAttention(head_dim=16, num_features=40).projection.double()  # (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16, dtype=torch.float64), atol=1e-5, rtol=0)


def test_nystromformer_with_one_landmark_per_token_equals_full():
    L = 24
    q, k, v = rand_qkv(2, 2, L, 8)
    q, k = q * 2.0, k * 2.0  # a well-conditioned kernel matrix
    out = NystromformerAttention(num_landmarks=L, pinv_iterations=40)(q, k, v)
    torch.testing.assert_close(out, softmax_reference(q, k, v), rtol=1e-6, atol=1e-6)


def test_nystromformer_uneven_segments_and_short_sequences():
    for L in (1, 5, 130):
        q, k, v = rand_qkv(1, 2, L, 8)
        out = NystromformerAttention(num_landmarks=64)(q, k, v, padding_mask(1, L, [L]))
        assert out.shape == q.shape and torch.isfinite(out).all()


def test_linear_attention_equals_explicit_formula():
    q, k, v = rand_qkv(2, 2, 33, 8)
    mask = padding_mask(2, 33, [33, 20])
    phi = lambda x: torch.nn.functional.elu(x) + 1
    weights = (phi(q) @ phi(k).transpose(-1, -2)) * mask[:, None, None, :]  # (B, H, L, L)
    ref = weights / weights.sum(-1, keepdim=True) @ v
    torch.testing.assert_close(LinearAttention()(q, k, v, mask), ref)


def test_linformer_projects_real_tokens_only_and_checks_length():
    backend = LinformerAttention(max_seq_len=50, proj_dim=8).double()
    q, k, v = rand_qkv(1, 2, 30, 8)
    mask = padding_mask(1, 30, [18])
    real = mask[:, None, :, None].double()
    k_low = backend.proj_k[:, :30].double() @ (k * real)  # (B, H, P, D)
    v_low = backend.proj_v[:, :30].double() @ (v * real)
    torch.testing.assert_close(backend(q, k, v, mask), softmax_reference(q, k_low, v_low))
    with pytest.raises(ValueError, match="exceeds max_seq_len=50"):
        backend(*rand_qkv(1, 2, 51, 8))


# ----------------------------------------------------------------------------- config errors


def test_misspelt_target_names_the_yaml():
    cfg = attn_cfg(ATTN_DIR / "windowed.yaml", _target_="lra_sfa.baselines.windowed.WindowdAttention")
    with pytest.raises(ValueError, match=r"attention config 'windowed'.*cannot be imported"):
        build_attention(cfg, num_heads=2, head_dim=16, max_seq_len=64, name="windowed")


def test_unknown_argument_names_the_yaml_and_valid_arguments():
    cfg = attn_cfg(ATTN_DIR / "bigbird.yaml", num_random=3)
    with pytest.raises(ValueError, match=r"attention config 'bigbird'.*num_random.*valid arguments"):
        build_attention(cfg, num_heads=2, head_dim=16, max_seq_len=64, name="bigbird")


def test_bad_values_give_clear_errors():
    with pytest.raises(ValueError, match="window_blocks must be an odd int"):
        BigBirdAttention(num_heads=2, window_blocks=2)
    with pytest.raises(ValueError, match="global_blocks .* out of range"):
        BigBirdAttention(num_heads=2, block_size=16, global_blocks=[9])(*rand_qkv(1, 2, 32, 8))
    with pytest.raises(ValueError, match="global token positions .* out of range"):
        LongformerAttention(global_tokens=[40])(*rand_qkv(1, 2, 32, 8))
    with pytest.raises(ValueError, match="topk=20, topk_k=20 must be <= head_dim=8"):
        SFAWindowAttention(topk=20)(*rand_qkv(1, 2, 32, 8))
    with pytest.raises(ValueError, match="built for num_heads=4"):
        BigBirdAttention(num_heads=4)(*rand_qkv(1, 2, 32, 8))


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
