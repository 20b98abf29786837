"""`memtrace doctor`'s checks: what this host offers and whether each probe attaches."""

from __future__ import annotations

import importlib.util

from ..errors import HostError
from ..host import system as host
from ..model.probes import Examination, ProbeStatus
from .failures import LiveSource


def examine() -> Examination:
    rows: list[tuple[str, str, str]] = []
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
    except HostError as e:
        rows.append(("kernel headers", "no", str(e)))
    bcc = importlib.util.find_spec("bcc") is not None
    rows.append(("bcc (python3-bpfcc)", "yes" if bcc else "no", ""))

    core = False
    statuses: list[ProbeStatus] = []
    if host.is_root() and bcc:
        src = LiveSource(log=lambda m: None)
        try:
            ready = src.start()
            statuses = list(ready.probes)
            core = True
        except HostError as e:
            rows.append(("probes", "no", str(e)))
            statuses = list(src.statuses)
        finally:
            src.close()
    return Examination(host.kernel_release(), tuple(rows), tuple(statuses), core)
