"""FlashSFA Triton kernels on the CPU interpreter (TRITON_INTERPRET=1) against the references.

Pass rule (DESIGN.md): err(kernel vs float64) <= 2 * err(plain PyTorch in the
same dtype vs float64) + a small dtype margin (``sfa_check.passes``).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported by the kernels

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lra_sfa.kernels import sfa_attention  # noqa: E402
from lra_sfa.kernels.sfa.reference import sfa_chunked, sparsify  # noqa: E402

triton = pytest.importorskip("triton")

from lra_sfa.kernels.decode import cache_bytes_per_token, cache_key_range, pack_k_cache, sfa_decode  # noqa: E402
from lra_sfa.kernels.sfa import check as sfa_check  # noqa: E402
from lra_sfa.kernels.sfa.autograd import flash_sfa, flash_sfa_forward  # noqa: E402
from lra_sfa.kernels.sfa.topk_pack import topk_pack  # noqa: E402

HEAD_DIM = 16


def _jit_is_interpreted() -> bool:
    from lra_sfa.kernels.sfa import triton_fwd as flash_sfa_fwd

    return type(flash_sfa_fwd._flash_sfa_fwd_kernel).__name__ == "InterpretedFunction"


def _inputs(batch, heads, length, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=gen).to(dtype) for _ in range(3)]


def _mask(batch, length, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[:, 0] = True
    return mask


def assert_matches_float64_definition(out, leaves, topk: int, mask, causal: bool, zero_padding_rows: bool):
    """``out`` and the gradients of its inputs ``leaves`` (q, k, v) against the dense float64 definition of SFA
    (``sfa_dense_reference``; padding rows 0 where ``zero_padding_rows``), for a random output gradient.
    Returns the gradients of q, k and v."""
    from lra_sfa.kernels.sfa.reference import sfa_dense_reference

    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    exact = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = sfa_dense_reference(*exact, topk, topk, mask, causal=causal)
    if zero_padding_rows:
        ref = ref * mask[:, None, :, None]
    expected = torch.autograd.grad(ref, exact, grad.double())
    assert sfa_check.rel_err(out, ref) < 1e-5
    for name, mine, want in zip("qkv", got, expected):
        assert sfa_check.rel_err(mine, want) < 1e-5, name
    return got


@pytest.fixture(autouse=True)
def _require_interpreter():
    if not _jit_is_interpreted():
        pytest.skip("Triton kernels were compiled for GPU before TRITON_INTERPRET=1 was set")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim,topk", [(16, 1), (16, 4), (32, 8), (32, 32)])
def test_topk_pack_matches_torch_topk(dtype, dim, topk):
    x = torch.randn(2, 3, 37, dim).to(dtype)
    values, indices, dense = topk_pack(x, topk)
    assert values.shape == (2, 3, 37, topk) and indices.dtype == torch.int8
    expected = torch.topk(x.float().abs(), topk, dim=-1).values
    assert torch.equal(values.float().abs().sort(-1, descending=True).values, expected)
    assert torch.equal(torch.gather(x, -1, indices.long()), values)
    assert torch.equal(dense, torch.zeros_like(x).scatter(-1, indices.long(), values))


def test_topk_pack_breaks_ties_towards_lowest_index():
    x = torch.zeros(1, 16, dtype=torch.bfloat16)
    x[0, 3], x[0, 9], x[0, 12] = 2.0, -2.0, 1.0
    _, indices, _ = topk_pack(x, 2)
    assert sorted(indices[0].tolist()) == [3, 9]
    _, indices, _ = topk_pack(torch.zeros(1, 16), 3)
    assert sorted(indices[0].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_topk_pack_zero_and_subnormal_rows(dtype):
    """Rows of zeros, signed zeros and subnormals: exactly topk entries taken, lowest index first on ties."""
    tiny = torch.finfo(dtype).smallest_normal / 4  # a subnormal of dtype
    x = torch.zeros(4, 32, dtype=dtype)
    x[1, ::2] = -0.0
    x[2, 5], x[2, 20] = tiny, -tiny
    x[3] = tiny * torch.arange(1, 33, dtype=torch.float32).to(dtype) / 8
    values, indices, dense = topk_pack(x, 3)
    assert indices[0].sort().values.tolist() == [0, 1, 2] and indices[1].sort().values.tolist() == [0, 1, 2]
    assert indices[2].sort().values.tolist() == [0, 5, 20]
    assert torch.equal(values[2].float().abs().sort().values, torch.tensor([0.0, float(tiny), float(tiny)]))
    expected = torch.topk(x[3].float().abs(), 3).values
    assert torch.equal(values[3].float().abs().sort(descending=True).values, expected)
    assert int((dense != 0).sum(-1).max()) <= 3 and torch.equal(torch.gather(x, -1, indices.long()), values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("topk", [1, 4, 8, HEAD_DIM])
@pytest.mark.parametrize("length", [1, 17, 100, 257])
def test_forward_backward_pass_rule(length, topk, padding, dtype):
    q, k, v = _inputs(1, 2, length, HEAD_DIM, dtype, seed=length * 31 + topk)
    mask = _mask(1, length, seed=length) if padding else None
    result = sfa_check.full_check(q, k, v, topk, mask, flash_sfa)
    assert result["topk_ok"]
    for name in ("out", "dq", "dk", "dv", "out_nograd"):
        assert result[f"{name}_ok"], (name, result[f"{name}_err"], result[f"{name}_torch_err"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("topk", [1, 4, 8])
@pytest.mark.parametrize("length", [1, 17, 100, 257])
def test_forward_only_path_fuses_q_topk(length, topk, padding, dtype, monkeypatch):
    """Without autograd, 16-bit inputs take q's top-k inside the forward kernel: only k goes through
    topk_pack, and the output equals the training path's (topk_pack on q, then the same kernel) bit for bit."""
    from lra_sfa.kernels.sfa import autograd

    q, k, v = _inputs(1, 2, length, HEAD_DIM, dtype, seed=length * 7 + topk)
    mask = _mask(1, length, seed=length + 1) if padding else None
    trained = flash_sfa(*(t.clone().requires_grad_(True) for t in (q, k, v)), topk, topk, mask).detach()
    calls = []
    monkeypatch.setattr(autograd, "topk_pack", lambda x, *a, **kw: calls.append(x) or topk_pack(x, *a, **kw))
    with torch.no_grad():
        fused = flash_sfa(q, k, v, topk, topk, mask)
    out, lse = flash_sfa_forward(q, k, v, topk, topk, mask)
    assert len(calls) == 2 and all(x is k for x in calls)
    assert torch.equal(fused, trained) and torch.equal(out, trained)
    codes = [topk_pack(x, topk)[2].double() for x in (q, k)]  # the support the kernels use (bf16 ties)
    ref = sfa_chunked(*codes, v.double(), HEAD_DIM, HEAD_DIM, mask)
    assert sfa_check.rel_err(fused, ref) < 1e-2


