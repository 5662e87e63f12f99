"""SFA decode: new query rows against a sparse-K cache (k values + int8 ids per key, V dense). Imports Triton."""

from lra_sfa.kernels.decode.launcher import cache_bytes_per_token, cache_key_range, pack_k_cache, sfa_decode

__all__ = ["cache_bytes_per_token", "cache_key_range", "pack_k_cache", "sfa_decode"]
