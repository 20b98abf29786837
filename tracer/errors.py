"""The one root of every error a user sees: a one-line message and the exit status it ends with."""

from __future__ import annotations

from typing import Optional


class MemtraceError(Exception):
    """An error memtrace reports as `memtrace: error: <message>` and exits with exit_code.

    Raised anywhere below the command line; only the command line prints and exits."""

    exit_code = 1

    def __init__(self, message: str, exit_code: Optional[int] = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(MemtraceError):
    """Bad input the user can correct: a PID or cgroup that does not exist, a bad option."""


class HostError(MemtraceError):
    """A problem with the host that stops memtrace: not root, no BPF, no BTF, no headers."""


class ListenError(MemtraceError):
    """The metrics address cannot be used (bad HOST:PORT, port in use)."""


class ExplainError(MemtraceError):
    """The process cannot be examined (gone, or not ours)."""

    exit_code = 2


class ReplayError(MemtraceError):
    """A recording memtrace cannot read."""


class WriteError(MemtraceError):
    """A recording cannot be written (the lines already written stay readable)."""
