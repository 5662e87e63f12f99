"""lra-sfa: a Long Range Arena style harness centred on Sparse Feature Attention."""

from lra_sfa import resolvers  # noqa: F401  (registers ${floordiv:...} for the configs)
from lra_sfa.kernels import sfa_attention

__all__ = ["sfa_attention"]
__version__ = "0.1.0"
