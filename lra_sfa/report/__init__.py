"""The report: tables, plots and RESULTS.md derived from run and bench records (``python -m lra_sfa.report``).

load (records and published CSVs, validated) -> headline (protocol-complete cells) and tables (every
run group, published numbers) -> efficiency and kernels (bench records, the kernel CSV) -> extra_tasks
(tasks outside LRA) -> needle and plots (figures) -> app (the command and RESULTS.md). It reads
records; it never imports the benchmarks that write them.
"""

from lra_sfa.report.app import PLOT_FILES, build_report, main, report_config, run_report

__all__ = ["PLOT_FILES", "build_report", "main", "report_config", "run_report"]
