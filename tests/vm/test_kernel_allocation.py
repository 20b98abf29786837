"""A kernel allocation inside a syscall fails for lack of memory, outside any cgroup limit.

A BPF array map a little smaller than RAM: the kernel vmallocs it page by page with
__GFP_RETRY_MAYFAIL (reclaim, but give up rather than OOM-kill), runs out of memory, frees
what it had and bpf(BPF_MAP_CREATE) says ENOMEM. No cgroup limit, no OOM kill."""

from __future__ import annotations

import errno

import pytest

from tests import workloads as w

pytestmark = pytest.mark.vm

BIG_MAP = """
libc.syscall.restype = ctypes.c_long
total = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) * 1024
size = int(total * 0.97) & ~4095  # below RAM (a larger vmalloc is refused up front)
attr = (ctypes.c_uint32 * 32)()
attr[0], attr[1], attr[2], attr[3] = 2, 4, 4096, size // 4096  # BPF_MAP_TYPE_ARRAY
fd = libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr))  # bpf(BPF_MAP_CREATE)
err = ctypes.get_errno() if fd < 0 else 0
report(ok=fd >= 0, errno=err, size=size)
linger()
"""


@pytest.mark.skip(reason="unsafe as it stands: while the map's vmalloc drains memory to the "
                         "min watermark (~17 s under TCG) the kernel OOM-kills the largest "
                         "process, pytest itself (2 of 2 runs); kept for whoever makes it safe")
def test_vmalloc_inside_bpf_map_create_fails_for_lack_of_memory(watcher):
    kills_before = len(watcher.failures(kind="oom_kill"))
    comm = w.unique_comm("mt-kalloc")
    child = w.run_child(BIG_MAP, comm, timeout=300)
    assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM, child
    calls = watcher.wait_failures(lambda fs: any(f["syscall"] == "bpf" for f in fs),
                                  timeout=60, pid=child.pid, kind="syscall")
    bpfs = [f for f in calls if f["syscall"] == "bpf"]
    assert len(bpfs) == 1, calls
    f = bpfs[0]
    assert (f["errno"], f["comm"], f["cgroup"]) == ("ENOMEM", comm, "/")
    # the kernel's own failed allocations are linked to the syscall: order-0 pages that were
    # allowed to give up
    pages = [k for k in f["linked"] if k["kind"] == "page_alloc"]
    assert pages and all(k["order"] == 0 for k in pages), f["linked"]
    assert all("__GFP_RETRY_MAYFAIL" in (k["gfp"] or "") for k in pages), f["linked"]
    assert (f["cause"], f["evidence"].get("kind"), f["evidence"].get("order")) == (
        "kernel_allocation", "page_alloc", 0), (f["cause"], f["explanation"], f["evidence"])
    assert "__GFP_RETRY_MAYFAIL" in f["evidence"]["gfp"]
    # the kernel gave up instead of killing: no OOM kill, and memtrace still runs
    assert len(watcher.failures(kind="oom_kill")) == kills_before
    assert watcher.alive()
