"""`memtrace watch`: stream failures as lines or JSON objects, then a summary."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from ..model.failures import Failure, Ready, Snapshot
from ..model.probes import ATTACHED, attached_count
from ..model.totals import Dashboard
from ..recording import format as jsonout
from ..run import Source, run
from .lines import format_line
from .terminal import inert


def run_watch(source: Source, *, duration: Optional[float], as_json: bool,
              out: TextIO = sys.stdout) -> Snapshot:
    board = Dashboard()
    probe_lines = jsonout.ProbeLines()

    def emit(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    def on_ready(r: Ready) -> None:
        board.ready = r
        probe_lines.ready(r.probes)
        if as_json:
            emit(jsonout.dumps(jsonout.ready_obj(r)))
        else:
            attached = attached_count(r.probes)
            others = [f"{p.name} {p.status}" for p in r.probes if p.status != ATTACHED]
            emit(inert(f"memtrace {r.version} on {r.kernel}: {attached}/{len(r.probes)} probes "
                       "attached" + (f" ({', '.join(others)})" if others else "")
                       + "; Ctrl-C to stop"))

    def on_failures(fs: list[Failure]) -> None:
        board.add(fs)
        for f in fs:
            emit(jsonout.dumps(jsonout.failure_obj(f)) if as_json else format_line(f))

    def on_tick(s: Snapshot) -> None:
        # The adaptive probes attach and detach as failures come and go: say so in JSON
        # (the text view's stderr line says it for people).
        if not as_json:
            return
        obj = probe_lines.line(s.probes, time.time())
        if obj is not None:
            emit(jsonout.dumps(obj))

    def on_summary(s: Snapshot) -> None:
        board.update(s)
        if as_json:
            on_tick(s)  # a change since the last tick comes before the summary
            emit(jsonout.dumps(jsonout.summary_obj(s)))
        else:
            from .dashboard import summary_text

            emit(summary_text(board))

    return run(source, duration=duration, on_ready=on_ready, on_failures=on_failures,
               on_tick=on_tick, on_summary=on_summary)
