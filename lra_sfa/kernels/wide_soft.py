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
that share a bucket, -> -inf for pairs that do not) and, at tau > 0, pulls pairs that should meet into
a common bucket through the gradient of log m. Values are the hard path's bucket logits |p|_1 / sqrt(b).

Cost: it forms (B, H, L, L, tables) tensors, so it is a training-time path for short sequences (the
needle protocol trains at 256 tokens); eval and inference use the hard codes and the posting kernels
(``wide_posting``), which never form an L x L tensor. The bit loop keeps one (B, H, L, L, tables)
temporary per bit alive for autograd: ~7.5 GB per layer at B = 32, H = 4, L = 256, 8 tables of 14 bits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (both branches finite for x <= -1e-6)."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def soft_share_logprobs(q_x: torch.Tensor, k_x: torch.Tensor, tau: float) -> torch.Tensor:
    """log a_t(i, j), (B, H, Lq, Lk, T), from normalised projections q_x (B, H, Lq, T, b), k_x (B, H, Lk, T, b)."""
    q_pos, q_neg = F.logsigmoid(q_x / tau), F.logsigmoid(-q_x / tau)  # (B, H, Lq, T, b)
    k_pos, k_neg = F.logsigmoid(k_x / tau), F.logsigmoid(-k_x / tau)
    log_share = None
    for bit in range(q_x.shape[-1]):  # one (B, H, Lq, Lk, T) temporary per bit instead of one with b in it
        both_pos = q_pos[:, :, :, None, :, bit] + k_pos[:, :, None, :, :, bit]
        both_neg = q_neg[:, :, :, None, :, bit] + k_neg[:, :, None, :, :, bit]
        agree = torch.logaddexp(both_pos, both_neg)  # log P(the bit agrees)
        log_share = agree if log_share is None else log_share + agree
    return log_share


def soft_any_logprob(log_share: torch.Tensor) -> torch.Tensor:
    """log m = log(1 - prod_t (1 - a_t)), (B, H, Lq, Lk), as log sum_t a_t prod_{t' < t} (1 - a_t'): finite
    even where every a_t underflows (the pairs far apart in every table still get a gradient)."""
    log_share = log_share.clamp(max=-1e-6)
    log_miss = _log1mexp(log_share)  # log(1 - a_t)
    before = torch.cumsum(log_miss, dim=-1) - log_miss  # sum over t' < t; log_miss is finite (clamped)
    return torch.logsumexp(log_share + before, dim=-1)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed SimHash attention (module docstring). q_h, k_h: (B, H, L, e) code inputs; planes (H, e, T * b);
    v (B, H, L, dv); ``bits`` < b uses each table's first bits. Returns (out (B, H, L, dv), hard candidate
    count per query (B, H, L): keys sharing a bucket under the hard codes, for the stats)."""
    B, H, L, e = q_h.shape
    full = planes.shape[-1] // tables
    bits = full if bits is None else bits
    w = planes.to(torch.float32)

    def project(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = torch.einsum("bhle,hef->bhlf", h.float(), w).view(*h.shape[:3], tables, full)[..., :bits]
        x = p * (math.sqrt(e) / h.float().norm(dim=-1).clamp_min(1e-6)[..., None, None])  # cosine * sqrt(e)
        return p, x, p.abs().sum(-1) / math.sqrt(bits)  # (B, H, L, T, b) x2, values (B, H, L, T)

    q_p, q_x, q_val = project(q_h)
    k_p, k_x, k_val = project(k_h)
    log_share = soft_share_logprobs(q_x, k_x, tau)  # (B, H, L, L, T)
    score = torch.einsum("bhijt,bhit,bhjt->bhij", log_share.exp(), q_val, k_val) * scale
    logits = score + soft_any_logprob(log_share)  # (B, H, L, L)
    if key_padding_mask is not None:  # padding keys get no weight; a query without any real key keeps its value
        real = key_padding_mask[:, None, None, :]  # (B, 1, 1, L)
        logits = logits.masked_fill(~real, float("-inf")).masked_fill(~real.any(-1, keepdim=True), 0.0)
    out = torch.softmax(logits, dim=-1).to(v.dtype) @ v
    if key_padding_mask is not None:
        out = torch.where(key_padding_mask.any(-1)[:, None, None, None], out, v)
    with torch.no_grad():  # hard collisions: same bucket (every sign bit equal) in some table
        weights = 2 ** torch.arange(bits, device=q_p.device)
        q_bucket, k_bucket = (((p > 0).long() * weights).sum(-1) for p in (q_p, k_p))  # (B, H, L, T)
        same = (q_bucket[:, :, :, None] == k_bucket[:, :, None]).any(-1)  # (B, H, L, L)
        if key_padding_mask is not None:
            same = same & key_padding_mask[:, None, None, :]
        candidates = same.sum(-1)
    return out, candidates
