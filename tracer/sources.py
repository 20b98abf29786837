"""The source protocol every view reads from, with the fake and replay sources (the live one is collector.LiveSource)."""

from __future__ import annotations

import json
import time
from typing import Iterable, Optional, Protocol, Sequence

from .model import Failure, Filter, KernelFailure, Ready, Snapshot
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


class ReplayError(Exception):
    """A recording memtrace cannot read, with the line number."""


def _failure_from_json(obj: dict) -> Failure:
    import datetime as dt

    t = dt.datetime.fromisoformat(obj["time"].replace("Z", "+00:00")).timestamp()
    linked = tuple(KernelFailure(kind=k["kind"], size=k.get("size"), order=k.get("order"),
                                 gfp=k.get("gfp"), opportunistic=bool(k.get("opportunistic")),
                                 cache=k.get("cache"),
                                 kernel_stack=tuple(k.get("kernel_stack") or ()))
                   for k in obj.get("linked") or ())
    return Failure(time=t, kind=obj["kind"], pid=int(obj.get("pid") or 0),
                   tid=int(obj.get("tid") or 0), comm=obj.get("comm") or "",
                   cgroup=obj.get("cgroup"), cgroup_id=int(obj.get("cgroup_id") or 0),
                   syscall=obj.get("syscall"), errno=obj.get("errno"), size=obj.get("size"),
                   order=obj.get("order"), gfp=obj.get("gfp"), cause=obj.get("cause"),
                   explanation=obj.get("explanation"), evidence=obj.get("evidence") or {},
                   confidence=obj.get("confidence"),
                   user_stack=tuple(obj.get("user_stack") or ()),
                   kernel_stack=tuple(obj.get("kernel_stack") or ()),
                   args=obj.get("args") or {}, opportunistic=bool(obj.get("opportunistic")),
                   linked=linked, detail=obj.get("detail") or {})


def read_recording(lines: Iterable[str]) -> tuple[Optional[Ready], list[Failure]]:
    """Parse a `watch --json` recording; raises ReplayError naming the bad line."""
    ready: Optional[Ready] = None
    failures: list[Failure] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReplayError(f"line {n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise ReplayError(f"line {n}: not a memtrace record (no type)")
        kind = obj["type"]
        try:
            if kind == "ready":
                ready = Ready(obj.get("version", "?"), obj.get("kernel", "?"), tuple(
                    ProbeStatus(p["name"], p["status"], p.get("via"), p.get("reason", ""))
                    for p in obj.get("probes", [])))
            elif kind == "failure":
                failures.append(_failure_from_json(obj))
            elif kind == "summary":
                pass
            else:
                raise ReplayError(f"line {n}: unknown record type {kind!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise ReplayError(f"line {n}: malformed {kind} record ({e})") from None
    return ready, failures
