"""Truth at the moment of failure: processes that exit and cgroups removed right after failing.

Every child here exits as soon as it has failed (no linger) and every cgroup is removed
before the tracer's events are read, so nothing can be looked up after the fact."""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests import workloads as w

pytestmark = pytest.mark.bpf

NO_LINGER = {"MT_LINGER": "0"}


def _v2_mount() -> Path:
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] == "cgroup2":
                return Path(parts[1])
    pytest.skip("no cgroup2 hierarchy mounted")


@contextlib.contextmanager
def _v2_cgroup() -> Iterator[tuple[Path, str]]:
    """A cgroup in the v2 hierarchy (no controllers needed), removed afterwards."""
    name = f"memtrace-test-{uuid.uuid4().hex[:8]}"
    d = _v2_mount() / name
    d.mkdir()
    try:
        yield d, "/" + name
    finally:
        deadline = time.monotonic() + 10
        while d.exists() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                d.rmdir()
            time.sleep(0.05)


def test_failure_in_a_memcg_removed_right_after_is_named(live):
    """A job's cgroup made, failed in, and removed before memtrace reads the event."""
    comm = w.unique_comm("mt-gone")
    with w.memcg(256 << 20) as (d, path):
        child = w.run_child(w.HUGE_MMAP, comm, cgroup_procs=d / "cgroup.procs", env=NO_LINGER)
        assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM
    assert not d.exists()  # removed before a single event was read
    mine = live.wait(lambda fs: any(f.syscall == "mmap" for f in fs), child.pid)
    calls = [f for f in mine if f.syscall == "mmap"]
    assert calls and calls[0].cgroup == path, calls
    # the exact counters are keyed by the same id: named as well
    counts = [c for c in live.src.snapshot().syscalls if c.pid == child.pid]
    assert counts and {c.cgroup for c in counts} == {path}


def test_v2_cgroup_named_from_birth(live):
    """The kernel's announcement of a v2 cgroup is learned although it is gone when asked."""
    with _v2_cgroup() as (d, path):
        cgroup_id = os.stat(d).st_ino
    assert not d.exists()
    live.pump(0.3)
    assert live.src.resolver.path(cgroup_id, memory=False) == path


def test_renamed_memcg_keeps_its_new_name(live):
    mount, version = w.memory_hierarchy()
    if version != 1:
        pytest.skip("renaming a cgroup needs cgroup v1")
    with w.memcg(256 << 20) as (d, path):
        cgroup_id = os.stat(d).st_ino
        new = d.with_name(d.name + "-renamed")
        os.rename(d, new)
        try:
            live.pump(0.3)
            assert live.src.resolver.path(cgroup_id) == path + "-renamed"
        finally:
            os.rename(new, d)


def _diagnosed(failures):
    from tracer.diagnose.diagnoser import Diagnoser

    return Diagnoser()(failures)


def test_kernel_charge_failure_in_a_removed_memcg_is_memcg_limit(live):
    """The pipe's ring is charged to a 512 KiB cgroup that is gone when the event is read:
    the charge and limit come from the kernel side, as of the failure."""
    comm = w.unique_comm("mt-gonepipe")
    limit = 512 << 10
    with w.sysctl("fs.pipe-max-size", str(64 << 20)), w.memcg(limit) as (d, path):
        child = w.run_child(w.PIPE_GROW, comm, env={"MT_JOIN_CGROUP": str(d / "cgroup.procs"),
                                                     **NO_LINGER})
        assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM
    assert not d.exists()
    mine = live.wait(lambda fs: any(f.syscall == "fcntl" and f.kind == "syscall" for f in fs),
                     child.pid)
    call = next(f for f in mine if f.syscall == "fcntl" and f.kind == "syscall")
    assert call.cgroup == path
    assert call.memcg is not None and call.memcg.limit == limit
    assert 0 < call.memcg.usage <= limit
    f = _diagnosed([call])[0]
    assert f.cause == "memcg_limit", f.explanation
    assert (f.evidence["cgroup"], f.evidence["limit"]) == (path, limit)
    assert f.evidence["usage"] == call.memcg.usage
    assert path in f.explanation


