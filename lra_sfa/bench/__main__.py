"""``python -m lra_sfa.bench``: the efficiency benchmarks (Hydra app, primary config ``conf/bench.yaml``).

    python -m lra_sfa.bench                                       # sweep: every backend, L = 1K..1M
    python -m lra_sfa.bench bench.attns=[full,sfa,linear] bench.lengths=[1024,4096] bench.batch=2
    python -m lra_sfa.bench bench=lra_table2                      # the LRA paper's Table 2 protocol
    python -m lra_sfa.bench device=cpu bench.lengths=[64,128]     # a CPU smoke run

Every cell is one JSON record (``"kind": "bench"``) in ``out_dir``
(default ``outputs/bench/records``, or ``$LRA_SFA_BENCH_RESULTS``; ``out_dir=results/bench`` publishes); ``make tables``
turns them into ``results/tables/efficiency.md`` and the plots.
Other benchmarks, each a Hydra app with its config under ``conf/``: ``lra_sfa.bench.kernels`` (SFA Triton kernels),
``lra_sfa.bench.baselines``, ``lra_sfa.bench.wide``, ``lra_sfa.bench.overhead``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lra_sfa.cli import exit_on_bad_input

MODES = ("sweep", "lra_table2")


def run_bench(cfg: DictConfig) -> list[dict]:
    """Dispatch on ``bench.mode``; returns the records written."""
    from lra_sfa.bench import common

    mode = cfg.bench.get("mode")
    if mode not in MODES:
        raise ValueError(f"bench.mode={mode!r} must be one of {MODES} (choose with bench=sweep or bench=lra_table2)")
    device = common.resolve_device(str(cfg.device))
    dtype = common.resolve_dtype(str(cfg.dtype), device)
    print(f"bench {mode}: device {common.device_name(device)}, dtype {common.dtype_name(dtype)}, "
          f"records -> {cfg.out_dir}", flush=True)
    if mode == "sweep":
        from lra_sfa.bench.sweep import run_sweep

        return run_sweep(cfg, device, dtype)
    from lra_sfa.bench.table2 import relative_to_full, run_table2

    records = run_table2(cfg, device, dtype)
    print("\nrelative to full (steps/s ratio, memory ratio):")
    for row in relative_to_full(records):
        speed, memory = row["speedup_vs_full"], row["memory_vs_full"]
        ratios = f"{speed:5.2f}x  {memory:5.2f}x" if speed is not None else "-"
        print(f"  {row['attn']:<15} L={row['seq_len']:<6} {row['status']:<11} {ratios}")
    return records


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="bench")
def _app(cfg: DictConfig) -> None:
    with exit_on_bad_input("lra-sfa bench"):
        records = run_bench(cfg)
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    print(f"lra-sfa bench: {len(records)} cells " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
