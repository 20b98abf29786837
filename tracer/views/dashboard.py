"""`memtrace top`: the live dashboard, its plain-text fallback and the summary printed on exit."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..diagnose.growth import short_stack
from ..model.decode import format_bytes, order_to_bytes
from ..model.failures import Failure, Snapshot
from ..model.probes import ATTACHED, FAILED, STANDBY, UNAVAILABLE
from ..model.totals import (
    Dashboard,
    failures_by_cgroup,
    failures_by_kind,
    failures_by_process,
    failures_by_syscall,
    memcg_limit_hits,
    opportunistic_by_kind,
    page_alloc_by_order,
    total_failures,
)
from .lines import describe, grew_phrase
from .terminal import cell, inert, inert_ascii, measuring_console

WAITING = "waiting for allocation failures\u2026 (Ctrl-C to stop)"
GROWING_TITLE = "Growing fastest (resident memory)"
NOT_GROWING = "no process is growing"
PLAIN_MAX_ROWS = 20  # rows per table in the periodic plain-text report
_MAX_ROWS = 15  # rows per summary table on the live dashboard, however tall the terminal
_MAX_RECENT = 100
_MAX_GROWING = 5  # rows of the growing panel
_STATUS_STYLE = {ATTACHED: "green", STANDBY: "cyan", UNAVAILABLE: "yellow", FAILED: "red"}
_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?")
_MODULE = re.compile(r"\s*\[[^\]]*\]$")
_FRAME_WIDTH = 28

Row = tuple[Any, ...]


# --------------------------------------------------------------------------- shared facts


def _uptime(seconds: float) -> str:
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _up(d: Dashboard, now: Optional[float]) -> str:
    if d.started is None:
        return _uptime(0)
    return _uptime((time.time() if now is None else now) - d.started)


def _version(d: Dashboard) -> str:
    return d.ready.version if d.ready is not None else __version__


def _kernel(d: Dashboard) -> str:
    return d.ready.kernel if d.ready is not None else "?"


def _opportunistic_total(s: Snapshot) -> int:
    return sum(opportunistic_by_kind(s).values())


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items() if n)


def _process_rows(s: Snapshot) -> list[Row]:
    return [(p, c, n) for p, c, n in failures_by_process(s)]


def _cgroup_rows(s: Snapshot) -> list[Row]:
    return [(cg, n) for cg, n in failures_by_cgroup(s)]


def _syscall_rows(s: Snapshot) -> list[Row]:
    return [(name, err, n) for name, err, n in failures_by_syscall(s)]


def _page_rows(s: Snapshot) -> list[Row]:
    return [(o, format_bytes(order_to_bytes(o)), g, n)
            for o, g, n in page_alloc_by_order(s, opportunistic=False)]


def _opportunistic_rows(s: Snapshot) -> list[Row]:
    per_order: dict[int, int] = {}
    for o, _gfp, n in page_alloc_by_order(s, opportunistic=True):
        per_order[o] = per_order.get(o, 0) + n
    return [(o, format_bytes(order_to_bytes(o)), n) for o, n in sorted(per_order.items())]


def _growing_rows(s: Snapshot) -> list[Row]:
    """(pid, comm, rate, outstanding, cgroup, fastest stack) per growing process, fastest
    first; the stack as the program's innermost functions."""
    return [(g.pid, g.comm, f"{format_bytes(int(max(g.bytes_per_second, 0)))}/s",
             format_bytes(g.bytes), g.cgroup or "-", short_stack(g.top_frames))
            for g in sorted(s.growing, key=lambda g: -g.bytes_per_second)]


_GROWING_COLS = [("pid", "right"), ("comm", "left"), ("rate", "right"), ("grown", "right"),
                 ("cgroup", "left"), ("fastest stack (innermost first)", "left")]


def _frame(name: str) -> str:
    name = inert(_MODULE.sub("", _OFFSET.sub("", name)).strip() or name)
    if len(name) > _FRAME_WIDTH:
        name = name[: _FRAME_WIDTH - 1] + "\u2026"
    return name


