"""What the kernel benchmark times: SFA and SDPA calls on random inputs.

The sweep times these closures by ``protocol`` (``triton.testing.do_bench``,
interleaved repeats). ``time_ms`` (queued CUDA events, as ``do_bench``) stays
for the lab's explorations, which time one candidate at a time.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.bench import timing
from lra_sfa.kernels.sfa.api import sfa_attention
from lra_sfa.kernels.sfa.autograd import flash_sfa

time_ms = partial(timing.time_ms, queued=True)
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa2": SDPBackend.FLASH_ATTENTION}
DEVICE = "cuda"


def shape_for(length: int, tokens: int, max_heads: int = 16) -> tuple[int, int]:
    """(batch, heads) with batch * heads * length = tokens (at least one head)."""
    heads = max(1, min(max_heads, tokens // length))
    return max(1, tokens // (length * heads)), heads


def random_qkv(batch: int, heads: int, length: int, dim: int, dtype: torch.dtype, seed: int,
               device: str | torch.device = DEVICE) -> list[torch.Tensor]:
    """q, k, v: (batch, heads, length, dim) standard normal, from a generator seeded with ``seed``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, device=device, dtype=dtype, generator=gen) for _ in range(3)]


def sdpa_call(backend: str, q, k, v, grad_out=None):
    """A closure running SDPA on one backend; with grad_out, forward and backward."""
    def run():
        with sdpa_kernel([BACKENDS[backend]]):
            if grad_out is None:
                with torch.no_grad():
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(grad_out)
    return run


def sfa_call(q, k, v, topk: int, grad_out=None, impl: str = "auto"):
    """A closure running ``sfa_attention(impl=impl)`` (top-k included), what a model runs; with grad_out,
    forward and backward. impl="kernels" calls the FlashSFA kernels (``flash_sfa``, Gluon or Triton as
    dispatch picks) whatever ``sfa_attention``'s own dispatch would choose."""
    attend = (lambda *t: flash_sfa(*t, topk, topk)) if impl == "kernels" else (
        lambda *t: sfa_attention(*t, topk, topk, impl=impl))

    def run():
        if grad_out is None:
            with torch.no_grad():
                return attend(q, k, v)
        attend(q, k, v).backward(grad_out)
    return run


def torch_topk_codes(x: torch.Tensor, topk: int, scatter: bool = True) -> torch.Tensor:
    """torch.topk on |x| (and, with ``scatter``, a 0/1 code tensor built from it): the torch baseline."""
    indices = torch.topk(x.abs(), topk, dim=-1).indices
    return torch.zeros_like(x).scatter_(-1, indices, 1.0) if scatter else indices


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)
