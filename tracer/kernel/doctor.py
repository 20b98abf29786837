"""`memtrace doctor`'s checks: what this host offers and whether each probe attaches."""

from __future__ import annotations

import importlib.util
import time
from typing import Optional

from ..errors import HostError
from ..host import system as host
from ..model.probes import CostRates, Examination, ProbeStatus, cost_rates
from . import depth
from .failures import LiveSource
from .probes import PLAN


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
    cost: Optional[CostRates] = None
    cost_note = "not measured: the probes did not attach"
    if host.is_root() and bcc:
        # Every probe attached, the adaptive ones too: doctor shows what can attach here and
        # what each costs when it is (watch/top/export attach the slab hooks only when armed).
        src = LiveSource(log=lambda m: None, probe_cost=True, slab_hooks=depth.ALWAYS)
        try:
            ready = src.start()
            statuses = [ProbeStatus(s.name, s.status, s.via,
                                    f"{s.reason}; {ADAPTIVE_NOTE}" if s.name in ADAPTIVE else s.reason)
                        for s in ready.probes]
            core = True
            cost, cost_note = measure_cost(src, COST_SECONDS)
        except HostError as e:
            rows.append(("probes", "no", str(e)))
            statuses = list(src.statuses)
        finally:
            src.close()
    return Examination(host.kernel_release(), tuple(rows), tuple(statuses), core, cost,
                       cost_note)


# The probes watch/top/export attach only while armed (kernel/depth.py).
ADAPTIVE = frozenset(spec.name for spec in PLAN if spec.adaptive)
ADAPTIVE_NOTE = "adaptive: attached after a failure or while memory is tight"

COST_SECONDS = 1.0  # how long doctor watches its own probes run on this host's activity


def measure_cost(src: LiveSource, seconds: float) -> tuple[Optional[CostRates], str]:
    """What the attached probes cost over `seconds` of whatever the host is doing (BPF
    run-time stats, held on only for the measurement): the rates, or None and why not."""
    if src.cost is None:
        return None, "not measured"
    before = src.cost.read()
    if not before.counting:
        return None, before.note
    time.sleep(seconds)
    rates = cost_rates(before, src.cost.read())
    if rates is None:
        return None, "not measured: the kernel stopped counting"
    return rates, f"over {rates.seconds:.1f} s of this host's activity"
