"""``python -m lra_sfa`` / ``lra-sfa``: the Hydra app around ``lra_sfa.train.run``."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from lra_sfa.checkpoint import CheckpointError
from lra_sfa.tasks.base import TaskDataError

CLEAR_ERRORS = (ValueError, TaskDataError, CheckpointError, OSError)


def _summary(record: dict) -> str:
    acc = record.get("test_accuracy")
    sps = record.get("steps_per_second")
    parts = [f"status={record['status']}", f"task={record['task']}", f"attn={record['attn']}",
             f"steps={record['steps']}"]
    parts += [f"test_accuracy={acc:.4f}"] if acc is not None else []
    parts += [f"steps/s={sps:.2f}"] if sps else []
    parts += [f"reason={record['reason']}"] if record.get("reason") else []
    return "lra-sfa: " + " ".join(parts)


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="config")
def _app(cfg: DictConfig) -> dict | None:
    from lra_sfa.train import run  # after Hydra has parsed arguments: fast --help

    hydra_cfg = HydraConfig.get()
    with open_dict(cfg):
        cfg.run_dir = cfg.run_dir or hydra_cfg.runtime.output_dir
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        record = run(cfg)
    except CLEAR_ERRORS as exc:
        print(f"lra-sfa: error: {exc}", file=sys.stderr)
        if multirun:  # one failed job must not stop the sweep
            from lra_sfa.faults import record_failure

            record_failure(cfg, exc)
            return None
        raise SystemExit(2) from None
    except Exception as exc:
        if not multirun:
            raise
        from lra_sfa.faults import record_failure

        record_failure(cfg, exc)
        print(f"lra-sfa: job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    print(_summary(record))
    return record


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
