"""Fused top-k packing: rows of q or k -> (values, compact indices, zero-filled codes).

What it computes
    For x of shape (..., D), per row: the ``topk`` entries of largest |x|
    (signs kept) as ``values`` (..., topk) in x's dtype, their feature ids as
    ``indices`` (..., topk) (int8 when D <= 128, else int16), and optionally
    the zero-filled dense code x~ (..., D) that the FlashSFA forward feeds to
    tensor-core ``tl.dot``. One read of x, one write of each output.
    With ``key_range``, also the per-feature max and min of x~ over each group
    of L rows (x (..., L, D), one group per leading index, e.g. per batch*head):
    the key-code range that the forward's bounded softmax offset reads
    (``tiles.key_code_range`` computes the same from x~ in a second pass).

Selection
    fp16 / bf16 (``_topk_pack_keys_kernel``): each entry becomes one unique
    int32 key (|x| bits, then D-1-index, then the sign bit), and each of the
    ``topk`` rounds is a row max and one compare-select; the winning key
    carries index, magnitude and sign. fp32 (``_topk_pack_kernel``): rounds
    of (row max of |x|, lowest index attaining it, mark it taken), about 7
    operations per element per round instead of 3.
    Ties are broken towards the lowest feature index, deterministically;
    torch.topk leaves the order of equal magnitudes unspecified, so on inputs
    with ties at the k-th magnitude the chosen support can differ from the
    reference's while the kept magnitudes are identical (the tests compare
    sorted magnitudes, and use tie-free rows for attention checks). Values come
    out in descending |x| order. NaN inputs are not supported.

Limits
    D a power of two in 16..256 (the attention kernels use 16..128); topk in
    1..D (topk == D is handled by the launcher without a kernel). Any number
    of rows. CUDA, or CPU under TRITON_INTERPRET=1.

Block sizes
    One program takes ROWS_PER_PROGRAM = 4096 // D rows (a 4096-element tile,
    4 warps): large enough for 16-byte row loads, small enough that the k
    selection rounds stay in registers. With ``key_range`` the grid is (row
    blocks of one group, groups), so a program's rows lie in one group (at
    most the next power of two of L rows): it takes the column max / min of
    the code tile it already holds (padding rows of the block excluded) and
    folds them into its group's range with float32 ``tl.atomic_max`` /
    ``tl.atomic_min`` (exact, order-free, also for negative values and under
    the interpreter), into a buffer that starts at -inf / +inf.

Design and why
    The 16-bit path's integer keys make each round two instructions per
    element; float keys on the FP32 pipes and other tile sizes measured
    slower, and torch.topk far slower (results/kernels/NOTES.md). The
    selection rounds, not memory, bound the kernel.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import triton
import triton.language as tl

SUPPORTED_PACK_DIMS = (16, 32, 64, 128, 256)
BLOCK_ELEMS = 4096  # elements per program: 4096 // D rows
WARPS = 4
MAX_ROW_GROUPS = 65535  # key_range puts the row groups (batch*heads) on the grid's second axis, which CUDA caps


@triton.jit
def block_rows(n_rows, BLOCK_R: tl.constexpr):
    """This program's BLOCK_R row ids (int64) in the flat (rows, D) input and whether each is a real row:
    row block program_id(0) of row group program_id(1), whose rows are n_rows consecutive rows."""
    local = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    return tl.program_id(1).to(tl.int64) * n_rows + local, local < n_rows


@triton.jit
def fold_code_range(Range, code, row_ok, cols, D: tl.constexpr):
    """Fold the column max / min of the real rows of a code tile (R, D) into row group program_id(1)'s
    range (rows 0 and 1 of its (2, D) fp32 slice of Range) by atomic max / min."""
    code = code.to(tl.float32)
    base = Range + tl.program_id(1).to(tl.int64) * (2 * D)
    tl.atomic_max(base + cols, tl.max(tl.where(row_ok[:, None], code, float("-inf")), axis=0), sem="relaxed")
    tl.atomic_min(base + D + cols, tl.min(tl.where(row_ok[:, None], code, float("inf")), axis=0), sem="relaxed")


@triton.jit
def _topk_pack_kernel(
    X, Vals, Idx, Dense, Range, n_rows,
    D: tl.constexpr, K: tl.constexpr, K_POW2: tl.constexpr,
    BLOCK_R: tl.constexpr, WRITE_DENSE: tl.constexpr, KEY_RANGE: tl.constexpr,
):
    """Generic path (any float dtype): k rounds of row max, lowest index, mark taken."""
    rows, row_ok = block_rows(n_rows, BLOCK_R)
    cols = tl.arange(0, D)
    slots = tl.arange(0, K_POW2)
    x = tl.load(X + rows[:, None] * D + cols[None, :], mask=row_ok[:, None], other=0.0)
    mag = tl.abs(x.to(tl.float32))
    vals = tl.zeros([BLOCK_R, K_POW2], dtype=tl.float32)
    idxs = tl.zeros([BLOCK_R, K_POW2], dtype=tl.int32)
    for j in tl.static_range(K):
        best = tl.max(mag, axis=1)
        first = tl.min(tl.where(mag == best[:, None], cols[None, :], D), axis=1)
        chosen = cols[None, :] == first[:, None]
        picked = tl.sum(tl.where(chosen, x.to(tl.float32), 0.0), axis=1)
        mag = tl.where(chosen, -1.0, mag)
        vals = tl.where(slots[None, :] == j, picked[:, None], vals)
        idxs = tl.where(slots[None, :] == j, first[:, None], idxs)
    out_mask = row_ok[:, None] & (slots[None, :] < K)
    tl.store(Vals + rows[:, None] * K + slots[None, :], vals.to(Vals.dtype.element_ty), mask=out_mask)
    tl.store(Idx + rows[:, None] * K + slots[None, :], idxs.to(Idx.dtype.element_ty), mask=out_mask)
    if WRITE_DENSE or KEY_RANGE:
        dense = tl.where(mag < 0.0, x, 0.0)
        if WRITE_DENSE:
            tl.store(Dense + rows[:, None] * D + cols[None, :], dense.to(Dense.dtype.element_ty),
                     mask=row_ok[:, None])
        if KEY_RANGE:
            fold_code_range(Range, dense, row_ok, cols, D)


@triton.jit
def entry_keys(x, cols, D: tl.constexpr):
    """(R, D) int32: one unique key per entry of a 16-bit float tile x, (|x| bits << 16) | ((D-1-col) << 8) | sign.

    Keys order by magnitude, then by lower index (D <= 256), so the winner of
    a row max carries its index, magnitude and sign.
    """
    bits = x.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return ((bits & 0x7FFF) << 16) | ((D - 1 - cols[None, :]) << 8) | (bits >> 15)


@triton.jit
def take_largest(key, slots, K: tl.constexpr):
    """K rounds of (row max, mark it taken) on keys (R, D) from ``entry_keys``.

    Returns (keys with every taken entry -1, picked (R, len(slots)) keys in
    descending order).
    """
    picked = tl.zeros([key.shape[0], slots.shape[0]], dtype=tl.int32)
    for j in tl.static_range(K):
        best = tl.max(key, axis=1)
        key = tl.where(key == best[:, None], -1, key)
        picked = tl.where(slots[None, :] == j, best[:, None], picked)
    return key, picked


@triton.jit
def keep_topk(x, K: tl.constexpr, D: tl.constexpr):
    """The zero-filled code of a 16-bit float tile x (R, D): its K largest-|x| entries per row, the rest 0.

    The same keys and rounds as ``topk_pack``, so the same support (ties to
    the lowest index); the FlashSFA forward calls it on each query tile.
    """
    key, _ = take_largest(entry_keys(x, tl.arange(0, D), D), tl.arange(0, 1), K)
    return tl.where(key < 0, x, tl.zeros_like(x))


@triton.jit
def _topk_pack_keys_kernel(
    X, Vals, Idx, Dense, Range, n_rows,
    D: tl.constexpr, K: tl.constexpr, K_POW2: tl.constexpr,
    BLOCK_R: tl.constexpr, WRITE_DENSE: tl.constexpr, KEY_RANGE: tl.constexpr,
):
    """16-bit floats: one unique key per entry (``entry_keys``), then K rounds of one row max and one
    compare-select (``take_largest``); the picked keys decode to index, magnitude and sign."""
    rows, row_ok = block_rows(n_rows, BLOCK_R)
    cols = tl.arange(0, D)
    slots = tl.arange(0, K_POW2)
    x = tl.load(X + rows[:, None] * D + cols[None, :], mask=row_ok[:, None], other=0.0)
    key, picked = take_largest(entry_keys(x, cols, D), slots, K)
    idxs = D - 1 - ((picked >> 8) & 0xFF)
    val_bits = ((picked >> 16) & 0x7FFF) | ((picked & 1) << 15)
    vals = val_bits.to(tl.int16).to(Vals.dtype.element_ty, bitcast=True)
    out_mask = row_ok[:, None] & (slots[None, :] < K)
    tl.store(Vals + rows[:, None] * K + slots[None, :], vals, mask=out_mask)
    tl.store(Idx + rows[:, None] * K + slots[None, :], idxs.to(Idx.dtype.element_ty), mask=out_mask)
    if WRITE_DENSE or KEY_RANGE:
        dense = tl.where(key < 0, x, 0.0)
        if WRITE_DENSE:
            tl.store(Dense + rows[:, None] * D + cols[None, :], dense.to(Dense.dtype.element_ty),
                     mask=row_ok[:, None])
        if KEY_RANGE:
            fold_code_range(Range, dense, row_ok, cols, D)


def index_dtype(head_dim: int) -> torch.dtype:
    """Smallest signed integer type holding feature ids 0..head_dim-1."""
    return torch.int8 if head_dim <= 128 else torch.int16


def _check_pack(x: torch.Tensor, topk: int, key_range: bool) -> None:
    """Raise ValueError naming the value unless topk_pack takes x and topk (and x has an L axis for key_range)."""
    head_dim = x.shape[-1]
    if head_dim not in SUPPORTED_PACK_DIMS:
        raise ValueError(f"topk_pack: head_dim={head_dim} is not one of {SUPPORTED_PACK_DIMS}")
    if not isinstance(topk, int) or not 1 <= topk <= head_dim:
        raise ValueError(f"topk_pack: topk={topk!r} must be an int in 1..head_dim={head_dim}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"topk_pack: dtype {x.dtype} is not float16, bfloat16 or float32")
    if key_range and (x.dim() < 2 or x.shape[-2] < 1):
        raise ValueError(f"topk_pack: key_range needs x of shape (..., L, D) with L >= 1; got {tuple(x.shape)}")
    if key_range and x.numel() // (x.shape[-2] * head_dim) > MAX_ROW_GROUPS:
        raise ValueError(f"topk_pack: key_range takes at most {MAX_ROW_GROUPS} groups of L rows (batch*heads); "
                         f"got {x.numel() // (x.shape[-2] * head_dim)} for x of shape {tuple(x.shape)}")


def _column_range(x: torch.Tensor) -> torch.Tensor:
    """(G, 2, D) fp32 column max (row 0) and min (row 1) of x (G, L, D): ``tiles.key_code_range``, restated
    because tiles imports the kernels that import this module."""
    kmin, kmax = torch.aminmax(x, dim=1)  # (G, D) each
    return torch.stack((kmax, kmin), dim=1).float()


@overload
def topk_pack(x: torch.Tensor, topk: int, write_dense: bool = ..., block_elems: int = ..., warps: int = ...,
              key_range: Literal[False] = ...) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


@overload
def topk_pack(x: torch.Tensor, topk: int, write_dense: bool = ..., block_elems: int = ..., warps: int = ..., *,
              key_range: Literal[True]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]: ...


def topk_pack(x: torch.Tensor, topk: int, write_dense: bool = True, block_elems: int = BLOCK_ELEMS,
              warps: int = WARPS, key_range: bool = False) -> tuple[torch.Tensor, ...]:
    """Top-k by magnitude of each row of x (..., D).

    Returns (values (..., topk) in x.dtype, indices (..., topk) int8/int16,
    dense zero-filled codes (..., D) or None when ``write_dense`` is False).
    With ``key_range``, x is (..., L, D) and a fourth output follows: the
    (G, 2, D) fp32 column max (row 0) and min (row 1) of the codes over each
    group of L rows, G = x.numel() // (L * D) (B*H for keys (B, H, L, D)):
    exactly ``tiles.key_code_range`` of the codes, padding tokens' rows
    included, taken from the tiles the kernel holds (no second pass over
    memory). A flag rather than a second function: the same kernel and
    selection with one output more, and callers that do not ask are unchanged.
    ``block_elems`` (elements per program) and ``warps`` are launch choices
    for benchmarks; every choice gives the same result.
    """
    _check_pack(x, topk, key_range)
    x = x.contiguous()
    head_dim, lead = x.shape[-1], x.shape[:-1]
    n_rows = x.numel() // head_dim
    length = x.shape[-2] if key_range else max(n_rows, 1)  # rows per group: the grid's second axis is the group
    groups = n_rows // length
    if topk == head_dim:
        ids = torch.arange(head_dim, device=x.device, dtype=index_dtype(head_dim))
        packed = (x, ids.expand(*lead, head_dim).contiguous(), (x if write_dense else None))
        return (*packed, _column_range(x.reshape(groups, length, head_dim))) if key_range else packed
    vals = torch.empty(*lead, topk, device=x.device, dtype=x.dtype)
    idx = torch.empty(*lead, topk, device=x.device, dtype=index_dtype(head_dim))
    dense = torch.empty_like(x) if write_dense else vals
    rng = vals  # a placeholder pointer unless key_range
    if key_range:
        rng = torch.full((groups, 2, head_dim), float("inf"), device=x.device)  # (G, 2, D): max row, min row
        rng[:, 0] = float("-inf")
    if n_rows:
        block_r = max(1, block_elems // head_dim)
        if key_range:  # a program's rows lie in one group: no wider than the group
            block_r = min(block_r, triton.next_power_of_2(length))
        kernel = _topk_pack_keys_kernel if x.element_size() == 2 else _topk_pack_kernel
        kernel[(triton.cdiv(length, block_r), groups)](
            x, vals, idx, dense, rng, length, D=head_dim, K=topk, K_POW2=triton.next_power_of_2(topk),
            BLOCK_R=block_r, WRITE_DENSE=write_dense, KEY_RANGE=key_range, num_warps=warps)
    packed = (vals, idx, (dense if write_dense else None))
    return (*packed, rng) if key_range else packed