def test_matches_reference_end_to_end_fp32():
    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 2, 50, 32, torch.float32, seed=5))
    mask = _mask(2, 50, seed=6)
    out = sfa_attention(q, k, v, 6, 5, key_padding_mask=mask, impl="triton")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    ref = sfa_attention(*(t.double() for t in (q, k, v)), 6, 5, key_padding_mask=mask, impl="reference")
    expected = torch.autograd.grad(ref, (q, k, v), grad.double())
    assert sfa_check.rel_err(out, ref) < 1e-5
    for mine, exact in zip(got, expected):
        assert sfa_check.rel_err(mine, exact) < 1e-5
    assert int((got[0] != 0).sum(-1).max()) <= 6 and int((got[1] != 0).sum(-1).max()) <= 5


def test_key_padding_key_end_is_one_past_the_last_real_key():
    from lra_sfa.kernels.sfa.tiles import key_padding

    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0] = True
    mask[1, :3] = True
    mask[2, [0, 6]] = True  # a hole before the last real key
    padding = key_padding(mask, torch.device("cpu"))
    assert padding.key_end.tolist() == [10, 3, 7, 0] and padding.key_end.dtype == torch.int32
    assert torch.equal(padding.bias == 0, mask) and padding.bias.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_right_padded_batches_stop_at_the_key_end(dtype):
    """Sequences ending at L, on a key-tile boundary (64), inside a tile (37), with no real key, and with a hole
    before the last real key (the bias masks it): padded keys and values hold large numbers, and the forward
    and all gradients pass the float64 rule, padded keys getting dK = dV = 0 exactly. That the kernels stop
    each key loop at the key end and skip dK/dV blocks of padding only is shown by values that are NaN in
    every key tile wholly past a row's key end: a tile read there, even under the -inf bias, would make the
    output or a gradient NaN (0 * NaN)."""
    length, ends = 150, (150, 64, 37, 0, 90)
    q, k, v = _inputs(5, 2, length, HEAD_DIM, torch.float32, seed=41)
    mask = torch.arange(length)[None, :] < torch.tensor(ends)[:, None]  # (B, L)
    mask[4, 20:50] = False
    pad = ~mask[:, None, :, None]
    k, v = (torch.where(pad, 30.0 + 5 * t, t).to(dtype) for t in (k, v))
    result = sfa_check.full_check(q.to(dtype), k, v, 4, mask, flash_sfa)
    for name in ("out", "dq", "dk", "dv", "out_nograd"):
        assert result[f"{name}_ok"], (name, result[f"{name}_err"], result[f"{name}_torch_err"])
    leaves = [t.detach().clone().requires_grad_(True) for t in (q.to(dtype), k, v)]
    flash_sfa(*leaves, 4, 4, mask).float().square().sum().backward()
    for grad in (leaves[1].grad, leaves[2].grad):
        assert torch.equal(grad.masked_select(pad), torch.zeros_like(grad.masked_select(pad)))
    from lra_sfa.kernels.sfa import triton_bwd, triton_fwd

    tile = max(triton_fwd.INTERPRETER_CONFIG.kwargs["BLOCK_N"], triton_bwd.INTERPRETER_BWD_CONFIG.kwargs["BLOCK_N"])
    unread = torch.arange(length)[None, :] >= (torch.tensor(ends)[:, None] + tile - 1) // tile * tile  # (B, L)
    assert unread.any(dim=1).tolist() == [False, True, True, True, True]
    v_nan = torch.where(unread[:, None, :, None], float("nan"), v.float()).to(dtype)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q.to(dtype), k, v_nan)]
    out = flash_sfa(*leaves, 4, 4, mask)
    out.float().square().sum().backward()
    assert torch.isfinite(out).all()
    for grad in (leaves[0].grad, leaves[1].grad, leaves[2].grad):
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("head_dim", [HEAD_DIM, 8])
def test_skip_padding_packs_real_tokens_and_zeroes_padding_rows(head_dim):
    """skip_padding=True: the kernels run on the real tokens packed first (holes anywhere, a row of padding
    only) and give padding rows 0; output and gradients equal the reference's with the same rule (its rows
    times the mask), and the real rows equal those of a call without the option. Head dim 8 goes through the
    zero-padded path."""
    q, k, v = (t.requires_grad_(True) for t in _inputs(3, 2, 90, head_dim, torch.float32, seed=12))
    mask = _mask(3, 90, seed=13)
    mask[1, 60:] = False
    mask[2] = False
    out = sfa_attention(q, k, v, 4, 4, key_padding_mask=mask, impl="triton", skip_padding=True)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    ref = sfa_attention(*(t.double() for t in (q, k, v)), 4, 4, key_padding_mask=mask, impl="reference",
                        skip_padding=True)
    expected = torch.autograd.grad(ref, (q, k, v), grad.double())
    assert sfa_check.rel_err(out, ref) < 1e-5
    for mine, exact in zip(got, expected):
        assert sfa_check.rel_err(mine, exact) < 1e-5
    pad_rows = ~mask[:, None, :, None].expand_as(out)
    assert torch.equal(out[pad_rows], torch.zeros_like(out[pad_rows]))
    plain = sfa_attention(q, k, v, 4, 4, key_padding_mask=mask, impl="triton")
    assert sfa_check.rel_err(out[~pad_rows], plain[~pad_rows]) < 1e-5


