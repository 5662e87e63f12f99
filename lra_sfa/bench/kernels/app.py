"""``python -m lra_sfa.bench.kernels``: the SFA kernel benchmark (Hydra app, config ``conf/bench_kernels.yaml``).

    python -m lra_sfa.bench.kernels out=$OUT/kernels                      # sweep: L = 1K..64K, d = 64, 128, k = 8
    python -m lra_sfa.bench.kernels bench_kernels=short out=$OUT/kernels  # L = 1K..8K at batch x heads = 256
    python -m lra_sfa.bench.kernels bench_kernels=full dims=[128]         # the whole table, a part per call
    python -m lra_sfa.bench.kernels mode=check out=$OUT/kernels           # float64 checks of every path
    python -m lra_sfa.bench.kernels mode=merge src=DIR                    # a device run's CSVs into results/kernels
    python -m lra_sfa.bench.kernels mode=table                            # results/kernels/README.md's table
    python -m lra_sfa.bench.kernels mode=plot

Modes: ``sweep`` (``sweep.py``, measured by ``protocol.py``), ``check``
(``check.py``), ``merge``, ``table`` and ``plot`` (``table.py``). The
argparse form of earlier versions (``--mode sweep --dims 64``) stops with a
line giving its replacement. Design and tile explorations live in the lab
(``python -m lab.kernel_explore``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from lra_sfa.cli import exit_on_bad_input

MODES = ("sweep", "check", "merge", "table", "plot")
LAB = ("lra_sfa.bench.kernels mode=explore moved to the lab: python -m lab.kernel_explore with the same options "
       "(lab/README.md)")
# the argparse options of earlier versions: those taking a list, then those taking one value
OLD_LISTS = ("dims", "topks", "lengths", "fwd-extra-lengths", "decode-lengths", "ops", "checks")
OLD_VALUES = ("mode", "src", "out", "date", "tokens", "decode-tokens", "rep-ms", "budget-s", "topk-rows",
              "decode-config")


def old_form_message(argv: list[str]) -> str | None:
    """For an argparse-style command line (``--mode sweep --dims 64 128``), one line naming the Hydra command
    that replaced it; None for a Hydra command line."""
    names = [arg[2:].partition("=")[0] for arg in argv if arg.startswith("--")]
    if not any(name in OLD_LISTS + OLD_VALUES for name in names):
        return None
    parts: list[tuple[str, list[str]]] = []
    for arg in argv:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            parts.append((name, [value] if value else []))
        elif parts:
            parts[-1][1].append(arg)
    if ("mode", ["explore"]) in parts:
        return LAB
    keys = []
    for name, values in parts:
        key = name.replace("-", "_")
        if name in OLD_LISTS or name == "decode-config":
            items = [item for value in values for item in value.split(",")]
            keys.append(f"{key}=[{','.join(items)}]")
        else:
            keys.append(f"{key}={' '.join(values)}")
    return (f"python -m lra_sfa.bench.kernels takes Hydra overrides now (conf/bench_kernels.yaml): "
            f"{' '.join(argv)} -> python -m lra_sfa.bench.kernels {' '.join(keys)}")


def run(cfg: DictConfig, device: str = "cuda") -> None:
    """Dispatch on ``cfg.mode``; a failed check or a mode that needs CUDA without it exits with one line."""
    from lra_sfa.bench.kernels.table import plot, write_table

    out = Path(cfg.out)
    if cfg.mode == "explore":
        raise SystemExit(LAB)
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} must be one of {MODES}")
    if cfg.mode == "merge":
        from lra_sfa.bench.kernels.merge import merge

        if not cfg.src:
            raise ValueError("mode=merge needs src=<a folder of benchmark CSVs> (a device run's $OUT)")
        merge(Path(cfg.src), out)
        return
    if cfg.mode == "plot":
        plot(out / "sfa_vs_sdpa.csv", out / "sfa_vs_sdpa.png")
        return
    if cfg.mode == "table":
        write_table(out)
        return
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"lra_sfa.bench.kernels mode={cfg.mode} needs a CUDA device (the SDPA baselines, the "
                         "timings and the compiled kernels are GPU-only)")
    if cfg.mode == "check":
        from lra_sfa.bench.kernels.check import run_checks

        if not run_checks(out, None if cfg.checks is None else list(cfg.checks), device):
            raise SystemExit(f"lra_sfa.bench.kernels: a GPU check failed the DESIGN.md rule "
                             f"(see {out / 'sfa_gpu_checks.csv'})")
        return
    from lra_sfa.bench.kernels.sweep import run_sweep

    run_sweep(cfg, device=device)


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="bench_kernels")
def _app(cfg: DictConfig) -> None:
    with exit_on_bad_input("lra_sfa.bench.kernels"):
        run(cfg)


def main() -> None:
    message = old_form_message(sys.argv[1:])
    if message:
        raise SystemExit(message)
    _app()
