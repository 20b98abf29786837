"""Growth events (struct lk_event, from bpf/growth.bpf.h) turned into a LeakProfile: the one
decoder of `memtrace leaks` growth mode (LeakSource) and of the failure tracer's growth
tracking (LiveSource), which differ only in how they find a process's code."""

from __future__ import annotations

import ctypes as ct
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from ..model.leaks import Frames, LeakProfile
from ..unwind.unwinder import Unwinder
from . import abi

Log = Callable[[str], None]
# (pid, refresh) -> the unwinder of pid's code; refresh: its code changed (or a frame fell
# outside every mapping it knew)
UnwinderFor = Callable[[int, bool], Unwinder]
# a memory cgroup's kernfs id -> its path relative to its hierarchy, None when unknown
CgroupName = Callable[[int], Optional[str]]

# Frame names remembered per process, and stacks' sources kept: past this many, forgotten
# (they are found again on demand).
MAX_NAMES = 65536

# The event kinds this decoder turns into profile calls (the rest are malloc mode's and the
# leak profiler's own: forks it follows, stacks and allocator failures).
GROWTH_KINDS = frozenset((abi.LK_EV_MMAP, abi.LK_EV_BRK, abi.LK_EV_MUNMAP,
                          abi.LK_EV_BRK_SHRINK, abi.LK_EV_MADVISE, abi.LK_EV_MREMAP,
                          abi.LK_EV_FAULT, abi.LK_EV_EXEC, abi.LK_EV_EXIT))


