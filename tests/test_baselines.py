"""Attention baselines (baselines/*.py, conf/attn/*.yaml): exactness, padding, FAVOR+ error, tiny model.

CPU only, fresh random inputs, small sizes. The FlexAttention (CUDA) path is
checked here through its block mask: the kernel computes a pair iff its tile
is full, or partial and the mask_mod allows it; that set must equal the
pattern. The kernels themselves are checked on the GPU by
``python -m lra_sfa.bench.baselines``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lra_sfa.attention import build_attention
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


@pytest.mark.parametrize("path", ATTN_YAMLS, ids=[p.stem for p in ATTN_YAMLS])
def test_large_real_keys_beside_zero_padded_keys_stay_finite(path):
    """Trained models grow large q and k norms while the padding token's key stays small: every backend's
    output and gradients stay finite when real keys are 40x a unit Gaussian and padded keys are zero."""
    B, H, L, D = 2, 2, 128, 16
    torch.manual_seed(0)
    backend = build_from_yaml(path, H, D, L)
    q, k, v = (t.requires_grad_(True) for t in rand_qkv(B, H, L, D, dtype=torch.float32))
    mask = padding_mask(B, L, [L, 70])
    pad = ~mask[:, None, :, None]
    out = backend(40 * q, torch.where(pad, torch.zeros_like(k), 40 * k), v, mask)
    out.square().sum().backward()
    assert torch.isfinite(out).all(), f"{path.stem}: non-finite output"
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v)), f"{path.stem}: non-finite gradient"


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


def test_performer_padded_keys_below_the_real_ones_cannot_overflow():
    """Real keys of large norm have very negative FAVOR+ logits (w.k' - |k'|^2 / 2); a padded key near zero
    has a logit near 0, far above the real keys' maximum that stabilises the exponent. Its feature must be
    zero (never exp overflowing to inf, then NaN when zeroed), in the output and in the gradients."""
    torch.manual_seed(0)
    q, k, v = (t.requires_grad_(True) for t in rand_qkv(2, 2, 64, 16, dtype=torch.float32))
    mask = padding_mask(2, 64, [64, 40])
    pad = ~mask[:, None, :, None]
    big_k = torch.where(pad, torch.zeros_like(k), 40 * k)  # real keys |k'| ~ 80: logits ~ -3000
    attn = PerformerAttention(head_dim=16)
    out = attn(q, big_k, v, mask)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
    with torch.no_grad():
        other = attn(q, torch.where(pad, torch.randn_like(k), 40 * k), v, mask)
    torch.testing.assert_close(out.detach(), other, rtol=1e-5, atol=1e-5)


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
