"""``python -m lra_sfa`` / ``lra-sfa``: the Hydra app around ``lra_sfa.train.run``.

Single run: a clear error (bad value, unusable checkpoint, unwritable folder,
bad data) is one line on stderr and exit code 2. Multirun (``-m``): a job that
fails gets an ``error`` record in its folder and in the results store, and
the sweep goes on. Under torchrun every rank runs this app; ranks other than
0 write no Hydra files and print nothing but errors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from lra_sfa.checkpoint import CheckpointError
from lra_sfa.tasks.base import TaskDataError

CLEAR_ERRORS = (ValueError, TaskDataError, CheckpointError, OSError)
LAUNCHER_PLUGINS = {  # launcher choice prefix -> (plugin module, pip name)
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "lra_joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "lra_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def _summary(record: dict) -> str:
    acc = record.get("test_accuracy")
    sps = record.get("steps_per_second")
    parts = [f"status={record['status']}", f"task={record['task']}", f"attn={record['attn']}",
             f"steps={record['steps']}"]
    parts += [f"world_size={record['world_size']}"] if record.get("world_size", 1) > 1 else []
    parts += [f"test_accuracy={acc:.4f}"] if acc is not None else []
    parts += [f"steps/s={sps:.2f}"] if sps else []
    parts += [f"reason={record['reason']}"] if record.get("reason") else []
    return "lra-sfa: " + " ".join(parts)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="config")
def _app(cfg: DictConfig) -> dict | None:
    from lra_sfa.compose import keep_overrides, name_attn
    from lra_sfa.train import run  # after Hydra has parsed arguments: fast --help

    hydra_cfg = HydraConfig.get()
    with open_dict(cfg):
        cfg.run_dir = cfg.run_dir or hydra_cfg.runtime.output_dir
    name_attn(cfg, hydra_cfg.runtime.choices, hydra_cfg.overrides.task)
    keep_overrides(cfg, hydra_cfg.overrides.task)
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
    if _is_main_rank():
        print(_summary(record))
    if record["status"] == "oom" and record.get("world_size", 1) > 1:
        # One rank out of memory leaves the others waiting in a collective: end this process now so that
        # torchrun stops them (rank 0 has written the record; an OOM on another rank is reported here only).
        print(f"lra-sfa: error: rank {os.environ.get('RANK', '0')} {record['reason']}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)
    return record


def _arg_value(argv: list[str], key: str) -> str | None:
    values = [arg.split("=", 1)[1] for arg in argv if arg.split("=", 1)[0].lstrip("+") == key and "=" in arg]
    return values[-1] if values else None


def _check_output_root(argv: list[str]) -> str | None:
    """Why Hydra could not create its output folder, or None (checked before Hydra tries, which would trace)."""
    multirun = "-m" in argv or "--multirun" in argv
    key, default = ("hydra.sweep.dir", "multirun") if multirun else ("hydra.run.dir", "outputs")
    target = Path((_arg_value(argv, key) or default).split("${", 1)[0] or ".").expanduser().absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}={target} is not writable: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{key}={target} is not writable: no write permission on {existing}"
    return None


def _check_launcher(argv: list[str]) -> str | None:
    """A missing launcher plugin, named with the install command."""
    choice = _arg_value(argv, "hydra/launcher")
    if not choice:
        return None
    for prefix, (module, package) in LAUNCHER_PLUGINS.items():
        if choice.startswith(prefix):
            try:
                __import__(module)
            except ImportError:
                return (f"hydra/launcher={choice} needs the {package} plugin: "
                        f"pip install 'lra-sfa[launchers]' (or pip install {package})")
    return None


def _quiet_other_ranks(argv: list[str]) -> list[str]:
    """Under torchrun, ranks > 0 write no .hydra/ files or logs and create no folder of their own."""
    if _is_main_rank():
        return argv
    extra = {"hydra.output_subdir": "null", "hydra/job_logging": "disabled", "hydra/hydra_logging": "disabled",
             "hydra.run.dir": "."}
    return argv + [f"{key}={value}" for key, value in extra.items() if _arg_value(argv, key) is None]


def group_options(group: str) -> str:
    """The options of a config group, from the installed ``lra_sfa.conf`` folder (for the --help template)."""
    from importlib.resources import files

    folder = files("lra_sfa.conf").joinpath(*group.split("/"))
    return ", ".join(sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")))


def main() -> None:
    from omegaconf import OmegaConf

    from lra_sfa.schema import register as register_schema

    OmegaConf.register_new_resolver("lra_sfa_options", group_options, replace=True)
    register_schema()  # a config file may inherit /schema/<group> (lra_sfa.schema)
    argv = sys.argv[1:]
    if "--help" not in argv and "-h" not in argv and "--cfg" not in argv and "-c" not in argv:
        problem = _check_launcher(argv) or _check_output_root(argv)
        if problem:
            print(f"lra-sfa: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    sys.argv = sys.argv[:1] + _quiet_other_ranks(argv)
    _app()


if __name__ == "__main__":
    main()
