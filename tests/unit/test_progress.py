"""Long loops stay watchable off a terminal: plain progress lines at a steady interval (dasgen.progress)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from dasgen.progress import LoopProgress, plain_interval


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=200), buffer


def test_off_a_terminal_lines_come_at_start_at_each_interval_and_at_the_end():
    console, buffer = _console(terminal=False)
    with LoopProgress("DDPM", 4, console=console, interval_s=0.0, loss=1.5) as bar:
        for loss in (1.0, 0.5, 0.25, 0.125):
            bar.advance(loss=loss)
    lines = buffer.getvalue().splitlines()
    assert [re.match(r"DDPM: (\d)/4 ", line).group(1) for line in lines] == ["0", "1", "2", "3", "4"]
    assert re.fullmatch(r"DDPM: 2/4 \(50%\), [\d.e+]+ it/s, elapsed 0:00:00, ETA 0:00:00, loss 0\.5", lines[2])
    assert "ETA" not in lines[-1] and lines[-1].endswith("loss 0.125")  # the end line: no time left to estimate


def test_a_long_interval_prints_only_the_first_and_last_lines_and_a_resumed_loop_counts_its_own_rate():
    console, buffer = _console(terminal=False)
    with LoopProgress("g_0", 10, completed=6, unit="img", console=console, interval_s=3600) as bar:
        for _ in range(4):
            bar.advance()
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("g_0: 6/10 (60%), 0 img/s") and lines[1].startswith("g_0: 10/10")


def test_on_a_terminal_a_bar_is_drawn_instead_and_disabled_prints_nothing():
    console, buffer = _console(terminal=True)
    with LoopProgress("DDPM", 3, console=console, interval_s=0.0) as bar:
        bar.advance(3)
    assert "DDPM: 0/3" not in buffer.getvalue() and "3/3" in buffer.getvalue()  # rich's bar, not plain lines
    console, buffer = _console(terminal=False)
    with LoopProgress("DDPM", 3, console=console, interval_s=0.0, enabled=False) as bar:
        bar.advance(3)
    assert buffer.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DASGEN_PROGRESS_SECONDS", "2.5")
    assert plain_interval() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("DASGEN_PROGRESS_SECONDS", bad)
        assert plain_interval() == 30.0
