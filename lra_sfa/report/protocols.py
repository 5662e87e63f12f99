"""What each ``lra_*`` protocol prescribes: its experiment file composed now, as plain values.

Shared by the headline (is a run protocol-complete?) and the appendix tables (did a run train
for fewer steps than its protocol?).
"""

from __future__ import annotations

import functools

from omegaconf import OmegaConf

TRAINER_KEYS = ("max_steps", "batch_size", "lr", "schedule", "warmup_steps", "weight_decay", "betas", "eps",
                "grad_clip", "test_weights", "stop_at_val_accuracy")


@functools.cache
def protocol_settings(protocol: str) -> tuple[dict, dict, int] | None:
    """(model, trainer subset, seq_len) of ``experiment=<protocol>`` as plain values, or None."""
    from hydra.errors import MissingConfigException

    from lra_sfa.compose import compose_config

    try:
        cfg = compose_config([f"experiment={protocol}"])
    except MissingConfigException:
        return None
    model = OmegaConf.to_container(cfg.model, resolve=True)
    trainer = {key: OmegaConf.to_container(cfg.trainer, resolve=True).get(key) for key in TRAINER_KEYS}
    return model, trainer, int(cfg.task.seq_len)
