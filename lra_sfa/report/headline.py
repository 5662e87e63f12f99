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
A seed that followed its protocol until its loss became NaN (status ``diverged``) is an outcome of
that protocol: its cell says how many diverged beside the n of the seeds averaged.
A cell counts each seed once (its latest record), and runs of one protocol and backend whose attention
arguments differ (``sfa`` at two ``topk``) are separate rows, labelled by the arguments that differ.
A run resumed under another ``max_steps`` than it started with followed no one schedule: not complete.
"""

from __future__ import annotations

import functools
import statistics

from omegaconf import OmegaConf

from lra_sfa.markdown import md_table
from lra_sfa.records import trained_to_end
from lra_sfa.report.load import attn_order, commits_label, latest, variant_labels
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
    """ok, trained to its configured end (``trained_to_end``: max_steps, or the validation accuracy its protocol
    stops at), not cut, and trained with the settings of its protocol's experiment file."""
    if record.get("status") != "ok" or record.get("max_steps_changed_on_resume"):
        return False
    return trained_to_end(record) and follows_lra_protocol(record)


def protocol_diverged(record: dict) -> bool:
    """Trained under its protocol's settings until its loss became NaN or infinite: an outcome of the
    protocol (counted beside the cell's n), not a run to average."""
    return record.get("status") == "diverged" and follows_lra_protocol(record)


def follows_lra_protocol(record: dict) -> bool:
    """The record's model, task length and training settings are those of its ``lra_*`` protocol."""
    protocol = str(record.get("protocol") or "")
    if not protocol.startswith("lra_") or not isinstance(record.get("model"), dict):
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


def mean_std(values: list[float], diverged: int = 0) -> str:
    """'36.12 ± 0.48 (n=3)' in percent; a single run has no spread; '(n=1; 2 diverged)' where seeds of the
    same protocol diverged, and 'diverged (2)' where no seed finished."""
    pct = [100 * value for value in values]
    note = f"; {diverged} diverged" if diverged else ""
    if not pct:
        return f"diverged ({diverged})"
    if len(pct) == 1:
        return f"{pct[0]:.2f} (n=1{note})"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f} (n={len(pct)}{note})"


def _cells(records: list[dict]) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], int],
                                          dict[tuple[str, str], list[dict]]]:
    """(protocol, backend label) -> test accuracies of the protocol-complete runs, one per seed (the latest),
    -> how many seeds of that protocol diverged, and -> the records counted (finished and diverged). The label
    is the backend, with the attention arguments that differ among its runs of that protocol
    (``variant_labels``)."""
    counted = [record for record in records
               if (protocol_complete(record) and isinstance(record.get("test_accuracy"), (int, float)))
               or protocol_diverged(record)]
    labels = variant_labels(counted, lambda record: (str(record.get("protocol")), str(record.get("attn"))))
    seed = lambda record: record["seed"] if isinstance(record.get("seed"), int) else f"record {id(record)}"
    per_seed = latest(counted, lambda record: (str(record.get("protocol")), labels[id(record)], seed(record)))
    cells: dict[tuple[str, str], list[float]] = {}
    diverged: dict[tuple[str, str], int] = {}
    sources: dict[tuple[str, str], list[dict]] = {}
    for (protocol, label, _seed), record in sorted(per_seed.items(), key=lambda item: str(item[0])):
        key = (protocol, label)
        cells.setdefault(key, [])
        sources.setdefault(key, []).append(record)
        if record.get("status") == "diverged":
            diverged[key] = diverged.get(key, 0) + 1
        else:
            cells[key].append(float(record["test_accuracy"]))
    return cells, diverged, sources


def headline_markdown(records: list[dict]) -> str:
    """The headline matrix (canonical protocols) and the protocol-variant table, as markdown."""
    cells, diverged, sources = _cells(records)
    cell = lambda key: mean_std(cells[key], diverged.get(key, 0)) if key in cells else ""
    canonical = set(CANONICAL.values())
    backends = sorted({attn for (protocol, attn) in cells if protocol in canonical}, key=attn_order)
    parts = []
    if backends:
        rows = [[attn, *[cell((CANONICAL[c], attn)) for c in LRA_COLUMNS]] for attn in backends]
        parts.append(md_table(["backend", *LRA_COLUMNS.values()], rows))
    else:
        parts.append("No protocol-complete run yet.")
    if diverged:
        parts.append("n counts the seeds that trained to the protocol's last step; seeds whose loss became NaN "
                     "under the same protocol are counted as diverged and left out of the mean.")
    variants = sorted(((p, a) for (p, a) in cells if p not in canonical), key=lambda pa: (pa[0], attn_order(pa[1])))
    if variants:
        parts.append("Protocol variants (protocol-complete runs):")
        rows = [[protocol, attn, cell((protocol, attn))] for protocol, attn in variants]
        parts.append(md_table(["protocol", "backend", "test %"], rows))
    if sources:
        parts.append("Where each cell's runs come from (seeds counted above, diverged ones included):")
        rows = [[protocol, attn, ", ".join(str(r.get("seed")) for r in runs),
                 ", ".join(sorted({str(r.get("device")) for r in runs})),
                 ", ".join(sorted({str(r.get("date", ""))[:10] for r in runs})), commits_label(runs)]
                for (protocol, attn), runs in sorted(sources.items(), key=lambda kv: (kv[0][0], attn_order(kv[0][1])))]
        parts.append(md_table(["protocol", "backend", "seeds", "device", "dates", "commits"], rows))
    return "\n\n".join(parts)
