"""Composing the project's configs from Python (``conf/`` as the package ``lra_sfa.conf``)."""

from __future__ import annotations

from omegaconf import DictConfig


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """``config_name`` composed with ``overrides``, inside a running Hydra app (which already holds
    this config module) or outside one."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=overrides)
    with initialize_config_module("lra_sfa.conf", version_base=None):
        return compose(config_name, overrides=overrides)
