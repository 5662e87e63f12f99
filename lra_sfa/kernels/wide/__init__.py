"""Wide-code SFA: attention only over query-key pairs that share a feature of a D >> d code.

``reference`` (dense, the ground truth), ``plan`` (posting lists), ``posting``
(PyTorch over the lists, any device), ``triton_kernel`` (CUDA or the
interpreter), ``soft`` (the relaxed-bucket training path), ``capacity``
(each bucket keeps its C highest-valued keys), ``topk`` (``code_topk``: learned
codes' top-k, with its Triton kernel in ``topk_triton``) and ``api``
(``wide_attention``). Importing this package does not import Triton.
"""

from lra_sfa.kernels.wide.api import IMPLS, wide_attention
from lra_sfa.kernels.wide.posting import wide_posting_attention
from lra_sfa.kernels.wide.reference import MODES, capped_candidates, wide_dense_reference

__all__ = ["IMPLS", "MODES", "capped_candidates", "wide_attention", "wide_dense_reference", "wide_posting_attention"]
