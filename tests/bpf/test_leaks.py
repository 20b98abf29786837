"""Leak profiling on real processes: the C fixture leaks at leak_here() at a known rate,
churns short-lived allocations in churn(), and has one malloc that returns NULL; with -p,
with --all (processes started after it, a cgroup's tree), sampled by bytes."""

from __future__ import annotations

import io
import json
import os
import threading
import time

import pytest

from tests import leakfix, workloads
from tracer.kernel.leaks import LeakSource
from tracer.views.leaks import run_leaks

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module", params=[True, False], ids=["frame-pointers", "no-frame-pointers"])
def binary(request, tmp_path_factory):
    return leakfix.build(tmp_path_factory.mktemp("leaky"), request.param)


def profile(pid: int, mode: str, fx: leakfix.Leaky, duration: float = 4.0,
            wait_for_leak: bool = True, **kw):
    """Profile pid while the fixture leaks; return (final JSON objects, leaked bytes). With
    wait_for_leak=False the profile may end while the fixture still leaks."""
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
        if wait_for_leak:
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
        # one sample per page on average: close to exact (a few percent) on this small leak
        objs, (leaked, _blocks) = profile(fx.pid, "growth", fx, sample_bytes=4096)
    finally:
        fx.stop()
    final = objs[-1]
    assert final["mode"] == "growth" and final["sample_bytes"] == 4096
    top = final["stacks"][0]
    assert "leak_here (" in leak_frames(top)  # unwound through glibc without frame pointers
    assert top["pid"] == fx.pid and top["comm"] == binary.name
    # the fixture has debug info: its frames carry file:line
    at = [i for i, f in enumerate(top["frames"]) if f.startswith("leak_here (")][0]
    assert top["sources"][at].startswith("leaky.c:")
    leak = [s for s in final["stacks"] if "leak_here (" in leak_frames(s)]
    assert 0.85 * leaked <= sum(s["bytes"] for s in leak) <= 1.25 * leaked  # first touches
    assert sum(s["mapped_bytes"] for s in leak) >= 0.85 * leaked  # the heap's brk growth
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


# -- sampled by bytes, rates, every process ---------------------------------------------------

def _leak_bytes(stacks: list, pid: int) -> int:
    return sum(s["bytes"] for s in stacks if s["pid"] == pid and "leak_here (" in leak_frames(s))


def test_the_sampled_estimate_is_close_to_the_truth(binary):
    """48 MiB first touched in 64 KiB blocks, one sample per 64 KiB on average (~770
    samples, a relative standard deviation under 4%): the estimate is within 15%."""
    fx = leakfix.start(binary, leak_bytes=64 * 1024, per_tick=96, ticks=8, tick_us=50_000)
    try:
        objs, (leaked, _b) = profile(fx.pid, "growth", fx, sample_bytes=64 * 1024)
    finally:
        fx.stop()
    assert leaked == 48 << 20
    estimate = _leak_bytes(objs[-1]["stacks"], fx.pid)
    assert estimate == pytest.approx(leaked, rel=0.15)
    samples = sum(s["count"] for s in objs[-1]["stacks"] if s["pid"] == fx.pid)
    assert samples < leaked / 4096 / 10  # sampled: far fewer events than pages


def test_a_steady_leak_reports_its_rate_in_the_final_summary(binary):
    """10 MiB/s (1 MiB every 100 ms) still leaking when the profile ends: the final summary's
    rate is 10 MiB/s within 20%, not the 0 of two samples taken at the same moment."""
    fx = leakfix.start(binary, leak_bytes=64 * 1024, per_tick=16, ticks=120, tick_us=100_000)
    try:
        objs, _ = profile(fx.pid, "growth", fx, duration=6.0, sample_bytes=64 * 1024,
                          wait_for_leak=False)
    finally:
        fx.stop()
    final = objs[-1]
    rate = sum(s["bytes_per_second"] for s in final["stacks"]
               if s["pid"] == fx.pid and "leak_here (" in leak_frames(s))
    assert rate == pytest.approx(10 << 20, rel=0.2)
    growing = [g for g in final["growing"] if g["pid"] == fx.pid]
    assert growing and growing[0]["bytes_per_second"] == pytest.approx(10 << 20, rel=0.2)


def run_all(src: LeakSource, duration: float, start_after_attach) -> list:
    """Run `leaks --all` for `duration`; `start_after_attach()` runs once it is attached."""
    out = io.StringIO()

    def when_attached() -> None:
        deadline = time.monotonic() + 30
        while src.bpf is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        start_after_attach()

    t = threading.Thread(target=when_attached)
    t.start()
    try:
        run_leaks(src, duration=duration, as_json=True, interval=0.5, out=out)
    finally:
        t.join(timeout=60)
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def nofp_binary(tmp_path_factory):
    return leakfix.build(tmp_path_factory.mktemp("leaky_all"), frame_pointers=False)


