"""Leak profiling model: who holds or grows memory, by process and call stack, over time."""

from __future__ import annotations

import bisect
import collections
import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Iterable, Optional

GROWTH = "growth"
MALLOC = "malloc"

# Allocator functions attached in malloc mode, numbered as in bpf/leaks.bpf.c (LK_FN_*).
ALLOCATORS = ("malloc", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
              "memalign", "valloc", "pvalloc")
FREE = "free"
ALLOCATOR_LIBRARIES = ("libjemalloc", "libtcmalloc", "libc.so", "libc-")

TREND_POINTS = 30

# Growth mode's byte sampler: memtrace.h's LK_SAMPLE_BYTES, LK_LOG_FRACTION_BITS and
# LK_LN2_Q16 (tests/unit/test_leaks_model.py checks them against the header).
DEFAULT_SAMPLE_BYTES = 512 * 1024
LOG_FRACTION_BITS = 16
LN2_Q16 = 45426

# Rates are growth over the last RATE_WINDOW seconds; what a process grew (asked at an OOM
# kill) is kept for GREW_WINDOW seconds. Both bounded: at most MAX_PROCESSES processes (the
# coldest, the one whose last growth is oldest, dropped first and counted) and at most
# MAX_WINDOW_SAMPLES samples per process (the oldest dropped first and counted).
RATE_WINDOW = 10.0
GREW_WINDOW = 300.0
MAX_PROCESSES = 1024
MAX_WINDOW_SAMPLES = 4096

Frames = tuple[str, ...]
StackKey = tuple[int, Frames]  # (pid, frames)

# Where sampled bytes whose stacks were lost (a full ring buffer) are counted.
LOST_FRAMES: Frames = ("[stack lost: ring buffer full]",)


# ----------------------------------------------------------------------------- the byte sampler

def neg_log2_fixed(u: int, bits: int = LOG_FRACTION_BITS) -> int:
    """(32 - log2(u)) in fixed point with `bits` fractional bits, for 1 <= u < 2^32: the
    integer arithmetic of bpf/leaks.bpf.c's neg_log2_fixed, bit for bit."""
    if not 1 <= u < 1 << 32:
        raise ValueError("u must be in [1, 2^32)")
    e = u.bit_length() - 1
    m = u << (31 - e)  # the mantissa in [1, 2) with 31 fractional bits
    frac = 0
    for _ in range(bits):
        m = (m * m) >> 31
        bit = m >> 32
        m >>= bit
        frac = (frac << 1) | bit
    return (32 << bits) - ((e << bits) | frac)


def exponential_gap(u: int, mean: int, bits: int = LOG_FRACTION_BITS, ln2: int = LN2_Q16) -> int:
    """Bytes to the next sample point for the uniform draw u: -ln(u / 2^32) * mean, in the
    BPF side's fixed point (bpf/leaks.bpf.c next_gap). At least 1."""
    t = (mean * neg_log2_fixed(max(u, 1), bits)) >> bits
    return max((t * ln2) >> 16, 1)


class PoissonSampler:
    """The reference of bpf/leaks.bpf.c's sample_bytes: sample points form a Poisson process
    over the bytes (exponential gaps with mean `mean`, as jemalloc and tcmalloc sample). An
    event of n bytes in which a point falls stands for `mean` (its first point) plus its
    bytes after that point; the sum over events is an unbiased estimate of the bytes, and a
    large event costs one sample however many points fall in it."""

    def __init__(self, mean: int, rand32: Optional[Callable[[], int]] = None):
        if mean < 1:
            raise ValueError("the mean must be at least 1 byte")
        self.mean = mean
        self._rand32 = rand32 or (lambda: random.getrandbits(32))
        self.left = 0  # bytes to the next point; 0: not drawn yet

    def _gap(self) -> int:
        return exponential_gap(self._rand32(), self.mean)

    def sample(self, n: int) -> int:
        """The bytes an event of n bytes stands for: 0 when it is not sampled."""
        if n <= 0:
            return 0
        left = self.left or self._gap()
        if n < left:
            self.left = left - n
            return 0
        self.left = self._gap()
        return self.mean + (n - left)