def test_limit_of_a_parent_cgroup_is_the_one_named(live):
    """A charge in a child cgroup without a limit of its own fails on its parent's."""
    comm = w.unique_comm("mt-parent")
    mount, version = w.memory_hierarchy()
    limit = 512 << 10
    with w.sysctl("fs.pipe-max-size", str(64 << 20)), w.memcg(limit) as (d, path):
        if version == 1:
            (d / "memory.use_hierarchy").write_text("1") if (d / "memory.use_hierarchy").exists() \
                else None
        else:
            (d / "cgroup.subtree_control").write_text("+memory")
        child_dir = d / "job"
        child_dir.mkdir()
        try:
            child = w.run_child(w.PIPE_GROW, comm,
                                env={"MT_JOIN_CGROUP": str(child_dir / "cgroup.procs"),
                                     **NO_LINGER})
        finally:
            deadline = time.monotonic() + 10
            while child_dir.exists() and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    child_dir.rmdir()
                time.sleep(0.05)
    assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM
    mine = live.wait(lambda fs: any(f.syscall == "fcntl" and f.kind == "syscall" for f in fs),
                     child.pid)
    call = next(f for f in mine if f.syscall == "fcntl" and f.kind == "syscall")
    assert call.cgroup == path + "/job"
    assert call.memcg is not None and call.memcg.limit is None  # the job has no limit itself
    assert (call.memcg.nearest_cgroup, call.memcg.nearest_limit,
            call.memcg.nearest_levels_up) == (path, limit, 1)
    f = _diagnosed([call])[0]
    assert f.cause == "memcg_limit"
    assert (f.evidence["cgroup"], f.evidence["limit"]) == (path, limit)


def test_oom_kill_in_a_removed_memcg_quotes_its_charge_at_the_kill(live):
    comm = w.unique_comm("mt-goneoom")
    limit = 48 << 20
    with w.memcg(limit) as (d, path):
        child = w.run_child(w.OOM_HOG, comm, cgroup_procs=d / "cgroup.procs")
        assert child.returncode == -9
    assert not d.exists()
    mine = live.wait(lambda fs: any(f.kind == "oom_kill" for f in fs), child.pid)
    kill = next(f for f in mine if f.kind == "oom_kill")
    assert kill.cgroup == path
    assert kill.memcg is not None and kill.memcg.limit == limit
    assert kill.memcg.usage >= limit - (4 << 20)  # at its limit when the kill was decided
    f = _diagnosed([kill])[0]
    assert f.cause == "memcg_limit"
    assert (f.evidence["usage"], f.evidence["limit"]) == (kill.memcg.usage, limit)


# -- fast-changing evidence, captured in the kernel --------------------------------------------

MPROTECT_OVER_RLIMIT_DATA = w.MMAP_HELPERS + """
size = 64 << 20
p, _ = mm(size, 0x22, prot=1)  # private, read-only: not data yet
libc.mprotect(p + (16 << 20), 16 << 20, 0)  # three mappings now: the check walks all three
data = int(open("/proc/self/status").read().split("VmData:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (data + (1 << 20), resource.getrlimit(resource.RLIMIT_DATA)[1]))
r = libc.mprotect(p, size, 3)  # writable: 64 MiB more of data, over the limit
report(errno=ctypes.get_errno() if r else 0, addr=p, size=size)
"""


def _zoneinfo() -> list[dict[str, int]]:
    zones: list[dict[str, int]] = []
    for line in Path("/proc/zoneinfo").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["Node"]:
            zones.append({})
        elif zones and len(parts) == 2 and parts[0] in ("min", "low", "high", "managed") \
                and parts[1].isdigit() and parts[0] not in zones[-1]:
            zones[-1][parts[0]] = int(parts[1])
        elif zones and parts[:2] == ["pages", "free"]:
            zones[-1]["free"] = int(parts[2])
    return [z for z in zones if z.get("managed")]


