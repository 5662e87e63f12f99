"""``python -m lra_sfa.bench.kernels``: see ``app``."""

from lra_sfa.bench.kernels.app import main

main()