def _frames(f: Failure, n: int = 3) -> str:
    parts = []
    if f.kernel_stack:
        parts.append("k: " + " < ".join(_frame(x) for x in f.kernel_stack[:n]))
    if f.user_stack:
        parts.append("u: " + " < ".join(_frame(x) for x in f.user_stack[:n]))
    return "  ".join(parts)


# --------------------------------------------------------------------------- live view


def _height(r: RenderableType, width: int) -> int:
    console = measuring_console(width)
    return len(console.render_lines(r, console.options.update(width=width), pad=False))


def _header(d: Dashboard, now: Optional[float]) -> Text:
    s = d.snapshot
    text = Text(no_wrap=False)
    text.append(f"memtrace {inert(_version(d))}", style="bold")
    text.append(f" \u00b7 kernel {inert(_kernel(d))} \u00b7 ")
    total = total_failures(s)
    text.append(f"{total} failures", style="bold red" if total else "bold")
    text.append(f" \u00b7 {_opportunistic_total(s)} opportunistic \u00b7 up {_up(d, now)}")
    return text


def _probe_line(d: Dashboard) -> Text:
    text = Text()
    text.append("probes:", style="dim")
    probes = d.ready.probes if d.ready is not None else ()
    if not probes:
        text.append(" starting\u2026", style="dim")
    for p in probes:
        text.append(" ")
        label = p.name if p.status == ATTACHED else f"{p.name}({p.status})"
        text.append(inert(label), style=_STATUS_STYLE.get(p.status, "red"))
    return text


def _footer(d: Dashboard) -> Text:
    text = Text()
    text.append("dropped: ", style="dim")
    items = list(d.snapshot.drops.items())
    if not items:
        text.append("none", style="dim")
    for i, (name, n) in enumerate(items):
        if i:
            text.append(" \u00b7 ", style="dim")
        text.append(f"{inert(name)} {n}", style="bold red" if n else "dim")
    text.append(f" \u00b7 events received: {d.events_seen}", style="dim")
    return text


def _table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Row],
           cap: Optional[int]) -> Table:
    shown = rows if cap is None else rows[:cap]
    more = len(rows) - len(shown)
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, header_style="bold dim", min_width=len(title),
              caption=f"+{more} more" if more else None, caption_justify="left",
              caption_style="dim")
    for name, justify in columns:
        t.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    for row in shown:
        t.add_row(*(cell(x) for x in row))  # every cell inert, never parsed as markup
    return t


def _side_by_side(items: Sequence[RenderableType], ratios: Sequence[int]) -> Table:
    grid = Table.grid(expand=True, padding=(0, 3))
    for r in ratios:
        grid.add_column(ratio=r)
    grid.add_row(*items)
    return grid


def _arrange(items: list[tuple[RenderableType, int]], width: int, min_width: int
             ) -> list[RenderableType]:
    """Side by side when every item gets at least min_width columns, else stacked."""
    if not items:
        return []
    if len(items) == 1:
        return [items[0][0]]
    if width >= min_width * len(items):
        return [_side_by_side([r for r, _ in items], [w for _, w in items])]
    return [r for r, _ in items]


def _cause_rows(d: Dashboard) -> list[Row]:
    return [(cause, str(n)) for cause, n in sorted(d.by_cause.items(), key=lambda t: (-t[1], t[0]))]


def _finding_rows(d: Dashboard, n: int = 50) -> list[Row]:
    return [(who, f.cause or "", f.explanation or "") for who, f in d.latest_findings(n)]


def _memcg_rows(s: Snapshot) -> list[Row]:
    return [(cg, ev, str(n)) for cg, ev, n in memcg_limit_hits(s)]


def _diagnosis_sections(d: Dashboard, width: int, cap: int) -> list[RenderableType]:
    items: list[tuple[RenderableType, int]] = []
    causes, findings = _cause_rows(d), _finding_rows(d)
    if causes:
        items.append((_table("Failures by cause", [("cause", "left"), ("events", "right")],
                             causes, cap), 1))
    if findings:
        items.append((_table("Latest finding per process / cgroup",
                             [("who", "left"), ("cause", "left"), ("why", "left")],
                             findings, min(cap, 5)), 4))
    memcg = _memcg_rows(d.snapshot)
    if memcg:
        items.append((_table("Memory cgroup limit hits", [("cgroup", "left"), ("event", "left"),
                                                          ("count", "right")], memcg, cap), 2))
    return _arrange(items, width, 30)


