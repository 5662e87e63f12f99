"""The release's numerics: Flax initialisers, the 0-based rsqrt schedule, testing the final weights,
and the throughput options (compile, resident data) computing what the eager loop computes."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from lra_sfa.data import resident_split, to_tensors
from lra_sfa.model import LRAClassifier
from lra_sfa.optim import lr_factor
from lra_sfa.tasks.base import Split
from lra_sfa.train import run

from .test_train import EASY_LISTOPS

FULL = OmegaConf.create({"_target_": "lra_sfa.baselines.full.FullAttention"})


def _model(init: str, **kwargs) -> LRAClassifier:
    torch.manual_seed(0)
    return LRAClassifier(vocab_size=20, num_classes=10, seq_len=16, attn_cfg=FULL, d_model=256, num_heads=8,
                         num_layers=2, mlp_dim=512, init=init, **kwargs)


def _uniform_bound(weight: torch.Tensor) -> float:
    return float(weight.abs().max())


def test_release_init_uses_flax_fans():
    """q/k/v: fan_in = heads * d, fan_out = head_dim * d; out: fan_in = qkv_dim, fan_out = heads * d."""
    model = _model("lra", proj_bias=False)
    attn, d, heads, head_dim = model.blocks[0].attn, 256, 8, 32
    qkv_bound = math.sqrt(6 / (heads * d + head_dim * d))
    assert qkv_bound * 0.97 < _uniform_bound(attn.qkv.weight) <= qkv_bound
    out_bound = math.sqrt(6 / (d + heads * d))
    assert out_bound * 0.97 < _uniform_bound(attn.proj.weight) <= out_bound and attn.proj.bias is None
    mlp_in = model.blocks[0].mlp[0]
    assert math.sqrt(6 / (256 + 512)) * 0.97 < _uniform_bound(mlp_in.weight) <= math.sqrt(6 / (256 + 512))
    assert 0 < float(mlp_in.bias.abs().max()) < 1e-5
    head = model.head[0]
    assert abs(float(head.weight.std()) - 1 / math.sqrt(256)) < 0.1 / math.sqrt(256)
    assert float(head.weight.abs().max()) <= 2 / 0.8796 / math.sqrt(256) + 1e-6 and not head.bias.any()


def test_release_numerics_options_reach_the_layers():
    model = _model("lra", norm_eps=1e-6, gelu="tanh", proj_bias=False)
    block = model.blocks[0]
    assert block.norm1.eps == 1e-6 and model.norm.eps == 1e-6 and block.mlp[1].approximate == "tanh"
    torch_default = _model("torch")
    assert torch_default.blocks[0].attn.proj.bias is not None and torch_default.blocks[0].norm1.eps == 1e-5
    with pytest.raises(ValueError, match="model: init='flax' must be one of torch, lra"):
        _model("flax")


def test_rsqrt_starts_at_zero_as_the_release():
    assert lr_factor(0, "rsqrt", 1000, 5000) == 0.0
    assert lr_factor(500, "rsqrt", 1000, 5000) == pytest.approx(0.5 / math.sqrt(1000))
    assert lr_factor(4000, "rsqrt", 1000, 5000) == pytest.approx(1 / math.sqrt(4000))
    assert lr_factor(0, "cosine", 100, 1000) == pytest.approx(0.01)  # other schedules count from 1


def test_final_weights_are_tested_when_asked(make_cfg, monkeypatch):
    """The test pass sees the last step's weights with test_weights=final, the best validation step's with
    best_val; the record says which."""
    from lra_sfa import train

    seen = []  # (split size, checksum of the weights evaluated)
    evaluate = train.evaluate

    def spy(model, split, *args, **kwargs):
        seen.append((len(split), sum(float(p.double().sum()) for p in model.parameters())))
        return evaluate(model, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", spy)
    common = [*EASY_LISTOPS, "attn=full", "trainer.max_steps=60", "trainer.eval_every=20", "trainer.lr=3e-3",
              "trainer.warmup_steps=5", "trainer.batch_size=32", "task.num_val=200"]
    for choice in ("final", "best_val"):
        seen.clear()
        record = run(make_cfg(*common, f"trainer.test_weights={choice}"))
        assert record["status"] == "ok" and record["test_weights"] == choice
        val_points, tested = seen[:-1], seen[-1][1]  # three val passes (steps 20, 40, 60), then test
        assert [size for size, _ in val_points] == [200] * 3 and seen[-1][0] == 300
        step = record["steps"] if choice == "final" else record["best_step"]
        assert tested == pytest.approx(val_points[step // 20 - 1][1], rel=1e-12)
    assert record["final_val_accuracy"] == record["history"][-1]["val_accuracy"]


def test_bad_test_weights_is_one_line(make_cfg):
    with pytest.raises(ValueError, match="trainer.test_weights='last' must be best_val or final"):
        run(make_cfg(*EASY_LISTOPS, "trainer.test_weights=last"))


def test_resident_split_gathers_the_same_batches():
    inputs = torch.randint(0, 100, (50, 7), dtype=torch.int16).numpy()
    labels = torch.randint(0, 10, (50,)).numpy()
    split = Split(inputs, labels)
    indices = torch.randperm(50)[:9].numpy()
    tokens, targets = to_tensors(split, indices, torch.device("cpu"))
    resident = resident_split(split, torch.device("cpu"))
    tokens_r, targets_r = to_tensors(resident, indices, torch.device("cpu"))
    assert tokens_r.dtype == torch.int64 and torch.equal(tokens, tokens_r) and torch.equal(targets, targets_r)


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["full", "sfa"])  # full traces whole; the model compiles around sfa
def test_compiled_run_matches_eager(make_cfg, attn):
    """torch.compile changes no result: the same seed gives the same loss curve within float noise."""
    common = [*EASY_LISTOPS, f"attn={attn}", "trainer.max_steps=30", "trainer.eval_every=30", "trainer.log_every=5",
              "model.dropout=0.0", "model.attn_dropout=0.0"]
    eager = run(make_cfg(*common, "trainer.compile=false"))
    compiled = run(make_cfg(*common, "trainer.compile=true"))
    assert compiled["compiled"] is True and eager["compiled"] is False
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-3)


def test_release_padding_masks_zero_tokens_and_averages_padded_queries():
    """padding=release: token 0 is padding even for a pixel task; a padded query's attention output is the
    mean of v over all positions; mean pooling averages every position."""
    torch.manual_seed(0)
    model = LRAClassifier(vocab_size=8, num_classes=2, seq_len=6, attn_cfg=FULL, d_model=16, num_heads=2,
                          num_layers=1, mlp_dim=16, pooling="mean", has_padding=False, padding="release",
                          dropout=0.0, attn_dropout=0.0).eval()
    assert model.has_padding
    attn = model.blocks[0].attn
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[True, False, True, True, False, True]])
    out = attn.attention  # the backend alone, to rebuild the expected output
    qkv = attn.qkv(x).view(1, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    expected = out(qkv[0], qkv[1], qkv[2], mask)
    expected[:, :, ~mask[0]] = qkv[2].mean(dim=2, keepdim=True).expand(-1, -1, int((~mask).sum()), -1)
    expected = attn.proj(expected.transpose(1, 2).reshape(1, 6, 16))
    assert torch.allclose(attn(x, mask), expected, atol=1e-6)
    tokens = torch.tensor([[3, 0, 5, 1, 0, 2]])
    hidden = {}
    model.norm.register_forward_hook(lambda module, args, output: hidden.update(x=output))
    pooled = model.encode(tokens)
    assert torch.allclose(pooled, hidden["x"].mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="model: padding='none' must be one of task, release"):
        LRAClassifier(vocab_size=8, num_classes=2, seq_len=6, attn_cfg=FULL, padding="none")


@pytest.mark.parametrize("dual_head, features", [("paper", 4 * 16), ("release", 2 * 16)])
def test_dual_heads(dual_head, features):
    """paper: [x1, x2, x1*x2, x1-x2] -> Dense -> ReLU -> Dense; release: [x1, x2] with one more hidden layer."""
    model = LRAClassifier(vocab_size=8, num_classes=2, seq_len=6, attn_cfg=FULL, d_model=16, num_heads=2,
                          num_layers=1, mlp_dim=32, dual=True, dual_head=dual_head, init="lra")
    linears = [layer for layer in model.head if isinstance(layer, torch.nn.Linear)]
    assert linears[0].in_features == features and len(linears) == (3 if dual_head == "release" else 2)
    assert model(torch.randint(1, 8, (3, 2, 6))).shape == (3, 2)
