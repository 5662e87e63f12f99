"""Wide-code SFA backend (``attn=sfa_wide``): k-sparse codes in D >> d features.

Per head, queries and keys go through one code map d -> D (a linear map, or
a small MLP with ``mlp_hidden > 0``; ``codes="lsh"`` uses a fixed random
projection instead, never trained, with unit-norm feature directions so that
isotropic inputs use every feature equally). Each token keeps its ``k`` largest
logits: the code is (feature indices, logit values). ``codes="simhash"`` needs
no d -> D map: k hash tables of b = log2(D / k) random hyperplanes each, the
feature of table t being t * 2^b + the b sign bits, valued by that bucket's logit
(``simhash_codes``); the hyperplanes are fixed, the model's q and k projections learn to share
buckets through the values. ``bits_start`` trains with coarser buckets (each table's first
``bits_start`` hyperplanes, so that related tokens meet often enough to learn from), rising
linearly to b by the fraction ``bits_anneal`` of the run; eval always hashes with all b bits.
``train_planes=True`` makes the hyperplanes a parameter, trained through the values.
``relax="soft"`` (simhash only) trains through relaxed buckets instead: each sign bit is soft
(sigmoid of the projection over tau, tau annealed from ``tau_start`` to ``tau_end``), every pair is
weighted by its probability of sharing a bucket, so pairs that should meet get a gradient towards a
common bucket (``lra_sfa.kernels.wide.soft``; dense in L, a training path for short sequences; eval
and inference use the hard codes and the posting kernels).
Attention is then computed only from the codes (``lra_sfa.kernels.wide.posting``):

    s(i, j) = scale * sum over shared features f of qcode(i, f) * kcode(j, f)

* ``mode="overlap"``: only pairs sharing a feature are attended (others have
  exactly zero weight); ``mode="exact"``: every key, score 0 if nothing shared.
* ``cap=C`` (overlap): each query sees at most C keys per feature, the window
  of the feature's posting list around its own position (dropped incidences
  are counted in ``stats()["dropped_frac"]``); ``cap=null``: exact overlap.
* ``capacity_factor=c`` (overlap, cap=null): each bucket keeps its C = round(c L k / D) >= 1 highest-valued
  keys (c times an isotropic bucket's mean load; ``lra_sfa.kernels.wide.capacity``), so a query meets at
  most k C keys on any codes; the dropped key entries leave the key's code (also in the relaxed training
  path), counted in ``stats()`` (``dropped_frac``, ``key_entries_dropped_frac``, ``capacity``).
* ``D_grow_from=L0`` (codes=simhash): the code space grows with the sequence, D(L) = D 2^e with
  e = round(log2(L / L0)) >= 0 more sign bits per table (fixed random hyperplanes orthonormal to the table's
  own), so the isotropic candidates per query, L k^2 / D(L), stay at those of L0 (``grown_simhash_ids``). The
  extra bits only split buckets: pairs that share a grown bucket keep their scores, the rest are the drop,
  visible in ``stats()`` (``mean_candidates``, ``num_features`` = D(L)). The kernels see the features
  renumbered per group (``lra_sfa.kernels.wide.relabel``), as D(L) outgrows what they can index.
* Defined fallback: a query with no candidate key (overlap), or with no real
  key at all (exact), attends to itself: its output is its own value row.
  Padding keys are never attended.

Training of the codes (``codes="learned"``):
* ``relax="ste"``: hard top-k forward; the gradient of each kept value goes
  straight to its logit (the top-k selection is held fixed, as in SFA).
* ``relax="gumbel"``: while training, the top-k of z + tau * Gumbel noise is
  selected and each kept value is multiplied by a straight-through gate
  1 + w - stopgrad(w), w = softmax(z / tau + noise) over all D features, so
  the forward is hard and every logit gets a gradient. tau anneals
  geometrically from ``tau_start`` to ``tau_end`` over the run (``on_step``).
  Eval is hard top-k of z without noise.
* ``balance_weight > 0`` (codes=simhash, relax=soft) adds the relaxed path's collision budget, the
  mean probability that a query and a key share a bucket over that of random codes (``wide_soft``).
* ``balance_weight > 0`` (learned codes) adds a Switch-style load-balance loss
  D * sum_f usage_f * mean_prob_f (``extra_loss``).
The code map materialises the (B, H, L, D) logits for the top-k (without
autograd under ste and lsh: the kept values are recomputed from the selected
columns); the attention itself never forms an L x L tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lra_sfa.attention import AttentionBackend
from lra_sfa.kernels.wide.api import wide_attention
from lra_sfa.kernels.wide.capacity import capacity_for
from lra_sfa.kernels.wide.relabel import relabel_features
from lra_sfa.kernels.wide.soft import sign_buckets, simhash_soft_attention
from lra_sfa.kernels.wide.topk import code_topk

CODES = ("learned", "lsh", "simhash")
RELAXES = ("ste", "gumbel", "soft")
MODES = ("overlap", "exact")
IMPLS = ("auto", "posting", "triton")


def unit_columns(proj: torch.Tensor) -> torch.Tensor:
    """(H, e, D) projection with every column (one feature's direction) scaled to unit norm.

    LSH codes are the top-k of x . w_f; with unit directions every feature is equally likely to win
    for isotropic x. Plain Gaussian columns are not: their norms vary by ~1/sqrt(2e), and the top-k
    sits so far in the tail that a 10% longer column wins several times as often (measured: 1.7x the
    uniform candidates per query at D = 4096, 2.7x at D = 32768, 4x at D = 131072 on the H200 run).
    """
    return proj / proj.norm(dim=1, keepdim=True)


def simhash_planes(heads: int, width: int, k: int, bits: int) -> torch.Tensor:
    """(heads, width, k * bits) hyperplanes for ``simhash_codes``: each table's ``bits`` are orthonormal."""
    return torch.cat([torch.linalg.qr(torch.randn(heads, width, bits)).Q for _ in range(k)], dim=-1)


def simhash_codes(h: torch.Tensor, planes: torch.Tensor, k: int,
                  bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SimHash codes of h (B, H, L, e) with hyperplanes (H, e, k * b): (indices, values), each (B, H, L, k).

    Table t's feature is t * 2^b + the sign bits of p = h . planes[:, :, t*b:(t+1)*b], so tokens at a
    small angle tend to share it: a feature space of D = k 2^b at a cost of e * k * b multiply-adds
    per token instead of e * D. A table's hyperplanes are orthonormal, so for isotropic inputs the
    b signs are independent and every bucket equally likely (with independent Gaussian hyperplanes
    the bucket counts of 4096 isotropic tokens at b = 6, e = 16 had 43x the Poisson variance, some
    buckets empty; orthonormal: 0.9x, CPU check); two independent tokens then share a table with
    probability 2^-b, the uniform L k^2 / D candidates per query.

    The value is the bucket's logit, |p|_1 / sqrt(b) = max over the table's 2^b unit "corner"
    directions c_s = planes_t s / sqrt(b) of c_s . h, and the bucket is that argmax: SimHash is the
    top-1 per table of a fixed codebook of corners, as ``codes=lsh`` is the top-k of random columns.
    Its gradient moves h towards its bucket's corner, so training can pull a query and the keys it
    should find into one bucket (a value without direction, such as |h|, cannot: the CPU needle run
    with values |h| / e^(1/4) stayed at chance). ``bits`` < b uses each table's first ``bits``
    hyperplanes only (coarser buckets, the bits anneal of ``SFAWideAttention``); the feature id
    keeps the table's offset t * 2^b.
    """
    B, H, L, e = h.shape
    full = planes.shape[-1] // k
    bits = full if bits is None else bits
    proj = torch.einsum("bhle,hef->bhlf", h, planes.to(h.dtype)).view(B, H, L, k, full)[..., :bits]
    return sign_buckets(proj, full)  # (B, H, L, k) feature ids and values


def grown_simhash_ids(h: torch.Tensor, planes: torch.Tensor, grow_planes: torch.Tensor, idx: torch.Tensor, k: int,
                      extra: int) -> torch.Tensor:
    """Feature ids (B, H, L, k) of SimHash codes of h (B, H, L, e) refined by ``extra`` more sign bits per table.

    idx: the ids from ``simhash_codes`` with ``planes`` (H, e, k * b) (table t: t 2^b + its bits). Table t's
    extra hyperplanes are the first ``extra`` of its m columns of grow_planes (H, e, k * m), made orthonormal
    to the table's own planes (which training may have moved) and to each other, so that for isotropic
    inputs every extra bit halves a bucket. Their sign bits go above the b bits: the new id is
    t 2^(b + extra) + (extra bits) 2^b + (old bits), so a pair sharing a grown bucket shares its old one.
    """
    B, H, L, e = h.shape
    b, m = planes.shape[-1] // k, grow_planes.shape[-1] // k
    with torch.no_grad():  # ids only: no gradient flows through a bucket choice
        own = planes.float().view(H, e, k, b).permute(0, 2, 1, 3)  # (H, k, e, b)
        fresh = grow_planes.float().view(H, e, k, m)[..., :extra].permute(0, 2, 1, 3)  # (H, k, e, extra)
        basis = torch.linalg.qr(torch.cat([own, fresh], dim=-1)).Q[..., b:]  # (H, k, e, extra), orthogonal to own
        proj = torch.einsum("bhle,hked->bhlkd", h, basis.to(h.dtype))  # (B, H, L, k, extra)
        high = ((proj > 0).long() * 2 ** torch.arange(extra, device=h.device)).sum(-1)  # (B, H, L, k)
        table = torch.arange(k, device=h.device)
        return table * (1 << (b + extra)) + high * (1 << b) + (idx - table * (1 << b))


def _feature_entropy(idx: torch.Tensor, num_features: int, space: int | None = None) -> torch.Tensor:
    """Mean over heads of the entropy of feature usage over log(space) (default num_features); idx: (B, H, L, k)
    in 0..num_features - 1 (relabelled ids of a grown space: the entropy does not depend on the labels)."""
    heads = idx.shape[1]
    flat = idx.transpose(0, 1).reshape(heads, -1)  # (H, B * L * k)
    counts = torch.zeros(heads, num_features, device=idx.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float32))
    p = counts / counts.sum(1, keepdim=True)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(1) / math.log(space or num_features)
    return ent.mean()


class SFAWideAttention(AttentionBackend):
    """Wide-code Sparse Feature Attention through per-feature posting lists; causal (``causal``) in exact
    overlap (mode overlap, no cap, no capacity) with hard codes (relax ste or gumbel)."""

    supports_causal = True

    def __init__(self, num_heads: int, head_dim: int, D: int = 4096, k: int = 16, codes: str = "learned",
                 relax: str = "ste", mode: str = "overlap", cap: int | None = None, mlp_hidden: int = 0,
                 balance_weight: float = 0.0, tau_start: float = 1.0, tau_end: float = 0.1,
                 scale: float | None = None, impl: str = "auto", bits_start: int | None = None,
                 bits_anneal: float = 0.5, train_planes: bool = False, capacity_factor: float | None = None,
                 D_grow_from: int | None = None) -> None:
        super().__init__()
        for key, value, valid in (("codes", codes, CODES), ("relax", relax, RELAXES), ("mode", mode, MODES),
                                  ("impl", impl, IMPLS)):
            if value not in valid:
                raise ValueError(f"attn sfa_wide: {key}={value!r} must be one of {valid}")
        if not isinstance(k, int) or not isinstance(D, int) or not 1 <= k <= D:
            raise ValueError(f"attn sfa_wide: need ints 1 <= k <= D, got k={k!r}, D={D!r}")
        if cap is not None and (not isinstance(cap, int) or cap < 1 or mode != "overlap"):
            raise ValueError(f"attn sfa_wide: cap={cap!r} must be null or an int >= 1, and needs mode=overlap")
        table = D // k
        if codes == "simhash" and (D % k or table < 2 or table & (table - 1)):
            raise ValueError(f"attn sfa_wide: codes=simhash needs D/k a power of two >= 2 (k hash tables of "
                             f"log2(D/k) sign bits), got D={D}, k={k}")
        bits = table.bit_length() - 1
        if bits_start is not None and (codes != "simhash" or not isinstance(bits_start, int)
                                       or not 1 <= bits_start <= bits):
            raise ValueError(f"attn sfa_wide: bits_start={bits_start!r} needs codes=simhash and an int in "
                             f"[1, log2(D/k)={bits}] (null = no anneal)")
        if relax == "soft" and (codes != "simhash" or mode != "overlap" or cap is not None):
            raise ValueError(f"attn sfa_wide: relax=soft needs codes=simhash, mode=overlap and cap=null (it trains "
                             f"the exact-overlap rule on relaxed hash buckets), got codes={codes!r}, mode={mode!r}, "
                             f"cap={cap!r}; learned codes take relax=ste or gumbel")
        if balance_weight > 0 and not (codes == "learned" or relax == "soft"):
            raise ValueError(f"attn sfa_wide: balance_weight={balance_weight} needs codes=learned (load balance) or "
                             f"codes=simhash relax=soft (collision budget), got codes={codes!r}, relax={relax!r}")
        if capacity_factor is not None and (isinstance(capacity_factor, bool) or not isinstance(
                capacity_factor, (int, float)) or capacity_factor <= 0 or mode != "overlap" or cap is not None):
            raise ValueError(f"attn sfa_wide: capacity_factor={capacity_factor!r} must be null or a number > 0, and "
                             f"needs mode=overlap and cap=null (got mode={mode!r}, cap={cap!r})")
        if D_grow_from is not None and (codes != "simhash" or isinstance(D_grow_from, bool)
                                        or not isinstance(D_grow_from, int) or D_grow_from < 1):
            raise ValueError(f"attn sfa_wide: D_grow_from={D_grow_from!r} must be null or an int >= 1 (the length "
                             f"from which D doubles per doubling of L), and needs codes=simhash (got codes={codes!r})")
        if train_planes and codes != "simhash":
            raise ValueError(f"attn sfa_wide: train_planes=true needs codes=simhash, got codes={codes!r}")
        if not 0 < bits_anneal <= 1:
            raise ValueError(f"attn sfa_wide: bits_anneal={bits_anneal!r} must be in (0, 1]")
        if tau_start <= 0 or tau_end <= 0:
            raise ValueError(f"attn sfa_wide: tau_start={tau_start}, tau_end={tau_end} must be > 0")
        self.num_heads, self.head_dim, self.D, self.k = num_heads, head_dim, D, k
        self.codes, self.relax, self.mode, self.cap, self.impl = codes, relax, mode, cap, impl
        self.balance_weight, self.tau_start, self.tau_end = balance_weight, tau_start, tau_end
        self.scale = 1.0 / math.sqrt(k) if scale is None else scale
        self.tau = tau_start
        self.bits_start, self.bits_anneal, self.train_planes = bits_start, bits_anneal, train_planes
        self.capacity_factor = capacity_factor
        self.D_grow_from = D_grow_from
        self.table_bits = bits  # log2(D / k): SimHash bits per table at eval
        self.bits = bits if codes == "simhash" else None  # SimHash bits per table in use (training anneal)
        width = mlp_hidden if mlp_hidden > 0 else head_dim
        self.hidden = None
        if mlp_hidden > 0:
            self.hidden = nn.Parameter(torch.randn(num_heads, head_dim, mlp_hidden) / math.sqrt(head_dim))
        if codes == "simhash":  # no d -> D map: k tables of b orthonormal hyperplanes, (H, e, k * b)
            if bits > width:
                raise ValueError(f"attn sfa_wide: codes=simhash needs log2(D/k)={bits} <= the code input width "
                                 f"{width} (orthonormal hyperplanes per table)")
            planes = simhash_planes(num_heads, width, k, bits)  # orthonormal per table at init
            if train_planes:  # trained through the values like any code map (they drift from orthonormal)
                self.planes = nn.Parameter(planes)
            else:
                self.register_buffer("planes", planes)
            if D_grow_from is not None:  # the extra bits' hyperplanes: fixed, seeded, never in a checkpoint
                spare = width - bits
                fresh = torch.randn(num_heads, width, k * spare, generator=torch.Generator().manual_seed(0))
                self.register_buffer("grow_planes", fresh, persistent=False)
        elif codes == "lsh":
            self.register_buffer("code_map", unit_columns(torch.randn(num_heads, width, D)))  # (H, e, D)
        else:
            self.code_map = nn.Parameter(torch.randn(num_heads, width, D) / math.sqrt(width))  # (H, e, D)
        self._loss: torch.Tensor | None = None
        self._diag: dict[str, torch.Tensor] = {}

    def unsupported_reasons(self, q, k, v, key_padding_mask=None):
        reasons = super().unsupported_reasons(q, k, v, key_padding_mask)
        if q.dim() == 4 and (q.shape[1] != self.num_heads or q.shape[-1] != self.head_dim):
            reasons.append(f"SFAWideAttention: built for {self.num_heads} heads of dim {self.head_dim}, "
                           f"got {tuple(q.shape)}")
        if self.impl == "triton":
            for name, value in (("k", self.k), ("v head dim", v.shape[-1])):
                if value & (value - 1):
                    reasons.append(f"SFAWideAttention: impl=triton needs {name}={value} to be a power of two")
        return reasons

    def causal_reasons(self) -> list[str]:
        reasons = []
        if self.mode != "overlap" or self.cap is not None:
            reasons.append(f"needs mode=overlap and cap=null (got mode={self.mode}, cap={self.cap})")
        if self.capacity_factor is not None:
            reasons.append("takes no capacity_factor (a bucket's kept keys would depend on later keys)")
        if self.relax == "soft":
            reasons.append("takes no relax=soft (its relaxed training path attends every key)")
        return reasons

    def _impl(self, device: torch.device, value_dim: int) -> str:
        """auto: posting on the CPU; the Triton bucket kernels on CUDA, measured faster than the posting
        path at every length tried (results/kernels/sfa_wide_explore.csv), unless k or the value head dim is
        not a power of two (the kernels' tl.arange needs one; the posting path takes any)."""
        if self.impl != "auto":
            return self.impl
        powers = all(x & (x - 1) == 0 for x in (self.k, value_dim))
        return "triton" if device.type == "cuda" and powers else "posting"

    def extra_bits(self, length: int) -> int:
        """Sign bits added per table at sequence length ``length`` (``D_grow_from``): round(log2(L / L0)) >= 0."""
        if self.D_grow_from is None or length <= self.D_grow_from:
            return 0
        extra = max(0, round(math.log2(length / self.D_grow_from)))
        spare = self.grow_planes.shape[-1] // self.k
        if extra > spare:
            raise ValueError(f"attn sfa_wide: D_grow_from={self.D_grow_from} at L={length} needs {extra} more sign "
                             f"bits per table, but the code input width {self.grow_planes.shape[1]} leaves "
                             f"{spare} beyond log2(D/k)={self.table_bits} (raise D_grow_from or lower D)")
        return extra

    def num_features(self, length: int) -> int:
        """The code space's size D(L) at sequence length ``length``: D, times 2^extra_bits(L)."""
        return self.D << self.extra_bits(length)

    def on_step(self, step: int, max_steps: int) -> None:
        frac = min(1.0, step / max(1, max_steps))
        self.tau = self.tau_start * (self.tau_end / self.tau_start) ** frac
        if self.bits_start is not None:  # linear in steps, full resolution from bits_anneal of the run on
            rise = (self.table_bits - self.bits_start) * min(1.0, frac / self.bits_anneal)
            self.bits = round(self.bits_start + rise)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, d) -> (B, H, L, e): the input of the last linear map (the MLP's hidden layer, or x)."""
        if self.hidden is None:
            return x
        return torch.nn.functional.gelu(torch.einsum("bhld,hde->bhle", x, self.hidden.to(x.dtype)))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, d) -> (B, H, L, D) code logits."""
        return torch.einsum("bhle,hef->bhlf", self._features(x), self.code_map.to(x.dtype))

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes of x: indices (B, H, L, k) int64 in 0..num_features(L) - 1, values (B, H, L, k), logits
        (B, H, L, D) (None for simhash)."""
        if self.codes == "simhash":
            bits = self.bits if self.training else None  # eval: always every bit
            h = self._features(x)
            idx, values = simhash_codes(h, self.planes, self.k, bits)
            extra = self.extra_bits(x.shape[2])
            if extra:
                idx = grown_simhash_ids(h, self.planes, self.grow_planes, idx, self.k, extra)
            return idx, values, None
        learned_training = self.codes == "learned" and self.training
        if not (learned_training and (self.relax == "gumbel" or self.balance_weight > 0)):
            h = self._features(x)
            with torch.no_grad():
                z = torch.einsum("bhle,hef->bhlf", h, self.code_map.to(h.dtype))
            return (*self._selected_codes(h, z), z)
        z = self._logits(x)
        if self.relax == "gumbel":
            uniform = torch.rand_like(z, dtype=torch.float32).clamp(1e-10, 1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(uniform)).to(z.dtype)
            idx = code_topk((z + self.tau * gumbel).detach(), self.k)
            soft = torch.softmax(z.float() / self.tau + gumbel.float(), dim=-1).gather(-1, idx)
            gate = 1.0 + soft - soft.detach()
            return idx, z.gather(-1, idx) * gate.to(z.dtype), z
        idx = code_topk(z.detach(), self.k)
        return idx, z.gather(-1, idx), z  # the balance loss needs the logits' gradient

    def _selected_codes(self, h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard top-k of the logits z (B, H, L, D) of features h (B, H, L, e); the kept values are recomputed
        from the k selected
        columns of the code map, so autograd keeps (B, H, L, k, e) weights, not the (B, H, L, D) logits
        (same values and gradients as z.gather; 2x faster forward+backward on the CPU, and it frees the
        logits right after the top-k)."""
        with torch.no_grad():
            idx = code_topk(z, self.k)  # (B, H, L, k)
        heads, width = self.code_map.shape[:2]
        rows = (torch.arange(heads, device=idx.device)[:, None, None] * self.D + idx).reshape(-1)
        columns = self.code_map.to(h.dtype).transpose(1, 2).reshape(heads * self.D, width).index_select(0, rows)
        values = (h.unsqueeze(-2) * columns.view(*idx.shape, width)).sum(-1)  # (B, H, L, k)
        return idx, values

    def _balance_loss(self, idx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Switch-style D * sum_f usage_f * mean softmax prob_f, averaged over heads."""
        heads = idx.shape[1]
        flat = idx.transpose(0, 1).reshape(heads, -1)  # (H, tokens * k)
        usage = torch.zeros(heads, self.D, device=z.device).scatter_add_(
            1, flat, torch.ones_like(flat, dtype=torch.float32))
        usage = usage / usage.sum(1, keepdim=True)
        probs = torch.softmax(z.float(), dim=-1).mean(dim=(0, 2))  # (H, D)
        return self.D * (usage * probs).sum(1).mean()

    def _soft_forward(self, q, k, v, key_padding_mask=None):
        """Training with relax=soft: relaxed buckets over every pair (``simhash_soft_attention``)."""
        q_h, k_h = self._features(q), self._features(k)
        out, extras = simhash_soft_attention(q_h, k_h, self.planes, self.k, v, self.scale, self.tau, self.bits,
                                             key_padding_mask, self._capacity(q.shape[2]))
        self.last_path = "soft"
        self._loss = self.balance_weight * extras["share_ratio"] if self.balance_weight > 0 else None
        with torch.no_grad():
            self._diag = {
                "feature_entropy_q": _feature_entropy(extras["q_idx"], self.D),
                "feature_entropy_k": _feature_entropy(extras["k_idx"], self.D),
                "mean_candidates": extras["candidates"].float().mean(),
                "share_ratio": extras["share_ratio"].detach(),
                **self._dropped(extras, q.shape[2]),
            }
        return out

    def _capacity(self, length: int) -> int | None:
        """Keys a bucket keeps at this length (``capacity_factor``), None without a capacity."""
        if self.capacity_factor is None:
            return None
        return capacity_for(length, self.k, self.num_features(length), float(self.capacity_factor))

    def _dropped(self, stats: dict, length: int) -> dict[str, torch.Tensor]:
        """What the cap or the capacity dropped: (query, key, feature) incidences, and key entries (capacity)."""
        total = stats["incidences_total"]
        diag = {"dropped_frac": 1.0 - torch.as_tensor(stats["incidences_kept"]).float() / max(1, int(total))}
        if self.capacity_factor is not None:
            entries = max(1, int(stats["key_entries_total"]))
            diag["key_entries_dropped_frac"] = 1.0 - torch.as_tensor(stats["key_entries_kept"]).float() / entries
            diag["capacity"] = torch.tensor(float(self._capacity(length)))
        return diag

    def forward(self, q, k, v, key_padding_mask=None):
        if self.relax == "soft" and self.training:
            if self.extra_bits(q.shape[2]):
                raise ValueError(f"attn sfa_wide: relax=soft trains at a fixed D; D_grow_from={self.D_grow_from} "
                                 f"would grow it at the training length {q.shape[2]} (set D_grow_from >= it)")
            return self._soft_forward(q, k, v, key_padding_mask)
        impl = self._impl(q.device, v.shape[-1])
        q_idx, q_val, q_logits = self._encode(q)
        k_idx, k_val, k_logits = self._encode(k)
        space = features = self.num_features(q.shape[2])
        if space > self.D:  # a grown space: renumbered per group to what the kernels can index
            q_idx, k_idx, features = relabel_features(q_idx, k_idx)
        out, stats = wide_attention(q_idx, q_val, k_idx, k_val, v, features, self.scale, self.mode, self.cap,
                                    key_padding_mask, impl=impl, capacity=self._capacity(q.shape[2]),
                                    causal=self.causal)
        self.last_path = impl
        self._loss = None
        if self.balance_weight > 0 and self.training and self.codes == "learned":
            both = torch.cat([q_idx, k_idx], dim=2)  # (B, H, 2L, k)
            self._loss = self.balance_weight * self._balance_loss(both, torch.cat([q_logits, k_logits], dim=2))
        with torch.no_grad():
            queries = q.shape[0] * q.shape[1] * q.shape[2]
            self._diag = {
                "feature_entropy_q": _feature_entropy(q_idx, features, space),
                "feature_entropy_k": _feature_entropy(k_idx, features, space),
                "mean_candidates": stats["candidates"] / queries,
                **self._dropped(stats, q.shape[2]),
            }
            if self.D_grow_from is not None:
                self._diag["num_features"] = torch.tensor(float(space))
        return out

    def extra_loss(self) -> torch.Tensor | None:
        return self._loss

    def stats(self) -> dict[str, float]:
        diag = {key: float(value) for key, value in self._diag.items()}
        if (self.codes == "learned" and self.relax == "gumbel") or self.relax == "soft":
            diag["tau"] = float(self.tau)
        if self.bits_start is not None:
            diag["simhash_bits"] = float(self.bits)
        return diag

    def extra_repr(self) -> str:
        return (f"D={self.D}, k={self.k}, codes={self.codes}, relax={self.relax}, mode={self.mode}, "
                f"cap={self.cap}, capacity_factor={self.capacity_factor}, D_grow_from={self.D_grow_from}, "
                f"bits_start={self.bits_start}, train_planes={self.train_planes}, scale={self.scale:.4g}, "
                f"impl={self.impl}")
