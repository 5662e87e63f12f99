"""Pure tensor functions, one subpackage per op: ``sfa`` (FlashSFA), ``decode`` (sparse-K cache), ``wide``.

``sfa_attention`` is the functional API (re-exported as
``lra_sfa.sfa_attention``). No Hydra and no nn.Module in this package, and
importing it does not import Triton.
"""

from __future__ import annotations

from lra_sfa.kernels._moved import install as _install_moved_modules
from lra_sfa.kernels.sfa import (
    IMPLS,
    check_qkv,
    resolve_impl,
    sfa_attention,
    sfa_chunked,
    sfa_dense_reference,
    sfa_path,
    sparsify,
    topk_support,
)

_install_moved_modules()

__all__ = [
    "IMPLS",
    "check_qkv",
    "resolve_impl",
    "sfa_attention",
    "sfa_chunked",
    "sfa_dense_reference",
    "sfa_path",
    "sparsify",
    "topk_support",
]
