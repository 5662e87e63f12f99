"""``python -m lra_sfa.campaign campaign=<name>``: run a list of cells to protocol completion.

A cell is one training run: an experiment, an attention backend, a seed and optional overrides
(``conf/campaign/<name>.yaml``). The campaign skips every cell whose finished record is already in
the store, so running it again continues where the last slot stopped. A record is finished when the
run trained to its configured end (``max_steps``, or the evaluation that reached
``trainer.stop_at_val_accuracy``) or ended as oom / unsupported / diverged, which a rerun would
repeat; a run cut by the deadline is recorded as cut (``stopped_by_time_budget``), keeps its
checkpoint in ``work_dir/<cell>`` and resumes from it next time, so it is never mistaken for a
finished one. Records name their cell (``cell``) and the commit; a tree without ``.git`` must pass
``LRA_SFA_GIT_COMMIT``. With ``concurrency`` > 1, that many cells run at once on the device, each in its own
process (for small models, which leave a GPU idle); their records say ``trainer.concurrent_runs``,
which also counts ``other_jobs``, processes beside the campaign on the device (a GPU test suite in
the same slot), so the report never reads a shared device's steps/s as a run's own.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lra_sfa.campaign_estimates import cell_estimates, estimate_for, sibling_key
from lra_sfa.cli import exit_on_bad_input
from lra_sfa.records import trained_to_end

FINAL_STATUSES = ("oom", "unsupported", "diverged")  # outcomes a rerun of the same cell would repeat
OUTCOME_KINDS = ("finished_before", "ran", "cut", "not_started", "to_run", "error")


@dataclass(frozen=True)
class Outcome:
    """What became of a cell in this invocation: ``kind`` (``OUTCOME_KINDS``: finished before, ran to its end
    here, cut by the deadline, not started because it would be cut and lose its checkpoint, left to run, or an
    error), the line the campaign prints, and for a dry run's ``to_run`` the estimated device-seconds."""

    kind: str
    text: str
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTCOME_KINDS:
            raise ValueError(f"campaign outcome kind {self.kind!r} is not one of {OUTCOME_KINDS}")

    @property
    def left(self) -> bool:
        """The cell still has to run in a later invocation."""
        return self.kind in ("to_run", "cut", "not_started", "error")


@dataclass(frozen=True)
class Cell:
    experiment: str
    attn: str
    seed: int
    overrides: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The cell's identity in records: its overrides as one command line."""
        return " ".join([f"experiment={self.experiment}", f"attn={self.attn}", f"seed={self.seed}", *self.overrides])

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.key.replace("experiment=", "").replace("attn=", ""))


def expand_cells(spec, attn_overrides=None) -> list[Cell]:
    """The campaign YAML's ``cells`` list, one Cell per (entry, attn, seed); ValueError naming a bad entry.

    ``attn_overrides`` (the YAML's optional ``attn_overrides``, backend -> overrides) holds a backend's settings
    for the whole campaign (e.g. a wide-code SFA size): they follow the entry's own overrides in every cell of
    that backend, so the cell keys of entries that spelled them out themselves stay the same."""
    attn_overrides = {str(attn): tuple(str(item) for item in items) for attn, items in (attn_overrides or {}).items()}
    cells = []
    for index, entry in enumerate(spec):
        missing = [key for key in ("experiment", "attns", "seeds") if key not in entry]
        if missing:
            raise ValueError(f"campaign.cells[{index}] lacks {missing}; each cell needs experiment, attns and seeds")
        overrides = tuple(str(item) for item in entry.get("overrides", []))
        for attn in entry["attns"]:
            for seed in entry["seeds"]:
                cells.append(Cell(str(entry["experiment"]), str(attn), int(seed),
                                  overrides + attn_overrides.get(str(attn), ())))
    unused = sorted(set(attn_overrides) - {cell.attn for cell in cells})
    if unused:
        raise ValueError(f"campaign.attn_overrides names {unused}, which no cell runs; the cells' backends are "
                         f"{sorted({cell.attn for cell in cells})}")
    by_slug: dict[str, Cell] = {}
    for cell in cells:  # a run dir holds one cell's checkpoint: two cells in one would resume each other's runs
        other = by_slug.setdefault(cell.slug, cell)
        if other.key != cell.key:
            raise ValueError(f"campaign.cells: '{other.key}' and '{cell.key}' share the run dir name {cell.slug!r} "
                             "(they differ only in characters a directory name drops); write one differently")
    return cells


