"""Plain values memtrace reasons about (failures, exact counters, probe status) and pure aggregation."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Deque, Iterable, Mapping, Optional, Sequence

from .cgroups import path_matches
from .probes import ProbeStatus

KINDS = ("syscall", "page_alloc", "slab", "vmalloc", "percpu", "oom_kill", "memcg")
KERNEL_KINDS = ("page_alloc", "slab", "vmalloc", "percpu")


@dataclass(frozen=True)
class KernelFailure:
    """A kernel-side allocation failure that happened inside a syscall."""

    kind: str
    size: Optional[int]
    order: Optional[int]
    gfp: Optional[str]
    opportunistic: bool
    cache: Optional[str] = None
    kernel_stack: tuple[str, ...] = ()
    ts_ns: int = 0


@dataclass(frozen=True)
class TaskState:
    """The failing task's memory and limits, captured in the kernel at the failure."""

    total_vm: int  # bytes
    data_vm: int  # bytes
    locked_vm: int  # bytes
    pinned_vm: int  # bytes
    map_count: int
    rlim_as: Optional[int]  # bytes; None = unlimited
    rlim_data: Optional[int]
    rlim_memlock: Optional[int]
    cap_ipc_lock: bool  # CAP_IPC_LOCK: RLIMIT_MEMLOCK does not apply
    mlock_future: bool  # mlockall(MCL_FUTURE): new mappings are locked
    unmapped_area_failed: bool = False  # the search for a free virtual range failed


@dataclass(frozen=True)
class Failure:
    """One allocation failure, as every view sees it."""

    time: float  # seconds since the epoch
    kind: str
    pid: int
    tid: int
    comm: str
    cgroup: Optional[str]
    cgroup_id: int
    syscall: Optional[str] = None
    errno: Optional[str] = None
    size: Optional[int] = None
    order: Optional[int] = None
    gfp: Optional[str] = None
    cause: Optional[str] = None
    user_stack: tuple[str, ...] = ()
    kernel_stack: tuple[str, ...] = ()
    args: Mapping[str, Any] = field(default_factory=dict)
    opportunistic: bool = False
    linked: tuple[KernelFailure, ...] = ()  # kernel failures inside this syscall
    detail: Mapping[str, Any] = field(default_factory=dict)  # kind-specific facts
    ts_ns: int = 0  # the kernel's monotonic clock; orders events from one source
    task: Optional[TaskState] = None  # syscall failures: limits at the moment of failure
    explanation: Optional[str] = None  # the diagnosis: one actionable sentence
    evidence: Mapping[str, Any] = field(default_factory=dict)  # the numbers behind `cause`
    confidence: Optional[str] = None  # "confirmed" (kernel decision point) or "inferred"


@dataclass(frozen=True)
class SyscallCount:
    pid: int
    comm: str
    cgroup: Optional[str]
    syscall: str
    errno: Optional[str]  # None for brk's silent failure
    count: int


@dataclass(frozen=True)
class KernelCount:
    pid: int
    comm: str
    cgroup: Optional[str]
    kind: str
    order: Optional[int]
    gfp: Optional[str]
    opportunistic: bool
    count: int


@dataclass(frozen=True)
class MemcgCount:
    cgroup: str
    event: str  # max, oom, oom_kill (v2 memory.events), failcnt, under_oom (v1)
    count: int  # increase since memtrace started