@pytest.mark.parametrize("head_dim", [HEAD_DIM, 8])
def test_right_padding_skips_rows_without_packing(head_dim):
    """padding_is_suffix=True: under right padding (ends inside and on a tile, a full row, a row of padding only)
    the unpacked call equals the packed one, output and gradients; with holes (a broken promise) real rows and
    their gradients are still exact, and only the hole rows hold values instead of 0."""
    q, k, v = (t.requires_grad_(True) for t in _inputs(4, 2, 90, head_dim, torch.float32, seed=15))
    lengths = torch.tensor([90, 64, 37, 0])
    mask = torch.arange(90)[None, :] < lengths[:, None]  # (B, L) right padding
    grad = torch.randn(4, 2, 90, head_dim, generator=torch.Generator().manual_seed(16))
    results = []
    for suffix in (False, True):
        out = sfa_attention(q, k, v, 4, 4, key_padding_mask=mask, impl="triton", skip_padding=True,
                            padding_is_suffix=suffix)
        results.append((out, torch.autograd.grad(out, (q, k, v), grad)))
    (packed, packed_grads), (trimmed, trimmed_grads) = results
    assert sfa_check.rel_err(trimmed, packed) < 1e-5
    assert not trimmed[~mask[:, None, :, None].expand_as(trimmed)].any()
    for mine, want in zip(trimmed_grads, packed_grads):
        assert sfa_check.rel_err(mine, want) < 1e-5
    holes = mask.clone()
    holes[0, 10:20] = False
    real = holes[:, None, :, None].expand_as(trimmed)
    upstream = grad * real  # the model's gradient reaches real rows only
    ref = sfa_attention(q, k, v, 4, 4, key_padding_mask=holes, impl="triton", skip_padding=True)
    out = sfa_attention(q, k, v, 4, 4, key_padding_mask=holes, impl="triton", skip_padding=True,
                        padding_is_suffix=True)
    assert sfa_check.rel_err(out[real], ref[real]) < 1e-5
    assert out[0, :, 10:20].abs().sum() > 0  # the holes were computed, not zeroed
    for mine, want in zip(torch.autograd.grad(out, (q, k, v), upstream), torch.autograd.grad(ref, (q, k, v), upstream)):
        assert sfa_check.rel_err(mine, want) < 1e-5


@pytest.mark.parametrize("padding,pooling,has_padding", [
    ("task", "cls", True), ("task", "mean", True), ("task", "last", True), ("release", "cls", True),
    ("release", "mean", True), ("release", "mean", False), ("task", "none", True)])
def test_a_model_whose_padding_rows_reach_no_output_skips_them_with_the_same_loss(padding, pooling, has_padding):
    """The model tells its backends whether padded query rows are read (not with per-token outputs) and whether
    the padding is right padding (a task with a pad token: trimmed; pixels' zeros under the release's mask:
    packed); where rows are not read, SFA skips them and the logits and every parameter gradient are those of
    computing them, up to rounding (packing changes the order of the sums). The batch has holes, so the
    trimmed path also meets a broken promise, which must not change the loss either."""
    from omegaconf import OmegaConf

    from lra_sfa.model import LRAClassifier

    torch.manual_seed(0)
    attn = OmegaConf.create({"_target_": "lra_sfa.sfa.SFAAttention", "topk": 4, "impl": "triton"})
    model = LRAClassifier(vocab_size=20, num_classes=3, seq_len=40, attn_cfg=attn, d_model=32, num_heads=2,
                          num_layers=2, mlp_dim=32, dropout=0.0, attn_dropout=0.0, pooling=pooling, padding=padding,
                          has_padding=has_padding)
    skipped = not model.attention_modules()[0].padding_rows_read
    assert skipped == (pooling != "none")
    model(torch.randint(1, 20, (1, 40)))  # no padding token: a mask all True is still a mask
    skipping = "+trimmed" if has_padding else "+packed"
    assert model.attention_modules()[0].last_path == ("triton" + skipping if skipped else "triton")
    tokens = torch.randint(1, 20, (3, 40))
    tokens[1, 25:] = 0
    tokens[2, ::3] = 0  # holes
    results = []
    for read in (True, False):
        for module in model.attention_modules():
            module.padding_rows_read = read
        model.zero_grad()
        logits = model(tokens)
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (logits_read, grads_read), (logits_skip, grads_skip) = results
    if pooling == "none":  # per-token outputs: padding rows differ, real ones do not
        real = tokens != 0
        torch.testing.assert_close(logits_skip[real], logits_read[real], rtol=1e-4, atol=1e-5)
        return
    torch.testing.assert_close(logits_skip, logits_read, rtol=1e-4, atol=1e-5)
    for mine, want in zip(grads_skip, grads_read):
        torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-5)


