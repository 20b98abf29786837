"""The tracing loop shared by every live command: start, poll, tick, stop cleanly, summarise."""

from __future__ import annotations

import signal
import time
from typing import Callable, Optional

from .model import Failure, Ready, Snapshot
from .sources import Source


class Diagnoser:
    """Adds a cause to each failure, with evidence read right after it happened."""

    def __init__(self) -> None:
        from .cgroups import CgroupResolver
        from .evidence import EvidenceSampler

        self.sampler = EvidenceSampler(CgroupResolver())

    def __call__(self, failures: list[Failure]) -> list[Failure]:
        from . import diagnosis

        out = []
        for f in failures:
            if f.cause is None:
                f = diagnosis.apply(f, diagnosis.diagnose(f, self.sampler.evidence_for(f)))
            out.append(f)
        return out


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
