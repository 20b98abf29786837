"""The JSON-lines format of `memtrace watch --json` and recordings, both ways: model values
to ready, failure and summary objects, and each line back to a checked model value."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from .. import __version__
from ..errors import ReplayError
from ..model.decode import Gfp, parse_gfp
from ..model.failures import (
    KINDS,
    Failure,
    HostAtFailure,
    KernelFailure,
    MemcgState,
    Ready,
    Snapshot,
)
from ..model.leaks import Growth
from ..model.probes import ProbeStatus
from ..model.totals import summary_counts


def _gfp_text(gfp: Optional[Gfp]) -> Optional[str]:
    return None if gfp is None else str(gfp)


def iso_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def ready_obj(r: Ready) -> dict[str, Any]:
    return {"type": "ready", "version": r.version, "kernel": r.kernel,
            "probes": [p.to_json() for p in r.probes], "notes": list(r.notes)}


def _kernel_failure_obj(k: KernelFailure) -> dict[str, Any]:
    return {"kind": k.kind, "size": k.size, "order": k.order, "gfp": _gfp_text(k.gfp),
            "opportunistic": k.opportunistic, "cache": k.cache,
            "kernel_stack": list(k.kernel_stack)}


def _memcg_obj(m: Optional[MemcgState]) -> Optional[dict[str, Any]]:
    if m is None:
        return None
    return {"usage": m.usage, "limit": m.limit, "nearest_cgroup": m.nearest_cgroup,
            "nearest_usage": m.nearest_usage, "nearest_limit": m.nearest_limit,
            "nearest_levels_up": m.nearest_levels_up}


_HOST_FIELDS = tuple(f.name for f in dataclasses.fields(HostAtFailure))


def _host_obj(h: Optional[HostAtFailure]) -> Optional[dict[str, Any]]:
    if h is None:
        return None
    out = {name: getattr(h, name) for name in _HOST_FIELDS if getattr(h, name) is not None}
    if h.free_blocks is not None:
        out["free_blocks"] = {zone: list(blocks) for zone, blocks in h.free_blocks.items()}
    return out


def failure_obj(f: Failure) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "failure",
        "time": iso_time(f.time),
        "kind": f.kind,
        "pid": f.pid,
        "tid": f.tid,
        "comm": f.comm,
        "cgroup": f.cgroup,
        "cgroup_id": f.cgroup_id,
        "syscall": f.syscall,
        "errno": f.errno,
        "size": f.size,
        "order": f.order,
        "gfp": _gfp_text(f.gfp),
        "cause": f.cause,
        "explanation": f.explanation,
        "evidence": dict(f.evidence),
        "confidence": f.confidence,
        "user_stack": list(f.user_stack),
        "kernel_stack": list(f.kernel_stack),
        "args": dict(f.args),
        "opportunistic": f.opportunistic,
        "linked": [_kernel_failure_obj(k) for k in f.linked],
        "detail": dict(f.detail),
        "memcg": _memcg_obj(f.memcg),
        "host": _host_obj(f.host),
        "user_sources": list(f.user_sources),
    }
    if f.kind == "oom_kill" or f.grew:  # what grew before the kill ([] when nothing did)
        obj["grew"] = [g.to_json() for g in f.grew]
    return obj


def probes_obj(t: float, probes: Sequence[ProbeStatus], changed: Sequence[str]) -> dict[str, Any]:
    """A `probes` line: every probe's state after some changed (the adaptive slab hooks
    attached or detached), with the names of those that did."""
    return {"type": "probes", "time": iso_time(t), "changed": list(changed),
            "probes": [p.to_json() for p in probes]}


def probe_changes(before: Sequence[ProbeStatus], now: Sequence[ProbeStatus]) -> list[str]:
    """The probes whose state differs between two lists of states (by name)."""
    was = {p.name: p.status for p in before}
    return [p.name for p in now if was.get(p.name) != p.status]


class ProbeLines:
    """The probe states last written (watch --json, record): the adaptive probes attach and
    detach as failures come and go, and each change is written as one `probes` line."""

    def __init__(self) -> None:
        self.written: tuple[ProbeStatus, ...] = ()

    def ready(self, probes: Sequence[ProbeStatus]) -> None:
        """The states the ready line gave."""
        self.written = tuple(probes)

    def line(self, probes: Sequence[ProbeStatus], t: float) -> Optional[dict[str, Any]]:
        """The `probes` object to write at time t if a state changed since the last one
        written (then it counts as written), else None."""
        if not probes:
            return None
        changed = probe_changes(self.written, probes)
        self.written = tuple(probes)
        return probes_obj(t, probes, changed) if changed else None


def summary_obj(s: Snapshot, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": "summary", "counts": summary_counts(s), "dropped": dict(s.drops)}
    if extra:
        obj.update(extra)
    return obj


def dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False, default=str)


# --------------------------------------------------------------------------- reading
#
# A recording is this JSON-lines stream, as written by `memtrace record`. Reading one never raises anything but ReplayError: each line is
# checked field by field, so what reaches the views has the types they expect.


class LineError(ReplayError):
    """One bad line of a recording: `line` is its number, `reason` what is wrong with it."""

    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class NewerRecordingError(LineError):
    """The recording comes from a newer memtrace (major.minor) than this one: refused."""

    exit_code = 2


@dataclass(frozen=True)
class RecordedSummary:
    """A recording's `summary` line: the exact in-kernel totals when the recording stopped."""

    counts: Mapping[str, Any]  # shaped like model.summary_counts(), every field checked
    dropped: Mapping[str, int]


