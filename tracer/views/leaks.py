"""`memtrace leaks`: the live leak view, JSON intervals, folded stacks, a flame graph and pprof."""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any, Optional, TextIO

from ..diagnose.growth import grew_sentence, program_frames
from ..model.decode import format_bytes
from ..model.leaks import GROWTH, Growth, LeakProfile, StackStats
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


def grew_line(g: Growth) -> str:
    """One growth as a sentence: "pid 412 (hoarder) grew 61 MiB in 4 s through hoard_buffers
    <- main" (diagnose/growth.py words it; traced names made inert)."""
    return inert(grew_sentence(g))


def describe(p: LeakProfile) -> str:
    """What is traced: "pids 7, 9", "all processes" or "all processes in /system.slice"."""
    if p.all_processes:
        return "all processes" + (f" in cgroup {inert(p.cgroup)}" if p.cgroup else "")
    return "pids " + ", ".join(map(str, p.pids))


def _who(s: StackStats) -> str:
    return f"{s.pid} {inert(s.comm)}" if s.comm else str(s.pid)


def render(p: LeakProfile, width: int, top: int, live: set[int], elapsed: float,
           now: Optional[float] = None) -> Any:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    growth = p.mode == GROWTH
    many = p.all_processes or len(p.pids) > 1 or len({s.pid for s in p.stacks.values()}) > 1
    head = Text(f"memtrace leaks · {p.mode} mode · {describe(p)}"
                f" · {format_bytes(p.total_bytes())} "
                + ("resident growth" if growth else "outstanding")
                + (f" · 1 sample per {format_bytes(p.sample_bytes)}" if growth and p.sample_bytes
                   else "")
                + f" · {elapsed:.0f}s"
                + ("" if live or p.all_processes else " · all traced processes exited"),
                style="bold")
    parts: list[Any] = [head]
    if growth and p.all_processes:
        t = Table(title=f"Growing processes (last {p.rate_window:.0f}s)", title_justify="left",
                  box=box.SIMPLE_HEAD, expand=True)
        for name in ("pid", "comm", "/s", "grown", "cgroup"):
            t.add_column(name, justify="right" if name in ("pid", "/s", "grown") else "left",
                         no_wrap=True)
        t.add_column("fastest stack", overflow="fold", ratio=1)
        for g in p.growing_processes(now if now is not None else time.time(), max(top // 2, 3)):
            t.add_row(str(g.pid), cell(g.comm), format_bytes(int(g.bytes_per_second)),
                      format_bytes(g.bytes), cell(g.cgroup or "-"),
                      cell(" <- ".join(program_frames(g.top_frames)[:4])))
        parts.append(t)
    for title, rows in (("Top stacks by " + ("resident growth" if growth else "outstanding bytes"),
                         p.top(top)),
                        ("Top stacks by growth rate", p.growing(max(top // 2, 3)))):
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=True)
        if many:
            t.add_column("pid", justify="right", no_wrap=True)
        t.add_column("bytes", justify="right", no_wrap=True)
        if growth:  # the sample count says little once bytes are estimated: mapped instead
            t.add_column("mapped", justify="right", no_wrap=True)
        else:
            t.add_column("count", justify="right", no_wrap=True)
        t.add_column("/s", justify="right", no_wrap=True)
        t.add_column("trend", no_wrap=True)
        t.add_column("stack (innermost first)", overflow="fold", ratio=1)
        for s in rows:
            row: list[Any] = [cell(_who(s))] if many else []
            row.append(format_bytes(s.bytes))
            row.append(format_bytes(s.mapped_bytes) if growth else str(s.count))
            row += [format_bytes(int(s.bytes_per_second)) if s.bytes_per_second > 0 else "-",
                    sparkline(list(s.history)[-20:]), cell(_where(s))]
            t.add_row(*row)
        parts.append(t)
    drops = inert(", ".join(f"{k} {v}" for k, v in sorted(p.drops.items())) or "none")
    foot = Text(f"allocation failures (NULL returns): {p.failure_count} · dropped: {drops}",
                style="dim")
    return Group(*parts, foot)


def summary(p: LeakProfile, top: int) -> str:
    growth = p.mode == GROWTH
    lines = [f"memtrace leaks summary ({p.mode} mode, {describe(p)}): "
             f"{format_bytes(p.total_bytes())} "
             + ("resident growth" if growth else "outstanding")
             + (f" and {format_bytes(p.total_mapped_bytes())} mapped" if growth else "")
             + f" attributed to {len(p.top())} stacks"
             + (f" (sampled: 1 per {format_bytes(p.sample_bytes)} on average)"
                if growth and p.sample_bytes and p.sample_bytes > 1 else "")]
    for i, s in enumerate(p.top(top), 1):
        lines.append(f"{i:3}. {format_bytes(s.bytes):>10} in {s.count} "
                     f"({format_bytes(int(max(s.bytes_per_second, 0)))}/s over the last "
                     f"{p.rate_window:.0f}s)"
                     + (f", {format_bytes(s.mapped_bytes)} mapped" if growth else "")
                     + f", pid {_who(s)}" + (" (exited)" if s.exited else ""))
        lines += [f"       {inert(f)}" for f in s.frames[:8]]
    lines.append(f"allocation failures (NULL returns): {p.failure_count}")
    lines.append("dropped: " + inert(", ".join(f"{k} {v}" for k, v in sorted(p.drops.items()))
                                      or "none"))
    return "\n".join(lines)


def export_stacks(p: LeakProfile) -> list[dict[str, Any]]:
    """The stacks for the files written on exit; with --all each stack has its process as
    its outermost frame ("comm [pid]"), so a flame graph keeps processes apart."""
    stacks = [p.stack_json(s) for s in p.top()]
    if p.all_processes:
        for s in stacks:
            s["frames"] = s["frames"] + [f"{s['comm'] or '?'} [{s['pid']}]"]
            if "sources" in s:
                s["sources"] = s["sources"] + [None]
    return stacks


def _emit(out: TextIO, text: str) -> None:
    """Write and flush `text` with SIGINT and SIGTERM held back meanwhile: CPython loses part
    of a large write to a full pipe when a signal interrupts it (a JSON line cut in two). The
    stop handler only sets a flag, so it loses nothing by running after the write."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        out.write(text)
        out.flush()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run_leaks(source: Any, *, duration: Optional[float], as_json: bool, interval: float = 1.0,
              folded: Optional[str] = None, flamegraph: Optional[str] = None,
              pprof: Optional[str] = None, top: int = 10, out: TextIO = sys.stdout,
              log: Any = None) -> LeakProfile:
    stop = StopFlag()
    stop.install()
    attached = source.start()
    p: LeakProfile = source.profile
    if log:
        log(f"memtrace leaks: {p.mode} mode on {describe(p)} "
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
    wall_started = time.time()
    next_tick = started + interval
    try:
        while not stop.stopped:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            if source.done():
                break  # every traced process has exited
            source.poll(0.1)
            if time.monotonic() >= next_tick:
                next_tick += interval
                source.refresh()
                source.read_drops()
                p.tick(time.time())
                if as_json:
                    _emit(out, json.dumps(p.to_json(time.time(), top=top * 5)) + "\n")
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
        _emit(out, "".join(json.dumps(f.to_json()) + "\n" for f in p.failures)
              + json.dumps(p.to_json(time.time(), final=True)) + "\n")
    else:
        _emit(out, summary(p, top) + "\n")
    stacks = export_stacks(p)
    if folded:
        from .flamegraph import write_folded

        write_folded(folded, stacks)
    if flamegraph:
        from .flamegraph import write_flamegraph

        write_flamegraph(flamegraph, stacks, f"memtrace leaks: {describe(p)} ({p.mode} mode)")
    if pprof:
        from .pprof import write_pprof

        growth = p.mode == GROWTH
        write_pprof(pprof, stacks,
                    sample_types=(("samples", "count"), ("space", "bytes")),
                    value_keys=("count", "bytes"),
                    time_ns=int(wall_started * 1e9),
                    duration_ns=int((time.time() - wall_started) * 1e9),
                    period=("space", "bytes", p.sample_bytes) if growth and p.sample_bytes
                    else None,
                    comments=[f"memtrace leaks: {describe(p)} ({p.mode} mode)"
                              + ("; space: resident growth still outstanding, estimated"
                                 if growth else "; space: outstanding allocated bytes")])
    return p