@dataclass(frozen=True)
class Snapshot:
    """The exact in-kernel totals at one moment, already filtered."""

    syscalls: tuple[SyscallCount, ...] = ()
    kernel: tuple[KernelCount, ...] = ()
    memcg: tuple[MemcgCount, ...] = ()
    drops: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Ready:
    version: str
    kernel: str
    probes: tuple[ProbeStatus, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Filter:
    pids: frozenset[int] = frozenset()
    cgroup: Optional[str] = None  # hierarchy-relative path; matches descendants too
    comm: Optional[str] = None

    def matches(self, pid: int, comm: str, cgroup: Optional[str]) -> bool:
        if self.pids and pid not in self.pids:
            return False
        if self.comm is not None and comm != self.comm:
            return False
        if self.cgroup is not None and not path_matches(cgroup, self.cgroup):
            return False
        return True

    def failure(self, f: Failure) -> bool:
        return self.matches(f.pid, f.comm, f.cgroup)

    def snapshot(self, s: Snapshot) -> Snapshot:
        return Snapshot(
            tuple(c for c in s.syscalls if self.matches(c.pid, c.comm, c.cgroup)),
            tuple(c for c in s.kernel if self.matches(c.pid, c.comm, c.cgroup)),
            tuple(c for c in s.memcg
                  if self.cgroup is None or path_matches(c.cgroup, self.cgroup)),
            s.drops,
        )


def is_failure_count(c: KernelCount) -> bool:
    """Opportunistic attempts with a fallback are counted apart, never as failures."""
    return not c.opportunistic


def _add(d: dict, key: Any, n: int) -> None:
    d[key] = d.get(key, 0) + n


def failures_by_kind(s: Snapshot) -> dict[str, int]:
    out = {k: 0 for k in KINDS}
    for c in s.syscalls:
        out["syscall"] += c.count
    for k in s.kernel:
        if is_failure_count(k):
            _add(out, k.kind, k.count)
    for m in s.memcg:
        out["memcg"] += m.count
    return out


def opportunistic_by_kind(s: Snapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in s.kernel:
        if k.opportunistic:
            _add(out, k.kind, k.count)
    return out


def total_failures(s: Snapshot) -> int:
    """Allocation failures: syscalls, kernel allocations, OOM kills. Memory cgroup limit
    hits are counted apart (one failed allocation can hit a limit many times)."""
    return sum(n for kind, n in failures_by_kind(s).items() if kind != "memcg")


def memcg_limit_hits(s: Snapshot) -> list[tuple[str, str, int]]:
    """(cgroup, event, increase since start) largest first."""
    return sorted(((m.cgroup, m.event, m.count) for m in s.memcg), key=lambda t: (-t[2], t[0]))


def failures_by_process(s: Snapshot) -> list[tuple[int, str, int]]:
    """(pid, comm, failures) largest first; opportunistic kernel attempts excluded."""
    d: dict[tuple[int, str], int] = {}
    for c in s.syscalls:
        _add(d, (c.pid, c.comm), c.count)
    for k in s.kernel:
        if is_failure_count(k):
            _add(d, (k.pid, k.comm), k.count)
    return sorted(((p, c, n) for (p, c), n in d.items()), key=lambda t: (-t[2], t[0]))


def failures_by_cgroup(s: Snapshot) -> list[tuple[str, int]]:
    d: dict[str, int] = {}
    for c in s.syscalls:
        _add(d, c.cgroup or "?", c.count)
    for k in s.kernel:
        if is_failure_count(k):
            _add(d, k.cgroup or "?", k.count)
    return sorted(d.items(), key=lambda t: (-t[1], t[0]))


def failures_by_syscall(s: Snapshot) -> list[tuple[str, str, int]]:
    """(syscall, errno name or "brk failed", count) largest first."""
    d: dict[tuple[str, str], int] = {}
    for c in s.syscalls:
        _add(d, (c.syscall, c.errno or "no errno"), c.count)
    return sorted(((a, b, n) for (a, b), n in d.items()), key=lambda t: (-t[2], t[0]))


def page_alloc_by_order(s: Snapshot, opportunistic: Optional[bool] = False
                        ) -> list[tuple[int, str, int]]:
    """(order, gfp, count) for page allocation failures, ordered by order then count."""
    d: dict[tuple[int, str], int] = {}
    for k in s.kernel:
        if k.kind != "page_alloc":
            continue
        if opportunistic is not None and k.opportunistic != opportunistic:
            continue
        _add(d, (k.order or 0, k.gfp or "?"), k.count)
    return sorted(((o, g, n) for (o, g), n in d.items()), key=lambda t: (t[0], -t[2], t[1]))


def summary_counts(s: Snapshot) -> dict[str, Any]:
    """The `counts` object of the JSON summary: exact in-kernel totals."""
    by_syscall: dict[str, dict[str, int]] = {}
    for name, err, n in failures_by_syscall(s):
        by_syscall.setdefault(name, {})[err] = n
    by_order: dict[str, dict[str, int]] = {}
    for order, gfp, n in page_alloc_by_order(s, opportunistic=False):
        by_order.setdefault(str(order), {})[gfp] = n
    opp_by_order: dict[str, int] = {}
    for order, _gfp, n in page_alloc_by_order(s, opportunistic=True):
        _add(opp_by_order, str(order), n)
    memcg: dict[str, dict[str, int]] = {}
    for m in s.memcg:
        memcg.setdefault(m.cgroup, {})[m.event] = m.count
    return {
        "total": total_failures(s),
        "by_kind": failures_by_kind(s),
        "opportunistic": opportunistic_by_kind(s),
        "by_syscall": by_syscall,
        "by_process": {str(p): {"comm": c, "failures": n} for p, c, n in failures_by_process(s)},
        "by_cgroup": dict(failures_by_cgroup(s)),
        "page_alloc_by_order": by_order,
        "opportunistic_page_alloc_by_order": opp_by_order,
        "memcg_events": memcg,
    }


class Dashboard:
    """What the live views show: the latest exact totals plus the most recent events."""

    def __init__(self, recent: int = 200):
        self.ready: Optional[Ready] = None
        self.snapshot = Snapshot()
        self.recent: Deque[Failure] = collections.deque(maxlen=recent)
        self.events_seen = 0
        self.started: Optional[float] = None
        self.by_cause: dict[str, int] = {}  # from the events received (detail, not totals)
        self.findings: dict[str, Failure] = {}  # latest diagnosed failure per process/cgroup

    def add(self, failures: Iterable[Failure]) -> None:
        for f in failures:
            self.recent.append(f)
            self.events_seen += 1
            if f.cause:
                _add(self.by_cause, f.cause, 1)
                who = f"pid {f.pid} ({f.comm})" if f.pid else f"cgroup {f.cgroup}"
                self.findings.pop(who, None)
                self.findings[who] = f  # re-inserted: newest last
                while len(self.findings) > 50:
                    self.findings.pop(next(iter(self.findings)))

    def latest_findings(self, n: int) -> list[tuple[str, Failure]]:
        return list(self.findings.items())[-n:][::-1]

    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def latest(self, n: int) -> Sequence[Failure]:
        return list(self.recent)[-n:]