def is_finished(record: dict) -> bool:
    """A record that no rerun of its cell should replace. Out of memory beside other cells
    (``trainer.concurrent_runs`` > 1) is not final: alone, the cell may fit."""
    trainer = record.get("trainer") if isinstance(record.get("trainer"), dict) else {}
    if record.get("status") == "oom" and int(trainer.get("concurrent_runs") or 1) > 1:
        return False
    if record.get("status") in FINAL_STATUSES:
        return True
    return record.get("status") == "ok" and trained_to_end(record)


def finished_cells(store: Path) -> dict[str, list[dict]]:
    """Cell key -> its finished records, from the store."""
    from lra_sfa.records import load_records

    records, _ = load_records(store) if store.is_dir() else ([], [])
    finished: dict[str, list[dict]] = {}
    for record in records:
        if record.get("cell") and is_finished(record):
            finished.setdefault(record["cell"], []).append(record)
    return finished


def _finished_as_configured(cell: Cell, cfg: DictConfig, records: list[dict]) -> dict | None:
    """The record among ``records`` (the cell's finished ones) trained to the ``max_steps`` the cell composes to
    under this campaign's overrides, or None: a short trial of the same cell (``overrides=[trainer.max_steps=30]``)
    never stands for the protocol run."""
    if not records:
        return None
    max_steps = int(_cell_config(cell, cfg, None).trainer.max_steps)
    return next((record for record in reversed(records) if record.get("max_steps") == max_steps), None)


def _cannot_finish(cell: Cell, cfg: DictConfig, estimates: dict, seconds_left: float | None,
                   concurrent_runs: int = 1, warm: bool = False) -> Outcome | None:
    """Why the cell is not started in this slot, or None: it would be cut, and its checkpoint is larger than
    what the next slot gets back (``checkpoint_travel_mb``), so the time would be lost. ``warm``: a sibling
    (the same cell but for the seed) ran before it in this process.

    With ``concurrent_runs`` cells sharing the device, the estimate is the siblings' rate at that sharing where
    one was recorded, else the worst case (``Estimate.step_seconds``): a cell lost to a cut costs more than one
    left for the next slot."""
    travel_mb = cfg.get("checkpoint_travel_mb")
    estimate = estimate_for(cell.key, estimates)
    if seconds_left is None or travel_mb is None or estimate is None:
        return None
    seconds = estimate.seconds(_steps_left(cell, cfg), warm, concurrent_runs)
    if seconds <= seconds_left or estimate.megabytes <= float(travel_mb):
        return None
    return Outcome("not_started", f"not started: needs about {seconds:.0f} s, {seconds_left:.0f} s left, "
                                  f"checkpoint ~{estimate.megabytes:.0f} MiB")


def _to_run(cell: Cell, cfg: DictConfig, estimates: dict) -> Outcome:
    """A dry run's outcome for an unfinished cell, with its seconds where its siblings' records give an estimate
    (at their recorded rates, slower where they shared the device; ``main`` adds them up)."""
    estimate = estimate_for(cell.key, estimates)
    if estimate is None:
        return Outcome("to_run", "to run (no estimate yet)")
    seconds = estimate.seconds(_steps_left(cell, cfg))
    return Outcome("to_run", f"to run (about {seconds:.0f} s)", seconds)


def _steps_left(cell: Cell, cfg: DictConfig) -> int:
    """The training steps the cell has still to run: its composed ``max_steps``, less those of the cut run in its
    run dir that resumes (a checkpoint and a record there)."""
    steps = int(_cell_config(cell, cfg, None).trainer.max_steps)
    run_dir = Path(cfg.work_dir) / cell.slug
    if (run_dir / "checkpoint.pt").is_file() and (run_dir / "record.json").is_file():
        done = json.loads((run_dir / "record.json").read_text())
        steps -= min(int(done.get("steps") or 0), steps)
    return steps


