"""`memtrace doctor`: what this host supports and whether each probe attaches."""

from __future__ import annotations

import importlib.util
import sys
from typing import TextIO

from . import host


def run_doctor(out: TextIO = sys.stdout) -> int:
    from rich.console import Console
    from rich.table import Table

    rows: list[tuple[str, str, str]] = []  # (check, status, detail)
    ok, why = host.bpf_syscall_works()
    rows.append(("root", "yes" if host.is_root() else "no",
                 "" if host.is_root() else "tracing needs root: run with sudo"))
    rows.append(("BPF", "yes" if ok else "no", why))
    rows.append(("BTF", "yes" if host.btf_available() else "no", str(host.BTF_PATH)))
    mounted_before = host.tracefs_mounted()
    mounted = host.ensure_tracefs()
    rows.append(("tracefs", "yes" if mounted else "no",
                 str(host.TRACEFS) + ("" if mounted_before or not mounted else " (mounted now)")))
    try:
        h = host.find_headers()
        rows.append(("kernel headers", "generic" if h.generic else "yes",
                     f"{h.release} at {h.path}" if h.generic else str(h.path)))
    except host.HostError as e:
        rows.append(("kernel headers", "no", str(e)))
    bcc = importlib.util.find_spec("bcc") is not None
    rows.append(("bcc (python3-bpfcc)", "yes" if bcc else "no", ""))

    code = 1
    statuses = []
    if host.is_root() and bcc:
        from .collector import LiveSource

        src = LiveSource(log=lambda m: None)
        try:
            ready = src.start()
            statuses = list(ready.probes)
            code = 0
        except host.HostError as e:
            rows.append(("probes", "no", str(e)))
            statuses = list(src.statuses)
        finally:
            src.close()

    console = Console(file=out, width=120)
    table = Table(title=f"memtrace doctor · kernel {host.kernel_release()}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    colour = {"yes": "green", "generic": "yellow", "no": "red", "attached": "green",
              "unavailable": "yellow", "failed": "red"}
    for check, status, detail in rows:
        table.add_row(check, f"[{colour.get(status, 'white')}]{status}[/]", detail)
    for p in statuses:
        detail = f"{p.via}: {p.reason}" if p.via else p.reason
        table.add_row(f"probe {p.name}", f"[{colour.get(p.status, 'white')}]{p.status}[/]", detail)
    console.print(table)
    console.print("core probes attach: " + ("yes" if code == 0 else "no"))
    return code
