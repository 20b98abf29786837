"""Memory cgroup limit hits, from the cgroups' own counters (this kernel has no tracepoint for them)."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .cgroups import CgroupResolver, Hierarchy
from .state import parse_limit

# v2 memory.events keys that mean the limit was hit (low/high are throttling, reported too).
V2_EVENTS = ("max", "oom", "oom_kill", "oom_group_kill", "high")
# A state, not a counter (v1 memory.oom_control): reported once each time it turns on.
UNDER_OOM = "under_oom"

# How often the hierarchy is walked for cgroups with a limit of their own.
DEFAULT_RESCAN_INTERVAL = 2.0
# The most cgroups polled once a second; what did not fit is counted in `left_out`. A poll
# reads one small file per v2 cgroup, two per v1 cgroup (~10-25 us a cgroup): a full set is
# ~0.1 s of CPU a second, the most memtrace spends on this.
MAX_POLLED = 4096
# A rescan may take at most 1/RESCAN_BUDGET of the time between two: on a host where a walk
# takes longer than expected (tens of thousands of cgroups) rescans are spaced out instead.
RESCAN_BUDGET = 20


def _read_small(path: str) -> str:
    """A cgroup file of a few lines, in one read: ~8 us, against ~13 for Path.read_text()."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("ascii", "replace")
    finally:
        os.close(fd)


def read_counters(directory: Path, version: int) -> dict[str, int]:
    """The limit counters of one memory cgroup; {} when it is gone or unreadable."""
    out: dict[str, int] = {}
    try:
        if version == 2:
            for line in _read_small(f"{directory}/memory.events").splitlines():
                key, _, value = line.partition(" ")
                if key in V2_EVENTS:
                    out[key] = int(value)
        else:
            out["failcnt"] = int(_read_small(f"{directory}/memory.failcnt").strip() or 0)
            for line in _read_small(f"{directory}/memory.oom_control").splitlines():
                key, _, value = line.partition(" ")
                if key in ("oom_kill", UNDER_OOM):
                    out[key] = int(value)
    except (OSError, ValueError):
        return {}
    return out


def has_own_limit(directory: str, version: int) -> Optional[bool]:
    """Whether a (non-root) memory cgroup has a limit of its own: v2 memory.max or
    memory.high set, v1 memory.limit_in_bytes below the no-limit value. None when a v2
    cgroup has no memory controller (no memory.max), so that none of its descendants can."""
    names = ("memory.max", "memory.high") if version == 2 else ("memory.limit_in_bytes",)
    for name in names:
        try:
            if parse_limit(_read_small(f"{directory}/{name}")) is not None:
                return True
        except FileNotFoundError:
            if version == 2 and name == "memory.max":
                return None
            return False
        except (OSError, ValueError):
            return False
    return False


@dataclass
class _Polled:
    """What is remembered of one polled cgroup (mutable: it changes at every poll)."""
    inode: int  # the directory's: a cgroup removed and made again under the same path differs
    base: dict[str, int]  # its counters when memtrace started ({} if it was made later)
    last: dict[str, int]  # its counters at the last poll
    carried: dict[str, int] = field(default_factory=dict)  # earlier cgroups of this path


def _since_start(p: _Polled) -> dict[str, int]:
    out = dict(p.carried)
    for key, value in p.last.items():
        if key != UNDER_OOM:
            out[key] = out.get(key, 0) + value - p.base.get(key, 0)
    return out


def _ancestors(cgroup_path: str) -> list[str]:
    """"/a/b/c" -> ["/a/b/c", "/a/b", "/a"]: the cgroup and its ancestors below the root."""
    parts = cgroup_path.strip("/").split("/")
    return ["/" + "/".join(parts[:n]) for n in range(len(parts), 0, -1)]


