"""Soft-collision training path for SimHash wide codes (``attn=sfa_wide codes=simhash relax=soft``).

Hard SimHash attention gives a query and a key a score only when they land in the same bucket of
some table, so a pair that should meet but does not gets no gradient that could bring it together
(the H200 needle runs: the trained model's training loss rose to 1.0-1.4 once every bit was in use).
This path relaxes the buckets. Each sign bit becomes a Bernoulli variable with P(bit = 1) =
sigmoid(x / tau), x the token's projection on the bit's hyperplane in units of the isotropic spread
(cosine with the plane normal times sqrt(e)). Two tokens then share table t with probability

    a_t(i, j) = prod over the table's bits of [s_i s_j + (1 - s_i)(1 - s_j)]   (s = sigmoid(x / tau))

and share some table with probability m(i, j) = 1 - prod_t (1 - a_t). The relaxed attention is a
softmax over every key of

    scale * sum_t a_t(i, j) qval(i, t) kval(j, t) + log m(i, j)

which is the hard rule's limit as tau -> 0 (a_t -> the shared-bucket indicator; log m -> 0 for pairs
that share a bucket, -> -inf for pairs that do not: m is floored at 1e-30, a weight of e^-69) and,
at tau > 0, pulls pairs that should meet into a common bucket through the gradient of log m.
Values are the hard path's bucket logits |p|_1 / sqrt(b).

Computation: a table's share probability is the dot product of the two tokens' distributions over its
2^b buckets; split the b bits into groups of at most 7 and it is the product over groups of dot
products of 2^7-long distributions, i.e. a few small batched matmuls per table. Probabilities, not
logs: a pair whose share probability underflows fp32 (below ~1e-38) would have a softmax weight and a
gradient of that order anyway. (A first version summed per-bit log-agreements over (B, H, L, L, T)
tensors bit by bit: 3.5 training steps/s on the H200 needle model against ~40 for the hard path.)

Collision budget: the mean of m over real (query, key) pairs, divided by the share-any probability of
two independent isotropic tokens, 1 - (1 - 2^-b)^T, is returned as ``share_ratio`` (differentiable): 1
for codes spread like random ones (the seed-3 H200 needle model, trained without it, met 19x the
isotropic hard candidates per query at 64K). ``attn.balance_weight`` adds it to the loss.

Cost: it forms (B, H, tables, L, L) tensors, so it is a training-time path for short sequences (the
needle protocol trains at 256 tokens); eval and inference use the hard codes and the posting kernels
(``posting``), which never form an L x L tensor. A query with no hard candidate has no self
fallback here: it attends to the keys it is softly closest to.
"""

from __future__ import annotations

import math

import torch

from lra_sfa.kernels.wide.capacity import bucket_capacity_keep

GROUP_BITS = 7  # bits per bucket-distribution group: 2^7 = 128-long distributions, the matmul's inner dim


