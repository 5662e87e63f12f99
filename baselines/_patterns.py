"""Token-level sparsity patterns shared by the windowed, Longformer, BigBird and SFA-window backends.

A pattern says which (query, key) pairs may attend. It answers the question
at two granularities:

* ``allowed(q_idx, kv_idx, h_idx)``: an elementwise predicate on broadcasting
  integer tensors. The same function is the FlexAttention ``mask_mod`` on CUDA
  and the element mask of the blocked PyTorch path, so both paths compute one
  function.
* ``tile_states(tile)``: per (query tile, key tile) pair, whether any pair in
  the tile may attend and whether every pair may. Computed from ranges and
  small block tables, never from an L x L grid, so it costs
  O((L / tile)^2) (and O(heads * (L / block)^2) for BigBird).

A "full" tile must be exactly full; a tile reported "any" but not "full" is
always safe (the element mask is evaluated there). Lookup tables are padded to
``table_len`` positions so that masks evaluated on the rounded-up last tile
never index out of bounds.

Patterns are non-causal, except the band's one-sided form (``causal``), and
symmetric in nothing in particular: global rows
(queries that attend everything) are listed by ``global_rows`` so that the
blocked path can compute them densely instead of gathering every tile.
"""

from __future__ import annotations

import torch

TABLE_ROUND = 1024  # lookup tables cover round_up(L, 1024) positions


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _tile_bounds(seq_len: int, tile: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last in-range position of every tile."""
    num_tiles = -(-seq_len // tile)
    starts = torch.arange(num_tiles, device=device) * tile
    ends = torch.clamp(starts + tile, max=seq_len) - 1
    return starts, ends


def _tile_any_all(flags: torch.Tensor, seq_len: int, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile: does any / does every in-range position have ``flags`` set."""
    num_tiles = -(-seq_len // tile)
    padded = torch.zeros(num_tiles * tile, dtype=torch.bool, device=flags.device)
    in_range = torch.zeros_like(padded)
    padded[:seq_len] = flags[:seq_len]
    in_range[:seq_len] = True
    padded = padded.view(num_tiles, tile)  # (tiles, tile)
    in_range = in_range.view(num_tiles, tile)  # (tiles, tile)
    return padded.any(-1), (padded | ~in_range).all(-1)


class SparsePattern:
    """Base class: an attention pattern over ``seq_len`` tokens."""

    heads: int = 1  # 1: the same pattern for every head
    causal: bool = False  # True: no query attends a later key

    def __init__(self, seq_len: int, device: torch.device) -> None:
        if seq_len < 1:
            raise ValueError(f"{type(self).__name__}: seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.device = torch.device(device)
        self.table_len = round_up(seq_len, TABLE_ROUND)

    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor, h_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def global_rows(self) -> torch.Tensor:
        """Sorted query positions that attend every key (long, on ``device``)."""
        raise NotImplementedError

    def tile_states(self, tile: int, include_global_rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(any, full), each (heads, tiles, tiles) bool."""
        raise NotImplementedError

    def mask_mod(self, valid: torch.Tensor | None):
        """FlexAttention mask_mod: ``allowed``, and ``valid[b, kv] > 0`` ((B, table_len) int32) when given.

        The kernel evaluates it on every element of a partial tile, so it is
        arithmetic wherever it can be: sizes are Python ints (one compiled
        kernel per configuration), and tensor lookups are limited to the
        padding table and what cannot be computed (random blocks, scattered
        global tokens): table lookups made the forward an order of magnitude
        slower than the arithmetic band (results/kernels/NOTES.md); tables
        are int32.
        """
        raise NotImplementedError


class BandGlobalPattern(SparsePattern):
    """|q - kv| <= radius, or q global, or kv global (windowed, Longformer, SFA-window).

    Global tokens that form a prefix {0, .., g-1} (the CLS default) are tested
    arithmetically; any other set goes through an int32 lookup table. With
    ``causal`` the band is one-sided, 0 <= q - kv <= radius (the query and the
    ``radius`` keys before it), and there are no global tokens.
    """

    def __init__(self, seq_len: int, device: torch.device, radius: int, global_tokens: list[int],
                 causal: bool = False) -> None:
        super().__init__(seq_len, device)
        if radius < 0:
            raise ValueError(f"window radius must be >= 0, got {radius}")
        if causal and global_tokens:
            raise ValueError(f"a causal band takes no global tokens (a global token attends later keys); got "
                             f"{global_tokens}")
        self.radius_value = int(radius)
        self.causal = causal
        positions = sorted({p + seq_len if p < 0 else p for p in global_tokens})
        bad = [p for p in global_tokens if not -seq_len <= p < seq_len]
        if bad:
            raise ValueError(f"global token positions {global_tokens} out of range for sequence length {seq_len}")
        self.is_global = torch.zeros(self.table_len, dtype=torch.bool, device=self.device)
        if positions:
            self.is_global[torch.tensor(positions, device=self.device)] = True
        self.global_prefix = len(positions) if positions == list(range(len(positions))) else None
        self.global_table = None if self.global_prefix is not None else self.is_global.to(torch.int32)

    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor, h_idx: torch.Tensor) -> torch.Tensor:
        if self.causal:
            return causal_band_allowed(q_idx, kv_idx, self.radius_value)
        return band_global_allowed(q_idx, kv_idx, self.radius_value, self.global_prefix, self.global_table)

    def global_rows(self) -> torch.Tensor:
        return torch.nonzero(self.is_global[: self.seq_len]).flatten()

    def mask_mod(self, valid: torch.Tensor | None):
        radius, prefix, table = self.radius_value, self.global_prefix, self.global_table

        if self.causal and valid is None:

            def band_global_mask(b, h, q_idx, kv_idx):
                return causal_band_allowed(q_idx, kv_idx, radius)

        elif self.causal:

            def band_global_mask(b, h, q_idx, kv_idx):
                return causal_band_allowed(q_idx, kv_idx, radius) & (valid[b, kv_idx] > 0)

        elif valid is None:

            def band_global_mask(b, h, q_idx, kv_idx):
                return band_global_allowed(q_idx, kv_idx, radius, prefix, table)

        else:

            def band_global_mask(b, h, q_idx, kv_idx):
                return band_global_allowed(q_idx, kv_idx, radius, prefix, table) & (valid[b, kv_idx] > 0)

        return band_global_mask

    def tile_states(self, tile: int, include_global_rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        starts, ends = _tile_bounds(self.seq_len, tile, self.device)  # rows: query tiles, columns: key tiles
        if self.causal:  # q - kv over a tile pair spans [q start - kv end, q end - kv start]
            low, high = starts[:, None] - ends[None, :], ends[:, None] - starts[None, :]  # (tiles, tiles)
            return ((high >= 0) & (low <= self.radius_value))[None], ((low >= 0) & (high <= self.radius_value))[None]
        gap = torch.maximum(starts[None, :] - ends[:, None], starts[:, None] - ends[None, :])  # (tiles, tiles)
        span = torch.maximum(ends[:, None] - starts[None, :], ends[None, :] - starts[:, None])  # (tiles, tiles)
        any_ = gap.clamp(min=0) <= self.radius_value
        full = span <= self.radius_value
        g_any, g_all = _tile_any_all(self.is_global, self.seq_len, tile)
        any_ = any_ | g_any[None, :]
        full = full | g_all[None, :]
        if include_global_rows:
            any_ = any_ | g_any[:, None]
            full = full | g_all[:, None]
        return any_[None], full[None]  # (1, tiles, tiles)


def causal_band_allowed(q_idx: torch.Tensor, kv_idx: torch.Tensor, radius: int) -> torch.Tensor:
    """The one-sided band 0 <= q - kv <= radius."""
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= radius)


def band_global_allowed(
    q_idx: torch.Tensor, kv_idx: torch.Tensor, radius: int, prefix: int | None, table: torch.Tensor | None
) -> torch.Tensor:
    """The band-plus-global predicate; ``prefix``: globals are {0..prefix-1}, else ``table`` (int32) lists them."""
    ok = (q_idx - kv_idx).abs() <= radius
    if prefix:
        ok = ok | (q_idx < prefix) | (kv_idx < prefix)
    elif table is not None:
        ok = ok | (table[q_idx] > 0) | (table[kv_idx] > 0)
    return ok


class BigBirdPattern(SparsePattern):
    """BigBird-ITC on ``block`` x ``block`` tiles: window blocks, global blocks, random blocks.

    Query block a attends key block c if |a - c| <= window radius, a or c is a
    global block, or c is one of a's ``num_random`` random blocks (drawn per
    head with a fixed seed, outside a's window and the global blocks where
    enough such blocks exist). Global blocks attend everything.
    """

    def __init__(
        self,
        seq_len: int,
        device: torch.device,
        block: int,
        window_blocks: int,
        global_blocks: list[int],
        num_random: int,
        heads: int,
        seed: int,
    ) -> None:
        super().__init__(seq_len, device)
        self.block, self.num_random, self.heads = block, num_random, heads
        self.num_blocks = -(-seq_len // block)
        self.block_radius = (window_blocks - 1) // 2
        table_blocks = -(-self.table_len // block)
        gblocks = [b + self.num_blocks if b < 0 else b for b in global_blocks]
        bad = [raw for b, raw in zip(gblocks, global_blocks) if not 0 <= b < self.num_blocks]
        if bad:
            raise ValueError(
                f"global_blocks {global_blocks} out of range: sequence length {seq_len} has "
                f"{self.num_blocks} blocks of {block}"
            )
        self.is_global_block = torch.zeros(table_blocks, dtype=torch.bool, device=self.device)
        if gblocks:
            self.is_global_block[torch.tensor(gblocks, device=self.device)] = True
        self.random_blocks = self._draw_random(table_blocks, seed).to(torch.int32)  # (heads, table_blocks, r)
        self.globals = _split_global_blocks(sorted(set(gblocks)), self.num_blocks, block, self.is_global_block)

    def _draw_random(self, table_blocks: int, seed: int) -> torch.Tensor:
        """Per head and query block, ``num_random`` distinct key blocks, preferring ones not yet attended."""
        n = self.num_blocks
        out = torch.arange(table_blocks).view(1, table_blocks, 1).repeat(self.heads, 1, max(1, self.num_random))
        if self.num_random == 0:
            return out.to(self.device)
        gen = torch.Generator().manual_seed(seed)
        blocks = torch.arange(n)
        taken = (blocks[:, None] - blocks[None, :]).abs() <= self.block_radius  # (n, n)
        gmask = self.is_global_block[:n].cpu()
        taken = taken | gmask[None, :] | gmask[:, None]
        noise = torch.rand(self.heads, n, n, generator=gen) + taken.float()  # taken blocks sort last
        picks = noise.topk(min(self.num_random, n), dim=-1, largest=False).indices  # (heads, n, r')
        out[:, :n, : picks.shape[-1]] = picks
        if picks.shape[-1] < self.num_random:
            out[:, :n, picks.shape[-1] :] = picks[..., :1]
        return out.to(self.device)

    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor, h_idx: torch.Tensor) -> torch.Tensor:
        return bigbird_allowed(
            q_idx, kv_idx, h_idx, self.block, self.block_radius, self.globals, self.random_blocks, self.num_random
        )

    def global_rows(self) -> torch.Tensor:
        positions = torch.arange(self.seq_len, device=self.device)
        return positions[self.is_global_block[positions // self.block]]

    def mask_mod(self, valid: torch.Tensor | None):
        block, radius, globals_, rand, num_random = (
            self.block,
            self.block_radius,
            self.globals,
            self.random_blocks,
            self.num_random,
        )

        if valid is None:

            def bigbird_mask(b, h, q_idx, kv_idx):
                return bigbird_allowed(q_idx, kv_idx, h, block, radius, globals_, rand, num_random)

        else:

            def bigbird_mask(b, h, q_idx, kv_idx):
                ok = bigbird_allowed(q_idx, kv_idx, h, block, radius, globals_, rand, num_random)
                return ok & (valid[b, kv_idx] > 0)

        return bigbird_mask

    def block_bitmap(self, include_global_rows: bool = True) -> torch.Tensor:
        """(heads, blocks, blocks) bool: which key blocks each query block attends."""
        n = self.num_blocks
        blocks = torch.arange(n, device=self.device)
        bitmap = ((blocks[:, None] - blocks[None, :]).abs() <= self.block_radius)[None].repeat(self.heads, 1, 1)
        gmask = self.is_global_block[:n]
        bitmap |= gmask[None, None, :]
        if include_global_rows:
            bitmap |= gmask[None, :, None]
        if self.num_random:
            rand = self.random_blocks[:, :n, : self.num_random]  # (heads, n, r)
            bitmap.scatter_(-1, rand, True)
        return bitmap

    def tile_states(self, tile: int, include_global_rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        bitmap = self.block_bitmap(include_global_rows).float()  # (heads, n, n)
        starts, ends = _tile_bounds(self.seq_len, tile, self.device)
        first, last = starts // self.block, ends // self.block
        blocks = torch.arange(self.num_blocks, device=self.device)
        overlap = ((blocks[None, :] >= first[:, None]) & (blocks[None, :] <= last[:, None])).float()  # (tiles, n)
        counts = overlap @ bitmap @ overlap.T  # (heads, tiles, tiles): attended block pairs per tile pair
        per_tile = overlap.sum(-1)  # (tiles,)
        return counts > 0, counts == per_tile[:, None] * per_tile[None, :]


def _split_global_blocks(blocks: list[int], num_blocks: int, block: int, is_global: torch.Tensor) -> tuple:
    """(first, last_start, table): blocks < first and positions >= last_start are global; the rest via ``table``.

    ``last_start`` is a 0-dim int32 tensor (it depends on the length; a tensor
    keeps one compiled kernel for all lengths). ``table`` (int32 per block) is
    None unless some global block is neither in the leading nor in the trailing run.
    """
    first = 0
    while first in blocks:
        first += 1
    last = num_blocks
    while last - 1 in blocks and last - 1 >= first:
        last -= 1
    middle = [b for b in blocks if first <= b < last]
    last_start = torch.tensor(last * block, dtype=torch.int32, device=is_global.device)
    table = is_global.to(torch.int32) if middle else None
    return first, last_start, table


def bigbird_allowed(
    q_idx: torch.Tensor,
    kv_idx: torch.Tensor,
    h_idx: torch.Tensor,
    block: int,
    radius: int,
    globals_: tuple,
    random_blocks: torch.Tensor,
    num_random: int,
) -> torch.Tensor:
    """The BigBird predicate: arithmetic on block ids, lookups only for random (and scattered global) blocks."""
    first, last_start, table = globals_
    q_block, kv_block = q_idx // block, kv_idx // block
    ok = (q_block - kv_block).abs() <= radius
    ok = ok | (q_idx >= last_start) | (kv_idx >= last_start)
    if first:
        ok = ok | (q_block < first) | (kv_block < first)
    if table is not None:
        ok = ok | (table[q_block] > 0) | (table[kv_block] > 0)
    for r in range(num_random):
        ok = ok | (kv_block == random_blocks[h_idx, q_block, r])
    return ok


def dense_pattern_mask(pattern: SparsePattern) -> torch.Tensor:
    """(heads, L, L) bool of ``allowed``: for tests at small L only."""
    positions = torch.arange(pattern.seq_len, device=pattern.device)
    heads = torch.arange(pattern.heads, device=pattern.device)
    return pattern.allowed(positions[None, :, None], positions[None, None, :], heads[:, None, None])

