"""`memtrace report`: a whole recording read back into totals, causes and findings."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Deque, Optional

from ..errors import ReplayError
from ..model.failures import Failure, Ready
from ..model.totals import Tally, summary_counts
from .format import RecordedProbes, RecordedSummary
from .reader import RecordingReader


@dataclass
class Report:
    """What `memtrace report` shows: the totals, the causes and the findings of a recording."""

    path: str
    ready: Optional[Ready]
    counts: dict[str, Any]  # shaped like model.summary_counts()
    counts_from: str  # "summary" (exact in-kernel totals) or "failure_lines"
    dropped: Optional[dict[str, int]]  # from the summary; None without one
    failure_lines: int
    by_cause: dict[str, int]  # from the failure lines
    findings: list[tuple[str, Failure]]  # the latest diagnosed failure per process/cgroup, newest first
    problems: list[tuple[int, str]]  # (line, what was wrong): skipped lines
    first: Optional[float] = None  # recorded time of the first and last failure
    last: Optional[float] = None
    # the latest OOM kills that say what grew before them (`grew`), newest first
    oom_kills: list[Failure] = field(default_factory=list)


MAX_OOM_KILLS = 20  # OOM kills a report names with what grew (memory stays bounded)


def finding_key(f: Failure) -> str:
    """Whom a finding is about, as the dashboard names it."""
    return f"pid {f.pid} ({f.comm})" if f.pid else f"cgroup {f.cgroup}"


def build_report(path: str, reader: RecordingReader) -> Report:
    """Read a whole recording, streaming (memory does not grow with its length); ReplayError
    when not one line of it is a memtrace record."""
    ready: Optional[Ready] = None
    summary: Optional[RecordedSummary] = None
    tally = Tally()
    by_cause: dict[str, int] = {}
    findings: dict[str, Failure] = {}
    oom_kills: Deque[Failure] = collections.deque(maxlen=MAX_OOM_KILLS)
    first: Optional[float] = None
    last: Optional[float] = None
    seen = False
    for _n, rec in reader:
        seen = True
        if isinstance(rec, Ready):
            ready = ready or rec
        elif isinstance(rec, RecordedSummary):
            summary = rec
        elif isinstance(rec, RecordedProbes):
            continue  # probe states over time: the ready line's list is what the report shows
        else:
            tally.add(rec)
            first = rec.time if first is None else min(first, rec.time)
            last = rec.time if last is None else max(last, rec.time)
            if rec.kind == "oom_kill" and rec.grew:
                oom_kills.append(rec)
            if rec.cause:
                by_cause[rec.cause] = by_cause.get(rec.cause, 0) + 1
                who = finding_key(rec)
                findings.pop(who, None)
                findings[who] = rec  # re-inserted: newest last
    if not seen:
        raise ReplayError("no memtrace records in it")
    if summary is not None:
        counts, counts_from = dict(summary.counts), "summary"
        dropped: Optional[dict[str, int]] = dict(summary.dropped)
    else:
        counts, counts_from, dropped = summary_counts(tally.snapshot()), "failure_lines", None
    return Report(path=path, ready=ready, counts=counts, counts_from=counts_from,
                  dropped=dropped, failure_lines=tally.events,
                  by_cause=dict(sorted(by_cause.items(), key=lambda t: (-t[1], t[0]))),
                  findings=list(findings.items())[::-1],
                  problems=list(reader.problems), first=first, last=last,
                  oom_kills=list(oom_kills)[::-1])
