"""Two exact engines for a ``SparsePattern``: blocked PyTorch and FlexAttention.

Both compute, for every query i,

    out_i = sum_j p_ij v_j,  p_i = softmax_j(q_i . k_j * scale  over keys j with
            allowed(i, j) and key_padding_mask[b, j])

and give 0 (never NaN) for a row with no allowed real key.

``blocked_attention`` (any device, the CPU path): queries in tiles of ``tile``
rows; each query tile gathers only the key tiles its pattern touches (from
``tile_states`` without the global rows) and masks elementwise; global query
rows (Longformer/BigBird) are then computed densely over all keys, O(|G| L).
Memory O(L x touched keys), never L x L. Autograd runs through it.

``flex_attention_sparse`` (CUDA): FlexAttention with a BlockMask built
directly from the tile bitmap (``BlockMask.from_kv_blocks``), never from an
O(L^2) ``create_block_mask``. Full tiles skip the mask; partial tiles evaluate
``allowed`` plus the padding lookup. With a padding mask the block mask has a
batch dimension (tiles that hold only padding are dropped, tiles mixing real
and padded keys become partial). One compiled ``flex_attention``
(``dynamic=True``) is shared by all backends; block masks without padding are
cached per (pattern, batch). Tile 128 (the FlexAttention default): the sm90
backward kernels need 128-multiples (64-tiles fail with NoValidChoicesError).
"""

from __future__ import annotations

import torch

from lra_sfa.baselines._common import masked_softmax_pv
from lra_sfa.baselines._patterns import SparsePattern

FLEX_TILE = 128
_COMPILED_FLEX = None


