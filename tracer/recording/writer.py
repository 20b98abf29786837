"""`memtrace record`'s writer: the `watch --json` stream written so that a crash leaves a readable file."""

from __future__ import annotations

import errno
import os
import re
import time
from typing import Any, Callable, Optional

from ..errors import WriteError
from ..model.failures import Failure, Ready, Snapshot
from ..model.probes import attached_count
from ..run import Source, run
from . import format as jsonout

SIZE_LIMIT_DROP = "recording_size_limit"  # the summary's "dropped" key for unwritten failures
FSYNC_EVERY = 1.0  # seconds


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", re.I)
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_size(text: str) -> int:
    """'100M' -> 104857600 (K, M, G, T are powers of 1024; a plain number is bytes)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 100M, 1G)")
    size = int(float(m.group(1)) * (1 << _UNITS[m.group(2).lower()]))
    if size <= 0:
        raise ValueError(f"{text!r} is not a size above zero")
    return size


# --------------------------------------------------------------------------- writing


class RecordingWriter:
    """Writes a recording line by line so that a crash or SIGKILL leaves a readable file.

    Each line goes out in one write() of the whole line on an unbuffered descriptor (so
    every complete line is in the file as soon as it is written), the file is fsync'ed at
    most every FSYNC_EVERY seconds and on close, and nothing written is ever rewritten.
    Failure lines stop once the file would pass max_size: later ones are only counted,
    and the summary (always written) says how many in dropped["recording_size_limit"]."""

    def __init__(self, path: str, max_size: int, *,
                 on_limit: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.max_size = max_size
        self.size = 0
        self.failures = 0  # failure lines written
        self.dropped = 0  # failures not written: the size limit was reached
        self.limited = False
        self._on_limit = on_limit
        self._clock = clock
        try:
            self._fd: Optional[int] = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise WriteError(f"cannot write {path}: {e.strerror}") from None
        self._can_sync = True
        self._dirty = False
        self._synced = clock()
        self._probes = jsonout.ProbeLines()

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:  # a regular file takes it in one write(); the loop is for short writes
            try:
                n = os.write(self._fd, view)
            except OSError as e:
                raise WriteError(f"cannot write {self.path}: {e.strerror}") from None
            view = view[n:]
            self.size += n
        self._dirty = True
        self.tick()

    @staticmethod
    def _line(obj: dict[str, Any]) -> bytes:
        return (jsonout.dumps(obj) + "\n").encode("utf-8", "backslashreplace")

    def write_ready(self, r: Ready) -> None:
        self._probes.ready(r.probes)
        self._write(self._line(jsonout.ready_obj(r)))

    def write_failure(self, f: Failure) -> bool:
        """Write one failure line; False when the size limit keeps it out."""
        data = self._line(jsonout.failure_obj(f))
        if not self.limited and self.size + len(data) > self.max_size:
            self.limited = True
            self._on_limit()
        if self.limited:
            self.dropped += 1
            return False
        self._write(data)
        self.failures += 1
        return True

    def write_probes(self, s: Snapshot) -> None:
        """A `probes` line when a probe's state changed since the last one (or since ready):
        the adaptive slab hooks attach and detach as failures come and go."""
        obj = self._probes.line(s.probes, time.time())
        if obj is not None:
            self._write(self._line(obj))

    def write_summary(self, s: Snapshot) -> None:
        self.write_probes(s)  # a change since the last tick comes before the summary
        obj = jsonout.summary_obj(s)
        obj["dropped"] = {**obj["dropped"], SIZE_LIMIT_DROP: self.dropped}
        self._write(self._line(obj))
        self.sync()

    def sync(self) -> None:
        if self._fd is None or not self._dirty:
            return
        self._dirty = False
        self._synced = self._clock()
        if not self._can_sync:
            return
        try:
            os.fsync(self._fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise WriteError(f"cannot write {self.path}: {e.strerror}") from None
            self._can_sync = False  # a pipe or a special file: nothing to sync

    def tick(self) -> None:
        """fsync if the last one was FSYNC_EVERY seconds ago (the loop calls it each tick)."""
        if self._dirty and self._clock() - self._synced >= FSYNC_EVERY:
            self.sync()

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = None


def run_record(source: Source, writer: RecordingWriter, *, duration: Optional[float],
               log: Callable[[str], None]) -> Snapshot:
    """Trace into the recording until Ctrl-C, SIGTERM or the duration; returns the totals."""

    def on_ready(r: Ready) -> None:
        writer.write_ready(r)
        attached = attached_count(r.probes)
        log(f"memtrace {r.version} on {r.kernel}: {attached}/{len(r.probes)} probes attached; "
            f"recording to {writer.path}; Ctrl-C to stop")

    def on_failures(fs: list[Failure]) -> None:
        for f in fs:
            writer.write_failure(f)

    def on_tick(s: Snapshot) -> None:
        writer.write_probes(s)
        writer.tick()

    return run(source, duration=duration, on_ready=on_ready, on_failures=on_failures,
               on_tick=on_tick, on_summary=writer.write_summary)
