"""Sparse Feature Attention, one chain: reference -> kernels -> launcher -> autograd -> public function.

``reference`` (PyTorch, the float64 ground truth and the CPU path), ``topk_pack``
(the sparsifier kernel), ``triton_fwd`` / ``triton_bwd`` and ``gluon_fwd`` /
``gluon_bwd`` (the kernels), ``tiles`` and ``dispatch`` (layouts and the
Gluon-or-Triton rule), ``launcher``, ``autograd`` (``flash_sfa``) and ``api``
(``sfa_attention``); ``check`` holds the float64 checks tests and benchmarks
share. Importing this package does not import Triton.
"""

from lra_sfa.kernels.sfa.api import IMPLS, check_qkv, resolve_impl, sfa_attention, sfa_path
from lra_sfa.kernels.sfa.reference import sfa_chunked, sfa_dense_reference, sparsify, topk_support

__all__ = ["IMPLS", "check_qkv", "resolve_impl", "sfa_attention", "sfa_chunked", "sfa_dense_reference", "sfa_path",
           "sparsify", "topk_support"]
