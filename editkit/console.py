"""Terminal output: progress for long work, and the run's summary table.

On a terminal each stage gets a rich bar (steps, elapsed, ETA, and fields such as the
training loss). When stderr is not a terminal (nohup, CI, `| tee log`), each task prints a
plain line instead: one when it starts, one at a steady interval while it runs
(`EDITKIT_PROGRESS_EVERY` seconds, default 30) and one when it ends, so a log shows how far
the run got and how long it has left.

It also keeps the model libraries' advisory chatter (their own progress bars, deprecation
notices, optional backend notices) off the user's terminal; `EDITKIT_DEBUG=1` leaves it on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

DEFAULT_INTERVAL = 30.0


def duration(seconds: float | None) -> str:
    """Seconds as people read them: 0.4 s, 12 s, 3 min 05 s, 2 h 07 min."""
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def field_text(fields: dict[str, Any]) -> str:
    """`loss 0.1234, lr 1e-04`: floats to four significant digits, the rest as given."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key} {value}")
    return ", ".join(parts)


class _Task:
    """A rich bar's handle."""

    def __init__(self, progress: Any, task_id: Any):
        self._progress = progress
        self._id = task_id

    def update(self, completed: int, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._id, completed=completed, **_as_fields(fields))

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._id, advance=n, **_as_fields(fields))


def _as_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {"fields": fields} if fields else {}


