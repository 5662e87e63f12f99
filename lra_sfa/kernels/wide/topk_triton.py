"""Triton kernel and launcher for ``code_topk`` (``topk.py``): the k largest of each row of code logits.

Each program holds ``BLOCK_R`` whole rows in registers and takes their k maxima in turn: the first index of
the largest remaining value, which it then masks. The logits are read once, where ``torch.topk``'s radix
select makes several passes and launches. Among equal values the lower index comes first; a row holding NaN
is not supported (NaN never equals the row's maximum).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_WIDTH = 8192  # BLOCK_R x next_power_of_2(D) fp32 values live in registers per program
MAX_K = 32


@triton.jit
def _row_topk_kernel(Z, Index, rows, D: tl.constexpr, K: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    # int64 row numbers: rows x D passes 2^31 at real shapes (batch 32 x 4 heads x 4096 tokens x D = 4096 is
    # exactly 2^31), where int32 offsets would wrap and read outside z
    row = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)  # (BLOCK_R,)
    col = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    live = row < rows
    x = tl.load(Z + row[:, None] * D + col[None, :], mask=live[:, None] & (col[None, :] < D),
                other=float("-inf")).to(tl.float32)  # (BLOCK_R, BLOCK_D)
    for j in tl.static_range(K):
        best = tl.max(x, axis=1)  # (BLOCK_R,)
        first = tl.min(tl.where(x == best[:, None], col[None, :], BLOCK_D), axis=1)  # lowest index of the max
        tl.store(Index + row * K + j, first.to(tl.int64), mask=live)
        x = tl.where(col[None, :] == first[:, None], float("-inf"), x)


def triton_row_topk(z: torch.Tensor, k: int, block_rows: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """int64 indices (..., k) of the k largest of z (..., D) along the last dim, largest first."""
    *lead, width = z.shape
    if not 1 <= k <= min(width, MAX_K) or width > MAX_WIDTH:
        raise ValueError(f"code_topk: the kernel takes k in 1..{min(width, MAX_K)} of at most {MAX_WIDTH} logits, "
                         f"got k = {k} of {width}")
    flat = z.contiguous().view(-1, width)  # (rows, D)
    index = torch.empty(flat.shape[0], k, device=z.device, dtype=torch.int64)  # (rows, k)
    block_d = triton.next_power_of_2(width)
    block_r = block_rows or max(1, min(16, 4096 // block_d))  # about 4096 logits in registers per program
    _row_topk_kernel[(triton.cdiv(flat.shape[0], block_r),)](flat, index, flat.shape[0], D=width, K=k,
                                                            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps)
    return index.view(*lead, k)