def _summary_sections(s: Snapshot, width: int, cap: int) -> list[RenderableType]:
    top: list[tuple[RenderableType, int]] = []
    procs, cgroups, calls = _process_rows(s), _cgroup_rows(s), _syscall_rows(s)
    if procs:
        top.append((_table("Failures by process", [("pid", "right"), ("comm", "left"),
                                                   ("count", "right")], procs, cap), 1))
    if cgroups:
        top.append((_table("by cgroup", [("cgroup", "left"), ("count", "right")],
                           cgroups, cap), 1))
    if calls:
        top.append((_table("by syscall", [("syscall", "left"), ("errno", "left"),
                                          ("count", "right")], calls, cap), 1))
    pages, opp = _page_rows(s), _opportunistic_rows(s)
    bottom: list[tuple[RenderableType, int]] = []
    if pages:
        bottom.append((_table("Page allocation failures by order \u00d7 GFP",
                              [("order", "right"), ("size", "right"), ("gfp", "left"),
                               ("failures", "right")], pages, cap), 3))
    if opp:
        bottom.append((_table("Opportunistic (not failures)",
                              [("order", "right"), ("size", "right"), ("attempts", "right")],
                              opp, cap), 2))
    return _arrange(top, width, 32) + _arrange(bottom, width, 40)


def _growing_panel(d: Dashboard, cap: int) -> Optional[RenderableType]:
    """The processes growing fastest (at most cap rows); one line saying so when growth is
    tracked and nothing grows; None when growth is not tracked (--no-growth, a replay)."""
    rows = _growing_rows(d.snapshot)
    if not rows:
        return Text(f"{GROWING_TITLE}: {NOT_GROWING}", style="dim") if d.growth else None
    shown = rows[:cap]
    more = len(rows) - len(shown)
    t = Table(title=GROWING_TITLE, title_justify="left", title_style="bold",
              box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold dim",
              expand=True, caption=f"+{more} more" if more else None, caption_justify="left",
              caption_style="dim")
    for name, justify in _GROWING_COLS[:-1]:
        t.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    t.add_column(_GROWING_COLS[-1][0], no_wrap=True, overflow="ellipsis", ratio=1)
    for row in shown:
        t.add_row(*(cell(x) for x in row))  # comm, cgroup and frames are the host's: inert
    return t


def _growing_line(d: Dashboard) -> Text:
    """The growing panel in one line, for a short terminal: the fastest and how many more."""
    rows = _growing_rows(d.snapshot)
    pid, comm, rate, _grown, _cgroup, _stack = rows[0]
    more = f" \u00b7 +{len(rows) - 1} more" if len(rows) > 1 else ""
    text = Text(f"{GROWING_TITLE}: ", style="bold")
    text.append(f"pid {pid} ({inert(comm)}) {rate}{more}")
    return text


def _recent_table(events: Sequence[Failure], more: int) -> Table:
    t = Table(title="Recent events", title_justify="left", title_style="bold",
              box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold dim",
              expand=True, caption=f"+{more} more" if more else None, caption_justify="left",
              caption_style="dim")
    t.add_column("time", no_wrap=True, width=8)
    t.add_column("kind", no_wrap=True, width=10)
    t.add_column("event", overflow="fold", ratio=1)  # wraps; render() measures the height
    for f in reversed(events):  # newest first
        what = Text(describe(f))
        if f.cause:
            what.append(f"  [cause: {inert(f.cause)}]", style="yellow")
        frames = _frames(f)
        if frames:
            what.append("\n" + frames, style="dim")
        grew = grew_phrase(f)
        if grew:
            what.append("\nwhat grew: " + grew, style="magenta")
        kind = cell(f.kind, style="bold red" if f.kind == "oom_kill" else "cyan")
        t.add_row(dt.datetime.fromtimestamp(f.time).strftime("%H:%M:%S"), kind, what)
    return t