def test_all_finds_a_process_started_after_it(nofp_binary):
    """A program built without frame pointers, started after `leaks --all` attached, grows
    through leak_here: found with its pid, name, memory cgroup and that function."""
    started: dict = {}

    def start_and_leak() -> None:
        fx = started["fx"] = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=128,
                                           ticks=8, tick_us=50_000)
        fx.go()
        started["leaked"] = fx.leaked()[0]

    src = LeakSource([], "growth", all_processes=True, sample_bytes=256 * 1024)
    try:
        objs = run_all(src, 6.0, start_and_leak)
    finally:
        if "fx" in started:
            started["fx"].stop()
    fx, leaked = started["fx"], started["leaked"]
    final = objs[-1]
    assert final["all"] is True and final["final"]
    ours = [s for s in final["stacks"] if s["pid"] == fx.pid]
    assert ours, f"pid {fx.pid} not found among {sorted({s['pid'] for s in final['stacks']})}"
    assert {s["comm"] for s in ours} == {nofp_binary.name}
    with open(f"/proc/{os.getpid()}/cgroup") as f:  # the fixture inherits our memory cgroup
        ours_memcg = next(line.split(":", 2)[2].strip() for line in f
                          if line.split(":")[1] in ("memory", ""))
    assert {s["cgroup"] for s in ours} == {ours_memcg}
    assert any("leak_here (" in leak_frames(s) for s in ours)
    # ~256 samples: the process's growth within 30% (its stacks and, when this busy host
    # filled the ring buffer, the samples counted without their stacks)
    assert sum(s["bytes"] for s in ours) == pytest.approx(leaked, rel=0.3)
    assert os.getpid() not in {s["pid"] for s in final["stacks"]}  # memtrace leaves itself out


def test_cgroup_narrows_all_to_one_tree(nofp_binary):
    """Two leaking processes, one inside a memory cgroup's child: `--all --cgroup` on the
    cgroup sees only that one."""
    procs: dict = {}
    with workloads.memcg(1 << 30) as (directory, rel):
        inner = directory / "inner"
        inner.mkdir()
        try:
            def start_both() -> None:
                def join_inner() -> None:
                    (inner / "cgroup.procs").write_text(str(os.getpid()))

                for name, pre in (("inside", join_inner), ("outside", None)):
                    procs[name] = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=32,
                                                ticks=4, tick_us=50_000, preexec_fn=pre)
                for fx in procs.values():
                    fx.go()
                for fx in procs.values():
                    fx.leaked()

            src = LeakSource([], "growth", all_processes=True, cgroup=str(directory),
                             sample_bytes=64 * 1024)
            try:
                objs = run_all(src, 5.0, start_both)
            finally:
                for fx in procs.values():
                    fx.stop()
        finally:
            deadline = time.monotonic() + 10
            while inner.exists() and time.monotonic() < deadline:
                try:
                    inner.rmdir()
                except OSError:
                    time.sleep(0.1)
    final = objs[-1]
    pids = {s["pid"] for s in final["stacks"]}
    assert procs["inside"].pid in pids and procs["outside"].pid not in pids
    assert final["cgroup"] == rel
    assert {s["cgroup"] for s in final["stacks"]} == {rel + "/inner"}


def test_what_an_oom_killed_process_grew_is_there_at_the_kill(nofp_binary):
    """A program without frame pointers grows through leak_here until its memory cgroup's
    limit kills it; right after the kill, `leaks --all`'s profile says what it grew, through
    which function, and lists it among the cgroup's growers (what an oom_kill's `grew` asks)."""
    with workloads.memcg(48 << 20) as (directory, rel):
        src = LeakSource([], "growth", all_processes=True, sample_bytes=256 * 1024)
        src.start()
        fx = None
        try:
            def join() -> None:
                (directory / "cgroup.procs").write_text(str(os.getpid()))

            fx = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=64, ticks=40,
                               tick_us=20_000, preexec_fn=join)
            fx.go()
            deadline = time.monotonic() + 60
            while fx.proc.poll() is None and time.monotonic() < deadline:
                src.poll(0.05)
            assert fx.proc.returncode == -9, "the memory cgroup's OOM killer did not kill it"
            killed_at = time.time()
            src.drain()
            src.refresh()
            grew = src.profile.grew(fx.pid, killed_at, seconds=60)
            in_cgroup = src.profile.grew_in_cgroup(rel, killed_at, seconds=60)
        finally:
            if fx is not None:
                fx.stop()
            src.close()
    assert grew, "nothing recorded for the victim"
    top = grew[0]
    assert top.pid == fx.pid and top.comm == nofp_binary.name and top.cgroup == rel
    assert "leak_here (" in " ".join(top.frames)
    assert 16 << 20 <= sum(g.bytes for g in grew) <= 64 << 20  # about the 48 MiB limit
    assert fx.pid in {g.pid for g in in_cgroup}
