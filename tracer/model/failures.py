"""Plain values memtrace reasons about: failures, exact counters, the ready record, filters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .decode import Gfp
from .leaks import GrowingProcess, Growth
from .probes import ProbeCost, ProbeStatus

KINDS = ("syscall", "page_alloc", "slab", "vmalloc", "percpu", "oom_kill", "memcg")


@dataclass(frozen=True)
class KernelFailure:
    """A kernel-side allocation failure that happened inside a syscall."""

    kind: str
    size: Optional[int]
    order: Optional[int]
    gfp: Optional[Gfp]
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
class MemcgState:
    """The failing task's memory cgroup at the moment of failure, read in the kernel: what it
    had charged and its limit, and of the limits that apply (its own and its ancestors') the
    one nearest to being hit. Bytes; a limit of None means none is set."""

    usage: int
    limit: Optional[int]
    nearest_cgroup: Optional[str]  # the cgroup whose limit is nearest (itself or an ancestor)
    nearest_usage: int
    nearest_limit: Optional[int]
    nearest_levels_up: int = 0  # 0: the task's own cgroup


@dataclass(frozen=True)
class HostAtFailure:
    """Memory state that changes from one millisecond to the next, read in the kernel at the
    failure (an OOM kill, a page allocation failure, a huge page or range syscall). Bytes;
    None where it was not captured for this failure."""

    free: Optional[int] = None  # free pages of every zone
    available: Optional[int] = None  # MemAvailable as the kernel computes it, at that moment
    min_watermark: Optional[int] = None  # the zones' min watermarks, summed
    low_watermark: Optional[int] = None
    high_watermark: Optional[int] = None
    managed: Optional[int] = None  # memory the page allocator manages
    hugepages_total: Optional[int] = None  # the default huge page pool, in pages
    hugepages_free: Optional[int] = None
    hugepages_reserved: Optional[int] = None
    hugepages_surplus: Optional[int] = None
    hugepage_size: Optional[int] = None  # bytes
    range_mapped: Optional[bool] = None  # range syscalls: was all of [addr, addr+len) mapped?
    # free blocks per order of each zone ("node N zone NAME", as /proc/buddyinfo names it)
    free_blocks: Optional[Mapping[str, tuple[int, ...]]] = None


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
    gfp: Optional[Gfp] = None
    cause: Optional[str] = None
    user_stack: tuple[str, ...] = ()  # "function (module)", innermost first
    kernel_stack: tuple[str, ...] = ()
    args: Mapping[str, Any] = field(default_factory=dict)
    opportunistic: bool = False
    linked: tuple[KernelFailure, ...] = ()  # kernel failures inside this syscall
    detail: Mapping[str, Any] = field(default_factory=dict)  # kind-specific facts
    ts_ns: int = 0  # the kernel's monotonic clock; orders events from one source
    task: Optional[TaskState] = None  # syscall failures: limits at the moment of failure
    memcg: Optional[MemcgState] = None  # the memory cgroup's charge at the moment of failure
    host: Optional[HostAtFailure] = None  # fast-changing memory state at the moment of failure
    user_sources: tuple[Optional[str], ...] = ()  # "file:line" per user frame, where known
    explanation: Optional[str] = None  # the diagnosis: one actionable sentence
    evidence: Mapping[str, Any] = field(default_factory=dict)  # the numbers behind `cause`
    confidence: Optional[str] = None  # "confirmed" (kernel decision point) or "inferred"
    # oom_kill: what grew in the minutes before it, from the growth kept in memory at the
    # kill: the victim's top stacks first, then (a memory cgroup OOM) the cgroup's others
    grew: tuple[Growth, ...] = ()


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
    gfp: Optional[Gfp]
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
    cost: Optional[ProbeCost] = None  # memtrace's own probes (BPF run-time stats), when read
    probes: tuple[ProbeStatus, ...] = ()  # each probe's state now (adaptive ones change)
    growing: tuple[GrowingProcess, ...] = ()  # the processes growing fastest, when tracked


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
            s.cost,
            probes=s.probes,
            growing=tuple(g for g in s.growing if self.matches(g.pid, g.comm, g.cgroup)),
        )


def path_matches(path: Optional[str], wanted: str) -> bool:
    """True when path is the wanted cgroup or below it."""
    if path is None:
        return False
    if wanted == "/":
        return True
    return path == wanted or path.startswith(wanted.rstrip("/") + "/")
