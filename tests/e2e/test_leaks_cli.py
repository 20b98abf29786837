"""`memtrace leaks` as a user runs it: JSON intervals, a flame graph that renders, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests import leakfix, needs
from tests.e2e import installed

pytestmark = pytest.mark.e2e

MEMTRACE = installed.MEMTRACE


def test_leaks_cli_json_folded_and_flamegraph(tmp_path):
    binary = leakfix.build(tmp_path, frame_pointers=False)
    fx = leakfix.start(binary)
    html, folded = tmp_path / "leaks.html", tmp_path / "leaks.folded"
    mt = subprocess.Popen([MEMTRACE, "leaks", "-p", str(fx.pid), "--json", "--interval", "0.5",
                           "--flamegraph", str(html), "--folded", str(folded)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert mt.stderr is not None
        deadline = time.monotonic() + 30
        while "Ctrl-C to stop" not in (line := mt.stderr.readline()):
            assert time.monotonic() < deadline and line, "memtrace leaks never attached"
        fx.go()
        leaked, _ = fx.leaked()
        time.sleep(1.0)
        mt.send_signal(signal.SIGINT)
        out, err = mt.communicate(timeout=30)
    finally:
        fx.stop()
        if mt.poll() is None:
            mt.kill()
    assert mt.returncode == 0, err
    objs = [json.loads(line) for line in out.splitlines()]
    assert all(o["type"] in ("leaks", "alloc_failure") for o in objs)
    final = objs[-1]
    assert final["final"] and "leak_here (" in " ".join(final["stacks"][0]["frames"])
    assert final["stacks"] == sorted(final["stacks"], key=lambda s: -s["bytes"])
    lines = folded.read_text().splitlines()
    assert any("leak_here (" in line for line in lines)
    assert all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
    chromium = needs.program("chromium", "chromium")  # renders the flame graph just written
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-quic", "--no-first-run", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chrome'}",
                          "--virtual-time-budget=2000", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=90).stdout
    assert 'data-name="leak_here (' in dom


def test_unknown_pid_is_one_line():
    r = subprocess.run([MEMTRACE, "leaks", "-p", "999999999"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "memtrace: error: no such process: 999999999"
