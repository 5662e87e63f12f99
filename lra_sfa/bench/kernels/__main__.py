"""``python -m lra_sfa.bench.kernels``: see ``cli``."""

from lra_sfa.bench.kernels.cli import main

main()