def test_range_of_an_exited_process_was_checked_at_the_failure(live):
    """mprotect and mincore over a hole, in a process gone before its maps could be read."""
    comm = w.unique_comm("mt-gonerange")
    child = w.run_child(w.BAD_RANGE, comm, env=NO_LINGER)
    assert child.report["mprotect_errno"] == errno.ENOMEM
    mine = live.wait(lambda fs: {f.syscall for f in fs} >= {"mprotect", "mincore"}, child.pid)
    assert not Path(f"/proc/{child.pid}").exists()
    found = {f.syscall: f for f in _diagnosed([f for f in mine if f.kind == "syscall"])}
    for name in ("mprotect", "mincore"):
        f = found[name]
        assert f.host is not None and f.host.range_mapped is False, name
        assert f.cause == "bad_range" and f.evidence["range_mapped"] is False, name
        assert "gone before" not in f.explanation  # not inferred: the hole was seen


def test_mprotect_over_rlimit_data_of_an_exited_process_is_not_a_bad_range(live):
    comm = w.unique_comm("mt-gonedata")
    child = w.run_child(MPROTECT_OVER_RLIMIT_DATA, comm, env=NO_LINGER)
    assert child.report["errno"] == errno.ENOMEM
    mine = live.wait(lambda fs: any(f.syscall == "mprotect" for f in fs), child.pid)
    f = _diagnosed([next(f for f in mine if f.syscall == "mprotect")])[0]
    assert f.host is not None and f.host.range_mapped is True  # every page was mapped
    assert f.cause == "rlimit_data", f.explanation


def test_huge_page_pool_is_quoted_as_it_was_at_the_failure(live):
    """The pool is empty when mmap(MAP_HUGETLB) fails and grown before the event is read."""
    comm = w.unique_comm("mt-gonehuge")
    with w.sysctl("vm.nr_hugepages", "0"):
        child = w.run_child(w.HUGETLB, comm, env=NO_LINGER)
        assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM
        with w.sysctl("vm.nr_hugepages", "2"):
            assert int(Path("/proc/sys/vm/nr_hugepages").read_text()) == 2
            mine = live.wait(lambda fs: any(f.syscall == "mmap" for f in fs), child.pid)
            f = _diagnosed([next(f for f in mine if f.syscall == "mmap")])[0]
    assert f.host is not None
    assert (f.host.hugepages_total, f.host.hugepages_free, f.host.hugepage_size) == (0, 0, 2 << 20)
    assert f.cause == "hugetlb"
    assert (f.evidence["hugepages_total"], f.evidence["hugepages_free"]) == (0, 0)
    assert "0 free of 0" in f.explanation


def test_oom_kill_carries_free_memory_and_watermarks_at_the_kill(live):
    comm = w.unique_comm("mt-oomzones")
    with w.memcg(48 << 20) as (d, _path):
        child = w.run_child(w.OOM_HOG, comm, cgroup_procs=d / "cgroup.procs")
        assert child.returncode == -9
    mine = live.wait(lambda fs: any(f.kind == "oom_kill" for f in fs), child.pid)
    h = next(f for f in mine if f.kind == "oom_kill").host
    zones = _zoneinfo()
    assert h is not None and h.free is not None and h.available is not None
    assert h.managed == sum(z["managed"] for z in zones) * 4096
    assert h.min_watermark == sum(z["min"] for z in zones) * 4096
    assert h.high_watermark == sum(z["high"] for z in zones) * 4096
    assert 0 < h.free <= h.managed and 0 < h.available <= h.managed
    # the zones' free pages a moment later (this kernel's MemFree also counts memory it has
    # not initialised yet, which no zone holds: the zones are what the allocator checks)
    free_now = sum(z["free"] for z in zones) * 4096
    assert abs(h.free - free_now) < h.managed // 4
    # and the free blocks per order of every zone, in the kernel's own sum
    assert h.free_blocks is not None and len(h.free_blocks) == len(zones)
    in_blocks = sum(n << o for b in h.free_blocks.values() for o, n in enumerate(b)) * 4096
    assert abs(in_blocks - h.free) <= h.free // 20


# -- stacks through code without frame pointers, named after the process is gone ---------------

@pytest.fixture(scope="module")
def deep_mmap(tmp_path_factory) -> Path:
    """tests/fixtures/deep_mmap.c built the usual way: -O2, no frame pointers, with -g."""
    import shutil
    import subprocess

    gcc = shutil.which("gcc")
    assert gcc, "set-up should have installed gcc"
    out = tmp_path_factory.mktemp("deep") / "deep_mmap"
    src = Path(__file__).resolve().parent.parent / "fixtures" / "deep_mmap.c"
    subprocess.run([gcc, "-O2", "-g", "-fomit-frame-pointer", "-o", str(out), str(src)],
                   check=True, timeout=120)
    return out