class MemcgWatcher:
    """Reports increases of the limit counters of memory cgroups.

    Polled (by `poll()`, about once a second) are the cgroups with a limit of their own
    (v2 memory.max or memory.high, v1 memory.limit_in_bytes), found by walking the memory
    hierarchy every `rescan_interval` seconds, and the cgroups `watch()` was given (those
    that showed failures) with their ancestors, so that the ancestor whose limit a child
    without one hit is polled too. v2 counters are hierarchical: an event in a child is
    counted again in each polled ancestor, as the kernel counts it.

    Every memory cgroup's counters are read once at start, so only what happens after
    that is reported, even for a cgroup found (limited, or watched) later; cgroups created
    later count from zero, so one limited between two rescans still reports every event
    since it was made. A cgroup that disappears is dropped from polling (its totals are
    kept); what it counted between its last poll and its removal is lost.

    At most `max_polled` cgroups are polled (watched ones first, then the limited ones
    closest to the root); how many more would have been is in `left_out`."""

    def __init__(self, resolver: CgroupResolver, rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
                 max_polled: int = MAX_POLLED, clock: Callable[[], float] = time.monotonic):
        self.resolver = resolver
        self.hierarchy: Optional[Hierarchy] = resolver.memory_hierarchy
        self.rescan_interval = rescan_interval
        self.max_polled = max_polled
        self.left_out = 0  # cgroups to poll that did not fit under max_polled (last rescan)
        self.rescans = 0
        self.last_rescan_seconds = 0.0  # what the last walk cost
        self._clock = clock
        self._next_rescan = 0.0
        self._polled: dict[str, _Polled] = {}
        self._watched: set[str] = set()  # given to watch() (with ancestors), still existing
        # path -> (inode, non-zero counters) when memtrace started, until the cgroup is polled
        self._baseline: dict[str, tuple[int, dict[str, int]]] = {}
        # totals of polled cgroups that disappeared, oldest first (at most max_polled)
        self._gone: OrderedDict[str, dict[str, int]] = OrderedDict()
        if self.hierarchy is not None:
            self._rescan(take_baseline=True)

    # -- which cgroups are polled ---------------------------------------------------------------
    def watch(self, cgroup_path: Optional[str]) -> None:
        """Poll this cgroup and its ancestors (below the root) from now on."""
        if not cgroup_path or cgroup_path == "/" or self.hierarchy is None:
            return
        if any(part in ("", ".", "..") for part in cgroup_path.strip("/").split("/")):
            return  # a name from the traced system must not lead outside the hierarchy
        for path in _ancestors(cgroup_path):
            if path in self._polled or path in self._watched:
                continue  # called for every failure: the common case costs no system call
            try:
                inode = os.stat(self._dir(path)).st_ino
            except OSError:
                continue  # gone already: nothing left to read
            self._watched.add(path)
            if not self._start_polling(path, inode):
                self.left_out += 1  # rescans retry it, watched ones first, as room frees

    def rescan(self) -> None:
        """Walk the memory hierarchy: poll the cgroups that now have a limit, forget those
        that are gone."""
        if self.hierarchy is not None:
            self._rescan(take_baseline=False)

    def _dir(self, path: str) -> Path:
        assert self.hierarchy is not None
        return self.hierarchy.mount / path.lstrip("/")

    def _rescan(self, take_baseline: bool) -> None:
        # Cost, per memory cgroup: one stat (~4 us; its link count says whether it has
        # child directories, so leaves are not listed), one read of a small file (~8 us: v1
        # memory.limit_in_bytes; v2 memory.max, then memory.high unless memory.max is set)
        # and a listing of the directory (~18 us) only for those with children. Measured on
        # v1 (kernel 6.18): ~15 ms per thousand cgroups, every rescan_interval seconds (and
        # never more than 1/RESCAN_BUDGET of the time). v2 subtrees without the memory
        # controller are skipped. At start every cgroup's counters are read once, too.
        assert self.hierarchy is not None
        started = self._clock()
        version = self.hierarchy.version
        seen: dict[str, int] = {}  # path -> inode of every memory cgroup below the root
        limited: list[str] = []
        pending: list[tuple[str, str]] = [(str(self.hierarchy.mount), "/")]
        while pending:
            directory, path = pending.pop()
            if path != "/":
                try:
                    st = os.stat(directory, follow_symlinks=False)
                except OSError:
                    continue  # removed while walking
                limit = has_own_limit(directory, version)
                if limit is None:
                    continue  # no memory controller here, hence none below
                seen[path] = st.st_ino
                if limit:
                    limited.append(path)
                if take_baseline:
                    counters = {k: v for k, v in read_counters(Path(directory), version).items()
                                if v}
                    if counters:
                        self._baseline[path] = (st.st_ino, counters)
                if st.st_nlink == 2:  # "." and its entry in the parent: no subdirectories
                    continue
            try:
                with os.scandir(directory) as entries:
                    for e in entries:
                        if e.is_dir(follow_symlinks=False):
                            child = "/" + e.name if path == "/" else f"{path}/{e.name}"
                            pending.append((e.path, child))
            except OSError:
                continue  # removed while walking
        self._forget_missing(seen)
        self._poll_more(seen, limited)
        self.rescans += 1
        self.last_rescan_seconds = max(0.0, self._clock() - started)
        self._next_rescan = self._clock() + max(self.rescan_interval,
                                                RESCAN_BUDGET * self.last_rescan_seconds)

    def _forget_missing(self, seen: dict[str, int]) -> None:
        """Drop what is gone; a cgroup missed by the walk is only dropped when its directory
        is gone too (it may have been made after the walk passed its parent)."""
        for path in list(self._polled):
            p = self._polled[path]
            inode = seen.get(path)
            if inode is None:
                if not self._dir(path).is_dir():
                    self._drop(path)
            elif inode != p.inode:  # removed and made again since the last rescan
                p.carried, p.base, p.last, p.inode = _since_start(p), {}, {}, inode
        self._watched = {path for path in self._watched
                         if path in seen or self._dir(path).is_dir()}
        self._baseline = {path: b for path, b in self._baseline.items() if seen.get(path) == b[0]}

    def _poll_more(self, seen: dict[str, int], limited: list[str]) -> None:
        """Start polling what should be and is not: watched cgroups, then limited ones
        nearest the root (an ancestor's limit covers its whole subtree)."""
        wanted = [p for p in sorted(self._watched) if p not in self._polled]
        wanted += sorted((p for p in limited if p not in self._polled and p not in self._watched),
                         key=lambda p: (p.count("/"), p))
        left_out = 0
        for path in wanted:
            inode = seen.get(path)
            if inode is None:
                try:
                    inode = os.stat(self._dir(path)).st_ino
                except OSError:
                    continue
            if not self._start_polling(path, inode):
                left_out += 1
        self.left_out = left_out

    def _start_polling(self, path: str, inode: int) -> bool:
        """False when max_polled cgroups are polled already."""
        if len(self._polled) >= self.max_polled:
            return False
        known = self._baseline.pop(path, None)
        base = dict(known[1]) if known is not None and known[0] == inode else {}
        self._polled[path] = _Polled(inode, base, dict(base), self._gone.pop(path, {}))
        return True

    def _drop(self, path: str) -> None:
        totals = {k: n for k, n in _since_start(self._polled.pop(path)).items() if n > 0}
        self._watched.discard(path)
        if totals:
            self._gone[path] = totals
            self._gone.move_to_end(path)
            while len(self._gone) > self.max_polled:
                self._gone.popitem(last=False)

    # -- counters -------------------------------------------------------------------------------
    def poll(self) -> list[tuple[str, str, int, int]]:
        """(cgroup, event, increase since last poll, total since start) for each increase;
        rescans the hierarchy first when it is time to."""
        out: list[tuple[str, str, int, int]] = []
        if self.hierarchy is None:
            return out
        if self._clock() >= self._next_rescan:
            self.rescan()
        for path in sorted(self._polled):
            now = read_counters(self._dir(path), self.hierarchy.version)
            if not now:
                if not self._dir(path).is_dir():
                    self._drop(path)
                continue
            p = self._polled[path]
            if any(now.get(k, 0) < v for k, v in p.last.items() if k != UNDER_OOM):
                # Counters only grow: this is a new cgroup made under the same path.
                p.carried, p.base, p.last = _since_start(p), {}, {}
            for key, value in now.items():
                if key == UNDER_OOM:
                    if value and not p.last.get(key, 0):
                        out.append((path, key, 1, 1))
                    continue
                prev = p.last.get(key, 0)
                if value > prev:
                    out.append((path, key, value - prev,
                                p.carried.get(key, 0) + value - p.base.get(key, 0)))
            p.last = now
        return out

    def totals(self) -> list[tuple[str, str, int]]:
        """(cgroup, event, increase since start) for every cgroup polled since start."""
        merged: dict[str, dict[str, int]] = {path: dict(t) for path, t in self._gone.items()}
        for path, p in self._polled.items():
            merged[path] = _since_start(p)  # carried holds what _gone had for this path
        return [(path, key, n) for path in sorted(merged)
                for key, n in merged[path].items() if n > 0]