def test_fp16_forward_runs_online_where_a_loose_bound_loses_its_weights(monkeypatch):
    """A BOUNDED config casts p = 2^(s - bound) to fp16, so a row whose bound sits 24+ binades above its largest
    score loses every weight while its fp32 sum stays above the fallback threshold: forced, it is wrong; the
    launcher's own choice for fp16 off the interpreter (FP16_CONFIG) is online and right."""
    from lra_sfa.kernels.sfa import launcher
    from lra_sfa.kernels.sfa import triton_fwd as fwd
    from lra_sfa.kernels.sfa.tiles import key_padding

    q, k, v = _inputs(1, 2, 256, 32, torch.float32, seed=14)
    q, k = 2 * q, 2 * k
    codes = [topk_pack(t.half(), 8)[2].reshape(2, 256, 32) for t in (q, k)]  # (B*H, L, D)
    ref = sfa_chunked(*(c.double().reshape(1, 2, 256, 32) for c in codes), v.double(), 32, 32).reshape(2, 256, 32)
    args = (*codes, v.half().reshape(2, 256, 32), key_padding(None, q.device), 2, False)
    bounded, _ = launcher.launch_forward(*args, config=fwd.fwd_config(32, 32, 4, 1, bounded=True))
    assert sfa_check.rel_err(bounded, ref) > 0.1  # the defect this guards against
    assert not fwd.FP16_CONFIG.kwargs["BOUNDED"]
    monkeypatch.setattr(fwd, "interpreting", lambda: False)
    chosen = []
    monkeypatch.setattr(fwd, "_flash_sfa_fwd_kernel", _RecordingKernel(fwd._flash_sfa_fwd_kernel, chosen))
    out, _ = launcher.launch_forward(*args)
    assert chosen == [False] and sfa_check.rel_err(out, ref) < 1e-2


class _RecordingKernel:
    """Stands in for the jitted forward: records each launch's BOUNDED and runs the real kernel."""

    def __init__(self, kernel, seen: list):
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        def launch(**kwargs):
            self.seen.append(kwargs["BOUNDED"])
            return self.kernel[grid](**kwargs)
        return launch


def test_all_padding_rows_give_zero_and_finite_grads():
    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 2, 40, HEAD_DIM, torch.float32, seed=8))
    mask = _mask(2, 40, seed=9)
    mask[1] = False
    out = flash_sfa(q, k, v, 4, 4, mask)
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert out[0].abs().sum() > 0
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and torch.equal(t.grad[1], torch.zeros_like(t.grad[1]))


def test_forward_returns_natural_logsumexp():
    q, k, v = _inputs(1, 2, 70, HEAD_DIM, torch.float32, seed=11)
    out, lse = flash_sfa_forward(q, k, v, 4, 4)
    scores = sparsify(q.double(), 4) @ sparsify(k.double(), 4).transpose(-1, -2) / math.sqrt(HEAD_DIM)
    assert torch.allclose(lse.double(), torch.logsumexp(scores, dim=-1), atol=1e-5)
    assert sfa_check.rel_err(out, sfa_chunked(q.double(), k.double(), v.double(), 4)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length,steps,padding", [(1, 1, False), (100, 3, True), (257, 1, False), (257, 2, True)])
@pytest.mark.parametrize("design", ["online", "bounded"])
def test_decode_sparse_cache(length, steps, padding, dtype, design, scale=1.0):
    gen = torch.Generator().manual_seed(length + steps)
    q = (scale * torch.randn(2, 2, steps, 32, generator=gen)).to(dtype)
    k, v = ((scale * torch.randn(2, 2, length, 32, generator=gen)).to(dtype) for _ in range(2))
    mask = _mask(2, length, seed=length) if padding else None
    k_vals, k_idx = pack_k_cache(k, 4)
    k_range = cache_key_range(k_vals, k_idx, 32) if design == "bounded" else None
    out = sfa_decode(q, k_vals, k_idx, v, 4, key_padding_mask=mask, num_splits=3, k_range=k_range)
    _, _, qd = topk_pack(q, 4)
    kd = torch.zeros_like(k).scatter(-1, k_idx.long(), k_vals)
    exact = sfa_check.plain_attention(qd.double(), kd.double(), v.double(), mask)  # (B, H, T, D)
    plain = sfa_check.plain_attention(qd, kd, v, mask)
    assert sfa_check.passes(sfa_check.rel_err(out, exact), sfa_check.rel_err(plain, exact), dtype)


@pytest.mark.parametrize("padding", [False, True])
def test_bounded_decode_falls_back_when_the_bound_is_loose(padding):
    """At scale 30 the key-range bound sits thousands of binades above the true maxima: every split redoes
    its keys online, and the output still passes against float64."""
    test_decode_sparse_cache(100, 2, padding, torch.float32, "bounded", scale=30.0)


def test_decode_rejects_a_key_range_of_the_wrong_shape():
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, length, 32, generator=gen) for length in (1, 20, 20))
    k_vals, k_idx = pack_k_cache(k, 4)
    k_range = cache_key_range(k_vals, k_idx, 32)[:, :1]
    with pytest.raises(ValueError, match="k_range must have shape"):
        sfa_decode(q, k_vals, k_idx, v, 4, k_range=k_range)


