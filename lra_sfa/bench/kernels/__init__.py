"""The SFA kernel benchmark: sweep, GPU check, merge, table and plot modes (``cli``; one module per mode)."""

from lra_sfa.bench.kernels.cli import main, parse_args
from lra_sfa.bench.kernels.rows import COLUMNS, KERNEL_CSV_COLUMNS, KERNEL_KEY, SFA_IMPL, RowWriter

__all__ = ["COLUMNS", "KERNEL_CSV_COLUMNS", "KERNEL_KEY", "SFA_IMPL", "RowWriter", "main", "parse_args"]