def render(d: Dashboard, *, width: int = 120, height: int = 40,
           now: Optional[float] = None, cost: Optional[str] = None) -> RenderableType:
    """The whole dashboard, fitted to width x height, for rich.live.Live to show; `cost` is
    the line saying what memtrace's own probes cost (views/cost.py), when there is one."""
    s = d.snapshot
    head: list[RenderableType] = [_header(d, now), _probe_line(d)]
    foot: list[RenderableType] = [_footer(d)]
    if cost:
        foot.append(Text(inert(cost), style="dim"))
    room = height - _height(Group(*head, *foot), width)

    body: list[RenderableType] = []
    if total_failures(s) == 0 and not d.recent:
        body.append(Text(WAITING, style="italic dim"))
        room -= 1

    longest = max((len(r) for r in (_process_rows(s), _cgroup_rows(s), _syscall_rows(s),
                                    _page_rows(s), _opportunistic_rows(s))), default=0)
    # Growth comes before the failures it may lead to, in at most a third of the room and
    # what the exact totals leave at their smallest: fewer rows, or one line, when short.
    growing = min(len(s.growing), _MAX_GROWING)
    least = _height(Group(*_summary_sections(s, width, 1), *_diagnosis_sections(d, width, 1)),
                    width) if longest and (d.growth or growing) else 0
    while True:
        panel = _growing_panel(d, growing)
        if panel is None:
            break
        used = _height(panel, width)
        if used > min(room - least, max(room // 3, 1)) and growing > 0:
            if growing > 1:
                growing -= 1
                continue
            panel = _growing_line(d)
            used = _height(panel, width)
        if used <= room - least:
            body.append(panel)
            room -= used
        break

    sections: list[RenderableType] = []
    if longest:
        # Exact totals come first, but leave the recent events about a third of the room.
        budget = room - (max(4, room // 3) if d.recent else 0)
        cap = min(longest, _MAX_ROWS)
        while True:
            sections = _summary_sections(s, width, cap) + _diagnosis_sections(d, width, cap)
            used = _height(Group(*sections), width)
            if used <= budget or cap == 1:
                break
            cap -= 1
        room -= used
    body.extend(sections)

    events = list(d.latest(_MAX_RECENT))
    seen = max(d.events_seen, len(d.recent))
    n = min(len(events), room - 3)  # title, header, rule
    while n > 0:
        table = _recent_table(events[len(events) - n:], seen - n)
        if _height(table, width) <= room:
            body.append(table)
            break
        n -= 1
    return Group(*head, *body, *foot)


# --------------------------------------------------------------------------- plain text


def ascii_table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Row],
                 cap: Optional[int] = None) -> list[str]:
    shown = list(rows if cap is None else rows[:cap])
    cells = [[inert_ascii(c) for c in row] for row in shown]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, (name, _) in
              enumerate(columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Iterable[str]) -> str:
        out = []
        for v, w, (_, justify) in zip(values, widths, columns):
            out.append(v.rjust(w) if justify == "right" else v.ljust(w))
        return "| " + " | ".join(out) + " |"

    lines = [title, rule, line(name for name, _ in columns), rule]
    lines += [line(r) for r in cells]
    lines.append(rule)
    if len(rows) > len(shown):
        lines.append(f"+{len(rows) - len(shown)} more")
    return lines


_PROCESS_COLS = [("pid", "right"), ("comm", "left"), ("count", "right")]
_CGROUP_COLS = [("cgroup", "left"), ("count", "right")]
_SYSCALL_COLS = [("syscall", "left"), ("errno", "left"), ("count", "right")]
_PAGE_COLS = [("order", "right"), ("size", "right"), ("gfp", "left"), ("failures", "right")]
_OPP_COLS = [("order", "right"), ("size", "right"), ("attempts", "right")]


def _plain_tables(s: Snapshot, cap: Optional[int], d: Optional[Dashboard] = None) -> list[str]:
    out: list[str] = []
    diagnosis: list[tuple[str, Sequence[tuple[str, str]], list[Row]]] = []
    if d is not None:
        diagnosis = [
            ("Failures by cause (events received)", [("cause", "left"), ("events", "right")],
             _cause_rows(d)),
            ("Latest finding per process / cgroup",
             [("who", "left"), ("cause", "left"), ("why", "left")], _finding_rows(d, 10)),
        ]
    for title, cols, rows in (
        ("Failures by process", _PROCESS_COLS, _process_rows(s)),
        ("Failures by cgroup", _CGROUP_COLS, _cgroup_rows(s)),
        ("Failures by syscall", _SYSCALL_COLS, _syscall_rows(s)),
        ("Page allocation failures by order x GFP", _PAGE_COLS, _page_rows(s)),
        ("Opportunistic page allocations (had a fallback; not failures)", _OPP_COLS,
         _opportunistic_rows(s)),
        ("Memory cgroup limit hits", [("cgroup", "left"), ("event", "left"), ("count", "right")],
         _memcg_rows(s)),
        *diagnosis,
    ):
        if rows:
            out += [""] + ascii_table(title, cols, rows, cap)
    return out


def _plain_growing(d: Dashboard, cap: Optional[int]) -> list[str]:
    rows = _growing_rows(d.snapshot)
    if rows:
        return [""] + ascii_table(GROWING_TITLE, _GROWING_COLS, rows, cap)
    return ["", f"{GROWING_TITLE}: {NOT_GROWING}"] if d.growth else []


def _drops_line(d: Dashboard) -> str:
    items = ", ".join(f"{k} {n}" for k, n in d.snapshot.drops.items()) or "none"
    return inert_ascii(f"dropped: {items}")


def _totals_lines(s: Snapshot) -> list[str]:
    total, opp = total_failures(s), _opportunistic_total(s)
    by_kind = {k: n for k, n in failures_by_kind(s).items() if k != "memcg"}
    kinds, opp_kinds = _kinds(by_kind), _kinds(opportunistic_by_kind(s))
    lines = [f"failures: {total}" + (f" ({kinds})" if kinds else "")]
    hits = failures_by_kind(s).get("memcg", 0)
    if hits:
        lines.append(f"memory cgroup limit hits: {hits}")
    lines.append(f"opportunistic (not failures): {opp}" + (f" ({opp_kinds})" if opp_kinds else ""))
    return lines


def render_plain(d: Dashboard, now: Optional[float] = None, cost: Optional[str] = None) -> str:
    """The dashboard as plain ASCII text, for when stdout is not a terminal."""
    t = time.time() if now is None else now
    s = d.snapshot
    stamp = dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"[{stamp}] memtrace {_version(d)} | kernel {_kernel(d)} | up {_up(d, t)}"]
    lines += _totals_lines(s)
    if d.ready is not None and d.ready.probes:
        by_status: dict[str, list[str]] = {}
        for p in d.ready.probes:
            by_status.setdefault(p.status, []).append(p.name)
        lines.append("probes: " + "; ".join(f"{st} {', '.join(names)}"
                                            for st, names in by_status.items()))
    if total_failures(s) == 0:
        lines.append("no allocation failures yet")
    lines += _plain_growing(d, _MAX_GROWING)
    lines += _plain_tables(s, PLAIN_MAX_ROWS, d)
    lines += ["", f"{_drops_line(d)} | events received: {d.events_seen}"]
    if cost:
        lines.append(cost)
    return "\n".join(inert_ascii(x) for x in lines) + "\n"


def summary_text(d: Dashboard, cost: Optional[str] = None) -> str:
    """The final summary printed when memtrace stops: every exact total, as plain text."""
    s = d.snapshot
    total = total_failures(s)
    head = f"memtrace summary: {total} allocation failure{'' if total == 1 else 's'}"
    if d.started is not None:
        head += f" in {_up(d, None)}"
    lines = [head, f"events received: {d.events_seen}"]
    lines += _totals_lines(s)
    lines += _plain_tables(s, None, d)
    lines += ["", _drops_line(d)]
    if cost:
        lines.append(cost)
    return "\n".join(inert_ascii(x) for x in lines) + "\n"
