"""`memtrace leaks` as a user runs it: JSON intervals, a flame graph that renders, --all with a
pprof file `go tool pprof` reads, bad input."""

from __future__ import annotations

import json
import os
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


def test_leaks_all_finds_a_new_process_and_writes_pprof(tmp_path):
    """`leaks --all --pprof`: a program started after memtrace attached is in the JSON with
    its pid and name, and `go tool pprof -top` (Debian's golang) reads the profile."""
    go = needs.program("go", "golang-go")
    binary = leakfix.build(tmp_path, frame_pointers=False)
    pprof = tmp_path / "leaks.pb.gz"
    mt = subprocess.Popen([MEMTRACE, "leaks", "--all", "--json", "--interval", "0.5",
                           "--sample-bytes", "262144", "--pprof", str(pprof)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fx = None
    try:
        assert mt.stderr is not None
        deadline = time.monotonic() + 60
        while "Ctrl-C to stop" not in (line := mt.stderr.readline()):
            assert time.monotonic() < deadline and line, "memtrace leaks --all never attached"
        assert "all processes" in line
        fx = leakfix.start(binary, leak_bytes=64 * 1024, per_tick=128, ticks=6, tick_us=50_000)
        fx.go()
        leaked, _ = fx.leaked()
        time.sleep(1.0)
        mt.send_signal(signal.SIGINT)
        out, err = mt.communicate(timeout=60)
    finally:
        if fx is not None:
            fx.stop()
        if mt.poll() is None:
            mt.kill()
    assert mt.returncode == 0, err
    final = [json.loads(line) for line in out.splitlines()][-1]
    assert final["final"] and final["all"] is True
    ours = [s for s in final["stacks"] if s["pid"] == fx.pid]
    assert ours and {s["comm"] for s in ours} == {binary.name}
    assert any("leak_here (" in " ".join(s["frames"]) for s in ours)
    r = subprocess.run([go, "tool", "pprof", "-top", "-tagfocus", f"pid={fx.pid}",
                        str(pprof)], capture_output=True, text=True, timeout=180,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                            "HOME": str(tmp_path), "GOCACHE": str(tmp_path / "gocache")})
    assert r.returncode == 0, r.stderr
    assert "Type: space" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines()]
    leak_row = next(row for row in rows if row and row[-1] == "leak_here")
    # cumulative: the leak's 48 MiB go through it (estimated: within 40% on ~190 samples)
    assert pprof_bytes(leak_row[3]) == pytest.approx(leaked, rel=0.4)


def pprof_bytes(text: str) -> float:
    """pprof's "46193.84kB" as bytes (its units are powers of 1024)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10), ("B", 1)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise AssertionError(f"not a pprof size: {text!r}")


def test_leaks_needs_pids_or_all():
    for args, message in (([], "give the processes to profile with -p PID, or --all"),
                          (["--all", "-p", "1"], "--all traces every process: give it without -p"),
                          (["--cgroup", "/"], "--cgroup narrows --all: give --all with it"),
                          (["--all", "--mode", "malloc"], "--all works in growth mode only"),
                          (["--all", "--cgroup", "/no/such/cgroup"], "no such cgroup: ")):
        r = subprocess.run([MEMTRACE, "leaks", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr, args
        assert r.stderr.startswith(f"memtrace: error: {message}"), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
