"""``python -m lra_sfa.report``."""

from lra_sfa.report.app import main

main()
