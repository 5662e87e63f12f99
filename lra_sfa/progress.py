"""A rich progress bar for training: step, loss, best val accuracy, steps/s."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text


class _StepsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0.0:.2f} steps/s")


class TrainProgress:
    def __init__(self, total: int, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  best val {task.fields[val]:.3f}"),
            _StepsPerSecond(), TimeElapsedColumn(),
        ) if enabled else None
        self.total = total
        self.task_id = None
        self.enabled = enabled

    def start(self, step: int) -> None:
        if self.progress is not None:
            self.progress.start()
            self.task_id = self.progress.add_task("train", total=self.total, completed=step,
                                                  loss=float("nan"), val=0.0)

    def update(self, step: int, loss: float, val: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, loss=loss, val=max(val, 0.0))

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
