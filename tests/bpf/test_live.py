"""Real probes on the real kernel: each failure is reproduced in a child process."""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import pytest

from tests import workloads as w
from tracer.host.state import parse_buddyinfo
from tracer.kernel.btf import load_vmlinux
from tracer.kernel.build import BuildOptions
from tracer.kernel.failures import LiveSource
from tracer.model.failures import Filter
from tracer.model.totals import failures_by_syscall, page_alloc_by_order, summary_counts

pytestmark = pytest.mark.bpf


def _own_cgroup_path() -> str:
    mount, version = w.memory_hierarchy()
    for line in open("/proc/self/cgroup"):
        _id, controllers, path = line.rstrip("\n").split(":", 2)
        if (version == 1 and "memory" in controllers.split(",")) or (version == 2 and _id == "0"):
            return path
    raise AssertionError("no memory cgroup in /proc/self/cgroup")


def test_all_probes_attach(live):
    statuses = {p.name: p.status for p in live.src.statuses}
    assert statuses["syscall_exit"] == "attached"
    assert statuses["page_alloc"] == "attached"
    btf = load_vmlinux()
    for name, tracepoint in (("kmalloc", "kmalloc"), ("kmem_cache_alloc", "kmem_cache_alloc"),
                             ("vmalloc", "alloc_vmap_area"),
                             ("percpu", "percpu_alloc_percpu_fail"), ("oom_kill", "mark_victim")):
        if btf.tracepoint_params(tracepoint) is None:  # e.g. alloc_vmap_area before Linux 6.2
            reasons = {p.name: p.reason for p in live.src.statuses}
            assert statuses[name] == "unavailable", name
            assert f"no {tracepoint} tracepoint" in reasons[name], reasons[name]
        else:
            assert statuses[name] == "attached", name


def test_huge_mmap_enomem(live):
    comm = w.unique_comm("mt-huge")
    child = w.run_child(w.HUGE_MMAP, comm, while_running=lambda: live.pump(0.05))
    assert child.report == {"ok": False, "errno": errno.ENOMEM, "size": 1 << 46,
                            "pid": child.pid}
    mine = live.wait(lambda fs: any(f.syscall == "mmap" for f in fs), child.pid)
    mmaps = [f for f in mine if f.kind == "syscall" and f.syscall == "mmap"]
    assert len(mmaps) == 1
    f = mmaps[0]
    assert (f.errno, f.size, f.comm, f.tid) == ("ENOMEM", 1 << 46, comm, child.pid)
    assert f.args["length"] == 1 << 46
    assert "MAP_ANONYMOUS" in f.args["flags"]
    assert f.cgroup == _own_cgroup_path()
    assert f.user_stack and "(libc.so.6)" in f.user_stack[0], f.user_stack  # symbolised
    assert f.kernel_stack == ()  # at sys_exit the kernel stack is the exit path: not kept


def test_mmap_over_rlimit_as(live):
    comm = w.unique_comm("mt-ras")
    child = w.run_child(w.RLIMIT_AS_MMAP, comm)
    assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM
    mine = live.wait(lambda fs: any(f.syscall == "mmap" for f in fs), child.pid)
    mmaps = [f for f in mine if f.syscall == "mmap"]
    assert len(mmaps) == 1
    assert mmaps[0].size == 256 << 20
    assert mmaps[0].errno == "ENOMEM"
    assert mmaps[0].comm == comm


def test_brk_beyond_rlimit_data(live):
    comm = w.unique_comm("mt-brk")
    child = w.run_child(w.RLIMIT_DATA_BRK, comm)
    assert child.report["failed"] is True
    mine = live.wait(lambda fs: any(f.syscall == "brk" for f in fs), child.pid)
    brks = [f for f in mine if f.syscall == "brk"]
    assert len(brks) == 1
    f = brks[0]
    assert f.errno is None  # brk reports failure by returning the old break
    assert f.detail["requested_break"] == child.report["requested"]
    assert f.detail["returned_break"] == child.report["old_break"]
    assert f.size == 64 << 20
    counts = [c for c in live.src.snapshot().syscalls if c.pid == child.pid]
    assert [(c.syscall, c.errno, c.count) for c in counts] == [("brk", None, 1)]


