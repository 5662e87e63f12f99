"""The SFA kernel benchmark: sweep, GPU check, merge, table and plot modes (``app``; one module per mode)."""

from lra_sfa.bench.kernels.app import main, old_form_message, run
from lra_sfa.bench.kernels.rows import COLUMNS, KERNEL_KEY, SFA_IMPL, RowWriter

__all__ = ["COLUMNS", "KERNEL_KEY", "SFA_IMPL", "RowWriter", "main", "old_form_message", "run"]
