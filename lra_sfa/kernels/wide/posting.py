"""Wide-code SFA through per-feature posting lists (PyTorch, any device).

Computes the attention defined in ``reference`` (overlap or exact mode, optional
cap, padding, self-attending fallback) without ever forming an L x L tensor.

Plan: ``plan.build_plan`` (posting lists and per-query-entry key ranges).

Attention (``wide_posting_attention``): queries are processed in chunks of
about ``chunk_incidences`` (query, key, feature) incidences, each expanded.
Without a cap every shared feature of a pair is exactly one incidence, so the
pair's score is the sum of its incidences' products, grouped by
``torch.unique`` of the pair id. With a cap a window can hold a pair through
one shared feature and miss another, so the score is recomputed from the two
codes (k x k comparison) and the pair kept only in the bucket of its smallest
shared feature; either way a pair counts once. A segment softmax per query
and an index_add of the weighted V rows finish the chunk. Exact mode adds
the background of all real keys at score 0 in closed form:
num += exp(-m) * sum_j v_j, den += exp(-m) * n_real, and every
candidate's weight becomes exp(s - m) - exp(-m). Backward recomputes each
chunk (activation checkpointing), so memory is O(n * k) plus one chunk.

Work: O(n * k * mean list length) incidences, each O(1) for the score
(O(k^2) with a cap); summing incidences instead of comparing the k x k
codes of every pair made the uncapped form about ten times faster on the CPU
(results/kernels/NOTES.md).
Cap: with ``cap=C`` each query entry sees at most C keys, so work is
O(n * k * C); the (query, key, feature) incidences outside the window are
counted in ``incidences_total - incidences_kept``.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from lra_sfa.kernels.wide.plan import WidePlan, build_plan, validate_codes


def _chunk_bounds(plan: WidePlan, K: int, budget: int) -> list[tuple[int, int]]:
    """Token ranges whose incidences sum to about ``budget`` each (one host sync)."""
    per_tok = (plan.entry_hi - plan.entry_lo).view(-1, K).sum(1)  # (N,)
    cum = torch.cumsum(per_tok, 0)
    n_tok = cum.numel()
    total = int(cum[-1]) if n_tok else 0
    targets = torch.arange(budget, total + budget, budget, device=cum.device)
    stops = torch.searchsorted(cum, targets, right=True).clamp(1, n_tok).tolist()  # tokens before each target
    bounds, start = [], 0
    for stop in [*stops, n_tok]:
        if stop > start:
            bounds.append((start, stop))
            start = stop
    return bounds


def _chunk_incidences(plan: WidePlan, t0: int, t1: int, K: int):
    """(query entry, posting position) of every kept incidence of tokens [t0, t1)."""
    ent = torch.arange(t0 * K, t1 * K, device=plan.entry_lo.device)
    lo, lens = plan.entry_lo[ent], plan.entry_hi[ent] - plan.entry_lo[ent]
    ent_rep = torch.repeat_interleave(torch.arange(ent.numel(), device=ent.device), lens)  # (n_inc,)
    starts = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    offs = torch.arange(ent_rep.numel(), device=ent.device) - starts
    return t0 * K + ent_rep, lo[ent_rep] + offs


def _expand_matches(plan: WidePlan, q_idx: torch.Tensor, k_idx: torch.Tensor, t0: int, t1: int):
    """Capped lists: counted pairs (i, j) of tokens [t0, t1) and their (k, k) feature matches.

    A window may hold a pair through one shared feature but not another, so the score is
    recomputed from the two whole codes and the pair kept only in the bucket of its smallest
    shared feature.
    """
    K = q_idx.shape[1]
    q_ent, post = _chunk_incidences(plan, t0, t1, K)
    j = plan.key_tok[post]
    i = torch.div(q_ent, K, rounding_mode="floor")
    feat = q_idx.view(-1)[q_ent]
    qi, ki = q_idx[i], k_idx[j]  # (n_inc, K)
    eq = qi[:, :, None] == ki[:, None, :]  # (n_inc, K, K)
    smallest = torch.where(eq.any(-1), qi, plan.num_features).amin(-1)
    keep = smallest == feat
    return i[keep], j[keep], eq[keep]


def _expand_shared(plan: WidePlan, t0: int, t1: int, K: int, keys: int):
    """Uncapped lists: every shared feature of a pair is one incidence, so the pair's score is the sum
    of its incidences' products (no k x k comparison). Returns the pairs (i, j), and per incidence its
    query entry, key entry and pair number."""
    q_ent, post = _chunk_incidences(plan, t0, t1, K)
    k_ent = plan.key_ent[post]
    i = torch.div(q_ent, K, rounding_mode="floor")
    pair_id, pair_of = torch.unique((i - t0) * keys + torch.div(k_ent, K, rounding_mode="floor"),
                                    return_inverse=True)
    return t0 + torch.div(pair_id, keys, rounding_mode="floor"), pair_id % keys, (q_ent, k_ent, pair_of)


def _pair_scores(q_val, k_val, i, j, match) -> torch.Tensor:
    """Raw score sum_{shared f} qv * kv of each pair, at least fp32; ``match`` from _expand_matches or
    _expand_shared."""
    acc = torch.promote_types(q_val.dtype, torch.float32)
    if isinstance(match, tuple):
        q_ent, k_ent, pair_of = match
        prod = q_val.reshape(-1)[q_ent].to(acc) * k_val.reshape(-1)[k_ent].to(acc)  # (n_inc,)
        return torch.zeros(i.numel(), dtype=acc, device=prod.device).index_add(0, pair_of, prod)
    return (match * q_val[i].to(acc)[:, :, None] * k_val[j].to(acc)[:, None, :]).sum((1, 2))


def _chunk_forward(q_val, k_val, v, sum_v, i, j, match, t0, t1, groups_of_chunk, count_of_chunk, scale, exact):
    """Softmax over the counted candidates of tokens [t0, t1); returns (t1 - t0, dv)."""
    n_tok = t1 - t0
    local = i - t0
    s = _pair_scores(q_val, k_val, i, j, match) * scale  # (n_cand,)
    m = torch.full((n_tok,), float("-inf"), dtype=s.dtype, device=s.device)
    m = m.scatter_reduce(0, local, s.detach(), "amax")
    if exact:
        m = m.clamp(min=0.0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(s - m[local])
    background = torch.exp(-m)
    if exact:
        w = w - background[local]
    num = torch.zeros(n_tok, v.shape[1], dtype=w.dtype, device=v.device).index_add(0, local, w[:, None] * v[j])
    den = torch.zeros(n_tok, dtype=w.dtype, device=v.device).index_add(0, local, w)
    if exact:
        num = num + background[:, None] * sum_v[groups_of_chunk]
        den = den + background * count_of_chunk
        has = count_of_chunk > 0
    else:
        has = torch.bincount(local, minlength=n_tok) > 0
    out = num / torch.where(has, den, torch.ones_like(den))[:, None]
    return torch.where(has[:, None], out.to(v.dtype), v[t0:t1])


def _chunk_attention(q_val, k_val, v, sum_v, plan: WidePlan, q_idx, k_idx, t0: int, t1: int, scale: float,
                     exact: bool, capped: bool):
    """Expand the candidates of tokens [t0, t1) and attend over them; returns (out (t1 - t0, dv), pairs).

    The expansion happens in here so that a checkpointed chunk keeps none of its incidence tensors
    for the backward (they are rebuilt): memory stays O(n * k) plus one chunk.
    """
    K = q_val.shape[1]
    if capped:
        i, j, match = _expand_matches(plan, q_idx, k_idx, t0, t1)
    else:
        i, j, match = _expand_shared(plan, t0, t1, K, q_idx.shape[0])
    groups = torch.div(torch.arange(t0, t1, device=v.device), plan.length, rounding_mode="floor")
    counts = plan.key_count[groups].to(v.dtype)
    out = _chunk_forward(q_val, k_val, v, sum_v, i, j, match, t0, t1, groups, counts, scale, exact)
    return out, i.numel()


def wide_posting_attention(
    q_idx: torch.Tensor,
    q_val: torch.Tensor,
    k_idx: torch.Tensor,
    k_val: torch.Tensor,
    v: torch.Tensor,
    num_features: int,
    scale: float,
    mode: str = "overlap",
    cap: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    chunk_incidences: int | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Posting-list wide attention; returns (out (B, H, L, dv), stats); ``causal``: keys j <= i only.

    ``chunk_incidences`` defaults to 2^17 on the CPU (cache-sized) and 2^22 on CUDA (fewer launches;
    about 0.5 GB of index tensors per chunk).
    """
    validate_codes(q_idx, q_val, k_idx, k_val, v, num_features, mode, cap, key_padding_mask, causal)
    if chunk_incidences is None:
        chunk_incidences = 1 << 22 if v.device.type == "cuda" else 1 << 17
    B, H, L, K = q_idx.shape
    dv = v.shape[-1]
    qi, ki = q_idx.reshape(B * H, L, K), k_idx.reshape(B * H, L, K)  # (G, L, K)
    real = None if key_padding_mask is None else key_padding_mask[:, None, :].expand(B, H, L).reshape(B * H, L)
    plan = build_plan(qi, ki, real, num_features, cap, causal)
    qi, ki = qi.reshape(-1, K), ki.reshape(-1, K)  # (N, K)
    # Gathers from fp32 copies: their backward scatter-adds then sum a key's many candidates in fp32 (in
    # bf16 the dv error was 3x the bf16 dense reference's, and failed the DESIGN.md rule on the H200).
    acc = torch.promote_types(v.dtype, torch.float32)
    qv, kv, vf = (x.to(acc) for x in (q_val.reshape(-1, K), k_val.reshape(-1, K), v.reshape(-1, dv)))  # (N, K|dv)
    vm = vf if real is None else vf * real.reshape(-1, 1).to(vf.dtype)
    sum_v = vm.reshape(B * H, L, dv).sum(1)  # (G, dv)
    exact = mode == "exact"
    pieces, candidates = [], 0
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (qv, kv, vf))
    for t0, t1 in _chunk_bounds(plan, K, chunk_incidences):
        args = (qv, kv, vf, sum_v, plan, qi, ki, t0, t1, scale, exact, cap is not None)
        piece, pairs = (checkpoint(_chunk_attention, *args, use_reentrant=False) if needs_grad
                        else _chunk_attention(*args))
        pieces.append(piece)
        candidates += pairs
    out = torch.cat(pieces).to(v.dtype).reshape(B, H, L, dv)  # (B, H, L, dv)
    stats = {
        "candidates": torch.tensor(candidates, device=v.device),
        "incidences_total": plan.incidences_total,
        "incidences_kept": plan.incidences_kept,
    }
    return out, stats
