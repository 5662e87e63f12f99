"""Dense softmax attention over a padded batch: three exact engines for ``FullAttention``.

All three compute, for every query i of batch row b (padded queries included),

    out_i = softmax_j(q_i . k_j / sqrt(d)  over the keys j with key_padding_mask[b, j]) v

and give 0 for every query of a row with no real key. They differ in which
kernel runs on the GPU:

``sdpa_masked`` -- SDPA with a boolean ``attn_mask`` (B, 1, 1, L). A mask rules
out the FlashAttention kernel; SDPA picks the memory-efficient kernel, or cuDNN
with the mask turned into an additive bias where cuDNN ranks first. Every key
tile is visited. Runs on any device: the CPU path.

``flex_padded`` -- FlexAttention with a BlockMask built from the padding: key
tiles of ``FLEX_TILE`` holding only padding are dropped, tiles holding only
real keys are full (no mask_mod), tiles mixing both are partial (the mask_mod
reads an int32 validity table). Built in O(B L), never from an L x L mask.

``varlen_attention`` -- FlashAttention's variable-length kernel: the real keys
of each row are packed one row after another (a stable sort of the flattened
mask, so shapes stay static and torch.compile traces it without a host sync),
``cu_seqlens_k`` marks where each row's keys start, and every query keeps its
place (``cu_seqlens_q`` = multiples of L). Padded keys are not visited at all.
The packed buffer keeps the padded keys after the last row's keys, where the
kernel never reads them; a ``where`` drops the gradient it leaves there unset.
A row with no real key gets one of its padded keys, so no row is empty for the
kernel; its output is zeroed afterwards, so its gradients are exactly zero.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from lra_sfa.baselines._engines import (
    FLEX_MAX_HEAD_DIM,
    FLEX_TILE,
    flex_attention_sparse,
    flex_padded_head_dim,
    flex_supported_head_dim,
)

FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256


def zero_empty_rows(out: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Set every query of a batch row with no real key to 0 (not NaN, not a uniform average)."""
    no_keys = ~key_padding_mask.any(-1)  # (B,)
    return out.masked_fill(no_keys[:, None, None, None], 0.0)


def sdpa_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """SDPA with the padding as a boolean attn_mask (see the module docstring)."""
    attn_mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, L), True = attend
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return zero_empty_rows(out, key_padding_mask)


# --------------------------------------------------------------------------- FlexAttention