def _run_deep(binary: Path, cgroup_procs: Path | None = None) -> int:
    import subprocess

    def join() -> None:
        if cgroup_procs is not None:
            cgroup_procs.write_text(str(os.getpid()))

    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30,
                          preexec_fn=join)
    assert done.returncode == 1 and "errno=12" in done.stdout, done
    return int(done.stdout.split("pid=")[1].split()[0])


def test_stack_through_code_without_frame_pointers_of_an_exited_process(live, deep_mmap):
    pid = _run_deep(deep_mmap)
    assert not Path(f"/proc/{pid}").exists()  # gone a millisecond after failing
    mine = live.wait(lambda fs: any(f.syscall == "mmap" for f in fs), pid)
    f = next(f for f in mine if f.syscall == "mmap")
    frames = list(f.user_stack)
    assert frames and "(libc.so.6)" in frames[0], frames
    name = deep_mmap.name
    ours = [fr for fr in frames if fr.endswith(f"({name})")]
    assert ours[:3] == [f"reserve_arena ({name})", f"load_table ({name})", f"main ({name})"], \
        frames
    i = frames.index(f"reserve_arena ({name})")
    assert f.user_sources[i] is not None and f.user_sources[i].startswith("deep_mmap.c:")
    assert any("__libc_start" in fr for fr in frames[i:]), frames  # unwound to the start
    assert f.kernel_stack == ()  # a syscall's exit path says nothing


def test_a_storm_of_failures_copies_a_few_stacks_per_call_site(live):
    before = live.src.snapshot().drops.get("stack_copy_skipped", 0)
    comm = w.unique_comm("mt-storm")
    child = w.run_child(w.MMAP_BURST, comm, env={"MT_BURST": "200", **NO_LINGER})
    assert child.report["failed"] == 200
    mine = live.wait(lambda fs: len([f for f in fs if f.syscall == "mmap"]) >= 200, child.pid)
    calls = sorted((f for f in mine if f.syscall == "mmap"), key=lambda f: f.ts_ns)
    skipped = live.src.snapshot().drops["stack_copy_skipped"] - before
    assert len(calls) == 200
    # 4 copies a second for this call site (the burst lasts under 2 s); the rest are skipped
    # and counted, and keep their frame-pointer stack
    assert 200 - 2 * 4 <= skipped <= 200 - 4
    assert len(calls[0].user_stack) > 5, (  # unwound through the interpreter
        calls[0].user_stack, live.src.learned.knows(child.pid), live.src.snapshot().drops)
    assert all(f.user_stack for f in calls)


# -- one failed allocation is one failure ------------------------------------------------------

TWO_HUGE_PIPES = """
import fcntl
failed = 0
for _ in range(2):  # two real failures, back to back on one thread
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, 1031, 1 << 30)  # its ring needs a kmalloc far above the largest
    except OSError as e:
        failed += e.errno == 12
report(failed=failed)
"""


def test_a_large_kmalloc_failure_is_counted_once(live):
    """On this kernel a kmalloc above the largest slab traces its failure twice."""
    comm = w.unique_comm("mt-kmalloc2")
    with w.sysctl("fs.pipe-max-size", str(1 << 30)):
        child = w.run_child(TWO_HUGE_PIPES, comm, env=NO_LINGER)
    assert child.report["failed"] == 2
    mine = live.wait(lambda fs: len([f for f in fs if f.kind == "syscall"]) >= 2, child.pid)
    live.pump(0.3)
    mine = [f for f in live.failures if f.pid == child.pid]
    calls = [f for f in mine if f.kind == "syscall"]
    assert [(f.syscall, f.errno) for f in calls] == [("fcntl", "ENOMEM")] * 2
    for call in calls:  # one slab failure inside each call, not two
        assert [k.kind for k in call.linked if k.kind == "slab"] == ["slab"], call.linked
    slab_counts = [c for c in live.src.snapshot().kernel if c.pid == child.pid and c.kind == "slab"]
    assert sum(c.count for c in slab_counts) == 2  # both real failures, each once
