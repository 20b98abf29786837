"""`memtrace doctor`: the table of host checks and probe outcomes; exit 0 when the core probes attach."""

from __future__ import annotations

import sys
from typing import TextIO

from ..model.probes import Examination


def render_doctor(exam: Examination, out: TextIO = sys.stdout) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=120)
    table = Table(title=f"memtrace doctor · kernel {exam.kernel}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    colour = {"yes": "green", "generic": "yellow", "no": "red", "attached": "green",
              "unavailable": "yellow", "failed": "red"}
    for check, status, detail in exam.checks:
        table.add_row(check, f"[{colour.get(status, 'white')}]{status}[/]", detail)
    for p in exam.probes:
        detail = f"{p.via}: {p.reason}" if p.via else p.reason
        table.add_row(f"probe {p.name}", f"[{colour.get(p.status, 'white')}]{p.status}[/]", detail)
    console.print(table)
    console.print("core probes attach: " + ("yes" if exam.core_attached else "no"))
    return 0 if exam.core_attached else 1
