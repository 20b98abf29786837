"""The source protocol, a scripted source for tests, and the one polling loop every command
runs: start, poll, tick, stop cleanly, summarise."""

from __future__ import annotations

import signal
import threading
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


class SnapshotRequests:
    """Fresh snapshots for other threads (a metrics scrape), always taken on the loop thread.

    A live source is read by one thread only: the loop's. Another thread asks and waits; the
    loop answers between two polls (within one poll timeout), so a scrape made after N
    failures still sees N. If the loop does not answer in time, the asker gets the latest
    snapshot the loop took."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asked = 0
        self._answered = 0
        self._latest = Snapshot()
        self._closed = False

    def ask(self, timeout: float = 2.0) -> Snapshot:
        with self._cond:
            if not self._closed:
                self._asked += 1
                ticket = self._asked
                self._cond.wait_for(lambda: self._answered >= ticket or self._closed, timeout)
            return self._latest

    def answer(self, source: Source) -> None:
        """Called by the loop: take one snapshot if anyone is waiting for one."""
        with self._cond:
            ticket = self._asked
            if self._answered >= ticket:
                return
        snap = source.snapshot()
        with self._cond:
            self._latest = snap
            self._answered = ticket
            self._cond.notify_all()

    def publish(self, snap: Snapshot) -> None:
        with self._cond:
            self._latest = snap

    def close(self, final: Optional[Snapshot] = None) -> None:
        with self._cond:
            if final is not None:
                self._latest = final
            self._closed = True
            self._cond.notify_all()


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
        diagnose: bool = True, requests: Optional[SnapshotRequests] = None) -> Snapshot:
    """Start the source, hand its failures and periodic snapshots to the callbacks until a
    signal, the duration or the stop flag, then drain and summarise. Every call on the
    source happens on this thread; other threads get snapshots through `requests`."""
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
            if requests is not None:
                requests.answer(source)
            if time.monotonic() >= next_tick:
                next_tick += interval
                snap = source.snapshot()
                if requests is not None:
                    requests.publish(snap)
                on_tick(snap)
        failures = source.drain()
        if failures:
            on_failures(failures)
        snap = source.snapshot()
        if requests is not None:
            requests.close(snap)
        on_summary(snap)
        return snap
    finally:
        if requests is not None:
            requests.close()
        source.close()
