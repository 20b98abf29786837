"""A recording played back through the Source protocol (`memtrace top --replay`)."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

from ..errors import ReplayError
from ..model.failures import Failure, Ready, Snapshot
from ..model.totals import Tally, snapshot_from_counts
from .format import Record, RecordedSummary
from .reader import RecordingReader, open_recording


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
