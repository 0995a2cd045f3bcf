"""Progress of a long loop, readable on a terminal and in a log file alike.

On a terminal a rich bar redraws in place. Off a terminal (stderr sent to a file: SLURM, nohup, ``> log 2>&1``) rich
draws nothing until the loop ends, so a two-day stage would look dead: there a plain line is printed when the loop
starts, every ``interval_s`` seconds and when it ends::

    DDPM: 800/1600 (50%), 3.1 it/s, elapsed 0:04:18, ETA 0:04:18, loss 0.0412

Every long loop (DDPM training, g_0 training, translation, fine-tuning) reports through :class:`LoopProgress`, so
the lines read the same everywhere. ``DASGEN_PROGRESS_SECONDS`` sets the interval of the plain lines.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# A line every half minute: a glance at a log shows the loop is alive, and a two-day run writes ~6k lines, not 10^6.
DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "DASGEN_PROGRESS_SECONDS"


def plain_interval() -> float:
    """Seconds between plain progress lines: ``$DASGEN_PROGRESS_SECONDS`` when set to a positive number."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    """Seconds as H:MM:SS (whole seconds)."""
    return str(timedelta(seconds=int(seconds)))


class LoopProgress:
    """A context manager reporting ``done/total`` of one loop; :meth:`advance` after each unit of work.

    ``fields`` are shown after the counts (e.g. ``loss=0.0412``); floats are printed to 4 significant digits.
    ``unit`` names what is counted in the rate (``it``, ``img``). ``completed`` starts a resumed loop part-way: its
    rate and ETA count only the work of this run. With ``enabled`` false nothing is printed.
    """

    def __init__(self, description: str, total: int, *, completed: int = 0, unit: str = "it",
                 enabled: bool = True, console: Console | None = None, interval_s: float | None = None,
                 **fields: Any) -> None:
        self.description, self.total, self.done, self.unit = description, total, completed, unit
        self.console = console or Console(stderr=True)
        self.interval_s = plain_interval() if interval_s is None else interval_s
        self.fields = dict(fields)
        self._start_done = completed
        self.enabled = enabled and total > 0  # a loop with nothing to do (a resumed, finished one) stays silent
        self._bar: Progress | None = None
        self._task = None
        self._started = self._last = 0.0

    def __enter__(self) -> LoopProgress:
        self._started = self._last = time.monotonic()
        if not self.enabled:
            return self
        if self.console.is_terminal:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in self.fields]
            columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done,
                                            **self._shown())
        else:
            self._line()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.enabled and exc[0] is None and (self.done != self._start_done or self.done == self.total):
            self._line()

    def advance(self, count: int = 1, **fields: Any) -> None:
        """``count`` more units done; ``fields`` update the values shown."""
        self.done += count
        self.fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=count, **self._shown())
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s and self.done < self.total:
            self._line(now)

    def _shown(self) -> dict[str, str]:
        return {name: (f"{value:.4g}" if isinstance(value, float) else str(value))
                for name, value in self.fields.items()}

    def line(self, now: float | None = None) -> str:
        """The plain progress line: done/total, percent, rate, elapsed, ETA, fields."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._started
        this_run = self.done - self._start_done
        rate = this_run / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%)",
                 f"{rate:.3g} {self.unit}/s", f"elapsed {format_duration(elapsed)}"]
        if self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}" if rate > 0 else "ETA ?")
        parts += [f"{name} {value}" for name, value in self._shown().items()]
        return ", ".join(parts)

    def _line(self, now: float | None = None) -> None:
        self._last = time.monotonic() if now is None else now
        self.console.print(self.line(now), highlight=False, markup=False, soft_wrap=True)
