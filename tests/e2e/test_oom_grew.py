"""What grew, as a user sees it: `memtrace watch --json` while a program built without frame
pointers grows through one function until its memory cgroup's OOM killer kills it; the
oom_kill line says what the victim grew, through that function, and its explanation too."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time

import pytest

from tests import leakfix
from tests import workloads as w
from tests.e2e import installed

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def _lines(proc: subprocess.Popen) -> "queue.Queue[str | None]":
    """memtrace's stdout, line by line, read in a thread (it never blocks on a full pipe)."""
    q: "queue.Queue[str | None]" = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=read, daemon=True).start()
    return q


def test_watch_json_oom_kill_says_what_grew(tmp_path):
    binary = leakfix.build(tmp_path, frame_pointers=False)
    mt = subprocess.Popen([installed.MEMTRACE, "watch", "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines = _lines(mt)
    kill = None
    fx = None
    try:
        ready = json.loads(lines.get(timeout=180) or "{}")
        assert ready.get("type") == "ready", ready
        assert {p["name"]: p["status"] for p in ready["probes"]}["growth"] == "attached"
        with w.memcg(64 * MiB) as (directory, path):
            def join() -> None:
                (directory / "cgroup.procs").write_text(str(os.getpid()))

            fx = leakfix.start(binary, leak_bytes=64 * 1024, per_tick=64, ticks=40,
                               tick_us=20_000, preexec_fn=join)
            fx.go()
            fx.proc.wait(timeout=60)
            assert fx.proc.returncode == -signal.SIGKILL, "the cgroup's OOM killer did not kill it"
            deadline = time.monotonic() + 20
            while kill is None and time.monotonic() < deadline:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
                if line is None:
                    break
                obj = json.loads(line)
                if obj.get("kind") == "oom_kill" and obj.get("pid") == fx.pid:
                    kill = obj
    finally:
        if fx is not None:
            fx.stop()
        mt.send_signal(signal.SIGINT)
        try:
            mt.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mt.kill()
            mt.wait()
    assert kill is not None, "no oom_kill line for the victim"
    assert kill["cgroup"] == path
    grew = kill["grew"]
    assert grew and grew[0]["pid"] == fx.pid and grew[0]["comm"] == binary.name
    assert any("leak_here (" in " ".join(g["frames"]) for g in grew if g["pid"] == fx.pid)
    assert 24 * MiB <= sum(g["bytes"] for g in grew if g["pid"] == fx.pid) <= 96 * MiB
    assert "leak_here" in kill["explanation"], kill["explanation"]