class _PlainTask:
    """A task that prints a line now and then: for logs, where a bar would be noise."""

    def __init__(self, label: str, total: int, completed: int, interval: float,
                 stream: TextIO, clock: Callable[[], float]):
        self.label = label
        self.total = total
        self.completed = completed
        self.fields: dict[str, Any] = {}
        self._interval = interval
        self._stream = stream
        self._clock = clock
        self._start = clock()
        self._start_count = completed
        self._last = self._start
        self._done = False
        self._print()

    def update(self, completed: int, **fields: Any) -> None:
        self.completed = completed
        self.fields.update(fields)
        self._maybe_print()

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.completed + n, **fields)

    def _maybe_print(self) -> None:
        now = self._clock()
        finished = self.total > 0 and self.completed >= self.total
        if finished and not self._done:
            self._done = True
            self._print(now)
        elif not finished and now - self._last >= self._interval:
            self._print(now)

    def _print(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        self._last = now
        elapsed = now - self._start
        share = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        text = f"{self.label}: {self.completed}/{self.total}{share}"
        done_now = self.completed - self._start_count
        if self.total and self.completed >= self.total:
            text += f", done in {duration(elapsed)}"
        elif done_now > 0 and elapsed > 0:
            left = (self.total - self.completed) * elapsed / done_now
            text += f", {duration(elapsed)} elapsed, about {duration(left)} left"
        if self.fields:
            text += f", {field_text(self.fields)}"
        print(text, file=self._stream, flush=True)


class _Null:
    def update(self, completed: int, **fields: Any) -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass


class Progress:
    """One task per stage. `add(label, total, completed)` returns a task with
    `update(completed, **fields)` and `advance(n, **fields)`; fields (a loss) are shown
    beside the count."""

    def __init__(self, progress: Any = None, plain: bool = False,
                 interval: float = DEFAULT_INTERVAL, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._progress = progress
        self._plain = plain
        self._interval = interval
        self._stream = stream
        self._clock = clock

    def add(self, label: str, total: int, completed: int = 0) -> Any:
        if self._progress is not None:
            return _Task(self._progress, self._progress.add_task(
                label, total=total, completed=completed, fields={}))
        if self._plain:
            return _PlainTask(label, total, completed, self._interval,
                              self._stream or sys.stderr, self._clock)
        return _Null()


def progress_interval() -> float:
    text = os.environ.get("EDITKIT_PROGRESS_EVERY", "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


@contextmanager
def progress_bars(enabled: bool | None = None) -> Iterator[Progress]:
    """Bars on a terminal; plain lines at a steady interval elsewhere; nothing when
    `enabled` is False (other processes of a distributed run)."""
    if enabled is False:
        yield Progress(None)
        return
    if not sys.stderr.isatty():
        yield Progress(None, plain=True, interval=progress_interval())
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class FieldsColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(field_text(task.fields.get("fields") or {}), style="cyan")

    columns = (TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), FieldsColumn())
    with RichProgress(*columns, console=Console(stderr=True)) as bars:
        yield Progress(bars)


def summary_rows(summaries: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(stage, what it made, rejects by reason, time) for each stage, rounded for people."""
    rows = []
    for stage, summary in summaries.items():
        if not isinstance(summary, dict):
            continue
        rows.append((stage, made_text(stage, summary), rejects_text(summary),
                     duration(summary.get("seconds"))))
    return rows


def made_text(stage: str, s: dict[str, Any]) -> str:
    """What a stage made, in words."""
    if stage == "captions":
        return f"{s.get('kept', 0):,} triplets"
    if stage == "render":
        pairs = s.get("pairs", 0)
        return f"{pairs:,} pairs ({2 * pairs:,} images)"
    if stage == "filters":
        return f"{s.get('kept', 0):,} of {s.get('scored', 0):,} pairs kept"
    if stage == "train":
        result = s.get("result") or {}
        steps = (s.get("stats") or {}).get("steps") or result.get("steps")
        weights = result.get("weights") if isinstance(result, dict) else None
        text = f"{steps:,} steps" if isinstance(steps, int) else "trained"
        return f"{text} -> {weights}" if weights else text
    if stage == "evaluate":
        models = s.get("models") or {}
        text = f"{len(models)} model(s) on {s.get('rows', 0):,} held-out rows"
        if s.get("judge"):
            text += ", judged"
        return text
    shown = {k: v for k, v in s.items() if isinstance(v, (int, str))
             and k not in ("seconds",)}
    return ", ".join(f"{k} {v}" for k, v in shown.items())


def rejects_text(s: dict[str, Any]) -> str:
    rejects = s.get("rejects") or {}
    if not isinstance(rejects, dict) or not rejects:
        return "–"
    ordered = sorted(rejects.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{reason} {count:,}" for reason, count in ordered)


def print_summary(summaries: dict[str, dict[str, Any]], stream: TextIO | None = None) -> None:
    """One table: a rich table on a terminal, aligned plain text elsewhere."""
    stream = stream or sys.stdout
    rows = summary_rows(summaries)
    if not rows:
        return
    head = ("stage", "made", "rejected", "time")
    if stream.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*head)
        for row in rows:
            table.add_row(*row)
        Console(file=stream).print(table)
        return
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    for row in [head, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3],
              file=stream)


def print_evaluation(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """The evaluate stage's metrics per model, three decimals, in aligned columns."""
    stream = stream or sys.stdout
    models = summary.get("models") or {}
    names = sorted({k for m in models.values() if isinstance(m, dict) for k in m})
    if not names:
        return
    head = ["model", *names]
    rows = [[label, *("–" if not isinstance(m.get(n), (int, float)) else f"{m[n]:.3f}"
                      for n in names)] for label, m in models.items()]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))), file=stream)

def quiet_libraries() -> None:
    """Call before the libraries are imported: several of them log while importing."""
    if os.environ.get("EDITKIT_DEBUG", "") not in ("", "0"):
        return
    for key, value in {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                       "TF_CPP_MIN_LOG_LEVEL": "3"}.items():
        os.environ.setdefault(key, value)
    for name in ("bitsandbytes", "transformers", "diffusers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("diffusers", "transformers", "torch", "peft", "accelerate"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def quiet_progress_bars() -> None:
    """diffusers and transformers draw their own loading bars; editkit draws its own."""
    if os.environ.get("EDITKIT_DEBUG", "") not in ("", "0"):
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
