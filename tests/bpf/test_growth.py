"""The failure tracer's growth tracking on the real kernel: an OOM kill says what grew (the
victim's stacks, through code without frame pointers, and its memory cgroup's other growers),
the processes growing now are found, moved mappings are followed, and --no-growth leaves all
of it out."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
    by memset) until its 96 MiB memory cgroup kills it, next to a smaller grower (24 MiB) in
    the same cgroup: the oom_kill event names leak_here with about the bytes the victim held,
    and the other grower among the cgroup's. Sampled as always-on tracking samples (2 MiB on
    average): the bounds allow its spread."""
    limit = 96 * MiB
    with w.memcg(limit) as (directory, path):
        small = big = None
        try:
            # 24 MiB, then it sleeps holding them: the cgroup's other grower
            small = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=96, ticks=4,
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
    assert 24 * MiB <= grown <= 128 * MiB  # about the 70 MiB it held when the limit was hit
    assert all(0 <= g.seconds <= 60 for g in kill.grew)
    others = [g for g in kill.grew if g.pid == small.pid]
    assert others and "leak_here (" in _frames(others[0])
    assert 8 * MiB <= sum(g.bytes for g in others) <= 48 * MiB  # its 24 MiB


def test_a_process_started_after_the_tracer_is_found_growing(live, nofp_binary):
    """A process started after the tracer grows about 10 MiB/s (1 MiB every 100 ms): the
    snapshot's growing processes name it, its rate and its stack."""
    fx = leakfix.start(nofp_binary, leak_bytes=64 * 1024, per_tick=16, ticks=120,
                       tick_us=100_000)
    try:
        fx.go()
        live.pump(8.0)
        growing = {g.pid: g for g in live.src.snapshot().growing}
    finally:
        fx.stop()
    assert fx.pid in growing, f"pid {fx.pid} not among {sorted(growing)}"
    g = growing[fx.pid]
    assert g.comm == nofp_binary.name
    assert 4 * MiB <= g.bytes_per_second <= 25 * MiB
    assert "leak_here (" in " ".join(g.top_frames)
    assert os.getpid() not in growing  # memtrace leaves itself out


# 32 MiB of small pages and 32 MiB advised to be huge pages (2 MiB each where the kernel
# can), first touched when the test says so.
TOUCH = w.MMAP_HELPERS + """
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
half = 32 << 20
small, _ = mm(half, 0x22)
room, _ = mm(half + (2 << 20), 0x22)
huge = (room + (2 << 20) - 1) & ~((2 << 20) - 1)   # 2 MiB aligned
libc.madvise(huge, half, 14)                        # MADV_HUGEPAGE
report(ready=True)
sys.stdin.readline()
ctypes.memset(small, 1, half)
ctypes.memset(huge, 1, half)
rollup = open("/proc/self/smaps_rollup").read()
report(huge_kib=int(rollup.split("AnonHugePages:")[1].split()[0]))
sys.stdin.readline()
"""


