"""The schema of a run's config: each key's type and its valid values, in one place.

Dataclasses (``RunConfig`` with ``TaskConfig``, ``ModelConfig``,
``TrainerConfig``) hold the type of every key the runner reads and, in the
field's metadata, its range (``Range``) or its choices. They are registered
in Hydra's ConfigStore as the group ``schema`` (``run``, ``task``, ``model``,
``trainer``), so a config file of one's own may inherit one
(``defaults: [/schema/trainer@_here_, _self_]``) and be checked as Hydra
composes it.

``validate_config`` checks a composed config against them before a run: each
value is assigned to a typed OmegaConf node, so OmegaConf's own conversion
rules decide the type (``'3'`` is the integer 3; ``2.5`` is no integer), and
a ``ValidationError`` becomes one line naming the key, the value and what is
valid. The shipped YAML keeps the values; the schema is open (a key it does
not declare passes unchecked, a declared key absent from the config is not
required), because tasks differ in their keys and a run's config may be built
in Python.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ValidationError


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key (of each item for a list): bounds inclusive unless ``*_open``,
    None = unbounded; ``length`` fixes a list's length; ``hint`` says what to use instead."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None
    hint: str = ""

    def holds(self, value) -> bool:
        if isinstance(value, (list, tuple)):
            return (self.length is None or len(value) == self.length) and all(self.holds(v) for v in value)
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        else:
            text = "finite"
        if self.length is not None:
            text = f"a list of {self.length} numbers, each {text}"
        return text + (f" ({self.hint})" if self.hint else "")


AT_LEAST_0 = Range(low=0)
AT_LEAST_1 = Range(low=1)
POSITIVE = Range(low=0, low_open=True)
FRACTION = Range(low=0, high=1, high_open=True)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def key(valid: Range | tuple | None = None) -> Any:
    """A schema field with no default (the YAML holds the values) and its range or its tuple of choices."""
    if valid is None:
        return field(default=MISSING)
    return field(default=MISSING, metadata={"range" if isinstance(valid, Range) else "choices": valid})


@dataclass
class TaskConfig:
    """Keys common to the tasks (and those of the generated ones); a task's other keys pass unchecked."""

    seq_len: int = key(AT_LEAST_1)
    pooling: str = key()
    data_dir: str | None = key()
    num_train: int = key(AT_LEAST_1)
    num_val: int = key(AT_LEAST_1)
    num_test: int = key(AT_LEAST_1)
    seed: int = key(AT_LEAST_0)
    workers: int | None = key(AT_LEAST_1)
    n_workers: int | None = key(AT_LEAST_1)
    resolution: int = key(AT_LEAST_1)
    min_length: int = key(AT_LEAST_0)
    max_length: int = key(AT_LEAST_1)
    max_depth: int = key(AT_LEAST_1)
    max_args: int = key(Range(low=2))


@dataclass
class ModelConfig:
    """``conf/model/*.yaml``: the encoder's size and numerics (lra_sfa.model.LRAClassifier checks the words)."""

    d_model: int = key(AT_LEAST_1)
    num_heads: int = key(AT_LEAST_1)
    num_layers: int = key(AT_LEAST_1)
    mlp_dim: int = key(AT_LEAST_1)
    qkv_dim: int | None = key(Range(low=1, hint="or null"))
    dropout: float = key(FRACTION)
    attn_dropout: float = key(FRACTION)
    norm_eps: float = key(POSITIVE)
    pos: str = key()
    init: str = key()
    gelu: str = key()
    proj_bias: bool = key()
    padding: str = key()
    dual_head: str = key()
    causal: bool = key()


