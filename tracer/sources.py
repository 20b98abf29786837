"""The source protocol every view reads from, with the fake and replay sources (the live one is collector.LiveSource)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import (
    IO,
    Any,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Union,
)

from . import __version__
from .model import (
    KINDS,
    Failure,
    Filter,
    KernelCount,
    KernelFailure,
    MemcgCount,
    Ready,
    Snapshot,
    SyscallCount,
)
from .probes import ProbeStatus


class Source(Protocol):
    def start(self) -> Ready: ...

    def poll(self, timeout: float = 0.1) -> list[Failure]: ...

    def drain(self) -> list[Failure]: ...

    def snapshot(self) -> Snapshot: ...

    def close(self) -> None: ...


class FakeSource:
    """A scripted source for tests: batches of failures handed out one per poll."""

    def __init__(self, ready: Ready, batches: Sequence[Sequence[Failure]] = (),
                 snapshots: Sequence[Snapshot] = (), filt: Optional[Filter] = None):
        self.ready = ready
        self.batches = [list(b) for b in batches]
        self.snapshots = list(snapshots) or [Snapshot()]
        self.filter = filt or Filter()
        self.started = False
        self.closed = False
        self.polls = 0

    def start(self) -> Ready:
        self.started = True
        return self.ready

    def poll(self, timeout: float = 0.1) -> list[Failure]:
        self.polls += 1
        if not self.batches:
            time.sleep(min(timeout, 0.01))
            return []
        return [f for f in self.batches.pop(0) if self.filter.failure(f)]

    def drain(self) -> list[Failure]:
        out = [f for b in self.batches for f in b if self.filter.failure(f)]
        self.batches = []
        return out

    def snapshot(self) -> Snapshot:
        i = min(self.polls, len(self.snapshots) - 1)
        return self.filter.snapshot(self.snapshots[i])

    def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------- recordings
#
# A recording is the JSON-lines stream of `memtrace watch --json` (jsonout.py), as written
# by `memtrace record`. Reading one never raises anything but ReplayError: each line is
# checked field by field, so what reaches the views has the types they expect.


class ReplayError(Exception):
    """A recording memtrace cannot read, with the line number."""


class LineError(ReplayError):
    """One bad line of a recording: `line` is its number, `reason` what is wrong with it."""

    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class NewerRecordingError(LineError):
    """The recording comes from a newer memtrace (major.minor) than this one: refused."""


@dataclass(frozen=True)
class RecordedSummary:
    """A recording's `summary` line: the exact in-kernel totals when the recording stopped."""

    counts: Mapping[str, Any]  # shaped like model.summary_counts(), every field checked
    dropped: Mapping[str, int]


Record = Union[Ready, Failure, RecordedSummary]


class _Malformed(Exception):
    """A field check failed; becomes a LineError naming the record type."""


_MAX_ORDER = 63  # the views compute 4096 << order
_MAX_TIME = 32503680000.0  # year 3000: the views turn times into local dates
_NUMBER = re.compile(r"\d{1,10}")
_VERSION = re.compile(r"(\d{1,9})\.(\d{1,9})")


