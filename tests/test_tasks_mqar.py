"""MQAR: the generator's definition (Zoology), the per-token head and loss on every backend, a run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lra_sfa.attention import build_attention
from lra_sfa.model import LRAClassifier, cross_entropy
from lra_sfa.tasks.base import IGNORE_INDEX
from lra_sfa.tasks.mqar import MQAR, gap_probabilities, make_split

from .conftest import attn_names


def _split(seed=0, num=400, seq_len=64, num_pairs=8, vocab_size=128, power_a=0.01, random_non_queries=False):
    return make_split(np.random.default_rng(seed), num, seq_len, num_pairs, vocab_size, power_a, random_non_queries)


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_pairs_use_disjoint_vocabularies_and_every_query_asks_for_its_keys_value(random_non_queries):
    seq_len, pairs, vocab = 64, 8, 128
    split = _split(seq_len=seq_len, num_pairs=pairs, vocab_size=vocab, random_non_queries=random_non_queries)
    tokens, labels = split.inputs.astype(np.int64), split.labels.astype(np.int64)
    assert tokens.shape == labels.shape == (400, seq_len) and tokens.min() >= 0 and tokens.max() < vocab
    keys, values = tokens[:, 0:2 * pairs:2], tokens[:, 1:2 * pairs:2]
    assert keys.min() >= 1 and keys.max() < vocab // 2 and values.min() >= vocab // 2
    assert all(len(set(row)) == pairs for row in keys) and all(len(set(row)) == pairs for row in values)
    assert (labels[:, :2 * pairs] == IGNORE_INDEX).all()  # nothing is asked inside the context
    for row in range(len(tokens)):
        asked = np.flatnonzero(labels[row] != IGNORE_INDEX)
        assert len(asked) == pairs and (asked >= 2 * pairs).all() and ((asked - 2 * pairs) % 2 == 0).all()
        lookup = dict(zip(keys[row], values[row]))
        assert sorted(tokens[row, asked]) == sorted(keys[row])  # every key queried exactly once
        assert all(lookup[tokens[row, p]] == labels[row, p] for p in asked)  # label = the key's value
        assert labels[row, asked].max() >= vocab // 2  # answers come from the value vocabulary
    filler = np.ones_like(labels, dtype=bool)
    filler[:, :2 * pairs] = False
    filler &= labels == IGNORE_INDEX
    if random_non_queries:
        assert tokens[filler].min() >= 1
    else:
        assert (tokens[filler] == 0).all()


def test_query_slots_follow_the_power_law():
    """One pair in a long query region: slot g is drawn with probability (g + 1)^(a - 1) / Z."""
    seq_len, num, power_a = 130, 40000, 0.3
    split = _split(seed=3, num=num, seq_len=seq_len, num_pairs=1, power_a=power_a)
    slots = (np.argmax(split.labels != IGNORE_INDEX, axis=1) - 2) // 2  # (num,) query slot per sequence
    expected = gap_probabilities((seq_len - 2) // 2, power_a)
    observed = np.bincount(slots, minlength=len(expected)) / num
    assert np.abs(observed - expected).max() < 0.01  # binomial std at p~0.15 is about 0.002
    slope = np.polyfit(np.log(np.arange(1, 17)), np.log(observed[:16]), 1)[0]
    assert abs(slope - (power_a - 1)) < 0.1
    many = _split(seed=4, num=2000, seq_len=256, num_pairs=16, power_a=0.01)
    gaps = np.flatnonzero((many.labels != IGNORE_INDEX).ravel()) % 256  # positions of all queries
    assert np.mean(gaps < 32 + 64) > np.mean(gaps >= 256 - 64)  # close to the context more often than far


def test_generation_is_deterministic_in_the_seed_and_cached(tmp_path):
    first, again, other = _split(seed=7), _split(seed=7), _split(seed=8)
    assert np.array_equal(first.inputs, again.inputs) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.inputs, other.inputs)
    task = MQAR(seq_len=64, num_pairs=4, vocab_size=64, num_train=50, num_val=20, num_test=20, seed=1)
    data = task.load(tmp_path)
    assert len(list((tmp_path / "mqar").glob("*.npz"))) == 3
    again = MQAR(seq_len=64, num_pairs=4, vocab_size=64, num_train=50, num_val=20, num_test=20, seed=1).load(tmp_path)
    assert np.array_equal(data.test.inputs, again.test.inputs) and not np.array_equal(data.train.inputs[:20],
                                                                                      data.test.inputs)
    assert data.source.startswith("generated:mqar-") and task.describe()["generator_seed"] == 1


@pytest.mark.parametrize("kwargs, words", [
    ({"seq_len": 256, "num_pairs": 256}, "seq_len >= 1024"),
    ({"seq_len": 63, "num_pairs": 4}, "even"),
    ({"seq_len": 64, "num_pairs": 0}, "num_pairs=0"),
    ({"seq_len": 64, "num_pairs": 16, "vocab_size": 16}, "vocab_size >= 34"),
    ({"seq_len": 64, "num_pairs": 4, "vocab_size": 1 << 16}, "vocab_size=65536"),
    ({"seq_len": 64, "num_pairs": 4, "pooling": "cls"}, "pooling='cls'"),
    ({"seq_len": 64, "num_pairs": 4, "power_a": 0.0}, "power_a=0.0"),
])
def test_impossible_parameters_fail_with_one_clear_line(kwargs, words):
    with pytest.raises(ValueError) as err:
        MQAR(**kwargs)
    assert words in str(err.value) and "\n" not in str(err.value) and "task mqar" in str(err.value)


def test_long_and_many_pair_limits_generate():
    task = MQAR(seq_len=16384, num_pairs=256, vocab_size=8192, num_train=0, num_val=0, num_test=2)
    split = make_split(np.random.default_rng(0), 2, 16384, 256, 8192, 0.01, False)
    assert (split.labels != IGNORE_INDEX).sum() == 2 * 256 and task.num_classes == 8192


@pytest.mark.parametrize("name", attn_names())
def test_token_head_and_query_loss_on_every_backend(make_cfg, name):
    """pooling none: no CLS, one output per position, the selected positions' logits equal the full ones."""
    cfg = make_cfg(f"attn={name}", "task=mqar", "model=tiny")
    torch.manual_seed(0)
    split = _split(num=3, seq_len=64, num_pairs=4, vocab_size=64)
    tokens = torch.from_numpy(split.inputs.astype(np.int64))
    labels = torch.from_numpy(split.labels.astype(np.int64))
    model = LRAClassifier(vocab_size=64, num_classes=64, seq_len=64, attn_cfg=cfg.attn, pooling="none",
                          has_padding=False, **{**OmegaConf.to_container(cfg.model), "dropout": 0.0,
                                                "attn_dropout": 0.0})
    probe = torch.randn(1, cfg.model.num_heads, 64, cfg.model.d_model // cfg.model.num_heads)
    reasons = model.attention_modules()[0].unsupported_reasons(probe, probe, probe, None)
    if reasons:
        pytest.skip("; ".join(reasons))
    model.eval()
    full = model(tokens)
    assert full.shape == (3, 64, 64) and model.cls is None
    select = labels != IGNORE_INDEX
    picked = model(tokens, select=select)
    assert picked.shape == (int(select.sum()), 64)
    torch.testing.assert_close(picked, full[select], rtol=1e-4, atol=1e-4)
    loss = cross_entropy(full, labels)
    torch.testing.assert_close(loss, cross_entropy(picked, labels[select]), rtol=1e-4, atol=1e-5)
    loss.backward()
    assert torch.isfinite(loss) and model.embed.weight.grad is not None


def test_select_needs_token_outputs():
    attn = OmegaConf.create({"_target_": "lra_sfa.baselines.full.FullAttention"})
    build_attention(attn, num_heads=2, head_dim=16, max_seq_len=9)
    model = LRAClassifier(vocab_size=8, num_classes=3, seq_len=8, attn_cfg=attn, d_model=32, num_heads=2)
    with pytest.raises(ValueError, match="pooling none"):
        model(torch.ones(2, 8, dtype=torch.long), select=torch.ones(2, 8, dtype=torch.bool))


def test_experiment_derives_batch_and_heads():
    with initialize_config_module("lra_sfa.conf", version_base=None):
        cfg = compose("config", overrides=["experiment=mqar", "task.seq_len=1024", "model.d_model=256"])
    assert cfg.protocol == "mqar" and cfg.trainer.batch_size == 64 and cfg.model.num_heads == 4
    assert (cfg.task.vocab_size, cfg.model.num_layers, cfg.model.pos, cfg.task.pooling) == (8192, 2, "learned", "none")


def test_a_short_run_learns_above_chance(tmp_path):
    """A real run through the runner: per-query accuracy well above chance (1 / number of values)."""
    from lra_sfa.train import run

    overrides = ["task=mqar", "task.seq_len=16", "task.num_pairs=2", "task.vocab_size=32", "task.num_train=4000",
                 "task.num_val=200", "task.num_test=200", "model=tiny", "model.dropout=0", "model.attn_dropout=0",
                 "trainer.max_steps=80", "trainer.batch_size=32", "trainer.eval_every=40", "trainer.lr=3e-3",
                 "trainer.warmup_steps=10", "trainer.device=cpu", "trainer.progress=false",
                 f"run_dir={tmp_path / 'run'}", "results_dir=null", f"paths.cache_dir={tmp_path / 'cache'}"]
    with initialize_config_module("lra_sfa.conf", version_base=None):
        record = run(compose("config", overrides=overrides))
    chance = 1 / 16
    assert record["status"] == "ok" and record["task"] == "mqar" and record["num_pairs"] == 2
    assert record["test_accuracy"] > 3 * chance, record["history"]
