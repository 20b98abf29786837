"""Leak profiling on real processes: the C fixture leaks at leak_here() at a known rate,
churns short-lived allocations in churn(), and has one malloc that returns NULL."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from tests import leakfix
from tracer.kernel.leaks import LeakSource
from tracer.views.leaks import run_leaks

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module", params=[True, False], ids=["frame-pointers", "no-frame-pointers"])
def binary(request, tmp_path_factory):
    return leakfix.build(tmp_path_factory.mktemp("leaky"), request.param)


def profile(pid: int, mode: str, fx: leakfix.Leaky, duration: float = 4.0, **kw):
    """Profile pid while the fixture leaks; return (final JSON objects, leaked bytes)."""
    out = io.StringIO()
    src = LeakSource([pid], mode, **kw)
    result: dict = {}

    def go_when_attached() -> None:
        deadline = time.monotonic() + 20
        while src.bpf is None or (mode == "malloc" and not src._attached.get(pid)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(0.3)
        fx.go()
        result["leaked"] = fx.leaked()

    t = threading.Thread(target=go_when_attached)
    t.start()
    run_leaks(src, duration=duration, as_json=True, interval=0.5, out=out)
    t.join(timeout=30)
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    return objs, result.get("leaked", (0, 0))


def leak_frames(stack: dict) -> str:
    return " ".join(stack["frames"])


def test_malloc_mode_is_exact(binary):
    fx = leakfix.start(binary)
    try:
        objs, (leaked, blocks) = profile(fx.pid, "malloc", fx)
    finally:
        fx.stop()
    final = objs[-1]
    assert final["type"] == "leaks" and final["final"] and final["mode"] == "malloc"
    assert leaked == leakfix.LEAK_BYTES * leakfix.PER_TICK * leakfix.TICKS
    top = final["stacks"][0]
    assert "leak_here (" in leak_frames(top)
    assert abs(top["bytes"] - leaked) <= 0.05 * leaked
    assert abs(top["count"] - blocks) <= 0.05 * blocks
    # short-lived churn is not a leak
    churn = [s for s in final["stacks"] if "churn (" in leak_frames(s)]
    assert sum(s["bytes"] for s in churn) < 0.01 * leaked
    # the NULL return is a failure, with its stack, never counted as outstanding
    failures = [o for o in objs if o["type"] == "alloc_failure"]
    assert [(f["function"], f["size"]) for f in failures] == [("malloc", 1 << 46)]
    assert "ask_too_much (" in " ".join(failures[0]["frames"])
    assert final["failures"] == 1
    assert all(s["bytes"] < 1 << 40 for s in final["stacks"])
    assert all(v == 0 for v in final["dropped"].values())


def test_growth_mode_finds_the_leak(binary):
    fx = leakfix.start(binary)
    try:
        objs, (leaked, _blocks) = profile(fx.pid, "growth", fx)
    finally:
        fx.stop()
    final = objs[-1]
    assert final["mode"] == "growth"
    top = final["stacks"][0]
    assert "leak_here (" in leak_frames(top)  # unwound through glibc without frame pointers
    # the fixture has debug info: its frames carry file:line
    at = [i for i, f in enumerate(top["frames"]) if f.startswith("leak_here (")][0]
    assert top["sources"][at].startswith("leaky.c:")
    assert top["bytes"] >= 0.9 * leaked
    churn = [s for s in final["stacks"] if "churn (" in leak_frames(s)]
    assert sum(s["bytes"] for s in churn) < 0.1 * leaked
    intervals = [o for o in objs if o["type"] == "leaks" and not o.get("final")]
    assert len(intervals) >= 4
    assert any(s["bytes_per_second"] > 0 for o in intervals for s in o["stacks"])


def test_follows_a_forked_child(binary):
    fx = leakfix.start(binary, env={"LEAKY_FORK": "1"})
    try:
        objs, (leaked, _b) = profile(fx.pid, "growth", fx)
        child = int(next(line.split()[1] for line in fx.lines if line.startswith("child")))
    finally:
        fx.stop()
    final = objs[-1]
    assert child in final["pids"]
    assert "leak_here (" in leak_frames(final["stacks"][0])


def test_survives_exec(binary):
    fx = leakfix.start(binary, env={"LEAKY_EXEC": "1"})
    try:
        objs, (leaked, _b) = profile(fx.pid, "malloc", fx)
    finally:
        fx.stop()
    top = objs[-1]["stacks"][0]
    assert "leak_here (" in leak_frames(top)
    assert abs(top["bytes"] - leaked) <= 0.05 * leaked


def test_stops_with_a_final_summary_when_the_process_exits(binary):
    fx = leakfix.start(binary, ticks=2)
    out = io.StringIO()
    src = LeakSource([fx.pid], "growth")

    def leak_then_exit() -> None:
        while src.bpf is None:
            time.sleep(0.05)
        time.sleep(0.3)
        fx.go()
        fx.leaked()
        fx.stop()

    t = threading.Thread(target=leak_then_exit)
    t.start()
    started = time.monotonic()
    run_leaks(src, duration=30, as_json=True, interval=0.5, out=out)
    t.join(timeout=10)
    assert time.monotonic() - started < 20  # stopped by the exit, not the duration
    final = json.loads(out.getvalue().splitlines()[-1])
    assert final["final"] and final["exited"] == [fx.pid]


def test_min_age_and_size_filters(binary):
    # every leaked block is younger than a minute when the profile ends
    fx = leakfix.start(binary)
    try:
        objs, (leaked, _b) = profile(fx.pid, "malloc", fx, min_age=60.0)
    finally:
        fx.stop()
    assert leaked > 0
    assert not any("leak_here (" in leak_frames(s) for s in objs[-1]["stacks"])
    # blocks bigger than the leak's are all that is kept
    fx = leakfix.start(binary)
    try:
        objs, (leaked, _b) = profile(fx.pid, "malloc", fx, min_size=leakfix.LEAK_BYTES + 1)
    finally:
        fx.stop()
    assert not any("leak_here (" in leak_frames(s) for s in objs[-1]["stacks"])
    assert objs[-1]["failures"] == 1  # the 64 TiB ask is above min-size: still reported