def _quoted(key: str, value) -> str:
    """``key='value'``: a value Hydra's override grammar takes whole (a path with ``~``, spaces or ``=``)."""
    text = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, str(value))  # backslashes before a quote or the
    return f"{key}='" + text.replace("'", "\\'") + "'"  # end are escapes in the grammar: doubled; quotes escaped


def _cell_config(cell: Cell, cfg: DictConfig, seconds_left: float | None, concurrent_runs: int = 1) -> DictConfig:
    from lra_sfa.compose import compose_config

    overrides = [f"experiment={cell.experiment}", f"attn={cell.attn}", f"seed={cell.seed}", *cell.overrides,
                 *cfg.overrides, _quoted("cell", cell.key), _quoted("run_dir", Path(cfg.work_dir) / cell.slug),
                 _quoted("results_dir", cfg.store), _quoted("paths.cache_dir", cfg.paths.cache_dir), "resume=auto",
                 f"trainer.checkpoint_every={int(cfg.checkpoint_every)}", "trainer.progress=false",
                 f"trainer.concurrent_runs={concurrent_runs}"]
    if seconds_left is not None:
        overrides.append(f"trainer.max_seconds={max(1.0, seconds_left):.0f}")
    return compose_config(overrides)


def run_campaign(cfg: DictConfig) -> list[tuple[Cell, Outcome]]:
    """Run every unfinished cell in order (``concurrency`` at a time) until done or past the deadline; returns
    (cell, outcome) rows in the campaign's order."""
    from lra_sfa.records import git_commit

    if git_commit() == "unknown":
        raise ValueError("the campaign's records must name their commit: no .git here, so set LRA_SFA_GIT_COMMIT")
    cells = expand_cells(cfg.campaign.cells, cfg.campaign.get("attn_overrides"))
    done = finished_cells(Path(cfg.store))
    deadline = time.time() + 60 * float(cfg.deadline_minutes) if cfg.deadline_minutes else None
    estimates = cell_estimates(Path(cfg.store), Path(cfg.work_dir))
    outcomes: dict[Cell, Outcome] = {}
    pending = []
    for cell in cells:
        record = _finished_as_configured(cell, cfg, done.get(cell.key, []))
        if record is not None:
            outcomes[cell] = Outcome("finished_before",
                                     f"finished before ({record['status']}, test {record.get('test_accuracy')})")
        elif cfg.dry_run:
            outcomes[cell] = _to_run(cell, cfg, estimates)
        else:
            pending.append(cell)
    concurrency = cfg.get("concurrency", 1)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be an integer of at least 1 "
                         "(the cells run at once on the device)")
    other_jobs = cfg.get("other_jobs", 0)
    if not isinstance(other_jobs, int) or other_jobs < 0:
        raise ValueError(f"other_jobs={other_jobs} must be an integer of at least 0 "
                         "(processes beside the campaign on the same device)")
    if concurrency == 1 or len(pending) < 2:
        ran: set[str] = set()
        for cell in pending:
            outcomes[cell] = _run_cell(cell, cfg, estimates, deadline, 1 + other_jobs,
                                       warm=sibling_key(cell.key) in ran)
            if outcomes[cell].kind not in ("not_started", "to_run"):
                ran.add(sibling_key(cell.key))
                estimates = cell_estimates(Path(cfg.store), Path(cfg.work_dir))  # with this cell's record
    else:
        outcomes.update(_run_concurrently(pending, cfg, estimates, deadline, concurrency, other_jobs))
    return [(cell, outcomes[cell]) for cell in cells]


