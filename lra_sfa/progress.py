"""Training throughput and the rich progress bars that show it.

:class:`StepClock` holds the one definition of training speed: training
steps over training seconds, timed from ``trainer.timing_warmup_steps``
(compilation and warm-up left out) with every evaluation paused out. The bar
shows it and the record keeps it as ``steps_per_second``, so the bar's last
reading is the record's number. The rate is computed from the wall clock,
not by rich's windowed speed estimate (which reads 0 until it has samples,
so short runs showed ``0.00 steps/s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


class StepClock:
    """Training seconds and steps, counted while the clock runs.

    ``sync`` (the device's synchronize) runs before each reading of the clock
    that starts or stops a timed segment, so queued GPU work is counted in the
    segment that launched it.
    """

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self.seconds = 0.0  # closed timed segments
        self.steps = 0  # steps taken while running
        self._since: float | None = None  # start of the open segment
        self._begun = time.perf_counter()
        self._untimed_steps = 0

    @property
    def running(self) -> bool:
        return self._since is not None

    def resume(self) -> None:
        if self._since is None:
            self.sync()
            self._since = time.perf_counter()

    def pause(self) -> bool:
        """Close the open segment; returns whether one was open (so the caller knows to resume)."""
        if self._since is None:
            return False
        self.sync()
        self.seconds += time.perf_counter() - self._since
        self._since = None
        return True

    def step(self) -> None:
        if self.running:
            self.steps += 1
        else:
            self._untimed_steps += 1

    def rate(self) -> float | None:
        """Timed steps per timed second; before any timed step, steps over the time since the clock was made
        (so a short run never reads 0 steps/s); None before any step."""
        if self.steps:
            seconds = self.seconds + (time.perf_counter() - self._since if self._since is not None else 0.0)
            return self.steps / seconds if seconds > 0 else None
        elapsed = time.perf_counter() - self._begun
        return self._untimed_steps / elapsed if self._untimed_steps and elapsed > 0 else None


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

    def start(self, step: int) -> None:
        if self.progress is not None:
            self.progress.start()
            self.task_id = self.progress.add_task("train", total=self.total, completed=step, info="")

    def update(self, step: int, loss: float, val: float, rate: float | None) -> None:
        """Show ``step``, the loss, the best val accuracy and ``rate`` (a :meth:`StepClock.rate`)."""
        if self.progress is not None:
            speed = f"{rate:.2f} steps/s" if rate is not None else "-- steps/s"
            self.progress.update(self.task_id, completed=step,
                                 info=f"loss {loss:.4f}  best val {max(val, 0.0):.3f}  {speed}")

    def track(self, batches: Iterable[T], total: int, label: str) -> Iterator[T]:
        """Yield ``batches`` under a transient bar named ``label``."""
        task = self.progress.add_task(label, total=total, info="") if self.progress is not None else None
        try:
            for batch in batches:
                yield batch
                if task is not None:
                    self.progress.advance(task)
        finally:
            if task is not None:
                self.progress.remove_task(task)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
