"""The source protocol, a scripted source for tests, and the one polling loop every command
runs: start, poll, tick, stop cleanly, summarise."""

from __future__ import annotations

import signal
import time
from typing import Callable, Optional, Protocol, Sequence

from .diagnose.diagnoser import Diagnoser
from .model.failures import Failure, Filter, Ready, Snapshot


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


class StopFlag:
    """Set by SIGINT or SIGTERM; the loop checks it between polls."""

    def __init__(self) -> None:
        self.stopped = False
        self.signal: Optional[int] = None

    def __call__(self, signum: int, _frame: object) -> None:
        self.stopped = True
        self.signal = signum

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def run(source: Source, *, duration: Optional[float], on_ready: Callable[[Ready], None],
        on_failures: Callable[[list[Failure]], None],
        on_tick: Callable[[Snapshot], None] = lambda s: None,
        on_summary: Callable[[Snapshot], None] = lambda s: None,
        interval: float = 1.0, stop: Optional[StopFlag] = None,
        diagnose: bool = True) -> Snapshot:
    stop = stop or StopFlag()
    stop.install()
    ready = source.start()
    if diagnose:
        deliver = on_failures
        enrich = Diagnoser()

        def on_failures(fs: list[Failure]) -> None:
            deliver(enrich(fs))

    try:
        on_ready(ready)
        started = time.monotonic()
        next_tick = started + interval
        while not stop.stopped:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            failures = source.poll(0.1)
            if failures:
                on_failures(failures)
            if time.monotonic() >= next_tick:
                next_tick += interval
                on_tick(source.snapshot())
        failures = source.drain()
        if failures:
            on_failures(failures)
        snap = source.snapshot()
        on_summary(snap)
        return snap
    finally:
        source.close()