def _printable(text: str, limit: int = 40) -> str:
    """text in ASCII (escapes for the rest), cut to about limit characters."""
    text = ascii(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(text: str, limit: int = 40) -> str:
    return f"'{_printable(text, limit)}'"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_int(obj: Mapping[str, Any], key: str) -> Optional[int]:
    v = obj.get(key)
    if v is not None and not _is_int(v):
        raise _Malformed(f"{key} is not an integer")
    return v


def _opt_str(obj: Mapping[str, Any], key: str) -> Optional[str]:
    v = obj.get(key)
    if v is not None and not isinstance(v, str):
        raise _Malformed(f"{key} is not a string")
    return v


def _opt_bool(obj: Mapping[str, Any], key: str) -> bool:
    v = obj.get(key)
    if v is not None and not isinstance(v, bool):
        raise _Malformed(f"{key} is not true or false")
    return bool(v)


def _opt_dict(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = obj.get(key)
    if v is not None and not isinstance(v, dict):
        raise _Malformed(f"{key} is not an object")
    return v or {}


def _opt_strs(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    v = obj.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _Malformed(f"{key} is not a list of strings")
    return tuple(v)


def _order(obj: Mapping[str, Any]) -> Optional[int]:
    order = _opt_int(obj, "order")
    if order is not None and not 0 <= order <= _MAX_ORDER:
        raise _Malformed(f"order {order} is out of range")
    return order


def _time(obj: Mapping[str, Any]) -> float:
    v = obj.get("time")
    if not isinstance(v, str):
        raise _Malformed("no time" if v is None else "time is not a string")
    try:
        when = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))  # 3.9 does not read "Z"
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        t = when.timestamp()
    except (ValueError, OverflowError, OSError):
        raise _Malformed(f"time {_short(v)} is not an ISO 8601 time") from None
    if not 0 <= t < _MAX_TIME:
        raise _Malformed(f"time {_short(v)} is out of range")
    return t


def _kernel_failure_from_json(k: object) -> KernelFailure:
    if not isinstance(k, dict) or not isinstance(k.get("kind"), str):
        raise _Malformed("linked holds something that is not a kernel failure")
    return KernelFailure(kind=k["kind"], size=_opt_int(k, "size"), order=_order(k),
                         gfp=_opt_str(k, "gfp"), opportunistic=_opt_bool(k, "opportunistic"),
                         cache=_opt_str(k, "cache"), kernel_stack=_opt_strs(k, "kernel_stack"))


def _failure_from_json(obj: Mapping[str, Any]) -> Failure:
    kind = obj.get("kind")
    if kind is None or not isinstance(kind, str):
        raise _Malformed("no kind" if kind is None else "kind is not a string")
    if kind not in KINDS:
        raise _Malformed(f"unknown kind {_short(kind)}")
    linked = obj.get("linked")
    if linked is not None and not isinstance(linked, list):
        raise _Malformed("linked is not a list")
    detail = _opt_dict(obj, "detail")
    if kind == "oom_kill" and not _is_int(detail.get("rss_bytes", 0)):
        raise _Malformed("detail.rss_bytes is not an integer")
    if kind == "memcg" and (not isinstance(detail.get("event", ""), str)
                            or not _is_int(detail.get("increase", 0))):
        raise _Malformed("detail.event or detail.increase has the wrong type")
    return Failure(time=_time(obj), kind=str(kind), pid=_opt_int(obj, "pid") or 0,
                   tid=_opt_int(obj, "tid") or 0, comm=_opt_str(obj, "comm") or "",
                   cgroup=_opt_str(obj, "cgroup"), cgroup_id=_opt_int(obj, "cgroup_id") or 0,
                   syscall=_opt_str(obj, "syscall"), errno=_opt_str(obj, "errno"),
                   size=_opt_int(obj, "size"), order=_order(obj), gfp=_opt_str(obj, "gfp"),
                   cause=_opt_str(obj, "cause"), explanation=_opt_str(obj, "explanation"),
                   evidence=_opt_dict(obj, "evidence"),
                   confidence=_opt_str(obj, "confidence"),
                   user_stack=_opt_strs(obj, "user_stack"),
                   kernel_stack=_opt_strs(obj, "kernel_stack"),
                   args=_opt_dict(obj, "args"), opportunistic=_opt_bool(obj, "opportunistic"),
                   linked=tuple(_kernel_failure_from_json(k) for k in linked or ()),
                   detail=detail)


def _probe_from_json(p: object) -> ProbeStatus:
    if not isinstance(p, dict) or not isinstance(p.get("name"), str) \
            or not isinstance(p.get("status"), str):
        raise _Malformed("probes holds something that is not a probe status")
    return ProbeStatus(p["name"], p["status"], _opt_str(p, "via"), _opt_str(p, "reason") or "")


def _ready_from_json(obj: Mapping[str, Any]) -> Ready:
    probes = obj.get("probes")
    if probes is not None and not isinstance(probes, list):
        raise _Malformed("probes is not a list")
    return Ready(_opt_str(obj, "version") or "?", _opt_str(obj, "kernel") or "?",
                 tuple(_probe_from_json(p) for p in probes or ()), _opt_strs(obj, "notes"))


def _count(v: object, where: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise _Malformed(f"{where} holds something that is not a count")


def _counts_by_name(v: object, where: str) -> dict[str, int]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Malformed(f"{where} is not an object")
    return {k: _count(n, where) for k, n in v.items()}


def _counts_by_two_names(v: object, where: str) -> dict[str, dict[str, int]]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Malformed(f"{where} is not an object")
    return {k: _counts_by_name(inner, where) for k, inner in v.items()}


def _check_orders(d: Mapping[str, Any], where: str) -> None:
    for key in d:
        if not _NUMBER.fullmatch(key) or int(key) > _MAX_ORDER:
            raise _Malformed(f"{where} has {_short(key)} for an order")


def _summary_from_json(obj: Mapping[str, Any]) -> RecordedSummary:
    c = obj.get("counts")
    if not isinstance(c, dict):
        raise _Malformed("no counts" if c is None else "counts is not an object")
    raw = c.get("by_process")
    if raw is not None and not isinstance(raw, dict):
        raise _Malformed("counts.by_process is not an object")
    by_process: dict[str, dict[str, Any]] = {}
    for pid, v in (raw or {}).items():
        if not _NUMBER.fullmatch(pid) or not isinstance(v, dict) \
                or not isinstance(v.get("comm", ""), str):
            raise _Malformed("counts.by_process holds something that is not a process count")
        by_process[pid] = {"comm": v.get("comm", ""),
                           "failures": _count(v.get("failures"), "counts.by_process")}
    by_order = _counts_by_two_names(c.get("page_alloc_by_order"), "counts.page_alloc_by_order")
    opp_by_order = _counts_by_name(c.get("opportunistic_page_alloc_by_order"),
                                   "counts.opportunistic_page_alloc_by_order")
    _check_orders(by_order, "counts.page_alloc_by_order")
    _check_orders(opp_by_order, "counts.opportunistic_page_alloc_by_order")
    by_kind = _counts_by_name(c.get("by_kind"), "counts.by_kind")
    total = c.get("total")
    counts = {
        "total": sum(n for k, n in by_kind.items() if k != "memcg") if total is None
        else _count(total, "counts.total"),
        "by_kind": by_kind,
        "opportunistic": _counts_by_name(c.get("opportunistic"), "counts.opportunistic"),
        "by_syscall": _counts_by_two_names(c.get("by_syscall"), "counts.by_syscall"),
        "by_process": by_process,
        "by_cgroup": _counts_by_name(c.get("by_cgroup"), "counts.by_cgroup"),
        "page_alloc_by_order": by_order,
        "opportunistic_page_alloc_by_order": opp_by_order,
        "memcg_events": _counts_by_two_names(c.get("memcg_events"), "counts.memcg_events"),
    }
    return RecordedSummary(counts, _counts_by_name(obj.get("dropped"), "dropped"))


def _major_minor(version: str) -> Optional[tuple[int, int]]:
    m = _VERSION.match(version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_newer(recorded: str, current: str = __version__) -> bool:
    """Whether a recording's version (major.minor) is newer than this memtrace's."""
    a, b = _major_minor(recorded), _major_minor(current)
    return a is not None and b is not None and a > b


def parse_record(n: int, line: Union[str, bytes], version: str = __version__) -> Record:
    """One line of a recording (line number n); raises LineError saying what is wrong."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise LineError(n, "not UTF-8 text") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise LineError(n, f"not JSON ({e.msg})") from None
    except RecursionError:
        raise LineError(n, "not JSON (nested too deeply)") from None
    except ValueError:  # e.g. an integer longer than Python converts
        raise LineError(n, "not JSON (a value out of range)") from None
    if not isinstance(obj, dict) or "type" not in obj:
        raise LineError(n, "not a memtrace record (no type)")
    kind = obj["type"]
    if not isinstance(kind, str):
        raise LineError(n, "not a memtrace record (its type is not a string)")
    try:
        if kind == "ready":
            ready = _ready_from_json(obj)
            if is_newer(ready.version, version):
                raise NewerRecordingError(n, f"recorded by memtrace {_printable(ready.version)}, "
                                             f"newer than this memtrace {version}: "
                                             "upgrade memtrace to read it")
            return ready
        if kind == "failure":
            return _failure_from_json(obj)
        if kind == "summary":
            return _summary_from_json(obj)
    except _Malformed as e:
        raise LineError(n, f"malformed {kind} record ({e})") from None
    raise LineError(n, f"unknown record type {_short(kind)}")


def read_recording(lines: Iterable[Union[str, bytes]]
                   ) -> tuple[Optional[Ready], list[Failure]]:
    """Parse a `watch --json` recording strictly; raises ReplayError naming the first bad line."""
    ready: Optional[Ready] = None
    failures: list[Failure] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rec = parse_record(n, line)
        if isinstance(rec, Ready):
            ready = rec
        elif isinstance(rec, Failure):
            failures.append(rec)
    return ready, failures


def _terminated(line: Union[str, bytes]) -> bool:
    return line.endswith(b"\n") if isinstance(line, bytes) else line.endswith("\n")


class RecordingReader:
    """Reads a recording record by record, leniently: a line it cannot read (truncated, not
    JSON, an unknown type, malformed) is skipped, kept in `problems` and handed to `warn`.
    A recording from a newer memtrace is refused with NewerRecordingError.

    `lines` keep their line ends (a file opened in binary or text mode): the last line
    without one is how a recording cut off mid-line is told apart from a corrupt line."""

    def __init__(self, lines: Iterable[Union[str, bytes]], *, version: str = __version__,
                 warn: Optional[Callable[[int, str], None]] = None):
        self._lines = lines
        self.version = version
        self._warn = warn
        self.problems: list[tuple[int, str]] = []
        self.ready: Optional[Ready] = None
        self.lines = 0  # lines read so far

    def _problem(self, n: int, reason: str) -> None:
        self.problems.append((n, reason))
        if self._warn is not None:
            self._warn(n, reason)

    def __iter__(self) -> Iterator[tuple[int, Record]]:
        for n, line in enumerate(self._lines, 1):
            self.lines = n
            if not line.strip():
                continue
            try:
                rec = parse_record(n, line, self.version)
            except NewerRecordingError:
                raise
            except LineError as e:
                reason = e.reason
                if not _terminated(line) and reason.startswith(("not JSON", "not UTF-8")):
                    reason = "truncated: the recording was cut off mid-line"
                self._problem(n, reason)
                continue
            if isinstance(rec, Ready):
                if self.ready is not None:
                    self._problem(n, "a second ready record (recordings joined together?)")
                    continue
                self.ready = rec
            yield n, rec


def open_recording(path: str) -> IO[bytes]:
    """The recording at path, open for reading; ReplayError for what cannot be one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ReplayError("no such file") from None
    except OSError as e:
        raise ReplayError(f"cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ReplayError("is a directory, not a recording")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise ReplayError("empty file, not a recording")
    try:
        return open(path, "rb")
    except OSError as e:
        raise ReplayError(f"cannot read it ({e.strerror})") from None


# --------------------------------------------------------------------------- totals


class Tally:
    """Totals built from failure events, e.g. a recording's failure lines. Every kernel
    failure event is a failure (an opportunistic attempt only becomes an event when the
    syscall it happened in failed); attempts that never did are not in events at all."""

    def __init__(self) -> None:
        self._syscalls: dict[tuple[int, str, Optional[str], str, Optional[str]], int] = {}
        self._kernel: dict[tuple[int, str, Optional[str], str, Optional[int], Optional[str]],
                           int] = {}
        self._memcg: dict[tuple[str, str], int] = {}
        self.events = 0

    def add(self, f: Failure) -> None:
        self.events += 1
        if f.kind == "syscall":
            key = (f.pid, f.comm, f.cgroup, f.syscall or "?", f.errno)
            self._syscalls[key] = self._syscalls.get(key, 0) + 1
        elif f.kind == "memcg":
            event, increase = f.detail.get("event"), f.detail.get("increase")
            if isinstance(event, str) and isinstance(increase, int):
                mkey = (f.cgroup or "?", event)
                self._memcg[mkey] = self._memcg.get(mkey, 0) + int(increase)
        else:
            kkey = (f.pid, f.comm, f.cgroup, f.kind,
                    f.order if f.kind == "page_alloc" else None,
                    f.gfp if f.kind in ("page_alloc", "slab") else None)
            self._kernel[kkey] = self._kernel.get(kkey, 0) + 1

    def snapshot(self, drops: Optional[Mapping[str, int]] = None) -> Snapshot:
        return Snapshot(
            tuple(SyscallCount(p, c, cg, s, e, n) for (p, c, cg, s, e), n in self._syscalls.items()),
            tuple(KernelCount(p, c, cg, k, o, g, False, n)
                  for (p, c, cg, k, o, g), n in self._kernel.items()),
            tuple(MemcgCount(cg, ev, n) for (cg, ev), n in self._memcg.items()),
            dict(drops or {}))


def _pair(columns: Sequence[list[tuple[Any, int]]], fillers: Sequence[Any]
          ) -> Iterator[tuple[tuple[Any, ...], int]]:
    """Rows (one key per column, count) whose sums per column give back each column's
    counts (the north-west corner rule); a column summing short is padded with its filler."""
    cols = [[(k, n) for k, n in col if n > 0] for col in columns]
    total = max((sum(n for _, n in c) for c in cols), default=0)
    for c, filler in zip(cols, fillers):
        short = total - sum(n for _, n in c)
        if short:
            c.append((filler, short))
    idx = [0] * len(cols)
    left = [c[0][1] if c else 0 for c in cols]
    while total > 0:
        m = min(left)
        yield tuple(c[i][0] for c, i in zip(cols, idx)), m
        total -= m
        for j, c in enumerate(cols):
            left[j] -= m
            if left[j] == 0 and idx[j] + 1 < len(c):
                idx[j] += 1
                left[j] = c[idx[j]][1]


def snapshot_from_counts(counts: Mapping[str, Any],
                         dropped: Optional[Mapping[str, int]] = None) -> Snapshot:
    """A Snapshot whose tables are a summary's counts (model.summary_counts gives them back).

    A summary keeps the tables apart (by process, by cgroup, by syscall or kind, by order),
    not which process made which syscall fail: the rows pair the tables up in order, so
    each table is exact and only the pairing between tables is made up."""
    procs = [((int(pid), v["comm"]), v["failures"]) for pid, v in counts["by_process"].items()]
    cgroups = [(None if cg == "?" else cg, n) for cg, n in counts["by_cgroup"].items()]
    what: list[tuple[tuple[str, Any, Optional[str]], int]] = []
    for name, errs in counts["by_syscall"].items():
        for err, n in errs.items():
            what.append((("syscall", name, None if err == "no errno" else err), n))
    for order, gfps in counts["page_alloc_by_order"].items():
        for gfp, n in gfps.items():
            what.append((("page_alloc", int(order), None if gfp == "?" else gfp), n))
    for kind, n in counts["by_kind"].items():
        if kind not in ("syscall", "page_alloc", "memcg"):
            what.append(((kind, None, None), n))
    syscalls: list[SyscallCount] = []
    kernel: list[KernelCount] = []
    for ((pid, comm), cgroup, (kind, a, b)), n in _pair(
            [procs, cgroups, what], [(0, "?"), None, ("unknown", None, None)]):
        if kind == "syscall":
            syscalls.append(SyscallCount(pid, comm, cgroup, a, b, n))
        else:
            kernel.append(KernelCount(pid, comm, cgroup, kind, a, b, False, n))
    for order, n in counts["opportunistic_page_alloc_by_order"].items():
        if n:
            kernel.append(KernelCount(0, "", None, "page_alloc", int(order), None, True, n))
    for kind, n in counts["opportunistic"].items():
        if kind != "page_alloc" and n:
            kernel.append(KernelCount(0, "", None, kind, None, None, True, n))
    memcg = tuple(MemcgCount(cg, ev, n) for cg, evs in counts["memcg_events"].items()
                  for ev, n in evs.items())
    return Snapshot(tuple(syscalls), tuple(kernel), memcg, dict(dropped or {}))


# --------------------------------------------------------------------------- replay


class ReplaySource:
    """A recording played back through the Source protocol: start() returns its ready
    record; poll() hands out the failures whose recorded time has come (the first one at
    once, the others as far apart as recorded, divided by speed; speed 0 = all at once);
    snapshot() gives the totals of the failures replayed so far, and the recording's own
    summary (exact in-kernel totals) once it is over. `done` is set at the end."""

    replay = True  # views skip what only makes sense live (diagnosing on this host)
    BATCH = 5000  # failures per poll at most, so the views keep refreshing

    def __init__(self, records: Iterable[tuple[int, Record]], speed: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 on_error: Callable[[ReplayError], None] = lambda e: None,
                 on_close: Callable[[], None] = lambda: None):
        if not math.isfinite(speed) or speed < 0:
            raise ValueError(f"replay speed must be 0 or more, not {speed}")
        self.speed = speed
        self._records = iter(records)
        self._clock, self._sleep = clock, sleep
        self._on_error, self._on_close = on_error, on_close
        self._pending: Optional[Record] = None
        self._exhausted = False
        self._origin: Optional[tuple[float, float]] = None  # (recorded time, clock) of the first
        self._final: Optional[Snapshot] = None
        self.summary: Optional[RecordedSummary] = None
        self.tally = Tally()
        self.done = False
        self.ready: Optional[Ready] = None
        first = next(self._records, None)  # errors here (a newer recording) reach the caller
        if first is None:
            self._on_close()
            raise ReplayError("no memtrace records in it")
        if isinstance(first[1], Ready):
            self.ready = first[1]
        else:
            self._pending = first[1]

    @classmethod
    def open(cls, path: str, speed: float = 1.0, *,
             warn: Optional[Callable[[int, str], None]] = None,
             on_error: Callable[[ReplayError], None] = lambda e: None) -> "ReplaySource":
        """Replay the recording at path; ReplayError when it cannot be read at all."""
        f = open_recording(path)
        try:
            return cls(RecordingReader(f, warn=warn), speed, on_error=on_error,
                       on_close=f.close)
        except BaseException:
            f.close()
            raise

    def _next(self) -> Optional[Record]:
        if self._pending is not None:
            rec, self._pending = self._pending, None
            return rec
        if self._exhausted:
            return None
        try:
            item = next(self._records, None)
        except ReplayError as e:  # a newer recording joined on: stop there
            self._on_error(e)
            item = None
        if item is None:
            self._exhausted = True
            return None
        return item[1]

    def start(self) -> Ready:
        return self.ready or Ready("?", "?", (), ("the recording has no ready record",))

    def poll(self, timeout: float = 0.1) -> list[Failure]:
        out: list[Failure] = []
        if self.done:
            self._sleep(min(timeout, 0.01))
            return out
        now = self._clock()
        while len(out) < self.BATCH:
            rec = self._next()
            if rec is None:
                self.done = True
                break
            if isinstance(rec, RecordedSummary):
                self.summary = rec
                continue
            if not isinstance(rec, Failure):
                continue
            if self.speed > 0:
                if self._origin is None:
                    self._origin = (rec.time, now)
                due = self._origin[0] + (now - self._origin[1]) * self.speed
                if rec.time > due:
                    self._pending = rec
                    if not out:
                        self._sleep(max(0.0, min(timeout, (rec.time - due) / self.speed)))
                    break
            out.append(rec)
            self.tally.add(rec)
        return out

    def drain(self) -> list[Failure]:
        return []  # stopped early (Ctrl-C, --duration): the rest is not replayed

    def snapshot(self) -> Snapshot:
        if self.done and self.summary is not None:
            if self._final is None:
                self._final = snapshot_from_counts(self.summary.counts, self.summary.dropped)
            return self._final
        return self.tally.snapshot()

    def close(self) -> None:
        self._on_close()