@dataclass
class TrainerConfig:
    """``conf/trainer/default.yaml``: the training loop (lra_sfa.train)."""

    device: str = key()
    precision: str = key()
    max_steps: int = key(AT_LEAST_1)
    max_seconds: float | None = key(Range(low=0, low_open=True, hint="or null for none"))
    stop_at_val_accuracy: float | None = key(Range(low=0, high=1, low_open=True, hint="or null to train to max_steps"))
    batch_size: int = key(AT_LEAST_1)
    eval_batch_size: int | None = key(Range(low=1, hint="or null for batch_size"))
    eval_every: int = key(AT_LEAST_1)
    test_lengths: list[int] | None = key(AT_LEAST_1)
    log_every: int = key(AT_LEAST_1)
    lr: float = key(POSITIVE)
    schedule: str = key()
    warmup_steps: int = key(AT_LEAST_0)
    weight_decay: float = key(AT_LEAST_0)
    betas: list[float] = key(Range(low=0, high=1, high_open=True, length=2))
    eps: float = key(POSITIVE)
    grad_clip: float | None = key(Range(low=0, low_open=True, hint="the max gradient norm; null for no clipping"))
    timing_warmup_steps: int = key(AT_LEAST_0)
    checkpoint_every: int = key(Range(low=0, hint="0 for none"))
    progress: bool = key()
    test_weights: str = key(("best_val", "final"))
    compile_mode: str = key(COMPILE_MODES)
    # auto | true | false (OmegaConf has no union of bool and str; lra_sfa.placement and the DDP wrap check them)
    find_unused_parameters: Any = key()
    compile: Any = key()
    data_on_device: Any = key()
    concurrent_runs: int = key(AT_LEAST_1)


@dataclass
class RunConfig:
    """``conf/config.yaml``: one training run."""

    seed: int = key(AT_LEAST_0)
    protocol: str = key()
    cell: str | None = key()
    resume: Any = key((True, False, "auto", "force"))
    run_dir: str | None = key()
    results_dir: str | None = key()
    attn_name: str | None = key()
    job_overrides: list[str] | None = key()
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register() -> None:
    """Store the schema in Hydra's ConfigStore (group ``schema``); idempotent."""
    store = ConfigStore.instance()
    for name, node in (("run", RunConfig), ("task", TaskConfig), ("model", ModelConfig), ("trainer", TrainerConfig)):
        store.store(group="schema", name=name, node=node)


register()

KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _words(hint) -> str:
    """What a value of type ``hint`` is, in words (``Optional[...]``: "... or null")."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _words(args[0]) + " or null"
    if typing.get_origin(hint) is list:
        return "a list of integers" if args[0] is int else "a list of numbers"
    return KIND_WORDS.get(hint, "a value")


def _choice_words(choices: tuple) -> str:
    words = [str(choice).lower() if isinstance(choice, bool) else str(choice) for choice in choices]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _is_float_kind(hint) -> bool:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint is float or float in args or (typing.get_origin(hint) is list and args == [float])


def _check_key(node: DictConfig, typed: DictConfig, spec: dataclasses.Field, hint, name: str) -> None:
    """Type, then range or choices, of one present key; a value OmegaConf converted (``'3'``) is written back."""
    if OmegaConf.is_missing(node, spec.name):
        raise ValueError(f"config {name} is missing (???): expected {_words(hint)}")
    raw = node[spec.name]
    raw = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
    try:
        typed[spec.name] = raw
    except ValidationError:
        raise ValueError(f"config {name}={raw!r} has the wrong type: expected {_words(hint)}") from None
    value = typed[spec.name]
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    choices = spec.metadata.get("choices")
    if choices is not None and not any(type(value) is type(choice) and value == choice for choice in choices):
        raise ValueError(f"config {name}={raw!r} must be {_choice_words(choices)}")
    bound = spec.metadata.get("range", Range() if _is_float_kind(hint) else None)
    if value is not None and bound is not None and not bound.holds(value):
        raise ValueError(f"config {name}={raw!r} must be {bound.describe()}")
    if value != raw:
        node[spec.name] = value


def _check_node(node: DictConfig, schema: type, prefix: str) -> None:
    typed = OmegaConf.structured(schema)
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        if spec.name not in node.keys():  # keys() holds ??? values too (``in`` does not)
            continue
        hint = hints[spec.name]
        if dataclasses.is_dataclass(hint):
            child = node[spec.name]
            if not OmegaConf.is_dict(child):
                raise ValueError(f"config {prefix}{spec.name}={child!r} has the wrong type: expected a mapping")
            _check_node(child, hint, f"{prefix}{spec.name}.")
        else:
            _check_key(node, typed, spec, hint, prefix + spec.name)


def validate_config(cfg: DictConfig) -> None:
    """Raise ValueError naming the first key of ``cfg`` whose value has the wrong type, range or choice.

    The one place where config values are checked before a run (NaN and Inf are never valid numbers).
    Values OmegaConf converts to the declared type (a quoted ``'3'`` for an integer) are stored converted.
    """
    _check_node(cfg, RunConfig, "")