def test_pipe_growth_in_tight_memcg_links_page_and_slab_failures(live):
    comm = w.unique_comm("mt-pipe")
    with w.sysctl("fs.pipe-max-size", str(64 << 20)), w.memcg(512 << 10) as (d, path):
        procs = d / "cgroup.procs"
        child = w.run_child(w.PIPE_GROW, comm, env={"MT_JOIN_CGROUP": str(procs)})
        assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM
        mine = live.wait(lambda fs: any(f.syscall == "fcntl" and f.kind == "syscall"
                                        for f in fs), child.pid)
        live.pump(1.2)  # the memcg counters are polled once a second
    mine = [f for f in live.failures if f.pid == child.pid]
    calls = [f for f in mine if f.kind == "syscall"]
    assert [(f.syscall, f.errno) for f in calls] == [("fcntl", "ENOMEM")]
    call = calls[0]
    assert call.cgroup == path and call.comm == comm
    assert call.args["cmd"] == "F_SETPIPE_SZ"
    pages = [k for k in call.linked if k.kind == "page_alloc"]
    assert pages and pages[0].order == 8
    # charged to the memory cgroup; the composite name shown depends on the host (cpusets
    # add __GFP_HARDWALL, which turns GFP_KERNEL_ACCOUNT into GFP_USER|...|__GFP_ACCOUNT)
    assert pages[0].gfp is not None and pages[0].gfp.accounted
    assert any(k.kind == "slab" for k in call.linked)
    # the kernel failures are events of their own, attributed to the same process
    page_events = [f for f in mine if f.kind == "page_alloc"]
    assert [(f.order, f.cgroup, f.comm, f.syscall) for f in page_events] == [
        (8, path, comm, "fcntl")]
    assert page_events[0].gfp is not None and page_events[0].gfp.accounted
    assert any(f.kind == "slab" and f.size for f in mine)
    # the zones as the page allocator left them at that failure, in the page's own event and
    # in its syscall's: free blocks per order of every zone, as /proc/buddyinfo names them
    zones_now = parse_buddyinfo(Path("/proc/buddyinfo").read_text())
    free_now = sum(n << o for b in zones_now.values() for o, n in enumerate(b))
    for h in (call.host, page_events[0].host):
        assert h is not None and h.free is not None and h.free_blocks is not None
        assert set(h.free_blocks) == set(zones_now)
        assert all(len(b) == len(zones_now[z]) for z, b in h.free_blocks.items())
        in_blocks = sum(n << o for b in h.free_blocks.values() for o, n in enumerate(b))
        assert abs(in_blocks * 4096 - h.free) <= h.free // 20, (in_blocks * 4096, h.free)
        assert abs(in_blocks - free_now) < free_now // 4
    # exact counters: a kernel failure that made its syscall fail is a failure, not an attempt
    snap = Filter(pids=frozenset({child.pid})).snapshot(live.src.snapshot())
    assert page_alloc_by_order(snap, opportunistic=False) == [
        (8, str(page_events[0].gfp), 1)]
    assert page_alloc_by_order(snap, opportunistic=True) == []
    assert failures_by_syscall(snap) == [("fcntl", "ENOMEM", 1)]
    # and the cgroup's own counters saw the limit being hit
    hits = [f for f in live.failures if f.kind == "memcg" and f.cgroup == path]
    assert hits and all(f.detail["increase"] > 0 for f in hits)


def test_burst_counts_are_exact_when_the_ring_buffer_overflows(live):
    n = 3000
    src = LiveSource(Filter(), log=lambda m: None,
                     options=BuildOptions(families=frozenset(), ringbuf_pages=1))
    src.start()
    try:
        comm = w.unique_comm("mt-burst")
        child = w.run_child(w.MMAP_BURST, comm, env={"MT_BURST": str(n), "MT_LINGER": "0"})
        assert child.report["failed"] == n
        events = [f for f in src.drain() if f.pid == child.pid]
        snap = Filter(pids=frozenset({child.pid})).snapshot(src.snapshot())
        assert failures_by_syscall(snap) == [("mmap", "ENOMEM", n)]
        assert summary_counts(snap)["by_kind"]["syscall"] == n
        assert len(events) < n  # one page of ring buffer cannot hold them all...
        assert snap.drops["ringbuf_full"] >= n - len(events)  # ...and every loss is counted
    finally:
        src.close()
        live.pump(0.5)  # the module's tracer saw the burst too: empty its ring buffer


def test_oom_kill_in_memcg(live):
    comm = w.unique_comm("mt-oom")
    with w.memcg(48 << 20) as (d, path):
        child = w.run_child(w.OOM_HOG, comm, cgroup_procs=d / "cgroup.procs")
        assert child.returncode == -signal.SIGKILL
        mine = live.wait(lambda fs: any(f.kind == "oom_kill" for f in fs), child.pid)
        live.pump(1.2)
    kills = [f for f in mine if f.kind == "oom_kill"]
    assert len(kills) == 1
    k = kills[0]
    assert (k.comm, k.cgroup, k.tid) == (comm, path, child.pid)
    assert 16 << 20 < k.detail["rss_bytes"] <= 64 << 20
    assert k.detail.get("constraint") == "CONSTRAINT_MEMCG"
    hits = {f.detail["event"] for f in live.failures if f.kind == "memcg" and f.cgroup == path}
    assert "oom_kill" in hits or "failcnt" in hits or "max" in hits
