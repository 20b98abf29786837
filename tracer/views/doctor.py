"""`memtrace doctor`: the table of host checks and probe outcomes; exit 0 when the core probes attach."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..model.probes import Examination


def render_doctor(exam: Examination, out: TextIO = sys.stdout) -> int:
    from rich.table import Table

    from .terminal import cell, table_console

    console = table_console(out)
    # details quote the kernel and bcc (error text, paths, probe reasons): every cell inert
    table = Table(title=cell(f"memtrace doctor · kernel {exam.kernel}"))
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    colour = {"yes": "green", "generic": "yellow", "no": "red", "attached": "green",
              "unavailable": "yellow", "failed": "red"}
    for check, status, detail in exam.checks:
        table.add_row(cell(check), cell(status, colour.get(status, "white")), cell(detail))
    for p in exam.probes:
        detail = f"{p.via}: {p.reason}" if p.via else p.reason
        table.add_row(cell(f"probe {p.name}"), cell(p.status, colour.get(p.status, "white")),
                      cell(detail))
    console.print(table)
    console.print("core probes attach: " + ("yes" if exam.core_attached else "no"))
    _render_cost(exam, console)
    return 0 if exam.core_attached else 1


def _render_cost(exam: Examination, console: Any) -> None:
    """What memtrace's own probes cost on this host, from doctor's short measurement."""
    from rich.table import Table

    from .cost import cost_rows, cpu_share, events
    from .terminal import cell

    rates = exam.cost
    if rates is None:
        console.print(cell(f"memtrace's own cost: {exam.cost_note or 'not measured'}"))
        return
    table = Table(title="memtrace's own cost")
    table.add_column("probe")
    table.add_column("events/s", justify="right")
    table.add_column("per event", justify="right")
    table.add_column("CPU", justify="right")
    for row in cost_rows(rates):
        table.add_row(*(cell(x) for x in row))
    console.print(table)
    console.print(cell(f"in all: {cpu_share(rates.cpu)} of one CPU, "
                       f"{events(rates.events_per_s)} events/s (the kernel's BPF run-time "
                       f"stats, {exam.cost_note})"))