def _tile_lists(any_: torch.Tensor, dummy: int) -> torch.Tensor:
    """(heads, tiles, S) key-tile ids per query tile, padded with ``dummy``."""
    counts = any_.sum(-1)  # (heads, tiles)
    width = max(1, int(counts.max()))
    order = torch.argsort(any_.to(torch.int8), dim=-1, descending=True, stable=True)[..., :width]
    used = torch.arange(width, device=any_.device) < counts[..., None]
    return torch.where(used, order, torch.full_like(order, dummy))


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: SparsePattern,
    tile: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Exact sparse attention with PyTorch ops on gathered key tiles (see module docstring)."""
    B, H, L, D = q.shape
    num_tiles = -(-L // tile)
    any_, _ = pattern.tile_states(tile, include_global_rows=False)  # (Hp, T, T)
    lists = _tile_lists(any_, dummy=num_tiles)  # (Hp, T, S)
    S = lists.shape[-1]
    pad = (num_tiles + 1) * tile - L  # room for the dummy tile
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(B, H, num_tiles + 1, tile, D)  # (B, H, T+1, t, D)
    vp = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(B, H, num_tiles + 1, tile, v.shape[-1])
    if lists.shape[0] == 1:
        kg, vg = kp[:, :, lists[0]], vp[:, :, lists[0]]  # (B, H, T, S, t, D)
    else:
        heads = torch.arange(H, device=q.device)[:, None, None]
        kg, vg = kp[:, heads, lists], vp[:, heads, lists]  # (B, H, T, S, t, D)
    kg = kg.reshape(B, H, num_tiles, S * tile, D)  # (B, H, T, S*t, D)
    vg = vg.reshape(B, H, num_tiles, S * tile, v.shape[-1])
    qt = torch.nn.functional.pad(q, (0, 0, 0, num_tiles * tile - L)).view(B, H, num_tiles, tile, D)
    scores = (qt @ kg.transpose(-1, -2)) * scale  # (B, H, T, t, S*t)

    q_pos = torch.arange(num_tiles * tile, device=q.device).view(num_tiles, tile)  # (T, t)
    kv_pos = (lists[..., None] * tile + torch.arange(tile, device=q.device)).flatten(-2)  # (Hp, T, S*t)
    heads_idx = torch.arange(lists.shape[0], device=q.device).view(-1, 1, 1, 1)
    ok = pattern.allowed(q_pos.clamp(max=L - 1)[None, :, :, None], kv_pos.clamp(max=L - 1)[:, :, None, :], heads_idx)
    ok = ok & (kv_pos < L)[:, :, None, :]  # (Hp, T, t, S*t)
    ok = ok[None]  # (1, Hp, T, t, S*t)
    if key_padding_mask is not None:
        real = key_padding_mask[:, kv_pos.clamp(max=L - 1)]  # (B, Hp, T, S*t)
        ok = ok & real[:, :, :, None, :]
    out = masked_softmax_pv(scores, ok, vg)  # (B, H, T, t, Dv)
    out = out.reshape(B, H, num_tiles * tile, v.shape[-1])[:, :, :L]  # (B, H, L, Dv)
    rows = pattern.global_rows()
    if rows.numel():
        out = out.index_copy(2, rows, _dense_rows(q, k, v, rows, key_padding_mask, scale))
    return out


def _dense_rows(q, k, v, rows: torch.Tensor, key_padding_mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Rows that attend every key (subject to padding): O(|rows| L)."""
    scores = (q[:, :, rows] @ k.transpose(-1, -2)) * scale  # (B, H, G, L)
    ok = torch.ones(1, 1, 1, k.shape[2], dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        ok = key_padding_mask[:, None, None, :]
    return masked_softmax_pv(scores, ok, v)


# --------------------------------------------------------------------------- FlexAttention


FLEX_MAX_HEAD_DIM = 256


def flex_supported_head_dim(head_dim: int) -> bool:
    """FlexAttention's Triton kernels need a power-of-two head dim of at least 16."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0 and head_dim <= FLEX_MAX_HEAD_DIM


def flex_padded_head_dim(head_dim: int) -> int:
    """The kernel head dim a smaller or in-between one is zero-padded to: the next power of two, at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


def compiled_flex():
    """The one compiled ``flex_attention`` (compiled on first use)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX


def _ordered(bitmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and ids (True first, ascending) of set key tiles per query tile, int32."""
    counts = bitmap.sum(-1, dtype=torch.int32)
    ids = torch.argsort(bitmap.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts, ids


def build_block_mask(pattern: SparsePattern, key_padding_mask: torch.Tensor | None, batch: int):
    """BlockMask (batch, heads, tiles, tiles) from the pattern's tile bitmap and the key padding.

    Tiles holding only padding are dropped; tiles mixing real and padded keys
    are partial, so the mask_mod (pattern plus an int32 padding lookup) runs
    there. Without padding the mask_mod has no lookup for it. The lookup is
    costly (a bool table made the windowed forward an order of magnitude
    slower; results/kernels/NOTES.md), so the table is int32.
    """
    from torch.nn.attention.flex_attention import BlockMask

    valid, (any_real, all_real) = key_validity(key_padding_mask, batch, pattern)
    any_, full = pattern.tile_states(FLEX_TILE, include_global_rows=True)  # (Hp, T, T)
    any_b = any_[None] & any_real[:, None, None, :]  # (B, Hp, T, T)
    full_b = full[None] & all_real[:, None, None, :]
    kv_num, kv_ids = _ordered(any_b & ~full_b)
    full_num, full_ids = _ordered(full_b)
    L = pattern.seq_len
    mask_mod = pattern.mask_mod(None if key_padding_mask is None else valid.to(torch.int32))
    return BlockMask.from_kv_blocks(
        kv_num, kv_ids, full_num, full_ids, BLOCK_SIZE=FLEX_TILE, mask_mod=mask_mod, seq_lengths=(L, L)
    )


def key_validity(
    key_padding_mask: torch.Tensor | None, batch: int, pattern: SparsePattern
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(B, table_len) key validity (False beyond L) and per flex tile (any real, all real), each (B, T)."""
    L, device = pattern.seq_len, pattern.device
    valid = torch.zeros(batch, pattern.table_len, dtype=torch.bool, device=device)
    valid[:, :L] = True if key_padding_mask is None else key_padding_mask
    num_tiles = -(-L // FLEX_TILE)
    in_range = (torch.arange(num_tiles * FLEX_TILE, device=device) < L).view(num_tiles, FLEX_TILE)
    tiles = valid[:, : num_tiles * FLEX_TILE].view(batch, num_tiles, FLEX_TILE)  # (B, T, tile)
    return valid, (tiles.any(-1), (tiles | ~in_range).all(-1))


FLEX_RECOMPILE_LIMIT = 64  # compiled variants of flex_attention kept (shapes, mask_mods, strides, grad mode)


def flex_attention_sparse(q, k, v, block_mask, scale: float) -> torch.Tensor:
    """Run the compiled FlexAttention with a prepared block mask; never its unfused fallback.

    Each new block-mask shape, mask_mod, stride pattern or grad mode compiles
    one more variant. Past torch.compile's recompile limit, dynamo would run
    flex_attention eagerly, which builds the full L x L score matrix: that
    happened once in a GPU sweep (128 GiB asked for at L = 64K). The limit
    is raised here for this call, and hitting it is a clear error instead.
    """
    import torch._dynamo

    limit = max(int(torch._dynamo.config.recompile_limit), FLEX_RECOMPILE_LIMIT)
    try:
        with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
            return compiled_flex()(q, k, v, block_mask=block_mask, scale=scale)
    except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
        raise RuntimeError(
            f"FlexAttention: torch.compile's recompile limit ({limit}) was hit for flex_attention; its eager "
            "fallback would build the L x L score matrix, so it is refused. Call torch._dynamo.reset() between "
            "shapes, or raise torch._dynamo.config.recompile_limit"
        ) from exc
