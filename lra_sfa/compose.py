"""Composing the project's configs from Python (``conf/`` as the package ``lra_sfa.conf``).

A composed run config names its attention backend in ``attn_name``: the attn
group's choice (``full``, ``sfa``, ``sfa_wide``, ...), which Hydra knows only
while it composes (``hydra.runtime.choices``), and keeps the overrides it was
composed with in ``job_overrides``. Both ways in fill them there:
``compose_config`` below and the ``python -m lra_sfa`` app (for each job of a
multirun too), so neither depends on which Hydra app is running when the
record is written (the campaign composes its cells inside its own app).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from omegaconf import DictConfig, open_dict


def attn_choice(choices: Mapping, overrides: Iterable[str]) -> str | None:
    """The attn group's choice, or None when there is none or the overrides replace ``attn._target_`` (the
    backend is then not the chosen file's: the record names its class, see ``lra_sfa.recording.attn_name``)."""
    if any(str(item).split("=", 1)[0].lstrip("~+") == "attn._target_" for item in overrides):
        return None
    choice = choices.get("attn")
    return str(choice) if choice else None


def name_attn(cfg: DictConfig, choices: Mapping, overrides: Iterable[str]) -> DictConfig:
    """Fill a run config's ``attn_name`` (declared null in conf/config.yaml) from the composition's choices;
    a value given explicitly (``attn_name=mine``) stays. Returns ``cfg``."""
    if "attn_name" in cfg.keys() and cfg.get("attn_name") is None:
        with open_dict(cfg):
            cfg.attn_name = attn_choice(choices, overrides)
    return cfg


def keep_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Fill a run config's ``job_overrides`` (declared null in conf/config.yaml) with the overrides it was
    composed with, which the record lists. A config composed inside another Hydra app (the campaign's cells)
    would otherwise record that app's command line. Returns ``cfg``."""
    if "job_overrides" in cfg.keys() and cfg.get("job_overrides") is None:
        with open_dict(cfg):
            cfg.job_overrides = [str(item) for item in overrides]
    return cfg


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """``config_name`` composed with ``overrides``, inside a running Hydra app (which already holds
    this config module) or outside one; a run config gets its ``attn_name``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from lra_sfa.schema import register

    register()  # the schema in the ConfigStore, for config files that inherit it
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    else:
        with initialize_config_module("lra_sfa.conf", version_base=None):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return keep_overrides(name_attn(cfg, choices, overrides), overrides)


def attn_config(name: str) -> DictConfig:
    """``conf/attn/<name>.yaml`` as the run config composes it (``attn=<name>``): a file that inherits
    another (``defaults: [sfa_wide]``) comes back whole, which a plain YAML load would not give. Detached
    from the run config and open to new keys, as a loaded file is (``attn_args`` merge into it)."""
    from omegaconf import OmegaConf

    return OmegaConf.create(OmegaConf.to_container(compose_config([f"attn={name}"]).attn, resolve=True))
