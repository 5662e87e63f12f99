"""torch.compile and SFA: its kernels are custom operators, so a model with SFA compiles to one graph (no break per
layer) that computes what the eager model does, on the kernels (under the interpreter here) and the reference."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from omegaconf import OmegaConf

from lra_sfa.attention import AttentionBackend
from lra_sfa.kernels.sfa.autograd import flash_sfa
from lra_sfa.model import LRAClassifier
from lra_sfa.placement import compile_choice
from lra_sfa.sfa import SFAAttention

SFA = OmegaConf.create({"_target_": "lra_sfa.sfa.SFAAttention", "topk": 4, "impl": "reference"})
FULL = OmegaConf.create({"_target_": "lra_sfa.baselines.full.FullAttention"})


class OpaqueBackend(AttentionBackend):
    """Neither traced whole nor kept out of the graph: auto must not compile a model holding it."""

    def forward(self, q, k, v, key_padding_mask=None):
        return v


def _model(attn_cfg, attention=None, packed: bool = False) -> LRAClassifier:
    """A small LRA model; ``packed``: pixel-like tokens under the release's mask (padding anywhere)."""
    torch.manual_seed(0)
    padding = {"has_padding": False, "padding": "release"} if packed else {}
    model = LRAClassifier(vocab_size=12, num_classes=3, seq_len=16, attn_cfg=attn_cfg, d_model=32, num_heads=2,
                          num_layers=2, mlp_dim=32, dropout=0.0, attn_dropout=0.0, **padding).eval()
    if attention is not None:
        for block in model.blocks:
            block.attn.attention = attention
    return model


def test_auto_compiles_models_with_sfa_on_one_cuda_device():
    cfg = OmegaConf.create({"trainer": {"compile": "auto"}})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: nothing is allocated
    assert SFAAttention.compile_safe
    assert compile_choice(cfg, _model(SFA), cuda, world_size=1)
    assert compile_choice(cfg, _model(FULL), cuda, world_size=1)
    assert not compile_choice(cfg, _model(SFA), cpu, world_size=1)
    assert not compile_choice(cfg, _model(SFA), cuda, world_size=2)
    assert not compile_choice(cfg, _model(FULL, OpaqueBackend()), cuda, world_size=1)


@pytest.mark.parametrize("impl,skipping", [("reference", ""), ("triton", "+trimmed"), ("triton", "+packed"),
                                           ("sdpa", "+mask")])
def test_a_model_with_sfa_compiles_to_one_graph_that_matches_eager(impl, skipping):
    """No graph break anywhere in the model (the kernels are opaque operators in the graph), and the compiled
    model's output and gradients equal the eager model's, with padding rows skipped by trimming (right padding)
    or by packing (the release's mask of value-0 pixels)."""
    model = _model(OmegaConf.merge(SFA, {"impl": impl}), packed=skipping == "+packed")
    tokens = torch.randint(1, 12, (3, 16))
    tokens[0, 10:] = 0  # padding
    if skipping == "+packed":
        tokens[1, ::4] = 0  # zero pixels anywhere
    eager = model(tokens)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(tokens)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for grad, expected in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(grad, expected)
    assert model.blocks[0].attn.attention.last_path == impl + skipping


@pytest.mark.parametrize("head_dim,topk,padding,causal", [(16, 4, True, False), (32, 32, False, False),
                                                          (16, 1, False, False), (16, 4, True, True)])
def test_the_flash_sfa_operators_pass_opcheck_and_compile_whole(head_dim, topk, padding, causal):
    """torch.library.opcheck on both operators (schema, fake shapes, autograd registration), then the function
    compiled with fullgraph=True gives the eager output and gradients bit for bit."""
    from lra_sfa.kernels.sfa import autograd

    generator = torch.Generator().manual_seed(head_dim + topk)
    # (B, L, H, D) transposed, as the model's projections give them: outputs are contiguous whatever the strides
    q, k, v = (torch.randn(2, 24, 2, head_dim, generator=generator).transpose(1, 2) for _ in range(3))
    mask = torch.ones(2, 24, dtype=torch.bool)
    if padding:
        mask[1, 15:] = False
    mask = mask if padding else None
    args = (*(t.detach().requires_grad_(True) for t in (q, k, v)), topk, topk, mask, "triton", padding, causal)
    torch.library.opcheck(autograd._train_forward, args, test_utils=("test_schema", "test_faketensor",
                                                                      "test_autograd_registration"))
    with torch.no_grad():
        torch.library.opcheck(autograd._forward_op, tuple(t.detach() if isinstance(t, torch.Tensor) else t
                                                          for t in args), test_utils=("test_schema", "test_faketensor"))
    results = []
    for function in (flash_sfa, torch.compile(flash_sfa, backend="aot_eager", fullgraph=True)):
        leaves = [t.detach().clone().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
                  for t in (q, k, v)]
        out = function(*leaves, topk, topk, mask, causal=causal)
        (out * out).sum().backward()
        results.append([out.detach(), *(t.grad for t in leaves)])
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


def test_the_sparse_codes_operator_passes_opcheck_and_sdpa_sfa_compiles_whole():
    """SDPA on the codes: the top-k operator's schema, fake shapes and autograd registration (opcheck), then
    ``sdpa_sfa`` compiled with fullgraph=True gives the eager output and gradients bit for bit."""
    from lra_sfa.kernels.sfa.codes import sdpa_sfa, sparse_codes

    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 24, 2, 16, generator=generator).transpose(1, 2) for _ in range(3))  # (B, H, L, D)
    torch.library.opcheck(sparse_codes, (q.detach().requires_grad_(True), 4),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    results = []
    for function in (sdpa_sfa, torch.compile(sdpa_sfa, backend="aot_eager", fullgraph=True)):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        out = function(*leaves, 4, 4, causal=True)
        (out * out).sum().backward()
        results.append([out.detach(), *(t.grad for t in leaves)])
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


def test_the_backward_keeps_its_own_copies_not_the_callers_fused_projection():
    """q, k, v as the model makes them (views of one fused projection): nothing SFA saves for its backward holds
    that three-times-larger buffer, and no output aliases an input."""
    fused = torch.randn(2, 24, 3, 2, 16, requires_grad=True)  # (B, L, 3, H, D)
    q, k, v = fused.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D), a view of fused
    storages = []

    def pack(tensor):
        storages.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = flash_sfa(q, k, v, 4, 4, None)
    assert storages and max(storages) <= q.numel() * q.element_size()
    out.sum().backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0
