"""`memtrace top`: the live dashboard (rich), or periodic plain tables when stdout is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from ..model.failures import Failure, Ready, Snapshot
from ..model.totals import Dashboard, total_failures
from ..run import Source, StopFlag, run


class StopAtEnd(StopFlag):
    """Ctrl-C and SIGTERM as usual, and the end of a replayed recording (its `done`)."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._stopped = False
        super().__init__()

    @property
    def stopped(self) -> bool:
        return self._stopped or bool(getattr(self._source, "done", False))

    @stopped.setter
    def stopped(self, value: bool) -> None:
        self._stopped = value


def run_top(source: Source, *, duration: Optional[float], interval: float = 1.0,
            out: TextIO = sys.stdout, terminal: Optional[bool] = None,
            growth: Optional[bool] = None) -> Snapshot:
    """The dashboard until Ctrl-C, SIGTERM or the duration; a replayed recording (a source
    with `replay` set, e.g. sources.ReplaySource) also ends it, and is shown as recorded
    (its failures are not diagnosed again on this host). `growth`: whether the source
    tracks growth, so the growing panel shows even when nothing grows (by default, what
    the source's own `growth` says)."""
    from rich.live import Live

    from .cost import CostWatch
    from .dashboard import render, render_plain, summary_text
    from .terminal import live_console

    replay = bool(getattr(source, "replay", False))
    board = Dashboard()
    board.growth = bool(getattr(source, "growth", False)) if growth is None else growth
    costs = CostWatch()  # memtrace's own probes, from the snapshots' BPF run-time stats
    is_tty = out.isatty() if terminal is None else terminal
    console = live_console(out, is_tty)
    live: Optional[Live] = None
    last_plain: list[Optional[tuple]] = [None]

    def draw() -> None:
        if live is not None:
            live.update(render(board, width=console.width, height=console.height,
                               cost=costs.line()), refresh=True)
        else:
            key = (total_failures(board.snapshot), board.events_seen,
                   tuple(sorted(board.snapshot.drops.items())),
                   tuple(g.pid for g in board.snapshot.growing))  # who grows, not how fast
            if key != last_plain[0]:
                last_plain[0] = key
                out.write(render_plain(board, cost=costs.line()) + "\n")
                out.flush()

    def on_ready(r: Ready) -> None:
        nonlocal live
        board.ready = r
        board.started = time.time()
        if is_tty:
            live = Live(console=console, screen=True, auto_refresh=False, transient=False)
            live.start()
        draw()

    def on_failures(fs: list[Failure]) -> None:
        board.add(fs)

    def on_tick(s: Snapshot) -> None:
        board.update(s)
        costs.update(s.cost)
        draw()

    def on_summary(s: Snapshot) -> None:
        board.update(s)
        costs.update(s.cost)
        if live is not None:
            live.stop()
        out.write(summary_text(board, cost=costs.summary()) + "\n")
        out.flush()

    try:
        return run(source, duration=duration, interval=interval, on_ready=on_ready,
                   on_failures=on_failures, on_tick=on_tick, on_summary=on_summary,
                   stop=StopAtEnd(source) if replay else None, diagnose=not replay)
    finally:
        if live is not None and live.is_started:
            live.stop()
