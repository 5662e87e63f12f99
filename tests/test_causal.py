"""Causal attention (model.causal): each backend's causal form against a dense masked softmax, the model's
outputs independent of later tokens, clear errors where a backend has no causal form, and a causal MQAR run."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from lra_sfa.baselines._prefix import CHUNK, causal_feature_attention
from lra_sfa.baselines.full import FullAttention
from lra_sfa.baselines.linear import LinearAttention
from lra_sfa.baselines.performer import PerformerAttention
from lra_sfa.baselines.windowed import WindowedAttention
from lra_sfa.kernels.sfa.reference import sfa_chunked, sfa_dense_reference
from lra_sfa.model import LRAClassifier, causal_backends
from lra_sfa.sfa import SFAAttention

from .conftest import CONF


def _qkv(B, H, L, D, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=gen, dtype=torch.float64) for _ in range(3)]


def _right_padding(B, L, lengths):
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)


def _masked_softmax(scores, allowed, v):
    """Dense reference: softmax over the allowed keys; a row with none gives 0."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0) @ v


def _causal_backend(backend):
    backend.causal = True
    return backend


@pytest.mark.parametrize("L", [1, 37, 150])
@pytest.mark.parametrize("padded", [False, True])
def test_full_and_windowed_causal_equal_the_dense_triangle(L, padded):
    q, k, v = _qkv(2, 2, L, 16, seed=L)
    mask = _right_padding(2, L, [L, max(1, L // 2)]) if padded else None
    triangle = torch.ones(L, L, dtype=torch.bool).tril()
    real = mask[:, None, None, :] if padded else torch.ones(1, 1, 1, L, dtype=torch.bool)
    scores = q @ k.transpose(-1, -2) / math.sqrt(16)
    full = _causal_backend(FullAttention())
    torch.testing.assert_close(full(q, k, v, mask), _masked_softmax(scores, triangle & real, v))
    assert full.last_path == ("sdpa+mask+causal" if padded else "sdpa+causal")
    window = 5  # the query and the 5 keys before it
    band = triangle & ~torch.ones(L, L, dtype=torch.bool).tril(-window - 1)
    windowed = _causal_backend(WindowedAttention(window=window))
    torch.testing.assert_close(windowed(q, k, v, mask), _masked_softmax(scores, band & real, v))


def test_full_causal_gives_zero_where_no_real_key_precedes_the_query():
    q, k, v = _qkv(1, 1, 6, 8, seed=1)
    mask = torch.tensor([[False, False, True, True, True, False]])
    out = _causal_backend(FullAttention())(q, k, v, mask)
    assert not out[:, :, :2].any() and torch.isfinite(out).all()


@pytest.mark.parametrize("L", [1, CHUNK - 1, CHUNK, 2 * CHUNK + 5])
def test_chunked_prefix_sums_equal_the_dense_causal_sums(L):
    gen = torch.Generator().manual_seed(L)
    phi_q, phi_k = (torch.rand(2, 3, L, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, L, 5, generator=gen, dtype=torch.float64)
    weights = (phi_q @ phi_k.transpose(-1, -2)).tril()  # (B, H, L, L)
    expected = (weights @ v) / weights.sum(-1, keepdim=True)
    torch.testing.assert_close(causal_feature_attention(phi_q, phi_k, v), expected)


@pytest.mark.parametrize("padded", [False, True])
def test_linear_and_performer_causal_equal_their_dense_causal_form(padded):
    L = 150
    q, k, v = _qkv(2, 2, L, 16, seed=3)
    mask = _right_padding(2, L, [L, 90]) if padded else None
    triangle = torch.ones(L, L, dtype=torch.bool).tril()
    for backend, features in ((LinearAttention(), lambda x: torch.nn.functional.elu(x) + 1),
                              (PerformerAttention(head_dim=16, kernel="relu"), None)):
        if features is None:  # the relu Performer's features, as the backend draws them
            features = lambda x, b=backend: torch.relu(x * 16 ** -0.25 @ b.projection.T.double()) + 1e-3  # noqa: E731
        phi_q, phi_k = features(q), features(k)
        if padded:
            phi_k = phi_k * mask[:, None, :, None]
        weights = (phi_q @ phi_k.transpose(-1, -2)) * triangle
        expected = (weights @ v) / weights.sum(-1, keepdim=True)
        out = _causal_backend(backend)(q, k, v, mask)
        torch.testing.assert_close(out, expected)
        assert backend.last_path == "torch+causal"


def test_causal_performer_outputs_ignore_later_keys():
    """FAVOR+'s key stabiliser is a maximum over every key; causal keys carry no epsilon, so it cancels and a
    later key cannot move an earlier output."""
    q, k, v = _qkv(2, 2, 120, 16, seed=4)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 80:] = 6 * torch.randn_like(k2[:, :, 80:])  # a much larger key maximum
    v2[:, :, 80:] += 3
    performer = _causal_backend(PerformerAttention(head_dim=16))
    before, after = performer(q, k, v), performer(q, k2, v2)
    torch.testing.assert_close(before[:, :, :80], after[:, :, :80], rtol=1e-9, atol=1e-12)
    assert (before[:, :, 80:] - after[:, :, 80:]).abs().max() > 1e-3


@pytest.mark.parametrize("L", [1, 33, 100])
@pytest.mark.parametrize("padded", [False, True])
def test_sfa_reference_causal_equals_the_dense_definition(L, padded):
    q, k, v = (t.requires_grad_(True) for t in _qkv(2, 2, L, 16, seed=L + 7))
    mask = _right_padding(2, L, [L, max(1, L // 3)]) if padded else None
    out = sfa_chunked(q, k, v, 4, 4, mask, causal=True)
    ref = sfa_dense_reference(q, k, v, 4, 4, mask, causal=True)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    for mine, exact in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(mine, exact)
    scores = _sparse(q, 4) @ _sparse(k, 4).transpose(-1, -2) / math.sqrt(16)
    allowed = torch.ones(L, L, dtype=torch.bool).tril()
    if padded:
        allowed = allowed & mask[:, None, None, :]
    torch.testing.assert_close(ref, _masked_softmax(scores, allowed, v))


def _sparse(x, topk):
    idx = x.abs().topk(topk, dim=-1).indices
    return x * torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)


def _model(attn: str, causal: bool = True, pooling: str = "none", **attn_args):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "attn" / f"{attn}.yaml"), attn_args)
    torch.manual_seed(0)
    return LRAClassifier(vocab_size=20, num_classes=5, seq_len=48, attn_cfg=cfg, d_model=32, num_heads=2,
                         num_layers=2, mlp_dim=32, pooling=pooling, dropout=0.0, attn_dropout=0.0,
                         has_padding=False, causal=causal, attn_name=attn).eval()


@pytest.mark.parametrize("attn", ["full", "linear", "performer", "performer_relu", "windowed", "sfa", "sfa_wide"])
def test_a_causal_model_position_ignores_every_later_token(attn):
    model = _model(attn)
    tokens = torch.randint(1, 20, (3, 48), generator=torch.Generator().manual_seed(5))
    changed = tokens.clone()
    changed[:, 30:] = torch.randint(1, 20, (3, 18), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :30], after[:, :30], rtol=1e-5, atol=1e-5)
    assert (before[:, 30:] - after[:, 30:]).abs().max() > 1e-3
    bidirectional = _model(attn, causal=False)
    with torch.no_grad():
        assert (bidirectional(tokens)[:, :30] - bidirectional(changed)[:, :30]).abs().max() > 1e-3


def test_the_causal_backends_are_listed_and_the_others_refused_by_name():
    names = causal_backends()
    assert {"full", "linear", "performer", "performer_relu", "sfa", "sfa_wide", "sfa_wide_simhash",
            "windowed"} <= set(names)  # sfa_wide_simhash inherits its _target_ from sfa_wide
    assert "linformer" not in names and "bigbird" not in names
    with pytest.raises(ValueError, match=r"attention 'linformer' cannot attend causally: has no causal form; "
                                         r"backends with a causal form: .*full"):
        _model("linformer")


def test_causal_with_cls_pooling_is_refused():
    with pytest.raises(ValueError, match="causal=true with pooling=cls"):
        _model("full", pooling="cls")


def test_sfa_causal_asks_for_triton_not_gluon():
    backend = _causal_backend(SFAAttention(topk=4, impl="gluon"))
    q = torch.zeros(1, 1, 64, 128)
    assert any("bidirectional; causal attention runs on the Triton kernels" in reason
               for reason in backend.unsupported_reasons(q, q, q))


def test_mqar_experiment_is_causal(make_cfg):
    cfg = make_cfg("experiment=mqar")
    assert cfg.model.causal is True and cfg.task.pooling == "none"


def test_a_causal_mqar_run_recalls_what_a_bidirectional_one_cannot(tmp_path):
    """A real run through the runner: with four pairs a bidirectional model can at best pick among the context's
    values (about 1/4); the causal one recalls each queried key's value."""
    from hydra import compose, initialize_config_module

    from lra_sfa.train import run

    overrides = ["experiment=mqar", "task.seq_len=24", "task.num_pairs=4", "task.vocab_size=32",
                 "task.num_train=4000", "task.num_val=200", "task.num_test=200", "model.d_model=64",
                 "trainer.max_steps=300", "trainer.batch_size=64", "trainer.eval_every=100", "trainer.lr=3e-3",
                 "trainer.device=cpu", "trainer.progress=false", f"run_dir={tmp_path / 'run'}", "results_dir=null",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    with initialize_config_module("lra_sfa.conf", version_base=None):
        causal = run(compose("config", overrides=overrides))
        bidirectional = run(compose("config", overrides=[*overrides, "model.causal=false",
                                                         f"run_dir={tmp_path / 'run2'}"]))
    assert causal["status"] == "ok" and causal["model"]["causal"] is True
    assert causal["test_accuracy"] > 0.9, causal["history"]
    assert bidirectional["model"]["causal"] is False and bidirectional["test_accuracy"] < 0.5


@pytest.mark.parametrize("L,tile,radius", [(100, 16, 5), (257, 32, 40), (64, 64, 0)])
def test_the_causal_band_tiles_are_exact(L, tile, radius):
    """The one-sided band's (any, full) tile states, which the FlexAttention block mask is built from, agree with
    its element predicate on every tile pair (full: every pair allowed; not any: none)."""
    from lra_sfa.baselines._patterns import BandGlobalPattern

    pattern = BandGlobalPattern(L, "cpu", radius=radius, global_tokens=[], causal=True)
    positions = torch.arange(L)
    allowed = pattern.allowed(positions[:, None], positions[None, :], torch.zeros(()))  # (L, L)
    any_, full = pattern.tile_states(tile)
    tiles = -(-L // tile)
    for i in range(tiles):
        for j in range(tiles):
            block = allowed[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
            assert bool(any_[0, i, j]) == bool(block.any()) and bool(full[0, i, j]) == bool(block.all())
    with pytest.raises(ValueError, match="causal band takes no global tokens"):
        BandGlobalPattern(L, "cpu", radius=radius, global_tokens=[0], causal=True)
