"""The headline accuracy table: protocol-complete runs only, mean ± std over seeds with n.

A run is protocol-complete when it ended ``ok`` at its ``max_steps`` (not cut by a time budget) and
its model, task length and training settings are those its ``protocol`` names: the experiment
``conf/experiment/<protocol>.yaml`` composed now. A setting a record lacks (it predates the option)
counts at the option's default, so an option added later with the old behaviour as its default keeps
old runs complete, and one that a protocol sets otherwise does not. A run that overrode any setting
(fewer steps, another width, another schedule) is exploration, shown in the appendix tables only.
The attention backend's own arguments may differ (they are the thing compared). Each LRA column
reads its canonical protocol; the other ``lra_*`` protocols (the 2020 ListOps config, the
release's Text length, the paper's Retrieval head) get a table of their own, in the same form.
"""

from __future__ import annotations

import functools
import statistics

from omegaconf import OmegaConf

from lra_sfa.markdown import md_table
from lra_sfa.report.load import attn_order
from lra_sfa.report.protocols import TRAINER_KEYS, protocol_settings
from lra_sfa.report.tables import LRA_COLUMNS

CANONICAL = {"listops": "lra_listops", "text": "lra_text", "retrieval": "lra_retrieval", "image": "lra_image",
             "pathfinder": "lra_pathfinder", "pathx": "lra_pathx"}


@functools.cache
def _defaults() -> tuple[dict, dict]:
    """The model constructor's keyword defaults and the default trainer config."""
    import inspect

    from lra_sfa.compose import compose_config
    from lra_sfa.model import LRAClassifier

    model = {name: p.default for name, p in inspect.signature(LRAClassifier.__init__).parameters.items()
             if p.default is not inspect.Parameter.empty}
    return model, OmegaConf.to_container(compose_config([]).trainer, resolve=True)


def protocol_complete(record: dict) -> bool:
    """ok at max_steps, not cut, and trained with the settings of its protocol's experiment file."""
    protocol = str(record.get("protocol") or "")
    if record.get("status") != "ok" or record.get("stopped_by_time_budget") or not protocol.startswith("lra_"):
        return False
    if record.get("steps") != record.get("max_steps") or not isinstance(record.get("model"), dict):
        return False
    expected = protocol_settings(protocol)
    if expected is None:
        return False
    expected_model, expected_trainer, expected_length = expected
    model_defaults, trainer_defaults = _defaults()
    if set(record["model"]) - set(expected_model):  # a model setting the protocol does not know
        return False
    model = {key: record["model"].get(key, model_defaults.get(key)) for key in expected_model}
    trainer = record.get("trainer") if isinstance(record.get("trainer"), dict) else {}
    trainer = {key: trainer.get(key, trainer_defaults.get(key)) for key in TRAINER_KEYS}
    return (model, trainer, record.get("seq_len")) == (expected_model, expected_trainer, expected_length)


def mean_std(values: list[float]) -> str:
    """'36.12 ± 0.48 (n=3)' in percent; a single run has no spread."""
    pct = [100 * value for value in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f} (n=1)"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f} (n={len(pct)})"


def _cells(records: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(protocol, backend) -> test accuracies of the protocol-complete runs."""
    cells: dict[tuple[str, str], list[float]] = {}
    for record in records:
        if protocol_complete(record) and isinstance(record.get("test_accuracy"), (int, float)):
            cells.setdefault((str(record["protocol"]), str(record["attn"])), []).append(float(record["test_accuracy"]))
    return cells


def headline_markdown(records: list[dict]) -> str:
    """The headline matrix (canonical protocols) and the protocol-variant table, as markdown."""
    cells = _cells(records)
    canonical = set(CANONICAL.values())
    backends = sorted({attn for (protocol, attn) in cells if protocol in canonical}, key=attn_order)
    parts = []
    if backends:
        rows = [[attn, *[mean_std(cells[(CANONICAL[c], attn)]) if (CANONICAL[c], attn) in cells else ""
                         for c in LRA_COLUMNS]] for attn in backends]
        parts.append(md_table(["backend", *LRA_COLUMNS.values()], rows))
    else:
        parts.append("No protocol-complete run yet.")
    variants = sorted(((p, a) for (p, a) in cells if p not in canonical), key=lambda pa: (pa[0], attn_order(pa[1])))
    if variants:
        parts.append("Protocol variants (protocol-complete runs):")
        rows = [[protocol, attn, mean_std(cells[(protocol, attn)])] for protocol, attn in variants]
        parts.append(md_table(["protocol", "backend", "test %"], rows))
    return "\n\n".join(parts)
