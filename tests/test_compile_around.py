"""Backends that launch their own kernels stay out of torch.compile's graph, and the model compiles around them."""

from __future__ import annotations

import torch
import torch._dynamo
from omegaconf import OmegaConf

from lra_sfa.attention import AttentionBackend
from lra_sfa.model import LRAClassifier
from lra_sfa.placement import compile_choice, keep_out_of_graph
from lra_sfa.sfa import SFAAttention

SFA = OmegaConf.create({"_target_": "lra_sfa.sfa.SFAAttention", "topk": 4, "impl": "reference"})
FULL = OmegaConf.create({"_target_": "lra_sfa.baselines.full.FullAttention"})


class OpaqueBackend(AttentionBackend):
    """Neither traced whole nor kept out of the graph: auto must not compile a model holding it."""

    def forward(self, q, k, v, key_padding_mask=None):
        return v


def _model(attn_cfg, attention=None) -> LRAClassifier:
    torch.manual_seed(0)
    model = LRAClassifier(vocab_size=12, num_classes=3, seq_len=16, attn_cfg=attn_cfg, d_model=32, num_heads=2,
                          num_layers=2, mlp_dim=32, dropout=0.0, attn_dropout=0.0).eval()
    if attention is not None:
        for block in model.blocks:
            block.attn.attention = attention
    return model


def test_auto_compiles_around_sfa_on_one_cuda_device():
    cfg = OmegaConf.create({"trainer": {"compile": "auto"}})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: nothing is allocated
    assert SFAAttention.compile_around and not SFAAttention.compile_safe
    assert compile_choice(cfg, _model(SFA), cuda, world_size=1)
    assert compile_choice(cfg, _model(FULL), cuda, world_size=1)
    assert not compile_choice(cfg, _model(SFA), cpu, world_size=1)
    assert not compile_choice(cfg, _model(SFA), cuda, world_size=2)
    assert not compile_choice(cfg, _model(FULL, OpaqueBackend()), cuda, world_size=1)


def test_compiled_model_runs_sfa_eagerly_and_matches_eager():
    """Under torch.compile the SFA forward is not traced (a graph break per layer), and the model's output and
    gradients equal the eager model's."""
    model = _model(SFA)
    tokens = torch.randint(1, 12, (3, 16))
    tokens[0, 10:] = 0  # padding
    eager = model(tokens)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    keep_out_of_graph(model)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_break_count >= 2  # one per layer's attention
    compiled = torch.compile(model, backend="eager")(tokens)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for grad, expected in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(grad, expected)
    assert model.blocks[0].attn.attention.last_path == "reference"