def sign_buckets(proj: torch.Tensor, table_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard SimHash codes from projections proj (..., T, b) on each table's hyperplanes: feature ids
    (..., T) int64, t * 2^table_bits + the b sign bits (bit j set where proj[..., j] > 0), and values
    (..., T), the bucket logit |p|_1 / sqrt(b) (differentiable). Shared by the hard and relaxed paths."""
    tables, bits = proj.shape[-2:]
    with torch.no_grad():
        weights = 2 ** torch.arange(bits, device=proj.device)
        idx = ((proj > 0).long() * weights).sum(-1) + torch.arange(tables, device=proj.device) * (1 << table_bits)
    return idx, proj.abs().sum(-1) / math.sqrt(bits)


def bucket_distributions(s: torch.Tensor) -> list[torch.Tensor]:
    """Per group of <= 7 bits, each token's distribution over the group's sign patterns.

    s: (..., b) soft bits P(bit = 1). Returns [(..., 2^c)] per group of c bits; pattern n has bit j set
    where (n >> j) & 1, its probability the product of s or 1 - s over the group's bits."""
    groups = []
    for lo in range(0, s.shape[-1], GROUP_BITS):
        probs = torch.ones_like(s[..., :1])
        for bit in range(lo, min(lo + GROUP_BITS, s.shape[-1])):
            pair = torch.stack([1.0 - s[..., bit], s[..., bit]], dim=-1)  # (..., 2): bit 0 / 1
            probs = (pair[..., :, None] * probs[..., None, :]).flatten(-2)  # new bit is the high bit
        groups.append(probs)
    return groups


def soft_share_probs(s_q: torch.Tensor, s_k: torch.Tensor) -> torch.Tensor:
    """a_t(i, j) = P(query i and key j share table t's bucket), (B, H, T, Lq, Lk), from soft bits
    s_q (B, H, T, Lq, b) and s_k (B, H, T, Lk, b): the product over bit groups of <q group dist, k group dist>."""
    share = None
    for dist_q, dist_k in zip(bucket_distributions(s_q), bucket_distributions(s_k)):
        group = dist_q @ dist_k.transpose(-1, -2)  # (B, H, T, Lq, Lk)
        share = group if share is None else share * group
    return share


def soft_any_prob(share: torch.Tensor) -> torch.Tensor:
    """m = 1 - prod_t (1 - a_t), (B, H, Lq, Lk), as sum_t a_t prod_{t' < t} (1 - a_t') (no cancellation
    where every a_t is small); share: (B, H, T, Lq, Lk)."""
    miss = torch.cumprod(1.0 - share, dim=2)
    before = torch.cat([torch.ones_like(miss[:, :, :1]), miss[:, :, :-1]], dim=2)  # prod over t' < t
    return (share * before).sum(2)


def simhash_soft_attention(
    q_h: torch.Tensor,
    k_h: torch.Tensor,
    planes: torch.Tensor,
    tables: int,
    v: torch.Tensor,
    scale: float,
    tau: float,
    bits: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    capacity: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Relaxed SimHash attention (module docstring). ``capacity=C``: a key's table t takes part (a_t(i, j) kept,
    else 0) only where the key is among the C highest-valued keys of its hard bucket (``capacity``), the
    relaxation of the hard path's bucket capacity. q_h, k_h: (B, H, L, e) code inputs; planes (H, e, T * b);
    v (B, H, L, dv); ``bits`` < b uses each table's first bits. Returns out (B, H, L, dv) and
    {"candidates": (B, H, L) keys sharing a bucket with each query under the hard codes,
    "q_idx", "k_idx": those hard codes' feature ids (B, H, L, T) (``sign_buckets``),
    "share_ratio": the collision budget (module docstring), a differentiable scalar,
    "incidences_total", "incidences_kept": hard (query, key, table) matches before and after the capacity}.
    Runs in fp32 whatever the autocast (bf16 share probabilities would carry 3 significant digits into log m)."""
    with torch.autocast(device_type=q_h.device.type, enabled=False):
        out, extras = _soft_attention_fp32(q_h.float(), k_h.float(), planes.float(), tables, v.float(), scale,
                                           tau, bits, key_padding_mask, capacity)
    return out.to(v.dtype), extras


def _key_keep(k_idx, k_val, key_padding_mask, tables: int, full: int, capacity: int | None) -> torch.Tensor:
    """(B, H, L, T) bool: key entries kept by the bucket capacity (all where ``capacity`` is None)."""
    if capacity is None:
        return torch.ones_like(k_idx, dtype=torch.bool)
    B, H, L, T = k_idx.shape
    real = None if key_padding_mask is None else key_padding_mask[:, None, :].expand(B, H, L).reshape(B * H, L)
    keep = bucket_capacity_keep(k_idx.reshape(B * H, L, T), k_val.reshape(B * H, L, T), real, tables << full,
                                capacity)
    return keep.view(B, H, L, T)


def _soft_attention_fp32(q_h, k_h, planes, tables, v, scale, tau, bits, key_padding_mask, capacity):
    """``simhash_soft_attention`` on fp32 inputs, autocast off."""
    B, H, L, e = q_h.shape
    full = planes.shape[-1] // tables
    bits = full if bits is None else bits

    def project(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = torch.einsum("bhle,hef->bhlf", h, planes).view(*h.shape[:3], tables, full)[..., :bits]
        x = p * (math.sqrt(e) / h.norm(dim=-1).clamp_min(1e-6)[..., None, None])  # cosine * sqrt(e)
        idx, val = sign_buckets(p, full)  # (B, H, L, T) each
        return idx, torch.sigmoid(x / tau).transpose(2, 3), val.transpose(2, 3)  # soft bits (B, H, T, L, b)

    q_idx, q_s, q_val = project(q_h)
    k_idx, k_s, k_val = project(k_h)
    keep = _key_keep(k_idx, k_val.transpose(2, 3), key_padding_mask, tables, full, capacity)  # (B, H, L, T)
    share = soft_share_probs(q_s, k_s) * keep.transpose(2, 3)[:, :, :, None, :]  # (B, H, T, L, L)
    score = (share * q_val[..., :, None] * k_val[..., None, :]).sum(2) * scale  # (B, H, L, L)
    any_share = soft_any_prob(share)  # (B, H, L, L)
    logits = score + any_share.clamp_min(1e-30).log()
    pairs = torch.ones(B, L, L, device=q_h.device) if key_padding_mask is None else (
        key_padding_mask[:, :, None] & key_padding_mask[:, None, :]).float()  # real queries x real keys
    isotropic = 1.0 - (1.0 - 2.0 ** -bits) ** tables
    share_ratio = (any_share * pairs[:, None]).sum() / (pairs.sum() * H).clamp_min(1.0) / isotropic
    if key_padding_mask is not None:  # padding keys get no weight; a query without any real key keeps its value
        real = key_padding_mask[:, None, None, :]  # (B, 1, 1, L)
        logits = logits.masked_fill(~real, float("-inf")).masked_fill(~real.any(-1, keepdim=True), 0.0)
    out = torch.softmax(logits, dim=-1) @ v
    if key_padding_mask is not None:
        out = torch.where(key_padding_mask.any(-1)[:, None, None, None], out, v)
    with torch.no_grad():  # hard collisions: same bucket (every sign bit equal) in some table
        match = q_idx[:, :, :, None, :] == k_idx[:, :, None, :, :]  # (B, H, L, L, T)
        if key_padding_mask is not None:
            match = match & key_padding_mask[:, None, None, :, None]
        kept = match & keep[:, :, None, :, :]
        candidates = kept.any(-1).sum(-1)
    return out, {"candidates": candidates, "q_idx": q_idx, "k_idx": k_idx, "share_ratio": share_ratio,
                 "incidences_total": match.sum(), "incidences_kept": kept.sum(),
                 "key_entries_total": keep.numel() if key_padding_mask is None else
                 key_padding_mask.sum() * H * tables, "key_entries_kept": keep.sum()}