# ----------------------------------------------------------------------------- values

@dataclass
class StackStats:
    """One call stack's share of one process's memory."""

    frames: Frames
    pid: int = 0
    comm: str = ""
    cgroup: Optional[str] = None
    bytes: int = 0          # outstanding: resident (growth mode) or allocated (malloc mode)
    mapped_bytes: int = 0   # growth mode: outstanding anonymous mappings and heap
    count: int = 0          # samples (growth mode) or outstanding allocations (malloc mode)
    history: Deque[int] = field(default_factory=lambda: collections.deque(maxlen=TREND_POINTS))
    points: Deque[tuple[float, int]] = field(default_factory=collections.deque)
    bytes_per_second: float = 0.0
    exited: bool = False

    @property
    def key(self) -> StackKey:
        return (self.pid, self.frames)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "pid": self.pid, "comm": self.comm, "cgroup": self.cgroup, "bytes": self.bytes,
            "mapped_bytes": self.mapped_bytes, "count": self.count,
            "bytes_per_second": round(self.bytes_per_second, 1),
            "frames": list(self.frames), "trend": list(self.history)}
        if self.exited:
            obj["exited"] = True
        return obj


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


@dataclass(frozen=True)
class Growth:
    """What one call stack of one process grew over a span of time (an OOM kill's `grew`)."""

    pid: int
    comm: str
    cgroup: Optional[str]
    bytes: int
    frames: Frames
    seconds: float  # from the first to the last sample of this growth

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "bytes": self.bytes,
                "frames": list(self.frames), "seconds": round(self.seconds, 3),
                "cgroup": self.cgroup}


@dataclass(frozen=True)
class GrowingProcess:
    """A process whose resident memory grows, with its fastest-growing stack."""

    pid: int
    comm: str
    cgroup: Optional[str]
    bytes_per_second: float
    bytes: int  # resident growth still outstanding (estimated)
    top_frames: Frames
    top_bytes_per_second: float

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "cgroup": self.cgroup,
                "bytes_per_second": round(self.bytes_per_second, 1), "bytes": self.bytes,
                "top_frames": list(self.top_frames),
                "top_bytes_per_second": round(self.top_bytes_per_second, 1)}


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- address ranges

class RangeLedger:
    """Address ranges a process gained, each owned by the stack that created it and standing
    for a weight in bytes (its length when exact, the sampler's estimate when sampled).

    Removing part of a range takes back the matching share of its weight, so what remains
    is the growth still outstanding, by stack."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: dict[int, tuple[int, Frames, float]] = {}  # start -> (end, owner, weight)

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, start: int, length: int, owner: Frames, weight: Optional[float] = None) -> None:
        if length <= 0:
            return
        self.remove(start, length)  # MAP_FIXED over an old range replaces it
        bisect.insort(self._starts, start)
        self._ranges[start] = (start + length, owner, float(length if weight is None else weight))

    def remove(self, start: int, length: int) -> list[tuple[Frames, float]]:
        """Forget [start, start+length); returns (owner, weight) for what was removed."""
        return [(owner, w) for owner, w, _s, _n in self._take(start, length)]

    def take(self, start: int, length: int) -> list[tuple[Frames, float, int, int]]:
        """Like remove, with each removed piece's address and length."""
        return self._take(start, length)

    def _take(self, start: int, length: int) -> list[tuple[Frames, float, int, int]]:
        end = start + length
        removed: list[tuple[Frames, float, int, int]] = []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts):
            s = self._starts[i]
            if s >= end:
                break
            e, owner, weight = self._ranges[s]
            if e <= start:
                i += 1
                continue
            lo, hi = max(s, start), min(e, end)
            density = weight / (e - s)
            removed.append((owner, density * (hi - lo), lo, hi - lo))
            del self._ranges[s]
            self._starts.pop(i)
            if s < lo:  # the part before stays
                self._ranges[s] = (lo, owner, density * (lo - s))
                self._starts.insert(i, s)
                i += 1
            if hi < e:  # the part after stays
                self._ranges[hi] = (e, owner, density * (e - hi))
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
            e, owner, _w = self._ranges[s]
            if e > start:
                out.append((owner, min(e, end) - max(s, start)))
            i += 1
        return out

    def total(self) -> int:
        return sum(e - s for s, (e, _o, _w) in self._ranges.items())

    def weight(self) -> float:
        return sum(w for _e, _o, w in self._ranges.values())

    def clear(self) -> list[tuple[Frames, float]]:
        out = [(owner, w) for _e, owner, w in self._ranges.values()]
        self._starts.clear()
        self._ranges.clear()
        return out