def test_cache_key_range_bounds_every_score():
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, 3, length, 32, generator=gen) for length in (4, 60))
    k_vals, k_idx = pack_k_cache(k, 4)
    k_range = cache_key_range(k_vals, k_idx, 32)  # (2, 3, 2, 32)
    kd = torch.zeros_like(k).scatter(-1, k_idx.long(), k_vals)
    assert torch.equal(k_range[:, :, 0], kd.amax(2)) and torch.equal(k_range[:, :, 1], kd.amin(2))
    bound = torch.maximum(q * k_range[:, :, None, 0], q * k_range[:, :, None, 1]).sum(-1)  # (2, 3, 4)
    assert torch.all(bound >= (q @ kd.transpose(-1, -2)).amax(-1) - 1e-5)


def test_cache_bytes_per_token():
    assert cache_bytes_per_token(128, 8, torch.bfloat16) == (280, 512)
    assert cache_bytes_per_token(128, 16, torch.bfloat16) == (304, 512)


def test_gluon_forward_only_where_it_applies(monkeypatch):
    """The Gluon forward is chosen only on CUDA sm_90 for fp16/bf16, D = 128, L a multiple of 64 and no padding;
    never on the CPU or under the interpreter, so these tests always exercise the Triton kernels."""
    from lra_sfa.kernels.sfa import dispatch

    x = torch.zeros(2, 128, 128, dtype=torch.bfloat16)
    assert not dispatch.gluon_eligible(x, False)  # CPU tensor (and TRITON_INTERPRET=1 here)
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    fake_cuda = type("FakeCuda", (), {"device": torch.device("cuda"), "dtype": torch.bfloat16,
                                       "shape": (2, 128, 128)})()
    monkeypatch.setattr(dispatch.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dispatch, "_gluon_available", lambda: True)
    assert dispatch.gluon_eligible(fake_cuda, False)
    assert not dispatch.gluon_eligible(fake_cuda, True)  # padding mask
    for shape, dtype in (((2, 100, 128), torch.bfloat16), ((2, 128, 64), torch.bfloat16),
                         ((2, 128, 128), torch.float32)):
        other = type("FakeCuda", (), {"device": torch.device("cuda"), "dtype": dtype, "shape": shape})()
        assert not dispatch.gluon_eligible(other, False)
    assert dispatch.gluon_bwd_eligible(fake_cuda, False) and not dispatch.gluon_bwd_eligible(fake_cuda, True)
    for shape, ok in (((2, 128, 64), True), ((2, 192, 128), False), ((2, 128, 32), False)):
        other = type("FakeCuda", (), {"device": torch.device("cuda"), "dtype": torch.bfloat16, "shape": shape})()
        assert dispatch.gluon_bwd_eligible(other, False) == ok  # backward: D 64 or 128, L a multiple of 128
    assert dispatch.gluon_config(256)["consumers"] == 2 and dispatch.gluon_config(192)["consumers"] == 1
    assert dispatch.gluon_config(128)["block_n"] == 128 and dispatch.gluon_config(64)["block_n"] == 64
    monkeypatch.setattr(dispatch.torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert not dispatch.gluon_eligible(fake_cuda, False)  # wgmma is Hopper's
    monkeypatch.setattr(dispatch, "USE_GLUON", False)
    monkeypatch.setattr(dispatch.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert not dispatch.gluon_eligible(fake_cuda, False)  # LRA_SFA_GLUON=0
    assert not dispatch.gluon_bwd_eligible(fake_cuda, False)


def test_gluon_launchers_reject_what_they_cannot_run():
    """The Gluon launchers check shapes and dtypes before any launch (so this runs on the CPU) and name the
    offending value; the kernels themselves run only on an H200 (GPU checks)."""
    from lra_sfa.kernels.sfa import dispatch

    if not dispatch._gluon_available():
        pytest.skip("this Triton has no Gluon")
    from lra_sfa.kernels.sfa.gluon_bwd import gluon_dkdv, gluon_dq
    from lra_sfa.kernels.sfa.gluon_fwd import gluon_ws_forward, nvmma_descriptor

    def rows(length, dim, dtype=torch.bfloat16):
        return torch.zeros(2, length, dim, dtype=dtype)

    lse, ids = torch.zeros(2, 256), torch.zeros(2 * 192, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="head_dim=32"):
        gluon_ws_forward(rows(128, 32), rows(128, 32), rows(128, 32))
    with pytest.raises(ValueError, match="L=192"):  # two warpgroups of 64 rows need L % 128 == 0
        gluon_ws_forward(rows(192, 128), rows(192, 128), rows(192, 128), 64, 64, 2, 2)
    with pytest.raises(ValueError, match="16-bit"):
        gluon_ws_forward(*(rows(128, 128, torch.float32) for _ in range(3)))
    with pytest.raises(ValueError, match="L=192"):
        gluon_dq(*(rows(192, 128) for _ in range(4)), lse, lse, ids, 8)
    with pytest.raises(ValueError, match="head_dim=32"):
        gluon_dkdv(*(rows(128, 32) for _ in range(4)), lse, lse, ids, 8)
    with pytest.raises(ValueError, match="stages=1"):  # warpgroup i's online fallback reuses ring slot i
        gluon_ws_forward(rows(256, 128), rows(256, 128), rows(256, 128), 64, 64, 1, 2)
    assert dispatch.gluon_config(192) == dispatch.GLUON_CONFIGS[1][1]  # the one-warpgroup launch takes L=192
    desc = nvmma_descriptor(rows(192, 128), 64)  # the (B*H*L, D) view, 64 rows per TMA box
    assert list(desc.shape) == [384, 128] and list(desc.block_shape) == [64, 128]


@pytest.mark.parametrize("bad", ["head_dim", "dtype", "topk", "mask", "mixed"])
def test_unsupported_inputs_raise_clear_errors(bad):
    q, k, v = _inputs(1, 2, 8, HEAD_DIM, torch.float32, seed=1)
    mask, topk = None, 4
    expected = {"head_dim": "head_dim=24", "dtype": "float64", "topk": "topk_q=0", "mask": "key_padding_mask",
                "mixed": "dtypes differ"}[bad]
    if bad == "head_dim":
        q, k, v = _inputs(1, 2, 8, 24, torch.float32, seed=1)
    elif bad == "dtype":
        q, k, v = (t.double() for t in (q, k, v))
    elif bad == "topk":
        topk = 0
    elif bad == "mask":
        mask = torch.ones(1, 8, dtype=torch.int64)
    else:
        v = v.to(torch.bfloat16)
    with pytest.raises(ValueError, match=expected):
        flash_sfa(q, k, v, topk, topk, mask)


@pytest.mark.parametrize("variant,length,scale,padded", [
    ("bounded", 1, 1.0, False), ("bounded", 100, 1.0, True), ("bounded", 67, 40.0, False), ("bounded", 67, 40.0, True),
    ("bounded+rowsum_2d", 100, 1.0, True), ("bounded+rowsum_2d", 67, 40.0, False)])
def test_forward_variants_match_reference(variant, length, scale, padded):
    """The forward's optional designs give the reference output and lse (within 1e-4): BOUNDED (a fixed
    per-row offset from the key codes' range, no running max; at scale 40 the bound sits far above the true
    maxima, so blocks take the online fallback), also with its row sums kept per tile column (ROWSUM_2D). A row
    whose keys are all padding still gives exactly 0."""
    from lra_sfa.kernels.sfa import triton_fwd as fwd
    from lra_sfa.kernels.sfa.launcher import launch_forward
    from lra_sfa.kernels.sfa.tiles import key_padding

    q, k, v = _inputs(2, 2, length, HEAD_DIM, torch.float32, seed=31 + length)
    q, k = q * scale, k * scale
    mask = _mask(2, length, seed=32) if padded else None
    if padded:
        mask[1] = False
    _, _, qd = topk_pack(q, 4)
    _, _, kd = topk_pack(k, 4)
    flat = (4, length, HEAD_DIM)
    options = {"bounded": {"bounded": True},
               "bounded+rowsum_2d": {"bounded": True, "rowsum_2d": True}}
    config = fwd.fwd_config(32, 32, 4, 1, **options[variant])
    out, lse2 = launch_forward(qd.reshape(flat), kd.reshape(flat), v.reshape(flat), key_padding(mask, q.device), 2,
                               padded, config=config)
    out = out.reshape(q.shape)
    ref = sfa_chunked(q.double(), k.double(), v.double(), 4, 4, mask)
    rows = 1 if padded else 2
    assert sfa_check.rel_err(out[:rows], ref[:rows]) < 1e-4
    if padded:
        assert torch.equal(out[1], torch.zeros_like(out[1]))
    scores = sparsify(q.double(), 4) @ sparsify(k.double(), 4).transpose(-1, -2) / math.sqrt(HEAD_DIM)
    if padded:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    lse = lse2.reshape(2, 2, length).double()[:rows] / fwd.LOG2E
    assert torch.allclose(lse, torch.logsumexp(scores[:rows], dim=-1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("options", [{}, {"bounded": True}, {"bounded": True, "rowsum_2d": True}])
def test_every_forward_config_zeroes_rows_past_the_key_end(options):
    """ZERO_PAD_ROWS on real tokens packed first (holes before, a row of padding only): the online and the
    BOUNDED configs give the reference on real rows and exactly 0 on padding rows."""
    from lra_sfa.kernels.sfa import triton_fwd as fwd
    from lra_sfa.kernels.sfa.api import pack_real_first, unpack
    from lra_sfa.kernels.sfa.launcher import launch_forward
    from lra_sfa.kernels.sfa.tiles import key_padding

    q, k, v = _inputs(2, 2, 100, HEAD_DIM, torch.float32, seed=33)
    mask = _mask(2, 100, seed=34)
    mask[0, 70:] = False
    mask[1] = False
    order, (qp, kp, vp), packed = pack_real_first(mask, q, k, v)
    flat = (4, 100, HEAD_DIM)
    codes = [topk_pack(t, 4)[2].reshape(flat) for t in (qp, kp)]
    out, _ = launch_forward(*codes, vp.reshape(flat), key_padding(packed, q.device), 2, True,
                            config=fwd.fwd_config(32, 32, 4, 1, **options), zero_pad_rows=True)
    out = unpack(out.reshape(q.shape), order)
    ref = sfa_chunked(q.double(), k.double(), v.double(), 4, 4, mask) * mask[:, None, :, None]
    assert sfa_check.rel_err(out, ref) < 1e-4
    assert torch.equal(out[~mask[:, None, :, None].expand_as(out)], torch.zeros(int((~mask).sum()) * 2 * HEAD_DIM))


def test_score_bound_holds_and_is_finite_for_bf16():
    """The per-row bound is at least every row's largest scaled score (bf16 codes, fp32 arithmetic)."""
    from lra_sfa.kernels.sfa.tiles import key_code_range

    q, k, _ = _inputs(1, 3, 50, HEAD_DIM, torch.bfloat16, seed=41)
    qd, kd = sparsify(q, 8).reshape(3, 50, HEAD_DIM), sparsify(k, 8).reshape(3, 50, HEAD_DIM)
    rng = key_code_range(kd)  # (3, 2, D)
    qf = qd.float()
    bound = torch.maximum(qf * rng[:, None, 0], qf * rng[:, None, 1]).sum(-1)  # (3, 50), unscaled
    scores = qf @ kd.float().transpose(-1, -2)
    assert torch.all(bound >= scores.amax(-1) - 1e-4) and torch.isfinite(bound).all()


def test_forward_autotune_list_pruning():
    """Head dim 32 drops the 128-wide key tiles; fp32 (IEEE dots) keeps only the configs GPU-checked in fp32."""
    from lra_sfa.kernels.sfa import triton_fwd as fwd

    narrow = fwd.prune_fwd_configs(fwd.GPU_CONFIGS, {"HEAD_DIM": 32, "IEEE": False})
    assert narrow and all(c.kwargs["BLOCK_N"] <= 64 for c in narrow)
    ieee = fwd.prune_fwd_configs(fwd.GPU_CONFIGS, {}, HEAD_DIM=128, IEEE=True)
    assert ieee and not any(c.kwargs["WARP_SPEC"] or c.kwargs["ROWSUM_2D"] for c in ieee)
    assert len(fwd.prune_fwd_configs(fwd.GPU_CONFIGS, {"HEAD_DIM": 128, "IEEE": False})) == len(fwd.GPU_CONFIGS)


def test_backward_row_padding_covers_every_query_block():
    """lse2 / delta are read without masks from rows padded to ROW_PAD: every config's BLOCK_M divides it."""
    from lra_sfa.kernels.sfa import triton_bwd as bwd
    from lra_sfa.kernels.sfa.tiles import pad_rows

    configs = [*bwd.DKDV_CONFIGS, *bwd.DQ_CONFIGS, bwd.DKDV_FP32_CONFIG, bwd.DQ_FP32_CONFIG, bwd.INTERPRETER_BWD_CONFIG]
    assert all(bwd.ROW_PAD % c.kwargs["BLOCK_M"] == 0 for c in configs)
    for length in (1, bwd.ROW_PAD, bwd.ROW_PAD + 3):
        x = torch.randn(3, length)
        padded = pad_rows(x, float("inf"))
        assert padded.shape[1] % bwd.ROW_PAD == 0 and padded.shape[1] - length < bwd.ROW_PAD
        assert torch.equal(padded[:, :length], x) and torch.isinf(padded[:, length:]).all()


def test_backward_fp32_takes_small_tiles():
    """fp32 (IEEE) backward launches use one small-tile config per kernel (the 16-bit tiles' 4-byte TMA
    buffers would overflow shared memory at D=128); 16-bit launches keep the tuned lists."""
    from lra_sfa.kernels.sfa import triton_bwd as bwd

    for prune, configs, small in ((bwd.prune_dkdv_configs, bwd.DKDV_CONFIGS, bwd.DKDV_FP32_CONFIG),
                                  (bwd.prune_dq_configs, bwd.DQ_CONFIGS, bwd.DQ_FP32_CONFIG)):
        assert prune(configs, {"IEEE": True}) == [small]
        assert prune(configs, {}, IEEE=False) == configs
        block_m, block_n = small.kwargs["BLOCK_M"], small.kwargs["BLOCK_N"]
        # loop-invariant tiles once, streamed tiles per stage; two tensors each, D=128, 4 bytes
        smem = 2 * 128 * 4 * (max(block_m, block_n) + small.num_stages * min(block_m, block_n))
        assert smem <= 160 * 1024


@pytest.mark.parametrize("padding", ["none", "holes", "right", "packed"])
@pytest.mark.parametrize("length", [17, 130])
def test_causal_kernels_match_the_float64_definition(length, padding):
    """causal=True: row i attends keys j <= i; forward and gradients against the dense float64 definition, with
    no padding, scattered padding, right padding whose rows are skipped (trimmed) and scattered padding whose
    real tokens are packed first (the packing keeps their order, so causality survives it)."""
    from lra_sfa.kernels.sfa.reference import sfa_dense_reference

    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 2, length, HEAD_DIM, torch.float32, seed=length))
    mask = None if padding == "none" else _mask(2, length, seed=length + 3)
    if padding == "right":
        mask = torch.arange(length)[None, :] < torch.tensor([length, length // 2])[:, None]
    skip = padding in ("right", "packed")
    out = sfa_attention(q, k, v, 4, 4, key_padding_mask=mask, impl="triton", skip_padding=skip,
                        padding_is_suffix=padding == "right", causal=True)
    assert_matches_float64_definition(out, (q, k, v), 4, mask, causal=True, zero_padding_rows=skip)
    with torch.no_grad():  # the forward-only operator, 16-bit, q's top-k fused into the kernel
        fused = sfa_attention(*(t.detach().bfloat16() for t in (q, k, v)), 4, 4, key_padding_mask=mask,
                              impl="triton", causal=True)
    codes = [topk_pack(t.detach().bfloat16(), 4)[2].double() for t in (q, k)]
    exact16 = sfa_dense_reference(*codes, v.detach().bfloat16().double(), HEAD_DIM, HEAD_DIM, mask, causal=True)
    assert sfa_check.rel_err(fused, exact16) < 1e-2


@pytest.mark.parametrize("causal", [False, True])
def test_every_tuned_tile_config_matches_the_float64_definition(causal, monkeypatch):
    """The interpreter runs one tile config per kernel; on the GPU the autotuner may pick any of its lists, per
    length bucket. The tile shapes it tunes over for 16-bit inputs (fp32 data here; the warp-specialised forward
    is not interpreted; the causal loop runs the online softmax whichever it is): each forward config and each
    (dK/dV, dQ) pair, forced in turn at a length that no tile divides, forward and gradients against the dense
    float64 definition."""
    from lra_sfa.kernels.sfa import launcher
    from lra_sfa.kernels.sfa import triton_bwd as bwd
    from lra_sfa.kernels.sfa import triton_fwd as fwd
    from lra_sfa.kernels.sfa.reference import sfa_dense_reference

    q, k, v = (t.requires_grad_(True) for t in _inputs(1, 2, 130, 32, torch.float32, seed=7))
    exact = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = sfa_dense_reference(*exact, 8, 8, None, causal=causal)
    grad = torch.randn_like(q)
    expected = torch.autograd.grad(ref, exact, grad.double())
    pairs = list(zip(bwd.DKDV_CONFIGS, bwd.DQ_CONFIGS))
    for index, fwd_config in enumerate(c for c in fwd.GPU_CONFIGS if not c.kwargs["WARP_SPEC"]):
        dkdv_config, dq_config = pairs[index % len(pairs)]
        monkeypatch.setattr(fwd, "INTERPRETER_CONFIG", fwd_config)

        def run_bwd(tuned, plain, grid, args, dkdv_config=dkdv_config, dq_config=dq_config):
            config = dkdv_config if tuned is bwd.dkdv_tuned else dq_config
            bwd.set_bwd_block_shapes({**args, **config.kwargs})
            plain[grid](**args, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)

        monkeypatch.setattr(launcher, "_run_bwd_kernel", run_bwd)
        out = sfa_attention(q, k, v, 8, 8, impl="triton", causal=causal)
        got = torch.autograd.grad(out, (q, k, v), grad)
        label = f"{fwd_config.kwargs}, {dkdv_config.kwargs}, {dq_config.kwargs}"
        assert sfa_check.rel_err(out, ref) < 1e-5, label
        for name, mine, want in zip("qkv", got, expected):
            assert sfa_check.rel_err(mine, want) < 1e-5, (name, label)


def test_mqar_protocol_model_through_the_kernels_equals_the_reference_path():
    """experiment=mqar's model (causal, per-token head, head dim 64, k = 8) on an MQAR batch: the loss, logits and
    every parameter gradient with SFA's Triton kernels equal those of its PyTorch reference (fp32), so the task's
    training signal does not depend on which path runs it."""
    import numpy as np
    from omegaconf import OmegaConf

    from lra_sfa.compose import compose_config
    from lra_sfa.model import LRAClassifier, cross_entropy
    from lra_sfa.tasks.base import IGNORE_INDEX
    from lra_sfa.tasks.mqar import make_block

    length, pairs, vocab = 256, 16, 8192
    cfg = compose_config(["experiment=mqar", "attn=sfa", f"task.seq_len={length}", f"task.num_pairs={pairs}",
                          "model.attn_dropout=0.0"])
    tokens, labels = (torch.tensor(a, dtype=torch.long)
                      for a in make_block(np.random.default_rng(5), 2, length, pairs, vocab, 0.01, False))
    results = {}
    for impl in ("reference", "triton"):
        torch.manual_seed(0)
        model = LRAClassifier(vocab_size=vocab, num_classes=vocab, seq_len=length,
                              attn_cfg=OmegaConf.merge(cfg.attn, {"impl": impl}), attn_name="sfa", pooling="none",
                              has_padding=False, **OmegaConf.to_container(cfg.model, resolve=True))
        logits = model(tokens)  # (B, L, vocab)
        loss = cross_entropy(logits, labels)
        loss.backward()
        assert [(m.last_path, m.causal) for m in model.attention_modules()] == [(impl, True)] * 2
        results[impl] = (loss.detach(), logits.detach(), [p.grad for p in model.parameters()])
    assert (labels != IGNORE_INDEX).sum() == 2 * pairs
    (loss_ref, logits_ref, grads_ref), (loss, logits, grads) = results["reference"], results["triton"]
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-5)
    for mine, want in zip(grads, grads_ref):
        torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-6)
