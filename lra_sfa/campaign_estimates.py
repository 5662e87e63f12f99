"""What a campaign cell costs on the device, estimated from the records of cells like it.

A cell's siblings (the same cell but for the seed) take the same time per step; a backend not yet run in an
experiment takes, as a prior, the slowest of that experiment's backends. ``python -m lra_sfa.campaign`` uses the
estimates to add up a dry run's device-minutes and to leave unstarted a cell that a slot's deadline would cut
when its checkpoint could not travel to the next slot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple


def sibling_key(key: str) -> str:
    """A cell key without its seed: cells that differ only in the seed take the same time."""
    return re.sub(r" seed=-?\d+", "", key)


def _experiment_key(key: str) -> str:
    """A cell key without its seed and backend: the prior for a backend not yet run in that experiment."""
    return re.sub(r" attn=\S+", "", sibling_key(key))


class Estimate(NamedTuple):
    """What a cell costs, from its siblings' records: seconds per training step by how many runs shared the
    device (``rates``: (runs, the slowest recorded seconds per step) for each sharing recorded), the seconds
    outside the timed steps as the first run of its kind in a process (``overhead``: data generation,
    compilation, evaluation) and after a sibling ran in that process (``warm_overhead``: the data cache and the
    compiled kernels are reused), and its checkpoint's MiB."""
    rates: tuple[tuple[int, float], ...]
    overhead: float
    warm_overhead: float
    megabytes: float

    def step_seconds(self, concurrent_runs: int = 1) -> float:
        """Seconds per step with ``concurrent_runs`` runs on the device: the rate recorded at that sharing, or
        else the worst case from the others. A rate recorded among c runs is slowed by concurrent_runs / c where
        more share the device (a device-bound model splits it evenly) and not sped up where fewer do (a
        launch-bound one gains nothing from having it alone)."""
        measured = dict(self.rates)
        if concurrent_runs in measured:
            return measured[concurrent_runs]
        return max(seconds * max(1.0, concurrent_runs / runs) for runs, seconds in self.rates)

    def seconds(self, steps: int, warm: bool = False, concurrent_runs: int = 1) -> float:
        """A run of ``steps`` training steps, whole, beside ``concurrent_runs - 1`` others: a cell's own
        ``max_steps``, which its siblings' records may not share (a protocol that changed its length). The
        overhead (evaluation runs on the device too) is slowed like the steps where more runs share the device
        than any record did."""
        overhead = self.warm_overhead if warm else self.overhead
        shared = max(1.0, concurrent_runs / max(runs for runs, _ in self.rates))
        return steps * self.step_seconds(concurrent_runs) + overhead * shared


def cell_estimates(store: Path, work_dir: Path) -> dict[str, Estimate]:
    """Seed-free cell key -> its Estimate, from the records of the store and of the work dir's cut cells that
    name a cell and a training rate; also, as the prior for backends not yet run, the same without the
    backend (the largest over the experiment's cells).

    Step seconds: at the slowest recorded steps/s among the records that shared the device with as many runs
    (``trainer.concurrent_runs``), so a rate measured beside others is never scaled for sharing again.
    Overheads: ``wall_seconds - train_seconds`` (a minute for records without it), the largest of the records
    for ``overhead`` and the smallest for ``warm_overhead``.
    MiB: fp32 weights and AdamW's two moments, 12 bytes a parameter, and the best-validation weights where
    the run tests those (``trainer.test_weights=best_val``), 16; and 5% for the rest of the file.
    """
    from lra_sfa.records import load_records

    records = []
    for folder in (store, work_dir):
        records += load_records(folder)[0] if folder.is_dir() else []
    estimates: dict[str, Estimate] = {}
    for record in records:
        rate, key = record.get("steps_per_second"), record.get("cell")
        if not key or not rate:
            continue
        wall, train = record.get("wall_seconds"), record.get("train_seconds") or 0.0
        overhead = wall - train if wall and wall > train else 60.0  # a resumed run's wall is one segment
        trainer = record.get("trainer") if isinstance(record.get("trainer"), dict) else {}
        per_parameter = 16 if trainer.get("test_weights", "best_val") == "best_val" else 12
        megabytes = 1.05 * per_parameter * (record.get("num_parameters") or 0) / 2**20
        runs = int(trainer.get("concurrent_runs") or 1)
        for group in (sibling_key(key), _experiment_key(key)):
            known = estimates.get(group, Estimate((), 0.0, float("inf"), 0.0))
            rates = dict(known.rates)
            rates[runs] = max(1 / rate, rates.get(runs, 0.0))
            estimates[group] = Estimate(tuple(sorted(rates.items())), max(overhead, known.overhead),
                                        min(overhead, known.warm_overhead), max(megabytes, known.megabytes))
    return estimates


def estimate_for(key: str, estimates: dict) -> Estimate | None:
    """The estimate of the cell with this key: its siblings', or its experiment's (any backend) as the prior,
    or None."""
    return estimates.get(sibling_key(key)) or estimates.get(_experiment_key(key))