# ----------------------------------------------------------------------------- processes

@dataclass
class ProcessGrowth:
    """One traced process: its sampled ranges and its recent growth samples."""

    pid: int
    comm: str = ""
    cgroup_id: int = 0
    cgroup: Optional[str] = None
    since: float = 0.0           # when its growth began to be observed (start or birth)
    last_growth: float = 0.0
    exited_at: Optional[float] = None
    resident: RangeLedger = field(default_factory=RangeLedger)
    mapped: RangeLedger = field(default_factory=RangeLedger)
    # (time, frames, resident bytes: + grown, - released), oldest first
    samples: Deque[tuple[float, Frames, int]] = field(default_factory=collections.deque)
    truncated_until: float = 0.0  # samples up to this time were dropped by the cap

    def window(self, now: float, seconds: float) -> tuple[float, list[tuple[float, Frames, int]]]:
        """The samples of the last `seconds` and the span they cover."""
        since = max(now - seconds, self.since, self.truncated_until)
        out = []
        for sample in reversed(self.samples):
            if sample[0] <= since:
                break
            if sample[0] <= now:
                out.append(sample)
        out.reverse()
        return max(now - since, 0.0), out


class LeakProfile:
    """Outstanding bytes and growth by process and stack for the traced processes."""

    def __init__(self, mode: str, pids: Iterable[int], *, all_processes: bool = False,
                 cgroup: Optional[str] = None, sample_bytes: Optional[int] = None,
                 rate_window: float = RATE_WINDOW, grew_window: float = GREW_WINDOW,
                 max_processes: int = MAX_PROCESSES,
                 max_window_samples: int = MAX_WINDOW_SAMPLES, started: Optional[float] = None):
        self.mode = mode
        self.pids = sorted(set(pids))
        self.all_processes = all_processes
        self.cgroup = cgroup
        self.sample_bytes = sample_bytes
        self.rate_window = rate_window
        self.grew_window = max(grew_window, rate_window)
        self.max_processes = max_processes
        self.max_window_samples = max_window_samples
        self.started = started
        self.stacks: dict[StackKey, StackStats] = {}
        self.sources: dict[Frames, tuple[Optional[str], ...]] = {}  # file:line per frame
        self.failures: list[AllocFailure] = []
        self.failure_count = 0
        self.drops: dict[str, int] = {}
        # pid -> process, the coldest (oldest last growth) first
        self.processes: collections.OrderedDict[int, ProcessGrowth] = collections.OrderedDict()
        self.exited: set[int] = set()
        self._last_tick: Optional[float] = None

    # -- processes ------------------------------------------------------------------------
    def process(self, pid: int, t: Optional[float] = None, *, comm: str = "",
                cgroup_id: int = 0, cgroup: Optional[str] = None,
                since: Optional[float] = None) -> ProcessGrowth:
        """The process `pid`, made on first sight (a pid seen again after its exit is a new
        process); past max_processes the coldest one is dropped and counted."""
        proc = self.processes.get(pid)
        if proc is not None and proc.exited_at is not None and t is not None \
                and t > proc.exited_at:
            self._forget(pid)  # the pid was reused
            proc = None
        if proc is None:
            while len(self.processes) >= self.max_processes:
                cold = next(iter(self.processes))
                self._forget(cold)
                self.drops["processes_dropped"] = self.drops.get("processes_dropped", 0) + 1
            start = since if since is not None else (self.started if self.started is not None
                                                     else (t or 0.0))
            proc = self.processes[pid] = ProcessGrowth(pid, since=start, last_growth=t or 0.0)
        if comm:
            proc.comm = comm
        if cgroup_id:
            proc.cgroup_id = cgroup_id
        if cgroup is not None:
            proc.cgroup = cgroup
        return proc

    def _forget(self, pid: int) -> None:
        self.processes.pop(pid, None)
        for key in [k for k in self.stacks if k[0] == pid]:
            del self.stacks[key]

    def _stack(self, pid: int, frames: Frames) -> StackStats:
        st = self.stacks.get((pid, frames))
        if st is None:
            proc = self.processes.get(pid)
            st = self.stacks[(pid, frames)] = StackStats(
                frames, pid, proc.comm if proc else "", proc.cgroup if proc else None)
            if self._last_tick is not None and self.mode == MALLOC:
                st.points.append((self._last_tick, 0))  # nothing from this key until now
        return st

    def _record(self, proc: ProcessGrowth, t: float, frames: Frames, delta: float) -> None:
        """A resident growth (+) or release (-) sample in the process's window."""
        if not delta:
            return
        proc.samples.append((t, frames, int(round(delta))))
        if delta > 0:
            proc.last_growth = max(proc.last_growth, t)
            self.processes.move_to_end(proc.pid)  # the hottest last
        while len(proc.samples) > self.max_window_samples:
            dropped = proc.samples.popleft()
            proc.truncated_until = dropped[0]
            self.drops["window_samples_dropped"] = self.drops.get("window_samples_dropped", 0) + 1

    # -- growth mode ----------------------------------------------------------------------
    def touched(self, pid: int, addr: int, frames: Frames, weight: int, t: float = 0.0,
                length: int = 4096, **who: Any) -> None:
        """Resident growth: a sampled first touch of [addr, addr+length), standing for
        `weight` bytes."""
        proc = self.process(pid, t, **who)
        proc.resident.add(addr, length, frames, weight)
        st = self._stack(pid, frames)
        st.bytes += weight
        st.count += 1
        self._record(proc, t, frames, weight)

    def grow(self, pid: int, start: int, length: int, frames: Frames,
             weight: Optional[int] = None, t: float = 0.0, **who: Any) -> None:
        """Mapped growth: an anonymous mapping or heap extension made by `frames`, standing
        for `weight` bytes (its length when not sampled)."""
        proc = self.process(pid, t, **who)
        w = length if weight is None else weight
        proc.mapped.add(start, length, frames, w)
        st = self._stack(pid, frames)
        st.mapped_bytes += w
        st.count += 1

    def shrink(self, pid: int, start: int, length: int, t: float = 0.0,
               resident_only: bool = False) -> None:
        """[start, start+length) released: unmapped, or (resident_only) its pages given
        back with the mapping kept (madvise)."""
        proc = self.processes.get(pid)
        if proc is None:
            return
        for owner, w in proc.resident.remove(start, length):
            self._stack(pid, owner).bytes -= int(round(w))
            self._record(proc, t, owner, -w)
        if not resident_only:
            for owner, w in proc.mapped.remove(start, length):
                self._stack(pid, owner).mapped_bytes -= int(round(w))

    def move(self, pid: int, old: int, old_len: int, new: int, new_len: int,
             frames: Frames, weight: Optional[int] = None, t: float = 0.0, **who: Any) -> None:
        """mremap: what was sampled in the old range moves with it (what falls beyond a
        smaller new length is released); growth belongs to the caller."""
        proc = self.process(pid, t, **who)
        for ledger, resident in ((proc.resident, True), (proc.mapped, False)):
            for owner, w, addr, n in ledger.take(old, old_len):
                offset = addr - old
                keep = max(min(n, new_len - offset), 0)
                if keep > 0:
                    ledger.add(new + offset, keep, owner, w * keep / n)
                gone = w * (n - keep) / n
                if gone:
                    st = self._stack(pid, owner)
                    if resident:
                        st.bytes -= int(round(gone))
                        self._record(proc, t, owner, -gone)
                    else:
                        st.mapped_bytes -= int(round(gone))
        if new_len > old_len and weight:
            self.grow(pid, new + old_len, new_len - old_len, frames, weight, t)

    def exec(self, pid: int, t: float = 0.0) -> None:
        """A new image: everything the old one held is gone."""
        proc = self.processes.get(pid)
        if proc is None:
            return
        for owner, w in proc.resident.clear():
            self._stack(pid, owner).bytes -= int(round(w))
            self._record(proc, t, owner, -w)
        for owner, w in proc.mapped.clear():
            self._stack(pid, owner).mapped_bytes -= int(round(w))

    def exit(self, pid: int, t: float) -> None:
        """The process ended: its stacks stay (the final summary, an OOM kill's question)
        for one rate window, then go."""
        self.exited.add(pid)
        proc = self.processes.get(pid)
        if proc is not None:
            proc.exited_at = t
            for (p, _f), st in self.stacks.items():
                if p == pid:
                    st.exited = True

    def lost(self, pid: int, weight: int, mapped: bool, t: float) -> None:
        """Sampled growth whose event (and stack) was lost: counted for the process under
        LOST_FRAMES, so its totals and rates stay whole (never released: its address is
        unknown)."""
        if weight <= 0:
            return
        proc = self.process(pid, t)
        st = self._stack(pid, LOST_FRAMES)
        if mapped:
            st.mapped_bytes += weight
        else:
            st.bytes += weight
            self._record(proc, t, LOST_FRAMES, weight)

    # -- malloc mode ----------------------------------------------------------------------
    def set_outstanding(self, frames: Frames, nbytes: int, count: int, pid: int = 0) -> None:
        st = self._stack(pid, frames)
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
        """Close an interval: each stack's trend point and its rate over the rate window;
        forget samples past the grew window and processes gone for a rate window."""
        if self.started is None:
            self.started = now
        self._last_tick = now
        for pid, proc in list(self.processes.items()):
            if proc.exited_at is not None and now - proc.exited_at > self.rate_window:
                self._forget(pid)
                continue
            while proc.samples and proc.samples[0][0] <= now - self.grew_window:
                proc.samples.popleft()
        if self.mode == GROWTH:
            self._growth_rates(now)
        else:
            self._snapshot_rates(now)
        for st in self.stacks.values():
            st.history.append(st.bytes)

    def _growth_rates(self, now: float) -> None:
        """Growth mode: a stack's resident bytes sampled over the last rate window, over the
        time the window covers (from the process's start when it is younger)."""
        for st in self.stacks.values():
            st.bytes_per_second = 0.0
        for pid, proc in self.processes.items():
            span, samples = proc.window(now, self.rate_window)
            if span <= 0:
                continue
            by_frames: dict[Frames, int] = {}
            for _t, frames, delta in samples:
                by_frames[frames] = by_frames.get(frames, 0) + delta
            for frames, total in by_frames.items():
                found = self.stacks.get((pid, frames))
                if found is not None:
                    found.bytes_per_second = total / span

    def _snapshot_rates(self, now: float) -> None:
        """Malloc mode: the change of a stack's outstanding bytes since the oldest tick
        inside the rate window."""
        for st in self.stacks.values():
            st.points.append((now, st.bytes))
            while len(st.points) > 1 and st.points[1][0] <= now - self.rate_window:
                st.points.popleft()
            t0, b0 = st.points[0]
            st.bytes_per_second = (st.bytes - b0) / (now - t0) if now > t0 else 0.0

    # -- queries --------------------------------------------------------------------------
    def top(self, n: Optional[int] = None) -> list[StackStats]:
        live = [s for s in self.stacks.values() if s.bytes > 0 or s.mapped_bytes > 0]
        live.sort(key=lambda s: (-s.bytes, -s.mapped_bytes, s.pid, s.frames))
        return live if n is None else live[:n]

    def growing(self, n: int) -> list[StackStats]:
        live = [s for s in self.stacks.values() if s.bytes_per_second > 0]
        live.sort(key=lambda s: (-s.bytes_per_second, s.pid, s.frames))
        return live[:n]

    def growing_processes(self, now: float, n: int = 5) -> list[GrowingProcess]:
        """The live processes whose resident memory grew fastest over the rate window, each
        with its fastest-growing stack (what a live dashboard shows)."""
        out = []
        for pid, proc in self.processes.items():
            if proc.exited_at is not None:
                continue
            span, samples = proc.window(now, self.rate_window)
            if span <= 0 or not samples:
                continue
            by_frames: dict[Frames, int] = {}
            for _t, frames, delta in samples:
                by_frames[frames] = by_frames.get(frames, 0) + delta
            total = sum(by_frames.values())
            if total <= 0:
                continue
            top_frames, top_bytes = max(by_frames.items(), key=lambda kv: (kv[1], kv[0]))
            outstanding = int(round(proc.resident.weight()))
            out.append(GrowingProcess(pid, proc.comm, proc.cgroup, total / span, outstanding,
                                      top_frames, top_bytes / span))
        out.sort(key=lambda g: (-g.bytes_per_second, g.pid))
        return out[:n]

    def _grew(self, proc: ProcessGrowth, now: float, seconds: float) -> list[Growth]:
        _span, samples = proc.window(now, seconds)
        total: dict[Frames, int] = {}
        first: dict[Frames, float] = {}
        last: dict[Frames, float] = {}
        for t, frames, delta in samples:
            total[frames] = total.get(frames, 0) + delta
            if delta > 0:
                first.setdefault(frames, t)
                last[frames] = t
        return [Growth(proc.pid, proc.comm, proc.cgroup, b, frames,
                       last.get(frames, now) - first.get(frames, now))
                for frames, b in total.items() if b > 0]

    def grew(self, pid: int, now: float, seconds: Optional[float] = None,
             top: int = 3) -> list[Growth]:
        """The process's top growth stacks over the last `seconds` (the grew window by
        default), largest first: what an OOM kill of `pid` at `now` reports."""
        proc = self.processes.get(pid)
        if proc is None:
            return []
        out = self._grew(proc, now, self.grew_window if seconds is None else seconds)
        out.sort(key=lambda g: (-g.bytes, g.frames))
        return out[:top]

    def grew_in_cgroup(self, cgroup: str, now: float, seconds: Optional[float] = None,
                       top: int = 3, exclude: Iterable[int] = ()) -> list[Growth]:
        """The top growth stacks of the processes in `cgroup` or below it (a path relative
        to its hierarchy, as the failure tracer names cgroups): a memory cgroup OOM's other
        growers."""
        skip = set(exclude)
        cgroup = cgroup.rstrip("/") or "/"
        prefix = cgroup.rstrip("/") + "/"
        out: list[Growth] = []
        for proc in self.processes.values():
            if proc.pid in skip or proc.cgroup is None:
                continue
            if proc.cgroup != cgroup and not proc.cgroup.startswith(prefix) and cgroup != "/":
                continue
            out += self._grew(proc, now, self.grew_window if seconds is None else seconds)
        out.sort(key=lambda g: (-g.bytes, g.pid, g.frames))
        return out[:top]

    def stack_json(self, s: StackStats) -> dict[str, Any]:
        obj = s.to_json()
        sources = self.sources.get(s.frames)
        if sources and any(sources):
            obj["sources"] = list(sources)  # "file.c:42" where debug info exists, else null
        return obj

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.stacks.values() if s.bytes > 0)

    def total_mapped_bytes(self) -> int:
        return sum(s.mapped_bytes for s in self.stacks.values() if s.mapped_bytes > 0)

    def to_json(self, now: float, final: bool = False, top: Optional[int] = None
                ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "type": "leaks", "time": _iso(now), "mode": self.mode, "pids": self.pids,
            "stacks": [self.stack_json(s) for s in self.top(top)],
            "total_bytes": self.total_bytes(), "failures": self.failure_count,
            "dropped": dict(self.drops),
        }
        if self.mode == GROWTH:
            obj["total_mapped_bytes"] = self.total_mapped_bytes()
            obj["sample_bytes"] = self.sample_bytes
            obj["rate_window_seconds"] = self.rate_window
            obj["growing"] = [g.to_json() for g in self.growing_processes(now, 10)]
        if self.all_processes:
            obj["all"] = True
            obj["cgroup"] = self.cgroup
        if final:
            obj["final"] = True
            obj["exited"] = sorted(self.exited)
        return obj
