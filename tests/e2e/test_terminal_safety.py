"""The installed `memtrace` against a real process that names itself with terminal control
sequences and really fails an mmap: every human output shows the name escaped, never raw."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import unicodedata
import uuid
from pathlib import Path
from typing import Callable

import pytest

from tests import needs
from tests import workloads as w
from tests.e2e import installed
from tests.e2e.tmux import complete_frame, tmux, wait_screen

pytestmark = pytest.mark.e2e

MEMTRACE = installed.MEMTRACE
READY_TIMEOUT = 60.0  # bcc compiles the BPF programs before memtrace is ready
HUGE = 1 << 46

# What prctl(PR_SET_NAME) accepts from anyone: clear the screen, then set the window title.
HOSTILE = "\x1b[2J\x1b]0;x\x07"
SHOWN = "\\x1b[2J\\x1b]0;x\\x07"
UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Cn"})


def assert_inert(raw: bytes) -> str:
    """No escape, bell, C1 or bidi character in what memtrace wrote; the text, decoded."""
    assert b"\x1b" not in raw and b"\x07" not in raw, raw[:2000]
    text = raw.decode("utf-8")  # strict: memtrace wrote valid UTF-8
    bad = sorted({c for c in text if c != "\n" and unicodedata.category(c) in UNSAFE})
    assert bad == [], f"raw {[hex(ord(c)) for c in bad]} in {text[:2000]!r}"
    return text


def run_hostile_mmap() -> w.ChildResult:
    """A child that names itself HOSTILE (tests.workloads' prelude calls prctl with argv[1])
    and maps 64 TiB: ENOMEM."""
    child = w.run_child(w.HUGE_MMAP, HOSTILE, timeout=20)
    assert child.report == {"ok": False, "errno": errno.ENOMEM, "size": HUGE, "pid": child.pid}
    return child


def traced(args: list[str], tmp_path: Path, ready_in: str,
           while_ready: Callable[[], object], timeout: float = 30) -> tuple[bytes, bytes, int]:
    """Run `memtrace ARGS` (bounded by its --duration), call while_ready() once it is ready
    (its ready line reached `ready_in`, "stdout" or "stderr"); its raw stdout, stderr, status."""
    out_path, err_path = tmp_path / f"{args[0]}.out", tmp_path / f"{args[0]}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([MEMTRACE, *args], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        try:
            watched = out_path if ready_in == "stdout" else err_path
            deadline = time.monotonic() + READY_TIMEOUT
            while b"probes attached" not in watched.read_bytes():
                assert proc.poll() is None, err_path.read_bytes()
                assert time.monotonic() < deadline, "memtrace never became ready"
                time.sleep(0.1)
            while_ready()
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    return out_path.read_bytes(), err_path.read_bytes(), rc


def test_watch_plain_shows_a_hostile_name_escaped(tmp_path):
    children: list[w.ChildResult] = []
    out, err, rc = traced(["watch", "--duration", "4"], tmp_path, "stdout",
                          lambda: children.append(run_hostile_mmap()))
    assert rc == 0, err
    text = assert_inert(out)
    assert_inert(err)
    pid = children[0].pid
    line = f"mmap() -> ENOMEM asking 64 TiB, pid {pid} ({SHOWN})"
    assert line in text, text
    summary = text[text.index("memtrace summary"):]
    assert re.search(rf"^\| +{pid} \| {re.escape(SHOWN)} +\| +1 \|$", summary, re.M), summary


def test_record_and_report_show_a_hostile_name_escaped(tmp_path):
    path = tmp_path / "hostile.jsonl"
    children: list[w.ChildResult] = []
    out, err, rc = traced(["record", "-o", str(path), "--duration", "4"], tmp_path, "stderr",
                          lambda: children.append(run_hostile_mmap()))
    assert rc == 0, err
    assert_inert(out)
    assert_inert(err)
    pid = children[0].pid
    # the recording keeps the exact name (JSON escapes it)
    assert b"\x1b" not in path.read_bytes()
    recorded = [json.loads(x) for x in path.read_text().splitlines()]
    mine = [o for o in recorded if o.get("type") == "failure" and o["pid"] == pid]
    assert [(o["comm"], o["syscall"], o["errno"]) for o in mine] == [(HOSTILE, "mmap", "ENOMEM")]

    r = subprocess.run([MEMTRACE, "report", str(path)], capture_output=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    text = assert_inert(r.stdout)
    assert_inert(r.stderr)
    assert re.search(rf"^\| +{pid} \| {re.escape(SHOWN)} +\| +1 \|$", text, re.M), text
    r = subprocess.run([MEMTRACE, "report", "--json", str(path)], capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["by_process"][str(pid)]["comm"] == HOSTILE


def test_explain_shows_a_hostile_name_escaped():
    child = subprocess.Popen(
        [w.PYTHON, "-c", w.PRELUDE + "\nprint('ready', flush=True)\ntime.sleep(30)\n", HOSTILE],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        assert Path(f"/proc/{child.pid}/comm").read_bytes() == HOSTILE.encode() + b"\n"
        r = subprocess.run([MEMTRACE, "explain", str(child.pid)], capture_output=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        text = assert_inert(r.stdout)
        assert f"headroom of pid {child.pid} ({SHOWN})" in text, text
    finally:
        child.kill()
        child.wait(timeout=5)


# --------------------------------------------------------------------------- the TUI


def test_top_dashboard_shows_a_hostile_name_escaped_and_keeps_its_title():
    needs.program("tmux", "tmux")
    sock = os.path.join(tempfile.gettempdir(), f"memtrace-e2e-tmux-{uuid.uuid4().hex[:8]}")
    session = "top"
    cmd = f"{shlex.quote(MEMTRACE)} --duration 10; sleep 30"
    r = tmux(sock, "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd)
    assert r.returncode == 0, r.stderr
    try:
        title = tmux(sock, "display", "-p", "-t", session, "#{pane_title}").stdout.strip()
        wait_screen(sock, session, lambda s: "memtrace" in s and "probes: " in s
                     and "syscall_exit" in s, READY_TIMEOUT)
        child = run_hostile_mmap()
        row = re.compile(rf"\b{child.pid}\s+{re.escape(SHOWN)}\s")
        screen = wait_screen(sock, session,
                              lambda s: complete_frame(s) and bool(row.search(s)), 8)
        # ESC [2J would have blanked the frame; the escaped name is in the process table
        # and in the recent events
        assert screen.count(SHOWN) >= 2, screen
        assert f"pid {child.pid} ({SHOWN})" in screen, screen
        now = tmux(sock, "display", "-p", "-t", session, "#{pane_title}").stdout.strip()
        assert now == title and now != "x", "the OSC sequence set the terminal's title"
        final = wait_screen(sock, session, lambda s: "memtrace summary" in s, 25, history=True)
        summary = final[final.index("memtrace summary"):]
        assert row.search(summary.replace("|", " ")), summary
    finally:
        tmux(sock, "kill-server")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
