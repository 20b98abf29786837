"""Driving the live dashboard in a real terminal: a private tmux server, its screen, and
when a frame on it is whole (tmux may be read in the middle of a redraw)."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable

import pytest


def tmux(sock: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    # pytest exports COLUMNS=80 and LINES=24, which rich (like most terminal programs) takes
    # over the terminal's real size: the tmux server must not hand them to the dashboard.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(["tmux", "-S", sock, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def screen(sock: str, session: str, history: bool = False) -> str:
    extra = ["-S", "-"] if history else []
    return tmux(sock, "capture-pane", "-p", "-J", *extra, "-t", session).stdout


def complete_frame(text: str) -> bool:
    """The dashboard's whole frame is on the screen: its header first, the events table,
    and its footer (the dropped line, then the cost line when probe cost is shown) last."""
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and lines[0].startswith("memtrace ") and "Recent events" in text \
        and any("events received:" in line for line in lines[-3:])


def wait_screen(sock: str, session: str, pred: Callable[[str], bool], timeout: float,
                history: bool = False) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(sock, session, history)
        if pred(text):
            return text
        time.sleep(0.25)
    pytest.fail(f"the screen never showed what was expected within {timeout}s:\n{text}")
