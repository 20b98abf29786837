"""The source protocol, a scripted source for tests, and the one polling loop every command
runs: start, poll, tick, stop cleanly, summarise, and live through its own memory running out."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

from .diagnose.diagnoser import Diagnoser
from .model.failures import Failure, Filter, Ready, Snapshot


class Source(Protocol):
    def start(self) -> Ready: ...

    def poll(self, timeout: float = 0.1) -> list[Failure]: ...

    def drain(self) -> list[Failure]: ...

    def snapshot(self) -> Snapshot: ...

    def close(self) -> None: ...


@runtime_checkable
class SheddingSource(Protocol):
    """A source holding caches it can drop when memtrace runs out of memory."""

    def shed_memory(self) -> None: ...


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


# Said once, on the first MemoryError the loop survives. Made up front: saying it must not
# need much memory.
OUT_OF_MEMORY_NOTE = (
    "memtrace: warning: memtrace itself ran out of memory: it dropped the failure details it "
    "held and its caches, and goes on; the kernel keeps counting, so the totals stay exact "
    "(some failures lose their details).")


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class MemoryRecovery:
    """What the loop does when one of memtrace's own allocations fails (MemoryError): drop
    what it holds in memory and can rebuild, say so once, and go on. The exact counts are
    in BPF maps, allocated when the programs were loaded, so they do not suffer."""

    def __init__(self, source: Source, log: Callable[[str], None],
                 forget: Callable[[], None] = lambda: None):
        self.source = source
        self.log = log
        self.forget = forget
        self.times = 0

    def recover(self) -> None:
        self.times += 1
        for step in (self.forget, self._shed_source, gc.collect):
            try:
                step()
            except MemoryError:
                pass  # the others may still free enough
        if self.times == 1:
            try:
                self.log(OUT_OF_MEMORY_NOTE)
            except (MemoryError, OSError):
                pass

    def _shed_source(self) -> None:
        if isinstance(self.source, SheddingSource):
            self.source.shed_memory()


def run(source: Source, *, duration: Optional[float], on_ready: Callable[[Ready], None],
        on_failures: Callable[[list[Failure]], None],
        on_tick: Callable[[Snapshot], None] = lambda s: None,
        on_summary: Callable[[Snapshot], None] = lambda s: None,
        interval: float = 1.0, stop: Optional[StopFlag] = None,
        diagnose: bool = True, requests: Optional[SnapshotRequests] = None,
        log: Callable[[str], None] = _stderr) -> Snapshot:
    """Start the source, hand its failures and periodic snapshots to the callbacks until a
    signal, the duration or the stop flag, then drain and summarise. Every call on the
    source happens on this thread; other threads get snapshots through `requests`.

    A MemoryError while handling failures or a tick costs what was in hand (the batch, the
    tick): the loop drops its caches and the source's, says so once on `log`, and goes on."""
    stop = stop or StopFlag()
    stop.install()
    ready = source.start()
    diagnoser: list[Optional[Diagnoser]] = [Diagnoser() if diagnose else None]

    def deliver(fs: list[Failure]) -> None:
        if diagnose:
            enrich = diagnoser[0]
            if enrich is None:
                enrich = diagnoser[0] = Diagnoser()
            fs = enrich(fs)
        on_failures(fs)

    def forget() -> None:
        diagnoser[0] = None  # its evidence caches; a new one is made for the next failures

    recovery = MemoryRecovery(source, log, forget)

    def guarded(step: Callable[[], None]) -> None:
        out_of_memory = False
        try:
            step()
        except MemoryError:
            out_of_memory = True
        if out_of_memory:  # out of the except block: its traceback no longer holds the batch
            recovery.recover()

    def poll_once() -> None:
        failures = source.poll(0.1)
        if failures:
            deliver(failures)

    def tick() -> None:
        snap = source.snapshot()
        if requests is not None:
            requests.publish(snap)
        on_tick(snap)

    def drain() -> None:
        failures = source.drain()
        if failures:
            deliver(failures)

    try:
        on_ready(ready)
        started = time.monotonic()
        next_tick = started + interval
        while not stop.stopped:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            guarded(poll_once)
            if requests is not None:
                guarded(lambda: requests.answer(source))
            if time.monotonic() >= next_tick:
                next_tick += interval
                guarded(tick)
        guarded(drain)
        try:
            snap = source.snapshot()
        except MemoryError:
            snap = None
        if snap is None:  # once more with the caches dropped: the summary is what counts
            recovery.recover()
            snap = source.snapshot()
        if requests is not None:
            requests.close(snap)
        on_summary(snap)
        return snap
    finally:
        if requests is not None:
            requests.close()
        source.close()
