"""GPU checks of every dispatched FlashSFA path against float64 (``pytest -m gpu``; skipped without CUDA).

The cases are ``lra_sfa.bench.kernels.check.CASES`` (also run by
``python -m lra_sfa.bench.kernels mode=check``): Gluon and Triton, d = 64 and
128, L = 1K, 8K and 32K in bf16, the Gluon forward's two launches and its
loose-bound fallback, padding, fp16 / fp32, d = 32 and L = 1. Each runs forward
and backward through ``flash_sfa`` and compares out, dQ, dK, dV and the
forward-only output with the float64 reference by DESIGN.md's rule
(``kernels.sfa.check.full_check``: err(kernel) <= 2 x err(plain PyTorch in the
same dtype) + a dtype margin); on sm_90 it asserts first that
``dispatch.kernel_path`` names the kernels it expects. With
LRA_SFA_GPU_SUMMARY=<file.csv> the module writes one row per case there,
naming the forward and backward kernels that ran. The key-code range that
``topk_pack(k, topk, key_range=True)`` folds in by float32 atomics is checked
against ``tiles.key_code_range`` on its codes, bit for bit.
"""

from __future__ import annotations

import csv
import fcntl
import os

import pytest
import torch

from lra_sfa.bench.kernels.check import CASES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run with pytest -m gpu on the GPU machine)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 runs no GPU kernel"),
]

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


class SummaryFile:
    """Appends each case's row to LRA_SFA_GPU_SUMMARY as it passes or fails, under a file lock, so a run cut
    by a time limit keeps the rows done and pytest-xdist workers can share one file."""

    def __init__(self, path: str | None):
        self.path = path

    def append(self, row: dict) -> None:
        from lra_sfa.bench.kernels.check import CHECK_COLUMNS

        if not self.path:
            return
        with open(self.path, "a", newline="") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            writer = csv.DictWriter(handle, fieldnames=CHECK_COLUMNS)
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerow(row)


@pytest.fixture(scope="module")
def summary():
    return SummaryFile(os.environ.get("LRA_SFA_GPU_SUMMARY"))


