"""Terminal output: rich progress bars on stderr, quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator


class _Task:
    def __init__(self, progress: Any, task_id: Any):
        self._progress = progress
        self._id = task_id

    def update(self, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._id, completed=completed)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)


class Progress:
    """One bar per stage. `add` returns a task with `update(completed)` and `advance(n)`."""

    def __init__(self, progress: Any = None):
        self._progress = progress

    def add(self, label: str, total: int, completed: int = 0) -> _Task:
        if self._progress is None:
            return _Task(None, None)
        return _Task(self._progress, self._progress.add_task(label, total=total,
                                                             completed=completed))


@contextmanager
def progress_bars(enabled: bool | None = None) -> Iterator[Progress]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield Progress(None)
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)

    columns = (TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with RichProgress(*columns, console=Console(stderr=True)) as bars:
        yield Progress(bars)
