"""`memtrace explain PID`: the headroom table (or one JSON object) and the exit status."""

from __future__ import annotations

import json
import sys
from typing import Optional, TextIO

from ..diagnose.headroom import DANGER, Headroom, headroom, read_comm
from ..model.decode import format_bytes


def _fmt(r: Headroom, n: Optional[int]) -> str:
    if n is None:
        return "unlimited" if r.fraction is None and r.used is not None else "-"
    return format_bytes(n) if r.unit == "bytes" else str(n)


def run_explain(pid: int, as_json: bool, out: TextIO = sys.stdout) -> int:
    rows = headroom(pid)
    danger = [r for r in rows if r.fraction is not None and r.fraction > DANGER]
    comm = read_comm(pid)
    if as_json:
        out.write(json.dumps({"type": "explain", "pid": pid, "comm": comm,
                              "limits": [r.to_json() for r in rows],
                              "danger": [r.name for r in danger]}) + "\n")
        return 1 if danger else 0
    from rich.table import Table

    from .terminal import cell, table_console

    console = table_console(out)
    # the comm is the process's own choice and notes quote cgroup paths: every cell inert
    table = Table(title=cell(f"headroom of pid {pid} ({comm}), most at risk first"))
    for col in ("limit", "used", "of", "%", "raise with", "note"):
        table.add_column(col, justify="right" if col in ("used", "of", "%") else "left")
    for r in rows:
        pct = "" if r.fraction is None else f"{100 * r.fraction:.0f}%"
        style = "bold red" if r in danger else None
        table.add_row(*(cell(x) for x in (r.name, "" if r.used is None else _fmt(r, r.used),
                                           _fmt(r, r.limit), pct, r.setting, r.note)),
                      style=style)
    console.print(table)
    console.print(f"{len(danger)} limit(s) above {DANGER:.0%}" if danger else
                  f"nothing above {DANGER:.0%} of its limit")
    return 1 if danger else 0