def _tile_order(bitmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and ids (set tiles first, ascending) of the set key tiles per row, int32; bitmap (B, T)."""
    counts = bitmap.sum(-1, dtype=torch.int32)  # (B,)
    ids = torch.argsort(bitmap.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)  # (B, T)
    return counts, ids


def padding_block_mask(key_padding_mask: torch.Tensor):
    """FlexAttention BlockMask (B, 1, T, T) of a key padding mask (B, L); every query tile sees the same keys."""
    from torch.nn.attention.flex_attention import BlockMask

    B, L = key_padding_mask.shape
    num_tiles = -(-L // FLEX_TILE)
    table = F.pad(key_padding_mask, (0, num_tiles * FLEX_TILE - L))  # (B, T * tile), False beyond L
    tiles = table.view(B, num_tiles, FLEX_TILE)  # (B, T, tile)
    in_range = (torch.arange(num_tiles * FLEX_TILE, device=table.device) < L).view(num_tiles, FLEX_TILE)
    any_real = tiles.any(-1)  # (B, T)
    all_real = (tiles | ~in_range).all(-1)  # (B, T); keys beyond L are out of the kernel's range anyway
    lists = []
    for bitmap in (any_real & ~all_real, all_real):
        counts, ids = _tile_order(bitmap)
        lists.append(counts[:, None, None].expand(B, 1, num_tiles).contiguous())  # (B, 1, T)
        lists.append(ids[:, None, None, :].expand(B, 1, num_tiles, num_tiles).contiguous())  # (B, 1, T, T)
    lookup = table.to(torch.int32)  # an int32 table: a bool lookup is much slower in the kernel

    def mask_mod(b, h, q_idx, kv_idx):
        return lookup[b, kv_idx] > 0

    return BlockMask.from_kv_blocks(*lists, BLOCK_SIZE=FLEX_TILE, mask_mod=mask_mod, seq_lengths=(L, L))


def flex_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor,
                flex=None) -> torch.Tensor:
    """FlexAttention with the padding block mask (see the module docstring).

    ``flex`` is the flex_attention callable; by default the shared compiled
    one, or the plain ``flex_attention`` while torch.compile traces the
    caller (the model's compilation then compiles it in place).
    """
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    block_mask = padding_block_mask(key_padding_mask)
    if D > FLEX_MAX_HEAD_DIM:
        raise ValueError(f"FlexAttention takes head_dim up to {FLEX_MAX_HEAD_DIM}, got {D}")
    if not flex_supported_head_dim(D):  # zero features add nothing to q.k; the scale keeps the real head dim
        padding = (0, flex_padded_head_dim(D) - D)
        q, k, v = (F.pad(t, padding) for t in (q, k, v))  # (B, H, L, P)
    if flex is not None:
        out = flex(q, k, v, block_mask=block_mask, scale=scale)
    elif torch.compiler.is_compiling():
        from torch.nn.attention.flex_attention import flex_attention

        out = flex_attention(q, k, v, block_mask=block_mask, scale=scale)
    else:
        out = flex_attention_sparse(q, k, v, block_mask, scale)
    return zero_empty_rows(out[..., :D], key_padding_mask)


# --------------------------------------------------------------------------- FlashAttention varlen


def pack_real_keys(key_padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each key goes in the packed buffer, the rows' key offsets and which packed slots are used.

    Returns ``order`` (B * L,) int64: flat key index (b * L + j) of each packed
    slot, the used keys of row 0 first, then row 1's, ..., then the unused ones;
    ``cu_seqlens_k`` (B + 1,) int32; ``used`` (B * L,) bool, True on the slots
    below ``cu_seqlens_k[-1]``. A row with no real key uses its first key.
    """
    B, L = key_padding_mask.shape
    empty = ~key_padding_mask.any(-1)  # (B,)
    first = torch.arange(L, device=key_padding_mask.device) == 0  # (L,)
    selected = key_padding_mask | (empty[:, None] & first[None, :])  # (B, L)
    unused = (~selected).flatten().to(torch.int8)  # (B * L,)
    order = torch.argsort(unused, stable=True)  # used keys first, in (row, position) order
    counts = selected.sum(-1, dtype=torch.int32)  # (B,)
    cu_seqlens_k = F.pad(counts.cumsum(0, dtype=torch.int32), (1, 0))  # (B + 1,)
    used = torch.arange(B * L, device=key_padding_mask.device) < cu_seqlens_k[-1]  # (B * L,)
    return order, cu_seqlens_k, used


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                 cu_seqlens_k: torch.Tensor, max_q: int, max_k: int, scale: float) -> torch.Tensor:
    """FlashAttention's variable-length forward (PyTorch's build; autograd gives its backward).

    q (total_q, H, D), k and v (total_k, H, D); rows are delimited by the int32
    cumulative lengths. The op is what PyTorch's nested-tensor SDPA calls.
    """
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, 0.0, False, False, scale=scale
    )[0]
    return out  # (total_q, H, D)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor,
                     kernel=flash_varlen) -> torch.Tensor:
    """Dense attention over the real keys only, through a variable-length kernel (see the module docstring).

    ``kernel`` takes ``(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale)``
    as ``flash_varlen`` does; the tests pass a PyTorch one.
    """
    B, H, L, D = q.shape
    scale = 1.0 / math.sqrt(D)
    if D % 8:  # the kernel takes head dims in multiples of 8; zero features are exact (scale kept)
        padding = (0, 8 * -(-D // 8) - D)
        q, k, v = (F.pad(t, padding) for t in (q, k, v))  # (B, H, L, P)
    P = q.shape[-1]
    order, cu_seqlens_k, used = pack_real_keys(key_padding_mask)
    cu_seqlens_q = torch.arange(B + 1, device=q.device, dtype=torch.int32) * L  # (B + 1,)
    q_flat = q.transpose(1, 2).reshape(B * L, H, P)  # (B * L, H, P), every query in place
    keep = used[:, None, None]  # (B * L, 1, 1)
    k_packed = torch.where(keep, k.transpose(1, 2).reshape(B * L, H, P)[order], 0.0)  # (B * L, H, P)
    v_packed = torch.where(keep, v.transpose(1, 2).reshape(B * L, H, P)[order], 0.0)
    out = kernel(q_flat, k_packed, v_packed, cu_seqlens_q, cu_seqlens_k, L, L, scale)  # (B * L, H, P)
    out = out.view(B, L, H, P).transpose(1, 2)[..., :D]  # (B, H, L, D)
    return zero_empty_rows(out, key_padding_mask)
