"""Bucket capacity of wide codes (``attn.capacity_factor``): invariants and both paths against the reference."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest
import torch
from omegaconf import OmegaConf

from lra_sfa.attention import build_attention
from lra_sfa.kernels.wide import wide_attention
from lra_sfa.kernels.wide.capacity import PRUNED, apply_capacity, bucket_capacity_keep, capacity_for
from lra_sfa.kernels.wide.reference import wide_dense_reference
from lra_sfa.sfa_wide import SFAWideAttention

CONF = os.path.join(os.path.dirname(__file__), "..", "conf", "attn", "sfa_wide.yaml")


def crowded_codes(B, H, L, K, D, dv, dtype, masked, seed):
    """Codes whose features are drawn from a skewed distribution (a few buckets hold many keys), as trained
    codes on repetitive inputs do; distinct features per token, random values of both signs."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.linspace(0, 3, D).exp()  # feature D - 1 is e^3 = 20x as likely as feature 0

    def codes():
        noise = -torch.log(-torch.log(torch.rand(B, H, L, D, generator=gen)))  # Gumbel top-k: weighted, distinct
        idx = (weights.log() + noise).topk(K, dim=-1).indices
        return idx, torch.randn(B, H, L, K, generator=gen, dtype=dtype)

    q_idx, q_val = codes()
    k_idx, k_val = codes()
    v = torch.randn(B, H, L, dv, generator=gen, dtype=dtype)
    mask = None
    if masked:
        mask = torch.rand(B, L, generator=gen) > 0.25
        mask[:, 0] = True
    return q_idx, q_val, k_idx, k_val, v, mask


def bucket_loads(k_idx, keep, D):
    """(G, D) keys listed per bucket, kept or all."""
    G = k_idx.shape[0]
    flat = (torch.arange(G)[:, None, None] * D + k_idx)[keep]
    return torch.bincount(flat, minlength=G * D).view(G, D)


@pytest.mark.parametrize("masked", [False, True])
def test_no_bucket_above_capacity_and_the_kept_are_the_highest_valued(masked):
    D, K, L, C = 12, 3, 50, 3
    _, _, k_idx, k_val, _, mask = crowded_codes(1, 2, L, K, D, 4, torch.float64, masked, seed=1)
    G = 2
    real = None if mask is None else mask.expand(G, L)
    ki, kv = k_idx.reshape(G, L, K), k_val.reshape(G, L, K)
    keep = bucket_capacity_keep(ki, kv, real, D, C)
    listed = torch.ones_like(keep) if real is None else real[:, :, None].expand_as(keep)
    assert not (keep & ~listed).any()  # padding keys are never kept
    before, after = bucket_loads(ki, listed, D), bucket_loads(ki, keep, D)
    assert before.max() > C  # the fixture crowds some buckets
    assert after.max() <= C
    torch.testing.assert_close(after, before.clamp(max=C))  # a crowded bucket keeps exactly C
    for g in range(G):
        for f in range(D):
            in_bucket = (ki[g] == f) & listed[g]
            kept, dropped = kv[g][in_bucket & keep[g]], kv[g][in_bucket & ~keep[g]]
            if len(kept) and len(dropped):
                assert kept.min() >= dropped.max()


def test_capacity_stats_count_what_was_dropped():
    D, K, L, C = 12, 3, 40, 2
    q_idx, _, k_idx, k_val, _, mask = crowded_codes(1, 2, L, K, D, 4, torch.float64, True, seed=2)
    real = mask.expand(2, L)
    qi, ki, kv = (x.reshape(2, L, K) for x in (q_idx, k_idx, k_val))
    pruned, stats = apply_capacity(qi, ki, kv, real, D, C)
    keep = pruned != PRUNED
    assert torch.equal(keep, bucket_capacity_keep(ki, kv, real, D, C))
    loads = bucket_loads(ki, real[:, :, None].expand_as(keep), D)  # (G, D) real keys per bucket
    assert int(stats["incidences_total"]) == int(torch.gather(loads, 1, qi.reshape(2, -1)).sum())
    assert int(stats["key_entries_total"]) == int(real.sum()) * K
    assert int(stats["key_entries_kept"]) == int(keep.sum()) < int(stats["key_entries_total"])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("length", [1, 37])
