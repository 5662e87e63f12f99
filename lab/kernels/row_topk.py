"""A PyTorch candidate for the top-k of wide-code logits, beside the kernel the package runs.

``lra_sfa.kernels.wide.topk.code_topk`` ranks learned codes' logits with a Triton kernel on CUDA
(``topk_triton.triton_row_topk``: whole rows in registers, k maxima in turn). ``chunked_topk`` computes the same
selection in plain PyTorch in two stages, the top k of each chunk of ``chunk`` logits, then the top k of
those D / chunk x k candidates (exact: a row's k largest values lie among its chunks' k largest); short rows
let PyTorch pick its in-register sort instead of the multi-block radix select. ``lab.wide_topk_probe`` times
both against ``torch.topk`` on the GPU.
"""

from __future__ import annotations

import torch


def chunked_topk(z: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Indices (..., k) of the k largest of z (..., D) along the last dim, largest first, via each chunk's top k."""
    *lead, width = z.shape
    if width % chunk or chunk < k:
        raise ValueError(f"chunked_topk: chunk {chunk} must divide the last dim {width} and be at least k = {k}")
    values, index = z.reshape(*lead, width // chunk, chunk).topk(k, dim=-1)  # (..., D / chunk, k)
    offsets = torch.arange(0, width, chunk, device=z.device)[:, None]  # (D / chunk, 1)
    values, index = values.flatten(-2), (index + offsets).flatten(-2)  # (..., D / chunk * k)
    return index.gather(-1, values.topk(k, dim=-1).indices)
