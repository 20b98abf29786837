"""Reading recordings from files: strictly (the first bad line is an error) or leniently
(bad lines are skipped and named), and opening a path that may not be a recording."""

from __future__ import annotations

import os
import stat
from typing import IO, Callable, Iterable, Iterator, Optional, Union

from .. import __version__
from ..errors import ReplayError
from ..model.failures import Failure, Ready
from .format import LineError, NewerRecordingError, Record, parse_record


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
