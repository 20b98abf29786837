"""A kernel allocation inside a syscall fails for lack of memory, outside any cgroup limit.

The guest has two memory nodes (run_vm.py boots it with --numa). A process bound to node 1
(set_mempolicy MPOL_BIND) asks for a BPF array map larger than that node: the kernel vmallocs
it page by page from node 1 only, with __GFP_RETRY_MAYFAIL (reclaim, then give up rather
than OOM-kill), runs out, frees what it had, and bpf(BPF_MAP_CREATE) says ENOMEM. Every
other process still allocates from node 0, so nothing else starves and no OOM killer runs:
the machine-wide drain this test once used (a map nearly the size of RAM) made the kernel
OOM-kill pytest itself."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from tests import workloads as w

pytestmark = pytest.mark.vm

NODE = 1

BOUND_MAP = """
libc.syscall.restype = ctypes.c_long
node, size = int(os.environ["MT_NODE"]), int(os.environ["MT_SIZE"])
mask = ctypes.c_ulong(1 << node)
bound = libc.syscall(238, 2, ctypes.byref(mask), 64)  # set_mempolicy(MPOL_BIND, {node})
attr = (ctypes.c_uint32 * 32)()
attr[0], attr[1], attr[2], attr[3] = 2, 4, 4096, size // 4096  # BPF_MAP_TYPE_ARRAY
fd = libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr))  # bpf(BPF_MAP_CREATE)
err = ctypes.get_errno() if fd < 0 else 0
report(bound=bound, ok=fd >= 0, errno=err, size=size)
linger()
"""


def node_total(node: int) -> int:
    text = Path(f"/sys/devices/system/node/node{node}/meminfo").read_text()
    m = re.search(rf"Node {node} MemTotal:\s+(\d+) kB", text)
    assert m, text
    return int(m.group(1)) * 1024


def test_vmalloc_inside_bpf_map_create_fails_for_lack_of_memory_on_its_node(watcher):
    assert Path(f"/sys/devices/system/node/node{NODE}").is_dir(), "the guest has one node"
    kills_before = len(watcher.failures(kind="oom_kill"))
    size = (node_total(NODE) + (64 << 20)) & ~4095  # more than the node, far less than RAM
    comm = w.unique_comm("mt-kalloc")
    child = w.run_child(BOUND_MAP, comm, timeout=300,
                        env={"MT_NODE": str(NODE), "MT_SIZE": str(size)})
    assert child.report["bound"] == 0, child
    assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM, child
    calls = watcher.wait_failures(lambda fs: any(f["syscall"] == "bpf" for f in fs),
                                  timeout=60, pid=child.pid, kind="syscall")
    bpfs = [f for f in calls if f["syscall"] == "bpf"]
    assert len(bpfs) == 1, calls
    f = bpfs[0]
    assert (f["errno"], f["comm"]) == ("ENOMEM", comm)
    # the kernel's own failed allocations are linked to the syscall: order-0 pages that were
    # allowed to give up
    pages = [k for k in f["linked"] if k["kind"] == "page_alloc"]
    assert pages and all(k["order"] == 0 for k in pages), f["linked"]
    assert all("__GFP_RETRY_MAYFAIL" in (k["gfp"] or "") for k in pages), f["linked"]
    assert (f["cause"], f["evidence"].get("kind"), f["evidence"].get("order")) == (
        "kernel_allocation", "page_alloc", 0), (f["cause"], f["explanation"], f["evidence"])
    assert "__GFP_RETRY_MAYFAIL" in f["evidence"]["gfp"]
    # no cgroup limit was near: the machine as a whole had memory (node 0's), so neither a
    # limit nor exhaustion explains it, and the zones of the moment show both nodes
    blocks = f["host"]["free_blocks"]
    assert {z.split(" zone ")[0] for z in blocks} == {"node 0", "node 1"}, blocks
    assert f["host"]["free"] > f["host"]["min_watermark"] * 2, f["host"]
    # the kernel gave up instead of killing: no OOM kill, and memtrace still runs
    assert len(watcher.failures(kind="oom_kill")) == kills_before
    assert watcher.alive()
