"""A code space that grows with the sequence (``attn.D_grow_from``) and the per-group feature relabelling."""

from __future__ import annotations

import math

import pytest
import torch

from lra_sfa.kernels.wide import wide_attention
from lra_sfa.kernels.wide.relabel import relabel_features
from lra_sfa.sfa_wide import SFAWideAttention, simhash_codes


def shared(q_idx, k_idx):
    """(B, H, L, L) bool: query i and key j share a feature."""
    return (q_idx[..., :, None, :, None] == k_idx[..., None, :, None, :]).any(-1).any(-1)


def test_relabelling_keeps_which_entries_share_a_feature_and_their_order():
    gen = torch.Generator().manual_seed(0)
    q_idx = torch.randint(0, 1 << 40, (2, 3, 9, 4), generator=gen) // (1 << 36)  # ids spread over 2^40, clumped
    k_idx = torch.randint(0, 1 << 40, (2, 3, 9, 4), generator=gen) // (1 << 36)
    q_new, k_new, num_features = relabel_features(q_idx, k_idx)
    assert torch.equal(shared(q_new, k_new), shared(q_idx, k_idx))
    for g in range(6):
        old = torch.cat([q_idx.reshape(6, -1)[g], k_idx.reshape(6, -1)[g]])
        new = torch.cat([q_new.reshape(6, -1)[g], k_new.reshape(6, -1)[g]])
        assert torch.equal(torch.unique(new), torch.arange(torch.unique(old).numel()))  # dense, from 0
        order = torch.argsort(old)
        assert bool((torch.diff(new[order]) >= 0).all())  # increasing in the old ids
    assert num_features == max(int(torch.unique(torch.cat([q_idx.reshape(6, -1)[g], k_idx.reshape(6, -1)[g]]))
                                   .numel()) for g in range(6))


@pytest.mark.parametrize("impl", ["posting", "triton"])
def test_attention_is_unchanged_by_relabelling(impl):
    gen = torch.Generator().manual_seed(1)
    B, H, L, K, D = 1, 2, 24, 4, 64
    q_idx = torch.randint(0, D, (B, H, L, K), generator=gen)
    k_idx = torch.randint(0, D, (B, H, L, K), generator=gen)
    q_idx, k_idx = (torch.sort(x, dim=-1).values for x in (q_idx, k_idx))
    q_val, k_val, v = (torch.randn(B, H, L, n, generator=gen) for n in (K, K, 16))
    mask = torch.rand(B, L, generator=gen) > 0.2
    mask[:, 0] = True
    want, want_stats = wide_attention(q_idx, q_val, k_idx, k_val, v, D, 0.5, "overlap", None, mask, impl=impl)
    q_new, k_new, n = relabel_features(q_idx, k_idx)
    got, stats = wide_attention(q_new, q_val, k_new, k_val, v, n, 0.5, "overlap", None, mask, impl=impl)
    torch.testing.assert_close(got, want)
    assert int(stats["candidates"]) == int(want_stats["candidates"])


def grown_module(grow_from, **kwargs):
    torch.manual_seed(0)
    return SFAWideAttention(2, 16, D=256, k=4, codes="simhash", D_grow_from=grow_from, **kwargs).eval()


def test_at_or_below_the_growth_length_nothing_changes():
    plain, grown = grown_module(None), grown_module(64)
    q, k, v = (torch.randn(2, 2, 64, 16) for _ in range(3))
    torch.testing.assert_close(grown(q, k, v), plain(q, k, v))
    assert grown.num_features(64) == grown.num_features(50) == 256
    assert grown.stats()["num_features"] == 256


def test_grown_buckets_refine_the_trained_ones_and_cut_isotropic_candidates():
    L0, L = 64, 1024
    plain, grown = grown_module(None), grown_module(L0)
    assert grown.extra_bits(L) == 4 and grown.num_features(L) == 256 * 16
    assert grown.extra_bits(L + 1) == 4  # a CLS token does not add a bit
    q, k, v = (torch.randn(1, 2, L, 16) for _ in range(3))
    idx, _ = simhash_codes(q, grown.planes, grown.k)
    grown_q, _, _ = grown._encode(q)
    b = grown.table_bits
    # the low b bits and the table of a grown id are the old id's: a pair sharing a grown bucket shares the old one
    table = torch.arange(grown.k)
    assert torch.equal(grown_q % (1 << b) + table * (1 << b), idx)
    assert torch.equal(torch.div(grown_q, 1 << (b + 4), rounding_mode="floor"), table.expand_as(grown_q))
    assert int(grown_q.max()) < grown.num_features(L)
    plain(q, k, v)
    grown(q, k, v)
    isotropic = L * grown.k ** 2 / grown.num_features(L)  # the grown space's: that of L0 in D
    assert math.isclose(isotropic, L0 * grown.k ** 2 / grown.D)
    got, before = grown.stats()["mean_candidates"], plain.stats()["mean_candidates"]
    assert before > 8 * got  # 16x fewer candidates expected on isotropic inputs
    assert 0.5 * isotropic < got < 2.0 * isotropic
    assert grown.stats()["num_features"] == 256 * 16


def test_extra_bits_are_independent_of_moved_trained_bits():
    """The extra hyperplanes are orthogonal to the table's planes even after training moved them, so for
    isotropic inputs every extra sign is a fair coin independent of the table's own bits: each grown bucket
    takes 1 / 2^extra of its old bucket."""
    module = grown_module(1024, train_planes=True)
    b, m = module.table_bits, module.grow_planes.shape[-1] // module.k
    with torch.no_grad():
        module.planes.add_(0.3 * torch.randn_like(module.planes))  # as training moves them
        for t in range(module.k):  # a random extra direction close to a trained plane must still split fairly
            module.grow_planes[:, :, t * m] = module.planes[:, :, t * b] + 0.1 * torch.randn(2, 16)
    x = torch.randn(1, 2, 4096, 16)
    idx, _, _ = module._encode(x)  # (1, 2, 4096, 4)
    extra = module.extra_bits(4096)
    assert extra == 2
    own = torch.stack([(idx >> j) & 1 for j in range(b)], -1).float().reshape(-1, b)  # (N, b)
    new = torch.stack([(idx >> (b + j)) & 1 for j in range(extra)], -1).float().reshape(-1, extra)  # (N, extra)
    assert bool(((new.mean(0) - 0.5).abs() < 0.03).all())
    corr = torch.corrcoef(torch.cat([own, new], 1).T)[:b, b:]  # (b, extra)
    assert float(corr.abs().max()) < 0.08


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="D_grow_from=0"):
        SFAWideAttention(2, 16, D=256, k=4, codes="simhash", D_grow_from=0)
    with pytest.raises(ValueError, match="needs codes=simhash"):
        SFAWideAttention(2, 16, D=256, k=4, codes="learned", D_grow_from=64)
    module = SFAWideAttention(2, 16, D=256, k=4, codes="simhash", D_grow_from=2)  # 6 bits, 10 to spare
    with pytest.raises(ValueError, match="needs 11 more sign bits"):
        module.num_features(4096)
    soft = SFAWideAttention(2, 16, D=256, k=4, codes="simhash", relax="soft", D_grow_from=8).train()
    q = torch.randn(1, 2, 64, 16)
    with pytest.raises(ValueError, match="relax=soft trains at a fixed D"):
        soft(q, q, q)