def process_start(pid: int, proc: str = "/proc") -> Optional[float]:
    """When the process started, in wall-clock seconds (None when it is gone)."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
        with open(f"{proc}/uptime") as f:
            uptime = float(f.read().split()[0])
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def leak_event(data: Any, size: int) -> Optional[abi.LeakEvent]:
    """The ring buffer record at `data` as a struct lk_event, its stack length cut to what the
    record holds (never read past it); None for a record too short to be one."""
    if size < ct.sizeof(abi.LeakEvent) - abi.LK_STACK_BYTES:
        return None
    e = ct.cast(data, ct.POINTER(abi.LeakEvent)).contents
    if e.stack_len > min(abi.LK_STACK_BYTES, size - abi.LeakEvent.stack.offset):
        e.stack_len = 0
    return e


# Sampled first touches a batched decoder holds until the end of the read they came in.
MAX_WAITING = 4096


@dataclass
class _Touch:
    """A sampled first touch waiting for the end of its read, its stack copied out of the
    ring buffer: released within the same read (an allocator's churn), it is never
    unwound."""

    pid: int
    addr: int
    length: int
    weight: int
    t: float
    ip: int
    sp: int
    bp: int
    stack: bytes
    comm: str
    cgroup_id: int


class GrowthDecoder:
    """Feeds one LeakProfile from growth events: names each sample's frames (unwinding the copy
    of the user stack with the binaries' CFI, through code without frame pointers), says who
    the process is (name, memory cgroup, start), and counts the samples the kernel lost."""

    def __init__(self, profile: LeakProfile, unwinder: UnwinderFor, cgroup_name: CgroupName,
                 clock_offset: Optional[float] = None, with_sources: bool = True,
                 batched: bool = False):
        self.profile = profile
        # batched: first touches wait for flush() (the end of a read); one released before
        # then (munmap, madvise, a shrinking brk) is dropped without unwinding its stack,
        # most of the cost of a sample. A churning allocator (map, touch, unmap) then costs
        # next to nothing; what stays is named as before.
        self.batched = batched
        self._waiting: list[_Touch] = []
        self.released_unread = 0  # touches released within their read: never unwound
        # where a waiting touch that cannot be named goes (None: raised to the caller)
        self.on_error: Optional[Callable[[Exception], None]] = None
        # file:line per frame (the leak profiler's output has them); reading a module's line
        # table costs tens to hundreds of ms, which always-on tracking of every process on a
        # host does not spend on frames nobody may ever look at
        self.with_sources = with_sources
        self._unwinder = unwinder
        self._cgroup_name = cgroup_name
        self._clock_offset = (time.time() - time.monotonic() if clock_offset is None
                              else clock_offset)
        # pid -> (frame address, exact) -> its name and source; forgotten when the process
        # maps new code (exec, a refresh) or exits
        self._names: dict[int, dict[tuple[int, bool], tuple[str, Optional[str]]]] = {}
        self._lost_seen: dict[int, int] = {}

    def time(self, e: Any) -> float:
        """The event's time in wall-clock seconds (the kernel stamps CLOCK_MONOTONIC)."""
        return self._clock_offset + e.ts_ns / 1e9

    # -- frames ---------------------------------------------------------------------------
    def frames(self, e: Any) -> Frames:
        """The sampled thread's stack as "function (module)", innermost first."""
        stack = ct.string_at(ct.addressof(e.stack), e.stack_len) if e.stack_len else b""
        return self._frames(int(e.pid), int(e.ip), int(e.sp), int(e.bp), stack)

    def _frames(self, pid: int, ip: int, sp: int, bp: int, stack: bytes) -> Frames:
        if not stack:
            return (f"0x{ip:x}",) if ip else ("[no stack]",)
        rows = self._symbolized(pid, self._unwinder(pid, False).unwind(ip, sp, bp, stack))
        if rows and "[unknown]" in rows[0][0]:
            self._names.pop(pid, None)  # a library loaded since we last looked
            unwinder = self._unwinder(pid, True)
            rows = self._symbolized(pid, unwinder.unwind(ip, sp, bp, stack))
        frames = tuple(text for text, _ in rows)
        if self.with_sources:
            if len(self.profile.sources) > MAX_NAMES:
                self.profile.sources.clear()
            self.profile.sources.setdefault(frames, tuple(src for _, src in rows))
        return frames

    def _symbolized(self, pid: int, addrs: list[int]) -> list[tuple[str, Optional[str]]]:
        """("function (module)", "file:line") per frame address (the first exact, the rest
        return addresses), remembered per process: the same return addresses come back in
        sample after sample, and naming one is most of the cost of a sample."""
        names = self._names.setdefault(pid, {})
        if len(names) > MAX_NAMES:
            names.clear()
        u = self._unwinder(pid, False)
        out = []
        for i, addr in enumerate(addrs):
            key = (addr, i == 0)
            row = names.get(key)
            if row is None:
                name, module, source = u.symbolize(addr, first=i == 0,
                                                   with_source=self.with_sources)
                row = names[key] = (f"{name} ({module})", source)
            out.append(row)
        return out

    def forget_names(self, pid: int) -> None:
        """The process's code changed (exec) or it ended: its frame names are stale."""
        self._names.pop(pid, None)

    def forget_all_names(self) -> None:
        """Drop every remembered frame name (memtrace ran out of memory): found again."""
        self._names.clear()

    # -- events ---------------------------------------------------------------------------
    def _who(self, e: Any) -> dict[str, Any]:
        """The process's name, memory cgroup and start, as the event and /proc tell them."""
        return self._who_of(int(e.pid), abi.cstr(e.comm), int(e.cgroup_id))

    def _who_of(self, pid: int, comm: str, cgroup_id: int) -> dict[str, Any]:
        who: dict[str, Any] = {"comm": comm}
        if cgroup_id:
            who["cgroup_id"] = cgroup_id
            who["cgroup"] = self._cgroup_name(cgroup_id)
        if pid not in self.profile.processes:
            started = process_start(pid)
            if started is not None and self.profile.started is not None:
                who["since"] = max(started, self.profile.started)
        return who

    def handle(self, e: Any) -> bool:
        """Turn one growth event into profile calls; False for a kind that is not growth's."""
        kind = int(e.kind)
        if kind not in GROWTH_KINDS:
            return False
        p = self.profile
        pid = int(e.pid)
        t = self.time(e)
        if self.batched:
            if kind == abi.LK_EV_FAULT:
                self._wait(e, pid, t)
                return True
            if self._waiting:
                if kind in (abi.LK_EV_MUNMAP, abi.LK_EV_BRK_SHRINK, abi.LK_EV_MADVISE):
                    self._release_waiting(pid, int(e.addr), int(e.len))
                else:  # what follows may move, end or rename them: named first
                    self.flush()
        if kind == abi.LK_EV_EXEC:
            self.forget_names(pid)
            self._unwinder(pid, True)
            p.exec(pid, t)
        elif kind == abi.LK_EV_EXIT:
            self.forget_names(pid)
            p.exit(pid, t)
        elif kind == abi.LK_EV_MMAP or kind == abi.LK_EV_BRK:
            p.grow(pid, int(e.addr), int(e.len), self.frames(e), int(e.weight), t,
                   **self._who(e))
        elif kind == abi.LK_EV_MUNMAP or kind == abi.LK_EV_BRK_SHRINK:
            p.shrink(pid, int(e.addr), int(e.len), t)
        elif kind == abi.LK_EV_MADVISE:
            p.shrink(pid, int(e.addr), int(e.len), t, resident_only=True)
        elif kind == abi.LK_EV_MREMAP:
            frames = self.frames(e) if e.weight else ("[no stack]",)
            p.move(pid, int(e.old_addr), int(e.old_len), int(e.addr), int(e.len), frames,
                   int(e.weight), t, **(self._who(e) if e.weight else {}))
        else:  # LK_EV_FAULT
            p.touched(pid, int(e.addr), self.frames(e), int(e.weight), t, int(e.len),
                      **self._who(e))
        return True

    @property
    def waiting(self) -> int:
        """First touches waiting for flush()."""
        return len(self._waiting)

    def _wait(self, e: Any, pid: int, t: float) -> None:
        stack = ct.string_at(ct.addressof(e.stack), e.stack_len) if e.stack_len else b""
        self._waiting.append(_Touch(pid, int(e.addr), int(e.len), int(e.weight), t, int(e.ip),
                                    int(e.sp), int(e.bp), stack, abi.cstr(e.comm),
                                    int(e.cgroup_id)))
        if len(self._waiting) >= MAX_WAITING:
            self.flush()

    def _release_waiting(self, pid: int, start: int, length: int) -> None:
        """Waiting touches of pid inside [start, start+length) were given back already."""
        end = start + length
        kept = [w for w in self._waiting
                if w.pid != pid or not (start <= w.addr and w.addr + w.length <= end)]
        self.released_unread += len(self._waiting) - len(kept)
        self._waiting = kept
        if any(w.pid == pid and w.addr < end and start < w.addr + w.length for w in kept):
            self.flush()  # partly released (a piece of a huge page): recorded, then shrunk

    def flush(self, on_error: Optional[Callable[[Exception], None]] = None) -> None:
        """Name and record the touches waiting (the end of a read, or before an event that
        may move, end or rename them). A touch that cannot be named goes to on_error (else
        self.on_error; raised without either); the others are recorded all the same."""
        on_error = on_error or self.on_error
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            try:
                frames = self._frames(w.pid, w.ip, w.sp, w.bp, w.stack)
                self.profile.touched(w.pid, w.addr, frames, w.weight, w.t, w.length,
                                     **self._who_of(w.pid, w.comm, w.cgroup_id))
            except MemoryError:
                raise
            except Exception as e:
                if on_error is None:
                    raise
                on_error(e)

    def drop_waiting(self) -> None:
        """Forget the waiting touches (memtrace ran out of memory)."""
        self._waiting = []

    def read_lost(self, totals: Iterable[tuple[int, int]], now: Optional[float] = None) -> None:
        """The kernel's per-process totals of sampled bytes whose events the full ring buffer
        refused (key pid << 1, | 1 for mapped growth): what grew since the last reading is
        counted for the process without a stack."""
        now = time.time() if now is None else now
        current: dict[int, int] = {}
        for key, total in totals:
            current[key] = total
            seen = self._lost_seen.get(key, 0)
            if total > seen:
                self.profile.lost(key >> 1, total - seen, bool(key & 1), now)
        # a key gone from the map (evicted, or its process exited) starts again from 0
        self._lost_seen = current
