"""Adds a cause to each failure as it arrives: evidence, then the rules."""

from __future__ import annotations

from ..host.cgroups import CgroupResolver
from ..model.failures import Failure
from .evidence import EvidenceSampler
from .rules import apply, diagnose


class Diagnoser:
    """Adds a cause to each failure, with evidence read right after it happened."""

    def __init__(self) -> None:
        self.sampler = EvidenceSampler(CgroupResolver())

    def __call__(self, failures: list[Failure]) -> list[Failure]:
        out = []
        for f in failures:
            if f.cause is None:
                f = apply(f, diagnose(f, self.sampler.evidence_for(f)))
            out.append(f)
        return out
