"""The failure tracer's growth tracking on the real kernel: an OOM kill says what grew (the
victim's stacks, through code without frame pointers, and its memory cgroup's other growers),
the processes growing now are found, moved mappings are followed, and --no-growth leaves all
of it out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import leakfix
from tests import workloads as w
from tracer.kernel.failures import LiveSource
from tracer.model.failures import Filter

pytestmark = pytest.mark.bpf

MiB = 1 << 20


@pytest.fixture(scope="module")
def nofp_binary(tmp_path_factory):
    """tests/fixtures/leaky.c built -O2 without frame pointers: it grows through leak_here."""
    return leakfix.build(tmp_path_factory.mktemp("grower"), frame_pointers=False)


def _frames(growth) -> str:
    return " ".join(growth.frames)


def _join(directory):
    def join() -> None:
        (directory / "cgroup.procs").write_text(str(os.getpid()))
    return join


def test_an_oom_kill_says_what_the_victim_and_its_cgroup_grew(live, nofp_binary):
    """A program without frame pointers grows through leak_here (64 KiB blocks, first touched
    by memset) until its 64 MiB memory cgroup kills it, next to a smaller grower in the same
    cgroup: the oom_kill event names leak_here with about the bytes the victim held, and the
    other grower among the cgroup's."""
    limit = 64 * MiB
    with w.memcg(limit) as (directory, path):
        small = big = None
        try:
            # 8 MiB, then it sleeps holding them: the cgroup's other grower
            small = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=32, ticks=4,
                                  tick_us=20_000, preexec_fn=_join(directory))
            small.go()
            small.leaked()
            # 64 KiB x 64 every 20 ms (about 200 MiB/s), up to 160 MiB: killed at the limit
            big = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=64, ticks=40,
                                tick_us=20_000, preexec_fn=_join(directory))
            big.go()
            deadline = time.monotonic() + 60
            while big.proc.poll() is None and time.monotonic() < deadline:
                live.pump(0.05)
            assert big.proc.returncode == -signal.SIGKILL, "the cgroup's OOM killer did not kill it"
            mine = live.wait(lambda fs: any(f.kind == "oom_kill" for f in fs), big.pid)
        finally:
            for fx in (big, small):
                if fx is not None:
                    fx.stop()
    kill = next(f for f in mine if f.kind == "oom_kill")
    assert kill.detail.get("constraint") == "CONSTRAINT_MEMCG"
    assert kill.grew, "nothing recorded of what the victim grew"
    victim = [g for g in kill.grew if g.pid == big.pid]
    assert victim and kill.grew[0].pid == big.pid  # the victim's stacks come first
    top = victim[0]
    assert (top.comm, top.cgroup) == (nofp_binary.name, path)
    assert "leak_here (" in _frames(top), top.frames  # unwound with CFI, no frame pointers
    grown = sum(g.bytes for g in victim if "leak_here (" in _frames(g))
    assert 24 * MiB <= grown <= 96 * MiB  # about what it held when the 64 MiB limit was hit
    assert all(0 <= g.seconds <= 60 for g in kill.grew)
    others = [g for g in kill.grew if g.pid == small.pid]
    assert others and "leak_here (" in _frames(others[0])
    assert 2 * MiB <= sum(g.bytes for g in others) <= 24 * MiB  # its 8 MiB


def test_a_process_started_after_the_tracer_is_found_growing(live, nofp_binary):
    """A process started after the tracer grows about 10 MiB/s (1 MiB every 100 ms): the
    snapshot's growing processes name it, its rate and its stack."""
    fx = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=16, ticks=80,
                       tick_us=100_000)
    try:
        fx.go()
        live.pump(5.0)
        growing = {g.pid: g for g in live.src.snapshot().growing}
    finally:
        fx.stop()
    assert fx.pid in growing, f"pid {fx.pid} not among {sorted(growing)}"
    g = growing[fx.pid]
    assert g.comm == nofp_binary.name
    assert 5 * MiB <= g.bytes_per_second <= 20 * MiB
    assert "leak_here (" in " ".join(g.top_frames)
    assert os.getpid() not in growing  # memtrace leaves itself out


# A mapping grown and moved by mremap, first touched after the move, then unmapped: its
# pages' offsets still say where it was first mapped, so where they are comes from the
# kernel's tree of mappings; unmapping it then gives all of it back.
MOVED = w.MMAP_HELPERS + """
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
size = 64 << 20
first, _ = mm(4096, 0x22)
ctypes.memset(first, 1, 4096)
away, _ = mm(size, 0x22)          # a place to move to, unmapped by the move
moved = libc.mremap(first, 4096, size, 3, away)  # MREMAP_MAYMOVE | MREMAP_FIXED
assert moved == away, (moved, away)
ctypes.memset(moved, 2, size)     # 64 MiB first touched at the new address
report(moved=moved, first=first)
time.sleep(1.5)
libc.munmap(moved, size)
report(unmapped=True)
time.sleep(1.5)
"""


def test_growth_in_a_moved_mapping_is_given_back_where_it_moved(live):
    comm = w.unique_comm("mt-moved")
    seen: dict = {}

    def watch() -> None:
        live.pump(0.05)
        proc = live.src.growth_profile.processes.get(seen.get("pid", -1))
        if proc is not None:
            seen["peak"] = max(seen.get("peak", 0.0), proc.resident.weight())

    proc = subprocess.Popen([w.PYTHON, "-c", w.PRELUDE + "\n" + MOVED, comm],
                            stdout=subprocess.PIPE, text=True)
    seen["pid"] = proc.pid
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            watch()
        live.pump(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    out = proc.stdout.read() if proc.stdout else ""
    assert "unmapped" in out, out
    assert seen.get("peak", 0) >= 40 * MiB, seen  # the 64 MiB was seen growing...
    profile = live.src.growth_profile
    grew = profile.grew(proc.pid, time.time(), seconds=60)
    assert sum(g.bytes for g in grew) <= 8 * MiB, grew  # ...and given back by the munmap


def test_no_growth_leaves_its_probes_out(nofp_binary):
    """--no-growth (growth=False): nothing of growth tracking is compiled or attached, an OOM
    kill's grew and the growing processes stay empty."""
    src = LiveSource(Filter(), log=lambda m: print(m, file=sys.stderr), growth=False)
    src.start()
    try:
        status = {p.name: p for p in src.statuses}["growth"]
        assert status.status == "unavailable" and "--no-growth" in status.reason
        assert b"mt_growth_exit" not in src.bpf.funcs
        with pytest.raises(KeyError):
            src.bpf[b"growth_events"]
        assert src.growth_profile is None
        comm = w.unique_comm("mt-nogrowth")
        failures = []
        with w.memcg(48 << 20) as (d, _path):
            child = w.run_child(w.OOM_HOG, comm, cgroup_procs=d / "cgroup.procs",
                                while_running=lambda: failures.extend(src.poll(0.05)))
        assert child.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while not any(f.kind == "oom_kill" and f.pid == child.pid for f in failures) \
                and time.monotonic() < deadline:
            failures.extend(src.poll(0.1))
        kill = next(f for f in failures if f.kind == "oom_kill" and f.pid == child.pid)
        assert kill.grew == ()
        assert src.snapshot().growing == ()
    finally:
        src.close()