@dataclass(frozen=True)
class RecordedProbes:
    """A recording's `probes` line: probe states after the adaptive ones changed."""

    time: float
    changed: tuple[str, ...]
    probes: tuple[ProbeStatus, ...]


Record = Union[Ready, Failure, RecordedSummary, RecordedProbes]


class _Malformed(Exception):
    """A field check failed; becomes a LineError naming the record type."""


_MAX_ORDER = 63  # the views compute order_to_bytes(order)
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


def _opt_gfp(obj: Mapping[str, Any]) -> Optional[Gfp]:
    text = _opt_str(obj, "gfp")
    return None if text is None else parse_gfp(text)


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
                         gfp=_opt_gfp(k), opportunistic=_opt_bool(k, "opportunistic"),
                         cache=_opt_str(k, "cache"), kernel_stack=_opt_strs(k, "kernel_stack"))


def _memcg_from_json(obj: Mapping[str, Any]) -> Optional[MemcgState]:
    m = obj.get("memcg")
    if m is None:
        return None
    if not isinstance(m, dict):
        raise _Malformed("memcg is not an object")
    usage, nearest_usage = _opt_int(m, "usage"), _opt_int(m, "nearest_usage")
    levels = _opt_int(m, "nearest_levels_up")
    if usage is None or nearest_usage is None:
        raise _Malformed("memcg has no usage")
    return MemcgState(usage=usage, limit=_opt_int(m, "limit"),
                      nearest_cgroup=_opt_str(m, "nearest_cgroup"), nearest_usage=nearest_usage,
                      nearest_limit=_opt_int(m, "nearest_limit"), nearest_levels_up=levels or 0)


def _free_blocks(v: Any) -> Optional[dict[str, tuple[int, ...]]]:
    if v is None:
        return None
    if not isinstance(v, dict) or len(v) > 64:
        raise _Malformed("host.free_blocks is not an object of zones")
    out: dict[str, tuple[int, ...]] = {}
    for zone, blocks in v.items():
        if not isinstance(blocks, list) or len(blocks) > 64 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in blocks):
            raise _Malformed("host.free_blocks has a zone that is not a list of counts")
        out[str(zone)] = tuple(blocks)
    return out


