"""A rich progress bar for trainers and evaluators (one line: step, time left, and the values that matter)."""

from __future__ import annotations

from typing import Any, Sequence


def progress_bar(transient: bool = False) -> Any:
    """A rich `Progress` with the project's columns: description, bar, done/total, elapsed, time left and a
    free text field ``values`` (the key figures: loss, reward, Dice). Not started; use it as a context manager."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[values]}"), transient=transient)


def progress_callback(title: str, total_steps: int | None, keys: Sequence[str] = ("loss",)) -> Any:
    """A transformers `TrainerCallback` showing a rich progress bar with the latest value of each of `keys`."""
    from rich.progress import Progress
    from transformers import TrainerCallback

    class _Bar(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Progress | None = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
            if state.is_world_process_zero:
                self.bar = progress_bar()
                self.bar.start()
                self.task = self.bar.add_task(title, total=total_steps or state.max_steps, completed=state.global_step, values="")

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if self.bar is not None and logs:
                shown = "  ".join(f"{k.split('/')[1] if k.startswith('rewards/') else k} {logs[k]:.3f}" for k in keys
                                  if isinstance(logs.get(k), (int, float)))
                self.bar.update(self.task, completed=state.global_step, values=shown)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return _Bar()
