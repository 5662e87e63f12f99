"""BigBird (ITC) block-sparse attention: window, global and random blocks.

The sequence is cut into blocks of ``block_size``. Query block a attends key
block c when |a - c| <= (window_blocks - 1) / 2, when a or c is a global block
(``global_blocks``, negative = from the end; first and last by default), or
when c is one of a's ``num_random_blocks`` random blocks. Random blocks are
drawn once per sequence length and head with ``seed`` (outside the window and
the global blocks); they are fixed, not redrawn per step. Exact softmax over
that set; memory O(L * block_size * blocks per row), never L x L.

CUDA: FlexAttention on 128-tiles built from the block bitmap; the mask_mod
only does 1-D lookups by query block or key block (a 2-D bitmap gather per
element ran at 11 useful TFLOP/s on the H200, ../shared/research/device.md).
CPU: the blocked engine with tiles of ``block_size``; global rows densely.
Defaults from LRA: block 64, 3 random blocks.
"""

from __future__ import annotations

import torch

from lra_sfa.baselines._patterns import BigBirdPattern, SparsePattern
from lra_sfa.baselines._sparse_backend import BlockSparseAttention


class BigBirdAttention(BlockSparseAttention):
    """Block-sparse attention: sliding + global + random blocks."""

    def __init__(
        self,
        num_heads: int,
        block_size: int = 64,
        window_blocks: int = 3,
        global_blocks: list[int] | tuple[int, ...] = (0, -1),
        num_random_blocks: int = 3,
        seed: int = 0,
        impl: str = "auto",
    ) -> None:
        super().__init__(impl)
        name = "BigBirdAttention"
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"{name}: block_size must be an int >= 1, got {block_size!r}")
        if not isinstance(window_blocks, int) or window_blocks < 1 or window_blocks % 2 == 0:
            raise ValueError(f"{name}: window_blocks must be an odd int >= 1, got {window_blocks!r}")
        if not isinstance(num_random_blocks, int) or num_random_blocks < 0:
            raise ValueError(f"{name}: num_random_blocks must be an int >= 0, got {num_random_blocks!r}")
        blocks = list(global_blocks)
        if not all(isinstance(b, int) for b in blocks):
            raise ValueError(f"{name}: global_blocks must be a list of int block indices, got {global_blocks!r}")
        self.num_heads = num_heads
        self.block_size = block_size
        self.window_blocks = window_blocks
        self.global_blocks = blocks
        self.num_random_blocks = num_random_blocks
        self.seed = seed
        self.blocked_tile = block_size

    def make_pattern(self, seq_len: int, device: torch.device) -> SparsePattern:
        return BigBirdPattern(
            seq_len,
            device,
            block=self.block_size,
            window_blocks=self.window_blocks,
            global_blocks=self.global_blocks,
            num_random=self.num_random_blocks,
            heads=self.num_heads,
            seed=self.seed,
        )

    def forward(self, q, k, v, key_padding_mask=None):
        if q.dim() == 4 and q.shape[1] != self.num_heads:
            raise ValueError(f"BigBirdAttention: built for num_heads={self.num_heads}, got q with {q.shape[1]} heads")
        return super().forward(q, k, v, key_padding_mask)

    def extra_repr(self) -> str:
        return (
            f"block_size={self.block_size}, window_blocks={self.window_blocks}, global_blocks={self.global_blocks}, "
            f"num_random_blocks={self.num_random_blocks}, seed={self.seed}, impl={self.impl!r}"
        )