def test_posting_with_capacity_equals_dense_reference(masked, length):
    D, K, C = 16, 4, 2
    q_idx, q_val, k_idx, k_val, v, mask = crowded_codes(2, 2, length, K, D, 6, torch.float64, masked, seed=length)
    grad = torch.randn_like(v)
    leaves = [x.clone().requires_grad_(True) for x in (q_val, k_val, v)]
    ref_leaves = [x.clone().requires_grad_(True) for x in (q_val, k_val, v)]
    out, stats = wide_attention(q_idx, leaves[0], k_idx, leaves[1], leaves[2], D, 0.6, "overlap", None, mask,
                                capacity=C)
    out_ref = wide_dense_reference(q_idx, ref_leaves[0], k_idx, ref_leaves[1], ref_leaves[2], D, 0.6, "overlap",
                                   None, mask, capacity=C)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad((out * grad).sum(), leaves)
    want = torch.autograd.grad((out_ref * grad).sum(), ref_leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    assert int(stats["candidates"]) <= 2 * 2 * length * K * C  # every query meets at most k C keys


def test_triton_interpreter_with_capacity_equals_dense_reference():
    """Pass rule: err(triton fp32 vs fp64 ref) <= 2 err(dense PyTorch fp32 vs fp64 ref) + 1e-5."""
    from lra_sfa.kernels.wide.triton_kernel import wide_triton_attention  # noqa: F401 (interpreter present)

    D, K, C = 16, 4, 2
    q_idx, q_val, k_idx, k_val, v, mask = crowded_codes(1, 2, 23, K, D, 16, torch.float32, True, seed=5)
    grad = torch.randn_like(v)

    def run(fn, dtype):
        leaves = [x.to(dtype).requires_grad_(True) for x in (q_val, k_val, v)]
        out = fn(*leaves)
        return [out.detach(), *torch.autograd.grad((out * grad.to(dtype)).sum(), leaves)]

    def ref(qv, kv, vv):
        return wide_dense_reference(q_idx, qv, k_idx, kv, vv, D, 0.6, "overlap", None, mask, capacity=C)

    def triton_path(qv, kv, vv):
        return wide_attention(q_idx, qv, k_idx, kv, vv, D, 0.6, "overlap", None, mask, impl="triton", capacity=C)[0]

    exact, plain, got = run(ref, torch.float64), run(ref, torch.float32), run(triton_path, torch.float32)
    for name, g, p, e in zip(("out", "dq", "dk", "dv"), got, plain, exact):
        err = (g.double() - e).abs().max().item()
        base = (p.double() - e).abs().max().item()
        assert err <= 2 * base + 1e-5, f"{name}: triton err {err:.3g} vs plain fp32 err {base:.3g}"


@pytest.mark.parametrize("impl", ["posting", "triton"])
def test_capacity_above_every_bucket_load_is_the_plain_path(impl):
    D, K, L = 16, 4, 30
    q_idx, q_val, k_idx, k_val, v, mask = crowded_codes(1, 2, L, K, D, 16, torch.float32, True, seed=3)
    loads = bucket_loads(k_idx.reshape(2, L, K), mask.expand(2, L)[:, :, None].expand(2, L, K), D)
    plain, plain_stats = wide_attention(q_idx, q_val, k_idx, k_val, v, D, 0.5, "overlap", None, mask, impl=impl)
    capped, stats = wide_attention(q_idx, q_val, k_idx, k_val, v, D, 0.5, "overlap", None, mask, impl=impl,
                                   capacity=int(loads.max()))
    assert torch.equal(capped, plain)
    assert int(stats["candidates"]) == int(plain_stats["candidates"])
    assert int(stats["key_entries_kept"]) == int(stats["key_entries_total"])
    assert int(stats["incidences_kept"]) == int(stats["incidences_total"])
    _, tight = wide_attention(q_idx, q_val, k_idx, k_val, v, D, 0.5, "overlap", None, mask, impl=impl,
                              capacity=int(loads.max()) - 1)
    assert int(tight["candidates"]) < int(plain_stats["candidates"])


def test_capacity_rejects_other_modes_and_bad_values():
    q_idx, q_val, k_idx, k_val, v, _ = crowded_codes(1, 1, 8, 2, 8, 4, torch.float32, False, seed=0)
    for kwargs in ({"capacity": 0}, {"capacity": 2, "mode": "exact"}, {"capacity": 2, "cap": 3}):
        with pytest.raises(ValueError, match="capacity"):
            wide_attention(q_idx, q_val, k_idx, k_val, v, 8, **kwargs)
    for kwargs in ({"capacity_factor": 0.0}, {"capacity_factor": 1.0, "mode": "exact"},
                   {"capacity_factor": 1.0, "cap": 4}, {"capacity_factor": "2"}):
        with pytest.raises(ValueError, match="capacity_factor"):
            SFAWideAttention(num_heads=1, head_dim=8, D=64, k=4, **kwargs)


def test_capacity_for_scales_with_the_isotropic_bucket_load():
    assert capacity_for(65536, 8, 131072, 2.0) == 8  # 2 x 4 keys per bucket
    assert capacity_for(1 << 20, 8, 131072, 2.0) == 128
    assert capacity_for(256, 8, 131072, 2.0) == 1  # never below one key
    assert capacity_for(8193, 8, 131072, 2.0) == 1  # a CLS token does not double it


@pytest.mark.parametrize("relax", ["ste", "soft"])
def test_module_bounds_candidates_on_repetitive_inputs_and_reports_drops(relax):
    """Repeated tokens share every bucket (the trained needle's failure): with the capacity each query meets
    at most k C keys, and the stats say what was dropped; the default config leaves it off."""
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONF)
    assert cfg.capacity_factor is None
    extra = {"tau_end": 0.05} if relax == "soft" else {}
    module = SFAWideAttention(num_heads=2, head_dim=16, D=256, k=4, codes="simhash", relax=relax,
                              capacity_factor=1.0, **extra)
    base = torch.randn(1, 2, 4, 16)
    q = base.repeat(1, 1, 16, 1) + 0.01 * torch.randn(1, 2, 64, 16)  # 4 distinct tokens, 16 copies each
    v = torch.randn(1, 2, 64, 16)
    module.train(relax == "soft")
    module(q, q.clone(), v)
    stats = module.stats()
    C = capacity_for(64, 4, 256, 1.0)
    assert stats["capacity"] == C == 1
    assert stats["mean_candidates"] <= 4 * C
    assert stats["key_entries_dropped_frac"] > 0.5 and stats["dropped_frac"] > 0.5
    plain = SFAWideAttention(num_heads=2, head_dim=16, D=256, k=4, codes="simhash").eval()
    plain.planes.copy_(module.planes)
    plain(q, q.clone(), v)
    assert plain.stats()["mean_candidates"] > 10  # the repetition crowds buckets without the capacity
    assert "capacity" not in plain.stats()


