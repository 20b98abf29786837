"""`memtrace leaks`: the live leak view, JSON intervals, folded stacks and a flame graph."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional, TextIO

from ..model.decode import format_bytes
from ..model.leaks import LeakProfile, StackStats
from ..run import StopFlag
from .terminal import cell, inert

SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[int]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARK[4] * len(values)
    return "".join(SPARK[1 + int((v - lo) * 7 / (hi - lo))] for v in values)


def _where(s: StackStats, n: int = 4) -> str:
    return " <- ".join(inert(f) for f in s.frames[:n]) + (" ..." if len(s.frames) > n else "")


def render(p: LeakProfile, width: int, top: int, live: set[int], elapsed: float) -> Any:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text(f"memtrace leaks · {p.mode} mode · pids {', '.join(map(str, p.pids))}"
                f" · {format_bytes(p.total_bytes())} attributed · {elapsed:.0f}s"
                + ("" if live else " · all traced processes exited"), style="bold")
    tables = []
    for title, rows in (("Top stacks by outstanding bytes", p.top(top)),
                        ("Top stacks by growth rate", p.growing(max(top // 2, 3)))):
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=True)
        t.add_column("bytes", justify="right", no_wrap=True)
        t.add_column("count", justify="right", no_wrap=True)
        t.add_column("/s", justify="right", no_wrap=True)
        t.add_column("trend", no_wrap=True)
        t.add_column("stack (innermost first)", overflow="fold", ratio=1)
        for s in rows:
            t.add_row(format_bytes(s.bytes), str(s.count),
                      format_bytes(int(s.bytes_per_second)) if s.bytes_per_second > 0 else "-",
                      sparkline(list(s.history)[-20:]), cell(_where(s)))
        tables.append(t)
    drops = inert(", ".join(f"{k} {v}" for k, v in sorted(p.drops.items())) or "none")
    foot = Text(f"allocation failures (NULL returns): {p.failure_count} · dropped: {drops}",
                style="dim")
    return Group(head, *tables, foot)


def summary(p: LeakProfile, top: int) -> str:
    lines = [f"memtrace leaks summary ({p.mode} mode, pids {', '.join(map(str, p.pids))}): "
             f"{format_bytes(p.total_bytes())} attributed to {len(p.top())} stacks"]
    for i, s in enumerate(p.top(top), 1):
        lines.append(f"{i:3}. {format_bytes(s.bytes):>10} in {s.count} "
                     f"({format_bytes(int(max(s.bytes_per_second, 0)))}/s)")
        lines += [f"       {inert(f)}" for f in s.frames[:8]]
    lines.append(f"allocation failures (NULL returns): {p.failure_count}")
    lines.append("dropped: " + inert(", ".join(f"{k} {v}" for k, v in sorted(p.drops.items()))
                                      or "none"))
    return "\n".join(lines)


def run_leaks(source: Any, *, duration: Optional[float], as_json: bool, interval: float = 1.0,
              folded: Optional[str] = None, flamegraph: Optional[str] = None, top: int = 10,
              out: TextIO = sys.stdout, log: Any = None) -> LeakProfile:
    stop = StopFlag()
    stop.install()
    attached = source.start()
    p: LeakProfile = source.profile
    if log:
        log(f"memtrace leaks: {p.mode} mode on pid(s) {', '.join(map(str, p.pids))} "
            f"({len(attached)} probes); Ctrl-C to stop")
    is_tty = out.isatty() and not as_json
    live_view = None
    console = None
    if is_tty:
        from rich.live import Live

        from .terminal import live_console

        console = live_console(out, True)
        live_view = Live(console=console, auto_refresh=False, screen=False)
        live_view.start()
    started = time.monotonic()
    next_tick = started + interval
    try:
        while not stop.stopped:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            if not source.live:
                break  # every traced process has exited
            source.poll(0.1)
            if time.monotonic() >= next_tick:
                next_tick += interval
                source.refresh()
                source.read_drops()
                p.tick(time.time())
                if as_json:
                    out.write(json.dumps(p.to_json(time.time(), top=top * 5)) + "\n")
                    out.flush()
                elif live_view is not None and console is not None:
                    live_view.update(render(p, console.width, top, source.live,
                                            time.monotonic() - started), refresh=True)
        source.drain()
        source.refresh()
        source.read_drops()
        p.tick(time.time())
    finally:
        if live_view is not None:
            live_view.stop()
        source.close()
    if as_json:
        for f in p.failures:
            out.write(json.dumps(f.to_json()) + "\n")
        out.write(json.dumps(p.to_json(time.time(), final=True)) + "\n")
    else:
        out.write(summary(p, top) + "\n")
    out.flush()
    stacks = [p.stack_json(s) for s in p.top()]
    if folded:
        from .flamegraph import write_folded

        write_folded(folded, stacks)
    if flamegraph:
        from .flamegraph import write_flamegraph

        write_flamegraph(flamegraph, stacks, f"memtrace leaks: pids {p.pids} ({p.mode} mode)")
    return p