def _host_from_json(obj: Mapping[str, Any]) -> Optional[HostAtFailure]:
    h = obj.get("host")
    if h is None:
        return None
    if not isinstance(h, dict):
        raise _Malformed("host is not an object")
    values: dict[str, Any] = {}
    for name in _HOST_FIELDS:
        if name == "range_mapped":
            v = h.get(name)
            if v is not None and not isinstance(v, bool):
                raise _Malformed("host.range_mapped is not true or false")
            values[name] = v
        elif name == "free_blocks":
            values[name] = _free_blocks(h.get(name))
        else:
            values[name] = _opt_int(h, name)
    return HostAtFailure(**values)


def _opt_sources(obj: Mapping[str, Any]) -> tuple[Optional[str], ...]:
    v = obj.get("user_sources")
    if v is None:
        return ()
    if not isinstance(v, list) or not all(x is None or isinstance(x, str) for x in v):
        raise _Malformed("user_sources is not a list of strings and nulls")
    return tuple(v)


# Bounds on a recorded `grew`: the live source keeps a few stacks of a few dozen frames;
# a recording is a file anyone may have written.
_MAX_GREW = 64
_MAX_GREW_FRAMES = 512
_MAX_BYTES = 1 << 63


def _growth_from_json(g: object) -> Growth:
    if not isinstance(g, dict):
        raise _Malformed("grew holds something that is not a growth")
    pid, size = g.get("pid"), g.get("bytes")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 1 << 32:
        raise _Malformed("grew has a pid that is not a process id")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < _MAX_BYTES:
        raise _Malformed("grew has bytes that are not a byte count")
    seconds = g.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not math.isfinite(seconds) or not 0 <= seconds < _MAX_TIME:
        raise _Malformed("grew has seconds that are not a span of time")
    comm = g.get("comm", "")
    if not isinstance(comm, str):
        raise _Malformed("grew has a comm that is not a string")
    frames = _opt_strs(g, "frames")
    if len(frames) > _MAX_GREW_FRAMES:
        raise _Malformed("grew has a stack too deep to be one")
    return Growth(pid=pid, comm=comm, cgroup=_opt_str(g, "cgroup"), bytes=size, frames=frames,
                  seconds=float(seconds))


def _grew_from_json(obj: Mapping[str, Any]) -> tuple[Growth, ...]:
    v = obj.get("grew")
    if v is None:  # recordings made before memtrace tracked growth
        return ()
    if not isinstance(v, list):
        raise _Malformed("grew is not a list")
    if len(v) > _MAX_GREW:
        raise _Malformed(f"grew has {len(v)} entries, more than {_MAX_GREW}")
    return tuple(_growth_from_json(g) for g in v)


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
                   size=_opt_int(obj, "size"), order=_order(obj), gfp=_opt_gfp(obj),
                   cause=_opt_str(obj, "cause"), explanation=_opt_str(obj, "explanation"),
                   evidence=_opt_dict(obj, "evidence"),
                   confidence=_opt_str(obj, "confidence"),
                   user_stack=_opt_strs(obj, "user_stack"),
                   kernel_stack=_opt_strs(obj, "kernel_stack"),
                   args=_opt_dict(obj, "args"), opportunistic=_opt_bool(obj, "opportunistic"),
                   linked=tuple(_kernel_failure_from_json(k) for k in linked or ()),
                   detail=detail, memcg=_memcg_from_json(obj), host=_host_from_json(obj),
                   user_sources=_opt_sources(obj), grew=_grew_from_json(obj))


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


def _probes_from_json(obj: Mapping[str, Any]) -> RecordedProbes:
    probes = obj.get("probes")
    if not isinstance(probes, list):
        raise _Malformed("probes is not a list")
    return RecordedProbes(_time(obj), _opt_strs(obj, "changed"),
                          tuple(_probe_from_json(p) for p in probes))


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
        if kind == "probes":
            return _probes_from_json(obj)
    except _Malformed as e:
        raise LineError(n, f"malformed {kind} record ({e})") from None
    raise LineError(n, f"unknown record type {_short(kind)}")