def test_soft_path_with_capacity_tends_to_the_hard_capacity_rule():
    torch.manual_seed(3)
    module = SFAWideAttention(num_heads=2, head_dim=16, D=256, k=4, codes="simhash", relax="soft",
                              capacity_factor=1.0)
    base = torch.randn(1, 2, 6, 16)
    q = base.repeat(1, 1, 8, 1) + 0.02 * torch.randn(1, 2, 48, 16)
    key = q + 0.02 * torch.randn_like(q)
    v = torch.randn(1, 2, 48, 16)
    q_idx, q_val = module.eval()._encode(q)[:2]
    k_idx, k_val = module._encode(key)[:2]
    C = capacity_for(48, 4, 256, 1.0)
    expected = wide_dense_reference(q_idx, q_val, k_idx, k_val, v, 256, module.scale, "overlap", capacity=C)
    hard = wide_attention(q_idx, q_val, k_idx, k_val, v, 256, module.scale, capacity=C)[1]
    module.train()
    module.tau = 1e-6
    out = module(q, key, v)
    pruned = apply_capacity(q_idx.reshape(2, 48, 4), k_idx.reshape(2, 48, 4), k_val.reshape(2, 48, 4), None, 256,
                            C)[0].view(1, 2, 48, 4)
    rows = (q_idx[:, :, :, None, :, None] == pruned[:, :, None, :, None, :]).any(-1).any(-1).any(-1)
    assert rows.float().mean() > 0.5
    torch.testing.assert_close(out[rows], expected[rows], atol=1e-5, rtol=1e-5)
    assert module.stats()["mean_candidates"] == pytest.approx(int(hard["candidates"]) / (2 * 48))


def test_config_key_builds_through_the_registry():
    cfg = OmegaConf.merge(OmegaConf.load(CONF), {"D": 64, "k": 4, "codes": "simhash", "capacity_factor": 2.0})
    module = build_attention(cfg, num_heads=2, head_dim=8, max_seq_len=32)
    assert module.capacity_factor == 2.0 and "capacity_factor=2.0" in repr(module)