def _qkv(length: int, dim: int, dtype: torch.dtype, scale: float, heads: int):
    gen = torch.Generator(device="cuda").manual_seed(length + dim)
    q, k, v = (torch.randn(1, heads, length, dim, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    return q * scale, k * scale, v


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_kernels_match_float64(case, summary):
    from lra_sfa.bench.kernels.check import ERRORS, check_case

    row, res = check_case(case, "cuda")
    summary.append(row)
    if HOPPER:
        assert row["path"] == case.expected, (row["path"], row["fwd_path"], row["bwd_path"])
    assert res["topk_ok"], "topk_pack's kept magnitudes differ from torch.topk's"
    failed = {n: (res[f"{n}_err"], res[f"{n}_torch_err"]) for n in ERRORS if not res[f"{n}_ok"]}
    assert not failed, f"{row['path']}: kernel error above 2 x plain PyTorch's + margin (kernel, torch): {failed}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("length,dim,topk", [(1000, 64, 8), (4096, 128, 8), (37, 128, 128)])
def test_fused_key_range_matches_key_code_range(dtype, length, dim, topk):
    """The range topk_pack folds in from many programs per head (atomic max / min) is key_code_range of its
    codes exactly, with a column that is always kept and negative; topk == D takes no kernel."""
    from lra_sfa.kernels.sfa.tiles import key_code_range
    from lra_sfa.kernels.sfa.topk_pack import topk_pack

    k = _qkv(length, dim, dtype, 1.0, 8)[1]  # (1, 8, L, D)
    k[..., 0] = -(k[..., 0].abs() + 4)
    _, _, kd, rng = topk_pack(k, topk, key_range=True)
    assert torch.equal(rng, key_code_range(kd.reshape(8, length, dim)))  # (B*H, L, D)
    assert bool((rng[:, 0, 0] < 0).all())


@pytest.mark.skipif(not HOPPER, reason="the Gluon kernels need sm_90 (H100 / H200)")
def test_attn_path_says_gluon_when_gluon_ran(monkeypatch):
    """SFAAttention's last_path (the record's attn_path) is "gluon" exactly when the Gluon kernels ran."""
    from lra_sfa.kernels.sfa import gluon_bwd, gluon_fwd
    from lra_sfa.sfa import SFAAttention

    calls = []
    for module, name in ((gluon_fwd, "gluon_ws_forward"), (gluon_bwd, "gluon_dq"), (gluon_bwd, "gluon_dkdv")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    q, k, v = (t.requires_grad_(True) for t in _qkv(2048, 128, torch.bfloat16, 1.0, 2))
    for impl, path, ran in (("auto", "gluon", {"gluon_ws_forward", "gluon_dq", "gluon_dkdv"}),
                            ("gluon", "gluon", {"gluon_ws_forward", "gluon_dq", "gluon_dkdv"}),
                            ("triton", "triton", set())):
        calls.clear()
        backend = SFAAttention(topk=8, impl=impl, head_dim=128)
        backend(q, k, v).sum().backward()
        assert backend.last_path == path and set(calls) == ran, (impl, backend.last_path, calls)
    with pytest.raises(ValueError, match="kernels='gluon' cannot run"):
        SFAAttention(topk=8, impl="gluon")(q.float(), k.float(), v.float())
    assert SFAAttention(topk=8, impl="gluon").unsupported_reasons(q[..., :64], k[..., :64], v[..., :64])


@pytest.mark.parametrize("padding", [False, True])
def test_a_model_with_sfa_compiles_whole_on_the_gpu(padding):
    """On CUDA too (dispatch reads the device), a model with SFA compiles to one graph, and the compiled model
    (inductor) gives the eager model's output to bf16 rounding and its gradients up to the rows that a top-k
    near-tie moves (see below). Head dim 128 and L = 512: the
    Gluon forward (without padding) and backward on Hopper, Triton elsewhere."""
    import torch._dynamo
    from omegaconf import OmegaConf

    from lra_sfa.model import LRAClassifier

    torch.manual_seed(0)
    attn = OmegaConf.create({"_target_": "lra_sfa.sfa.SFAAttention", "topk": 8, "impl": "auto"})
    model = LRAClassifier(vocab_size=20, num_classes=4, seq_len=512, attn_cfg=attn, d_model=512, num_heads=4,
                          num_layers=2, mlp_dim=512, dropout=0.0, attn_dropout=0.0).cuda()
    tokens = torch.randint(1, 20, (4, 512), device="cuda")
    if padding:
        tokens[1, 300:] = 0
    with torch.autocast("cuda", torch.bfloat16):
        eager = model(tokens).float()
    eager.sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    with torch.autocast("cuda", torch.bfloat16):
        compiled = torch.compile(model, fullgraph=True)(tokens).float()
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager, atol=2e-2, rtol=2e-2)
    for (name, param), want in zip(model.named_parameters(), expected):
        # Inductor fuses the projections' bf16 epilogues differently from eager, so a feature at a near-tie of
        # the top-k can be kept on one side and dropped on the other: that query's gradient then differs in
        # one feature, which is one row of the projection's weight gradient. Allow such rows (under 1% of
        # the entries), nothing wider.
        off = (param.grad.float() - want.float()).abs() > 5e-2 + 5e-2 * want.float().abs()
        assert off.float().mean().item() < 1e-2, f"{name}: {int(off.sum())} of {off.numel()} gradient entries differ"


@pytest.mark.parametrize("shape", ["pathfinder", "listops"])
def test_a_model_with_sfa_trains_the_same_under_cuda_graphs(shape):
    """torch.compile(mode="reduce-overhead") replays the compiled forward and backward as CUDA graphs, which takes
    the host's launch time (half of a Pathfinder step with SFA) out of the step. Four AdamW steps of a model with
    SFA under it give the eager model's losses, to bf16 rounding and top-k near-ties: at Pathfinder's protocol
    shape (head dim 4, SFA k = 2, value-0 pixels as padding anywhere: packed) and at ListOps' (head dim 64, k = 8,
    right padding: trimmed)."""
    import copy

    from omegaconf import OmegaConf

    from lra_sfa.model import LRAClassifier

    torch.manual_seed(0)
    pathfinder = shape == "pathfinder"
    attn = OmegaConf.create({"_target_": "lra_sfa.sfa.SFAAttention", "topk": 2 if pathfinder else 8, "impl": "auto"})
    size = dict(d_model=32, qkv_dim=16, num_heads=4, mlp_dim=32) if pathfinder else dict(d_model=128, num_heads=2,
                                                                                          mlp_dim=128)
    padding = dict(has_padding=False, padding="release", pooling="mean") if pathfinder else {}
    eager = LRAClassifier(vocab_size=20, num_classes=4, seq_len=256, attn_cfg=attn, num_layers=2, dropout=0.0,
                          attn_dropout=0.0, **size, **padding).cuda()
    graphed = copy.deepcopy(eager)
    compiled = torch.compile(graphed, mode="reduce-overhead")
    tokens = torch.randint(1, 20, (4, 8, 256), device="cuda")  # (steps, B, L)
    if pathfinder:
        tokens[tokens < 6] = 0  # value-0 pixels anywhere
    else:
        tokens[:, 1, 200:] = 0  # right padding
    labels = torch.randint(0, 4, (4, 8), device="cuda")
    losses = {}
    for name, model, forward in (("eager", eager, eager), ("graphed", graphed, compiled)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[name] = []
        for step in range(4):
            with torch.autocast("cuda", torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(forward(tokens[step]).float(), labels[step])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses["graphed"]), torch.tensor(losses["eager"]), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("length,head_dim,padding,causal", [(512, 128, False, False), (512, 64, True, False),
                                                             (300, 32, False, False), (512, 128, True, True)])
def test_the_flash_sfa_operators_pass_opcheck_on_the_gpu(length, head_dim, padding, causal):
    """The operators' fake shapes, schema and autograd registration hold on every kernel pair they dispatch to
    (the Gluon forward and backward at d = 128 on Hopper, the Triton kernels with a padding mask)."""
    from lra_sfa.kernels.sfa import autograd

    q, k, v = (t.requires_grad_(True) for t in _qkv(length, head_dim, torch.bfloat16, 1.0, 2))
    mask = torch.ones(q.shape[0], length, dtype=torch.bool, device="cuda")
    if padding:
        mask[-1, length // 2:] = False
    args = (q, k, v, 8, 8, mask if padding else None, "auto", padding, causal)
    torch.library.opcheck(autograd._train_forward, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    with torch.no_grad():
        torch.library.opcheck(autograd._forward_op, tuple(t.detach() if isinstance(t, torch.Tensor) else t
                                                          for t in args), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("head_dim,suffix", [(64, False), (128, False), (64, True), (128, True)])
def test_skip_padding_matches_float64_on_the_gpu(head_dim, suffix):
    """sfa_attention(skip_padding=True) in bf16 on the autotuned GPU configs (the interpreter runs only its own):
    ragged trailing padding with holes (packed), or right padding only (``padding_is_suffix``: trimmed), a full
    row and a row of padding only; output and gradients (upstream gradient on real rows, as the model gives)
    against the float64 reference with the same rule."""
    from lra_sfa.kernels import sfa_attention
    from lra_sfa.kernels.sfa import check as sfa_check

    gen = torch.Generator(device="cuda").manual_seed(head_dim)
    leaves = [torch.randn(3, 4, 2048, head_dim, device="cuda", generator=gen).to(torch.bfloat16).requires_grad_(True)
              for _ in range(3)]
    mask = torch.rand(3, 2048, device="cuda", generator=gen) > 0.3
    if suffix:
        mask[0] = True
    mask[0, 1333:] = False
    mask[1] = True
    mask[2] = False
    out = sfa_attention(*leaves, 8, 8, key_padding_mask=mask, skip_padding=True, padding_is_suffix=suffix)
    grad = torch.randn(out.shape, device="cuda", generator=gen).to(out.dtype) * mask[:, None, :, None]
    got = torch.autograd.grad(out, leaves, grad)
    exact_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = sfa_attention(*exact_leaves, 8, 8, key_padding_mask=mask, impl="reference", skip_padding=True)
    expected = torch.autograd.grad(ref, exact_leaves, grad.double())
    assert sfa_check.rel_err(out, ref) < 1e-2
    for name, mine, exact in zip("qkv", got, expected):
        assert sfa_check.rel_err(mine, exact) < 2e-2, name
    assert not out[~mask[:, None, :, None].expand_as(out)].any()


@pytest.mark.parametrize("length,head_dim,suffix", [(1000, 64, False), (2048, 128, False), (2048, 64, True),
                                                    (4096, 128, True)])
def test_causal_matches_float64_on_the_gpu(length, head_dim, suffix):
    """causal=True in bf16 on the autotuned GPU configs (the interpreter runs only its own): the Triton kernels
    (even where Gluon runs the bidirectional call, and where impl=auto would run SDPA on the codes), output and
    gradients against the float64 reference; right padding with trimmed rows in the ``suffix`` cases."""
    from lra_sfa.kernels import sfa_attention
    from lra_sfa.kernels.sfa import check as sfa_check
    from lra_sfa.kernels.sfa.api import sfa_path

    gen = torch.Generator(device="cuda").manual_seed(length + head_dim)
    leaves = [torch.randn(2, 4, length, head_dim, device="cuda", generator=gen).to(torch.bfloat16)
              .requires_grad_(True) for _ in range(3)]
    mask = None
    if suffix:
        mask = torch.arange(length, device="cuda")[None, :] < torch.tensor([length, length * 2 // 3 + 5],
                                                                            device="cuda")[:, None]
    assert sfa_path(*leaves, mask, "triton", causal=True) == "triton"
    out = sfa_attention(*leaves, 8, 8, key_padding_mask=mask, impl="triton", skip_padding=suffix,
                        padding_is_suffix=suffix, causal=True)
    grad = torch.randn(out.shape, device="cuda", generator=gen).to(out.dtype)
    if suffix:
        grad = grad * mask[:, None, :, None]
    got = torch.autograd.grad(out, leaves, grad)
    exact_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = sfa_attention(*exact_leaves, 8, 8, key_padding_mask=mask, impl="reference", skip_padding=suffix,
                        causal=True)
    expected = torch.autograd.grad(ref, exact_leaves, grad.double())
    assert sfa_check.rel_err(out, ref) < 1e-2
    for name, mine, exact in zip("qkv", got, expected):
        assert sfa_check.rel_err(mine, exact) < 2e-2, name
    with torch.no_grad():
        fused = sfa_attention(*(t.detach() for t in leaves), 8, 8, key_padding_mask=mask, impl="triton",
                              skip_padding=suffix, padding_is_suffix=suffix, causal=True)
    assert sfa_check.rel_err(fused, ref) < 1e-2


@pytest.mark.parametrize("attn", ["full", "windowed", "sfa", "linear", "performer"])
def test_a_causal_model_ignores_later_tokens_on_the_gpu(attn):
    """The GPU engines (SDPA's causal kernel, FlexAttention's one-sided band, the causal FlashSFA kernels): in
    bf16 autocast, the outputs before a changed token are those of the unchanged input, to rounding.

    Performer's key stabiliser is a maximum over every key, later ones included: it cancels exactly in the ratio
    but moves the float32 rounding of the features, which can flip the bf16 rounding of an attention output by
    one unit in the last place (2^-8 relative) and carry into the next layer; its bound is bf16's own tolerance.
    A leak of a later token's content moves outputs by far more (the last assert)."""
    from omegaconf import OmegaConf

    from lra_sfa.model import LRAClassifier

    from .conftest import CONF

    torch.manual_seed(0)
    model = LRAClassifier(vocab_size=50, num_classes=7, seq_len=512, attn_cfg=OmegaConf.load(CONF / "attn" /
                          f"{attn}.yaml"), d_model=128, num_heads=2, num_layers=2, mlp_dim=128, pooling="none",
                          dropout=0.0, attn_dropout=0.0, has_padding=False, causal=True, attn_name=attn).cuda().eval()
    tokens = torch.randint(1, 50, (4, 512), device="cuda")
    changed = tokens.clone()
    changed[:, 300:] = torch.randint(1, 50, (4, 212), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        before, after = model(tokens).float(), model(changed).float()
    tol = 1.6e-2 if attn == "performer" else 1e-3  # 1.6e-2: torch.testing's bf16 rtol
    torch.testing.assert_close(before[:, :300], after[:, :300], rtol=tol, atol=tol)
    assert (before[:, 300:] - after[:, 300:]).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value_dim", [4, 8, 64])
def test_wide_code_kernels_compile_and_match_float64_on_the_gpu(dtype, value_dim):
    """The wide-code Triton kernels at the value head dims the tasks use (Pathfinder's 4 and Fashion-MNIST's 8,
    zero-padded to 16 by the launcher, and 64), forward and backward, against the dense reference in float64:
    err(kernels) <= 2 x err(the reference in the same dtype) + a dtype margin."""
    from lra_sfa.kernels.wide.reference import wide_dense_reference
    from lra_sfa.kernels.wide.triton_kernel import wide_triton_attention

    gen = torch.Generator(device="cuda").manual_seed(value_dim)
    batch, heads, length, topk, features = 2, 2, 300, 8, 256
    q_idx = torch.rand(batch, heads, length, features, generator=gen, device="cuda").topk(topk, dim=-1).indices
    k_idx = torch.rand(batch, heads, length, features, generator=gen, device="cuda").topk(topk, dim=-1).indices
    leaves = [torch.randn(batch, heads, length, width, generator=gen, device="cuda")
              for width in (topk, topk, value_dim)]  # q values, k values, v
    grad = torch.randn(batch, heads, length, value_dim, generator=gen, device="cuda")

    def run(fn, cast):
        inputs = [x.to(cast).requires_grad_(True) for x in leaves]
        out = fn(*inputs)
        return [out.detach().double(), *(g.double() for g in torch.autograd.grad((out * grad.to(cast)).sum(),
                                                                                  inputs))]

    def kernels(qv, kv, v):
        return wide_triton_attention(q_idx, qv, k_idx, kv, v, features, 0.5)[0]

    def reference(qv, kv, v):
        return wide_dense_reference(q_idx, qv, k_idx, kv, v, features, 0.5)

    margin = 1e-5 if dtype == torch.float32 else 2e-2
    for name, got, plain, exact in zip(("out", "dq", "dk", "dv"), run(kernels, dtype), run(reference, dtype),
                                       run(reference, torch.float64)):
        err, base = (got - exact).abs().max().item(), (plain - exact).abs().max().item()
        assert err <= 2 * base + margin, f"{name}: kernels err {err:.3g} vs plain {dtype} err {base:.3g}"


@pytest.mark.parametrize("rows,width,k,dtype", [(131072, 1024, 8, torch.bfloat16), (4096, 4096, 16, torch.float32),
                                                (1000, 96, 8, torch.bfloat16)])
def test_code_topk_kernel_selects_what_torch_topk_selects_on_the_gpu(rows, width, k, dtype):
    """Learned wide codes' top-k (``code_topk``, the Triton row kernel under impl=auto on CUDA) at MQAR's shape
    (batch 256 x 2 heads x 256 tokens, D = 1024, k = 8), at the backend's default D = 4096, k = 16, and at a
    width that is no power of two: its indices select torch.topk's values, in its order."""
    from lra_sfa.kernels.wide.topk import code_topk

    z = torch.randn(rows, width, device="cuda", generator=torch.Generator(device="cuda").manual_seed(k)).to(dtype)
    index = code_topk(z, k)
    assert index.shape == (rows, k) and index.dtype == torch.int64
    assert torch.equal(z.gather(-1, index), z.topk(k, dim=-1).values)


def test_code_topk_kernel_reads_rows_past_two_to_the_31_logits_on_the_gpu():
    """The Text model's Table 2 cell at 4K tokens (batch 32 x 4 heads x 4096 tokens, D = 4096) holds exactly
    2^31 logits: the kernel's offsets must not wrap there (int32 offsets read outside the tensor), and the rows
    after the boundary get torch.topk's values like the first ones."""
    from lra_sfa.kernels.wide.topk import code_topk

    rows, width, k = 2**31 // 4096 + 100, 4096, 16
    z = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16,
                    generator=torch.Generator(device="cuda").manual_seed(0))  # (rows, D): 4 GiB
    index = code_topk(z, k)
    torch.cuda.synchronize()
    for part in (slice(0, 1000), slice(rows - 1000, rows)):  # before and past the 2^31-th logit
        assert torch.equal(z[part].gather(-1, index[part]), z[part].topk(k, dim=-1).values)