def _run_concurrently(cells: list[Cell], cfg: DictConfig, estimates: dict, deadline: float | None,
                      concurrency: int, other_jobs: int = 0) -> dict[Cell, Outcome]:
    """Run ``cells`` in order, ``concurrency`` at a time, each in a fresh (spawned) process on the same device.

    Small models leave most of a GPU idle (the step is launch-bound), so several at once finish more cells
    per slot; each record says how many ran together (``trainer.concurrent_runs``, with the ``other_jobs``
    beside the campaign), and the report takes training speed only from runs that had the device alone. A
    process, not a thread, per run: each run owns its CUDA context, compile caches and random state.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # no interpolation left to resolve there
    with ProcessPoolExecutor(max_workers=concurrency, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {cell: pool.submit(_run_cell, cell, plain, estimates, deadline, concurrency + other_jobs)
                   for cell in cells}
        return {cell: future.result() for cell, future in futures.items()}


def _run_cell(cell: Cell, cfg: DictConfig, estimates: dict, deadline: float | None, concurrent_runs: int,
              warm: bool = False) -> Outcome:
    """Run one cell (unless the deadline is near or it would be cut and lose its checkpoint); its outcome.
    ``warm``: a sibling ran before it in this process (see ``Estimate``)."""
    from lra_sfa.train import run

    seconds_left = None if deadline is None else deadline - time.time()
    if seconds_left is not None and seconds_left < 60:
        return Outcome("to_run", "to run")
    skip = _cannot_finish(cell, cfg, estimates, seconds_left, concurrent_runs, warm)
    if skip:
        return skip
    import torch

    torch._dynamo.reset()  # each cell compiles afresh: past the recompile limit a cell would run eagerly unseen
    try:
        record = run(_cell_config(cell, cfg, seconds_left, concurrent_runs))
    except Exception as exc:  # one broken cell (a bad override, a checkpoint that no longer fits) stops only itself
        traceback.print_exc()
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return Outcome("error", f"error (not finished; retried next time): {type(exc).__name__}: {first_line}")
    if record.get("stopped_by_time_budget"):
        return _cut_outcome(record, Path(cfg.work_dir) / cell.slug, cfg.get("checkpoint_travel_mb"))
    kind = "ran" if record["status"] in ("ok", *FINAL_STATUSES) else "error"  # an error record is retried
    return Outcome(kind, f"{record['status']}, test {record.get('test_accuracy')}")


def _cut_outcome(record: dict, run_dir: Path, travel_mb: float | None) -> Outcome:
    """What happens to a cell the deadline cut: it resumes from its checkpoint, unless the checkpoint is larger
    than what travels to the next slot (``checkpoint_travel_mb``), where it restarts."""
    cut = f"cut at step {record['steps']} of {record['max_steps']}"
    checkpoint = run_dir / "checkpoint.pt"
    megabytes = checkpoint.stat().st_size / 2**20 if checkpoint.is_file() else 0.0
    if travel_mb is not None and megabytes > float(travel_mb):
        return Outcome("cut", f"{cut} (its {megabytes:.0f} MiB checkpoint does not travel: the next slot restarts it)")
    return Outcome("cut", f"{cut} (resumes from its checkpoint)")


def _print_table(outcomes: list[tuple[Cell, Outcome]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="campaign")
    for column in ("experiment", "attn", "seed", "overrides", "outcome"):
        table.add_column(column)
    for cell, outcome in outcomes:
        table.add_row(cell.experiment, cell.attn, str(cell.seed), " ".join(cell.overrides), outcome.text)
    Console().print(table)


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="campaign")
def main(cfg: DictConfig) -> None:
    with exit_on_bad_input("lra-sfa campaign"):
        outcomes = run_campaign(cfg)
    _print_table(outcomes)
    left = sum(outcome.left for _, outcome in outcomes)
    print(f"{len(outcomes) - left} of {len(outcomes)} cells finished" + (f"; {left} left" if left else ""))
    if cfg.dry_run and left:
        seconds = [outcome.seconds for _, outcome in outcomes if outcome.seconds is not None]
        unknown = sum(outcome.kind == "to_run" and outcome.seconds is None for _, outcome in outcomes)
        print(f"the {len(seconds)} with an estimate: about {sum(seconds) / 60:.0f} device-minutes one at a time, at "
              "their siblings' recorded rates" + (f"; {unknown} without one (no record of their experiment yet)"
                                                  if unknown else ""))


if __name__ == "__main__":
    main()
