"""Rich progress bars for training and evaluation: step, loss, best val accuracy, steps/s.

The rate is computed here from the wall clock, not by rich's windowed speed
estimate (which reads 0 until it has samples, so short runs showed
``0.00 steps/s``). It follows the record's ``steps_per_second``: training
steps over training seconds, evaluation passes left out, counted from the
first update (which leaves out the compilation and warm-up of the first
steps, as the record's ``trainer.timing_warmup_steps`` do); before that first
update, the steps since start over the time since start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


class TrainProgress:
    """One bar for the training steps and, while one runs, one for the evaluation batches."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        ) if enabled else None
        self.total = total
        self.task_id = None
        self.enabled = enabled
        self.eval_seconds = 0.0
        self._origin: tuple[int, float, float] | None = None  # (step, clock, eval seconds) the rate counts from
        self._start: tuple[int, float] = (0, 0.0)

    def start(self, step: int) -> None:
        self._start = (step, time.perf_counter())
        if self.progress is not None:
            self.progress.start()
            self.task_id = self.progress.add_task("train", total=self.total, completed=step, info="")

    def rate(self, step: int) -> float | None:
        """Training steps per second (evaluation excluded), or None before any step."""
        now = time.perf_counter()
        origin_step, origin_clock, origin_eval = self._origin or (*self._start, 0.0)
        if self._origin is not None and step == origin_step:  # nothing timed since the first update yet
            origin_step, origin_clock, origin_eval = (*self._start, 0.0)
        seconds = now - origin_clock - (self.eval_seconds - origin_eval)
        steps = step - origin_step
        return steps / seconds if steps > 0 and seconds > 0 else None

    def update(self, step: int, loss: float, val: float) -> None:
        rate = self.rate(step)
        if self._origin is None and step > self._start[0]:
            self._origin = (step, time.perf_counter(), self.eval_seconds)
        if self.progress is not None:
            speed = f"{rate:.2f} steps/s" if rate is not None else "-- steps/s"
            self.progress.update(self.task_id, completed=step,
                                 info=f"loss {loss:.4f}  best val {max(val, 0.0):.3f}  {speed}")

    def track(self, batches: Iterable[T], total: int, label: str) -> Iterator[T]:
        """Yield ``batches`` under a transient bar named ``label``; their time is left out of the rate."""
        begin = time.perf_counter()
        task = self.progress.add_task(label, total=total, info="") if self.progress is not None else None
        try:
            for batch in batches:
                yield batch
                if task is not None:
                    self.progress.advance(task)
        finally:
            if task is not None:
                self.progress.remove_task(task)
            self.eval_seconds += time.perf_counter() - begin

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
