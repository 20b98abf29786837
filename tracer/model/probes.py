"""What became of each probe memtrace tried to attach: a plain value every stage can show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

ATTACHED = "attached"
UNAVAILABLE = "unavailable"
FAILED = "failed"


@dataclass(frozen=True)
class ProbeStatus:
    name: str
    status: str  # attached | unavailable | failed
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
