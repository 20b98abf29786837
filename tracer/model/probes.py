"""What became of each probe memtrace tried to attach: a plain value every stage can show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

ATTACHED = "attached"
UNAVAILABLE = "unavailable"
FAILED = "failed"
STANDBY = "standby"  # loaded, attached only while armed (kernel/depth.py)


@dataclass(frozen=True)
class ProbeStatus:
    name: str
    status: str  # attached | standby | unavailable | failed
    via: Optional[str]
    reason: str

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "via": self.via, "reason": self.reason}


def attached_count(probes: Iterable[ProbeStatus]) -> int:
    return sum(1 for p in probes if p.status == ATTACHED)


@dataclass(frozen=True)
class Examination:
    """What `memtrace doctor` found: host checks and each probe's outcome."""

    kernel: str
    checks: tuple[tuple[str, str, str], ...]  # (check, status, detail)
    probes: tuple[ProbeStatus, ...]
    core_attached: bool
    cost: Optional["CostRates"] = None  # a short measurement of memtrace's own probes
    cost_note: str = ""  # why there is no measurement, or what it covered


@dataclass(frozen=True)
class ProbeRun:
    """What the kernel counted for one of memtrace's BPF programs (its BPF run-time stats):
    runs and the nanoseconds spent in them since the program was loaded. The kernel counts
    only while BPF run-time stats are on."""

    probe: str  # the probe's name in the plan (or the program's, for one outside it)
    runs: int
    run_time_ns: int


@dataclass(frozen=True)
class ProbeCost:
    """memtrace's own BPF programs at one moment: cumulative counters, so rates come from two
    readings. `counting` says whether the kernel was counting for memtrace (it holds BPF
    run-time stats on); `note` says why not."""

    at_ns: int  # CLOCK_MONOTONIC when read
    counting: bool
    probes: tuple[ProbeRun, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ProbeRate:
    """One probe between two readings."""

    probe: str
    events_per_s: float
    ns_per_event: Optional[float]  # None when it did not run
    cpu: float  # share of one CPU spent in it (0.01 = 1%)


@dataclass(frozen=True)
class CostRates:
    """memtrace's BPF programs between two readings: in all and per probe (busiest first)."""

    seconds: float
    cpu: float  # share of one CPU, all probes together
    events_per_s: float
    probes: tuple[ProbeRate, ...]


def cost_rates(before: Optional[ProbeCost], after: Optional[ProbeCost]) -> Optional[CostRates]:
    """Rates between two readings of the same programs; None when there are not two counted
    readings, they are in the wrong order, or no time passed. A probe missing from `before`
    counts from zero (it was loaded in between)."""
    if before is None or after is None or not after.counting or not before.counting:
        return None
    elapsed_ns = after.at_ns - before.at_ns
    if elapsed_ns <= 0:
        return None
    seconds = elapsed_ns / 1e9
    old = {p.probe: p for p in before.probes}
    rates = []
    for p in after.probes:
        b = old.get(p.probe)
        runs = p.runs - (b.runs if b else 0)
        ns = p.run_time_ns - (b.run_time_ns if b else 0)
        if runs < 0 or ns < 0:  # not the same program (reloaded): no honest rate
            continue
        rates.append(ProbeRate(p.probe, runs / seconds, ns / runs if runs else None,
                               ns / elapsed_ns))
    rates.sort(key=lambda r: (-r.cpu, -r.events_per_s, r.probe))
    return CostRates(seconds, sum(r.cpu for r in rates), sum(r.events_per_s for r in rates),
                     tuple(rates))
