"""Candidate replacements for ``torch.topk`` on the wide-code logits, kept here until the GPU decides.

Learned wide codes (``attn=sfa_wide codes=learned``) rank every token's D code logits and keep the k
largest (k = 8 or 16 of D = 1024 to 4096), once for q and once for k in every layer. In MQAR step profiles
(``results/throughput/profiles/``) PyTorch's radix top-k is the largest single cost of such a step, about a
quarter of its kernel time, although one pass over the logits moves little memory. Two designs compute the
same selection:

* ``chunked_topk``: plain PyTorch in two stages, the top k of each chunk of ``chunk`` logits, then the top
  k of those D / chunk x k candidates. Exact: a row's k largest values lie among its chunks' k largest.
  Short rows let PyTorch pick its in-register sort instead of the multi-block radix select.
* ``triton_row_topk``: one Triton program per ``BLOCK_R`` rows holds each whole row in registers and takes k
  maxima in turn (the first index of the largest remaining value, then masks it): one read of the logits.

Both return values in descending order, as ``torch.topk(sorted=True)``; where values tie, the Triton kernel
keeps the lowest index (torch.topk leaves the order of ties unspecified, so indices are compared through
the values they select). ``lab.wide_topk_probe`` times them against torch.topk on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def chunked_topk(z: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest of z (..., D) along the last dim, via the top k of each chunk."""
    *lead, width = z.shape
    if width % chunk or chunk < k:
        raise ValueError(f"chunked_topk: chunk {chunk} must divide the last dim {width} and be at least k = {k}")
    values, index = z.reshape(*lead, width // chunk, chunk).topk(k, dim=-1)  # (..., D / chunk, k)
    offsets = torch.arange(0, width, chunk, device=z.device)[:, None]  # (D / chunk, 1)
    values, index = values.flatten(-2), (index + offsets).flatten(-2)  # (..., D / chunk * k)
    best, pick = values.topk(k, dim=-1)
    return best, index.gather(-1, pick)


@triton.jit
def _row_topk_kernel(Z, Values, Index, rows, D: tl.constexpr, K: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    col = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    live = row < rows
    x = tl.load(Z + row[:, None] * D + col[None, :], mask=live[:, None] & (col[None, :] < D),
                other=float("-inf")).to(tl.float32)  # (BLOCK_R, BLOCK_D)
    for j in tl.static_range(K):
        best = tl.max(x, axis=1)  # (BLOCK_R,)
        first = tl.min(tl.where(x == best[:, None], col[None, :], BLOCK_D), axis=1)  # lowest index of the max
        tl.store(Values + row * K + j, best.to(Values.dtype.element_ty), mask=live)
        tl.store(Index + row * K + j, first.to(tl.int64), mask=live)
        x = tl.where(col[None, :] == first[:, None], float("-inf"), x)


def triton_row_topk(z: torch.Tensor, k: int, block_rows: int | None = None,
                    num_warps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, int64 indices), each (..., k), of the k largest of a contiguous z (..., D) along the last dim.
    Rows holding NaN are not supported (a NaN never equals the row's maximum)."""
    *lead, width = z.shape
    if not z.is_contiguous():
        raise ValueError("triton_row_topk: z must be contiguous")
    if not 1 <= k <= width:
        raise ValueError(f"triton_row_topk: k = {k} must lie in 1..{width}")
    flat = z.view(-1, width)
    rows = flat.shape[0]
    values = torch.empty(rows, k, device=z.device, dtype=z.dtype)
    index = torch.empty(rows, k, device=z.device, dtype=torch.int64)
    block_d = triton.next_power_of_2(width)
    block_r = block_rows or max(1, min(16, 4096 // block_d))  # about 4096 logits in registers per program
    _row_topk_kernel[(triton.cdiv(rows, block_r),)](flat, values, index, rows, D=width, K=k, BLOCK_R=block_r,
                                                   BLOCK_D=block_d, num_warps=num_warps)
    return values.view(*lead, k), index.view(*lead, k)