def test_the_page_allocators_sampler_counts_bytes_huge_pages_by_their_size():
    """Sampled by the page allocator's program at 64 KiB (about 1,000 samples of 64 MiB): what
    a process first touches is counted within 10% on a quiet machine (30% asserted), huge
    pages by their order (a sampler counting faults would see a 2 MiB page as 4 KiB)."""
    src = LiveSource(Filter(), log=lambda m: print(m, file=sys.stderr),
                     growth_sample_bytes=64 * 1024)
    src.start()
    comm = w.unique_comm("mt-touch")
    child = subprocess.Popen([w.PYTHON, "-c", w.PRELUDE + "\n" + TOUCH, comm],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    said: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [said.put(line) for line in child.stdout], daemon=True).start()

    def read_while_polling(seconds: float = 30.0) -> str:
        """The child's next line, reading growth all along."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            src.poll(0.02)
            try:
                return said.get_nowait()
            except queue.Empty:
                continue
        raise AssertionError("the child said nothing")

    def resident() -> float:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # the last samples wait for a later allocation
            src.poll(0.05)
        src.drain()
        proc = src.growth_profile.processes.get(child.pid)
        return proc.resident.weight() if proc is not None else 0.0

    try:
        assert "ready" in read_while_polling()
        before = resident()
        child.stdin.write("go\n")
        child.stdin.flush()
        huge_kib = json.loads(read_while_polling())["huge_kib"]
        after = resident()
        dropped = src.snapshot().drops
    finally:
        child.kill()
        child.wait()
        src.close()
    # Whether or not the ring buffer overflowed on a loaded machine (its drops are counted,
    # and the refused samples' bytes with them: see the next test), the bytes are whole.
    assert "growth_ringbuf_full" in dropped
    # Within 30%: on a loaded machine the last samples may still wait for their CPU's next
    # user page allocation when this is read. A sampler counting faults, not bytes, would
    # see the 2 MiB pages as 4 KiB and land near 32 MiB.
    assert after - before == pytest.approx(64 * MiB, rel=0.3)
    if Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().count("[never]") == 0:
        assert huge_kib >= 8 * 1024, "the kernel gave the advised region no huge page"


FLOOD = w.MMAP_HELPERS + """
size = 512 << 20
p, _ = mm(size, 0x22)
ctypes.memset(p, 1, size)   # 512 MiB first touched as fast as it goes
report(touched=size)
sys.stdin.readline()
"""


def test_growth_faster_than_memtrace_reads_keeps_its_bytes():
    """512 MiB first touched in a fraction of a second, sampled every 16 KiB (some 32,000
    samples, far more than memtrace's reading budget a second): the ring buffer overflows,
    the samples it refused are counted in the kernel by process, and what the process grew
    is still whole (within 10%)."""
    src = LiveSource(Filter(), log=lambda m: print(m, file=sys.stderr),
                     growth_sample_bytes=16 * 1024)
    src.start()
    child = subprocess.Popen([w.PYTHON, "-c", w.PRELUDE + "\n" + FLOOD, w.unique_comm("mt-flood")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert "touched" in child.stdout.readline()  # nothing read while it touched
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            src.poll(0.05)
        snap = src.snapshot()
        grew = src.growth_profile.grew(child.pid, time.time(), seconds=60, top=100)
    finally:
        child.kill()
        child.wait()
        src.close()
    assert snap.drops["growth_ringbuf_full"] > 1000
    assert sum(g.bytes for g in grew) == pytest.approx(512 * MiB, rel=0.1)
    assert any(g.frames == ("[stack lost: ring buffer full]",) for g in grew)


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
sys.stdin.readline()              # until the test saw it grow (or gave up waiting)
libc.munmap(moved, size)
report(unmapped=True)
time.sleep(1.5)
"""


def test_growth_in_a_moved_mapping_is_given_back_where_it_moved(live):
    moved_mapping_is_given_back(live)


def moved_mapping_is_given_back(live) -> None:
    """MOVED under the tracer `live` (a tests.bpf.conftest.Recorder): mremap's new address
    and munmap's release both come from the syscall hook's growth work."""
    comm = w.unique_comm("mt-moved")
    seen: dict = {}

    def watch() -> None:
        live.pump(0.05)
        proc = live.src.growth_profile.processes.get(seen.get("pid", -1))
        if proc is not None:
            seen["peak"] = max(seen.get("peak", 0.0), proc.resident.weight())

    proc = subprocess.Popen([w.PYTHON, "-c", w.PRELUDE + "\n" + MOVED, comm],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen["pid"] = proc.pid
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert "moved" in proc.stdout.readline()  # the 64 MiB are touched
        # its samples are read and named within memtrace's time budget: a loaded machine
        # (or a first look at python's binaries) may take some seconds
        deadline = time.monotonic() + 20
        while seen.get("peak", 0) < 40 * MiB and time.monotonic() < deadline:
            watch()
        settle = time.monotonic() + 1.0  # and the samples read after those
        while time.monotonic() < settle:
            watch()
        proc.stdin.write("\n")
        proc.stdin.flush()
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
