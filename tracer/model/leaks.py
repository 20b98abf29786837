"""Leak profiling model: who holds or grows a process's memory, by call stack, over time."""

from __future__ import annotations

import bisect
import collections
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Deque, Iterable, Optional

GROWTH = "growth"
MALLOC = "malloc"

# Allocator functions attached in malloc mode, numbered as in bpf/leaks.bpf.c (LK_FN_*).
ALLOCATORS = ("malloc", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
              "memalign", "valloc", "pvalloc")
FREE = "free"
ALLOCATOR_LIBRARIES = ("libjemalloc", "libtcmalloc", "libc.so", "libc-")

TREND_POINTS = 30

Frames = tuple[str, ...]


@dataclass
class StackStats:
    """One call stack's share of the process's memory."""

    frames: Frames
    bytes: int = 0
    count: int = 0
    history: Deque[int] = field(default_factory=lambda: collections.deque(maxlen=TREND_POINTS))
    bytes_per_second: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "count": self.count,
                "bytes_per_second": round(self.bytes_per_second, 1),
                "frames": list(self.frames), "trend": list(self.history)}


@dataclass(frozen=True)
class AllocFailure:
    """An allocator call that returned NULL: a failure, never a leak."""

    time: float
    pid: int
    function: str
    size: int
    frames: Frames

    def to_json(self) -> dict[str, Any]:
        return {"type": "alloc_failure", "time": _iso(self.time), "pid": self.pid,
                "function": self.function, "size": self.size, "frames": list(self.frames)}


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class RangeLedger:
    """Address ranges a process gained, each owned by the stack that created it.

    Unmapping subtracts from the owners of the ranges it covers, so what remains is
    the growth still outstanding, by stack."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: dict[int, tuple[int, Frames]] = {}  # start -> (end, owner)

    def add(self, start: int, length: int, owner: Frames) -> None:
        if length <= 0:
            return
        self.remove(start, length)  # MAP_FIXED over an old range replaces it
        bisect.insort(self._starts, start)
        self._ranges[start] = (start + length, owner)

    def remove(self, start: int, length: int) -> list[tuple[Frames, int]]:
        """Forget [start, start+length); returns (owner, bytes) for what was removed."""
        end = start + length
        removed: list[tuple[Frames, int]] = []
        i = bisect.bisect_right(self._starts, start) - 1
        i = max(i, 0)
        while i < len(self._starts):
            s = self._starts[i]
            if s >= end:
                break
            e, owner = self._ranges[s]
            if e <= start:
                i += 1
                continue
            lo, hi = max(s, start), min(e, end)
            removed.append((owner, hi - lo))
            del self._ranges[s]
            self._starts.pop(i)
            if s < lo:  # the part before stays
                self._ranges[s] = (lo, owner)
                self._starts.insert(i, s)
                i += 1
            if hi < e:  # the part after stays
                self._ranges[hi] = (e, owner)
                self._starts.insert(i, hi)
                i += 1
        return removed

    def owner_of(self, start: int, length: int) -> list[tuple[Frames, int]]:
        """(owner, bytes) overlapping [start, start+length) without removing them."""
        end = start + length
        out = []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            s = self._starts[i]
            e, owner = self._ranges[s]
            if e > start:
                out.append((owner, min(e, end) - max(s, start)))
            i += 1
        return out

    def total(self) -> int:
        return sum(e - s for s, (e, _o) in self._ranges.items())


class LeakProfile:
    """Outstanding bytes and growth by stack for the traced processes."""

    def __init__(self, mode: str, pids: Iterable[int]):
        self.mode = mode
        self.pids = sorted(set(pids))
        self.stacks: dict[Frames, StackStats] = {}
        self.sources: dict[Frames, tuple[Optional[str], ...]] = {}  # file:line per frame
        self.failures: list[AllocFailure] = []
        self.failure_count = 0
        self.drops: dict[str, int] = {}
        self.ledgers: dict[int, RangeLedger] = {}
        self.exited: set[int] = set()
        self._last_tick: Optional[float] = None

    # -- growth mode ----------------------------------------------------------------------
    def _stack(self, frames: Frames) -> StackStats:
        st = self.stacks.get(frames)
        if st is None:
            st = self.stacks[frames] = StackStats(frames)
        return st

    def _ledger(self, pid: int) -> RangeLedger:
        return self.ledgers.setdefault(pid, RangeLedger())

    def grow(self, pid: int, start: int, length: int, frames: Frames) -> None:
        """A mapping or heap extension made by `frames`."""
        self._ledger(pid).add(start, length, frames)
        st = self._stack(frames)
        st.bytes += length
        st.count += 1

    def shrink(self, pid: int, start: int, length: int) -> None:
        for owner, n in self._ledger(pid).remove(start, length):
            st = self._stack(owner)
            st.bytes -= n
            st.count = max(st.count - 1, 0) if st.bytes <= 0 else st.count

    def move(self, pid: int, old: int, old_len: int, new: int, new_len: int,
             frames: Frames) -> None:
        """mremap: the old range's owners keep what moved; growth belongs to the caller."""
        owners = self._ledger(pid).remove(old, old_len)
        for owner, n in owners:
            self._stack(owner).bytes -= n
        pos = new
        for owner, n in owners:
            keep = min(n, new + new_len - pos)
            if keep <= 0:
                break
            self._ledger(pid).add(pos, keep, owner)
            self._stack(owner).bytes += keep
            pos += keep
        if new + new_len > pos:
            self.grow(pid, pos, new + new_len - pos, frames)

    def touched(self, pid: int, addr: int, frames: Frames, weight: int) -> None:
        """A sampled first touch of memory, standing for `weight` bytes. A touch inside
        growth already attributed (a traced mmap or heap extension) is not counted twice:
        touches matter for memory that was reserved before tracing began."""
        if self._ledger(pid).owner_of(addr, 1):
            return
        st = self._stack(frames)
        st.bytes += weight
        st.count += 1

    # -- malloc mode ----------------------------------------------------------------------
    def set_outstanding(self, frames: Frames, nbytes: int, count: int) -> None:
        st = self._stack(frames)
        st.bytes += nbytes  # several kernel keys can unwind to the same frames
        st.count += count

    def reset_outstanding(self) -> None:
        for st in self.stacks.values():
            st.bytes = 0
            st.count = 0

    def failed(self, f: AllocFailure) -> None:
        self.failure_count += 1
        self.failures.append(f)
        del self.failures[:-100]

    # -- time -----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Close an interval: record each stack's bytes and its growth rate."""
        elapsed = None if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        for st in self.stacks.values():
            prev = st.history[-1] if st.history else None
            st.history.append(st.bytes)
            if elapsed and prev is not None and elapsed > 0:
                st.bytes_per_second = (st.bytes - prev) / elapsed

    def top(self, n: Optional[int] = None) -> list[StackStats]:
        live = [s for s in self.stacks.values() if s.bytes > 0]
        live.sort(key=lambda s: (-s.bytes, s.frames))
        return live if n is None else live[:n]

    def growing(self, n: int) -> list[StackStats]:
        live = [s for s in self.stacks.values() if s.bytes_per_second > 0]
        live.sort(key=lambda s: (-s.bytes_per_second, s.frames))
        return live[:n]

    def stack_json(self, s: StackStats) -> dict[str, Any]:
        obj = s.to_json()
        sources = self.sources.get(s.frames)
        if sources and any(sources):
            obj["sources"] = list(sources)  # "file.c:42" where debug info exists, else null
        return obj

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.stacks.values() if s.bytes > 0)

    def to_json(self, now: float, final: bool = False, top: Optional[int] = None
                ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "type": "leaks", "time": _iso(now), "mode": self.mode, "pids": self.pids,
            "stacks": [self.stack_json(s) for s in self.top(top)],
            "total_bytes": self.total_bytes(), "failures": self.failure_count,
            "dropped": dict(self.drops),
        }
        if final:
            obj["final"] = True
            obj["exited"] = sorted(self.exited)
        return obj
