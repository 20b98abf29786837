"""Fixtures of the VM tier: `vm` tests run only inside the guest; one `memtrace watch --json` for all.

A `vm` test pushes its machine into global OOM, fragments its memory or fills it: it runs
only when tests/vm/guest.py started it inside a virtme-ng guest (MEMTRACE_VM_GUEST=1 and a
virtme kernel command line), and is skipped everywhere else."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 600.0  # bcc compiles memtrace's programs in ~75 s under TCG; leave room


def in_guest() -> bool:
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        return False
    return os.environ.get("MEMTRACE_VM_GUEST") == "1" and "virtme" in cmdline


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if in_guest():
        return
    skip = pytest.mark.skip(reason="runs only inside the VM tier's guest (sudo make test-vm)")
    for item in items:
        if item.get_closest_marker("vm"):
            item.add_marker(skip)


def memtrace_command() -> str:
    found = shutil.which("memtrace")
    return found or str(REPO / ".venv" / "bin" / "memtrace")


Event = dict[str, Any]


class Watcher:
    """One `memtrace watch --json` running for the whole session, its JSON lines collected.

    Tests pick their failures by pid (or cgroup); the watcher outlives every test, global
    OOM kills included, which is itself a promise the tests check."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([memtrace_command(), "watch", "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace", cwd="/")
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self.bad_lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            with self._cond:
                self.events.append(obj)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, pred: Callable[[list[Event]], bool], timeout: float) -> list[Event]:
        """All events so far once `pred(events)` holds (or the time is up, or memtrace died)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.events) and self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            return list(self.events)

    def ready(self) -> Event:
        events = self.wait(lambda es: any(e["type"] == "ready" for e in es), READY_TIMEOUT)
        found = [e for e in events if e["type"] == "ready"]
        assert found, f"memtrace watch never became ready: {self.stderr[-20:]}"
        return found[0]

    def failures(self, pid: Optional[int] = None, kind: Optional[str] = None,
                 cgroup: Optional[str] = None) -> list[Event]:
        with self._cond:
            events = list(self.events)
        return [e for e in events if e["type"] == "failure"
                and (pid is None or e["pid"] == pid) and (kind is None or e["kind"] == kind)
                and (cgroup is None or e["cgroup"] == cgroup)]

    def wait_failures(self, pred: Callable[[list[Event]], bool], timeout: float = 30.0,
                      **match: Any) -> list[Event]:
        self.wait(lambda _es: pred(self.failures(**match)), timeout)
        return self.failures(**match)

    def stop(self) -> Optional[Event]:
        """SIGINT, as a user's Ctrl-C; returns memtrace's closing summary."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)  # let the reader thread take the last lines
        summaries = [e for e in self.events if e["type"] == "summary"]
        return summaries[-1] if summaries else None


@pytest.fixture(scope="session")
def watcher() -> Iterator[Watcher]:
    w = Watcher()
    try:
        w.ready()
        yield w
    finally:
        w.stop()
