"""Diagnosis rules: every cause from the failure and evidence a kernel engineer would read it from.

Syscall failures are built the way the collector builds them: raw register values decoded by
tracer.decoders (describe_syscall_args, size_from_syscall), so the rules see the same flag
spellings they see live.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import pytest

from tracer.diagnose import rules as diagnosis
from tracer.diagnose.evidence import Evidence
from tracer.diagnose.rules import CAUSES, CONFIRMED, INFERRED, Finding
from tracer.host.state import CgroupState, HostState
from tracer.model.decode import describe_syscall_args, parse_gfp, size_from_syscall
from tracer.model.failures import Failure, KernelFailure, TaskState

pytestmark = pytest.mark.unit

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE = 4096
T0 = 1_790_000_000.0

# Raw syscall arguments (x86-64 values from the uapi headers).
PROT_NONE, PROT_READ, PROT_WRITE = 0x0, 0x1, 0x2
RW = PROT_READ | PROT_WRITE
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_32BIT = 0x01, 0x02, 0x20, 0x40
MAP_LOCKED, MAP_NORESERVE, MAP_STACK, MAP_HUGETLB = 0x2000, 0x4000, 0x20000, 0x40000
MAP_HUGE_2MB = 21 << 26
ANON = MAP_PRIVATE | MAP_ANONYMOUS
NO_FD = -1
MREMAP_MAYMOVE, MREMAP_FIXED = 0x1, 0x2
MAP_FIXED, MAP_GROWSDOWN, MAP_FIXED_NOREPLACE = 0x10, 0x100, 0x100000
MCL_CURRENT, MCL_FUTURE = 0x1, 0x2
MADV_DONTFORK = 10
IPC_PRIVATE, IPC_CREAT, SHM_HUGETLB = 0, 0o1000, 0o4000
F_SETPIPE_SZ = 1031
CLONE_THREADLESS_FORK = 0x01200011  # glibc fork(): CHILD_SETTID|CHILD_CLEARTID|SIGCHLD

HEAP = 0x5555_5600_0000
ADDR = 0x7F3A_2C00_0000
CGROUP = "/app.slice/app.service"
# x86-64's TASK_SIZE with 4-level paging: the user half less its top page.
TASK_SIZE = (1 << 47) - PAGE
MAX_MAP_COUNT = 65530  # vm.max_map_count's default, HostState's too

# This machine's /proc/buddyinfo (x86-64, 24 GiB): the tiny DMA zone keeps a few high-order
# blocks that ordinary allocations may not use (lowmem_reserve).
BUDDY_HEALTHY: Mapping[str, tuple[int, ...]] = {
    "node 0 zone DMA": (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3),
    "node 0 zone DMA32": (1, 1, 4, 2, 5, 4, 3, 3, 4, 2, 752),
    "node 0 zone Normal": (6588, 3832, 3818, 1985, 1144, 1599, 1082, 422, 106, 24, 98),
}
# Fragmented: only order 0-2 blocks left in the zones GFP_KERNEL may use.
BUDDY_FRAGMENTED: Mapping[str, tuple[int, ...]] = {
    "node 0 zone DMA32": (5120, 2048, 512, 0, 0, 0, 0, 0, 0, 0, 0),
    "node 0 zone Normal": (30000, 8000, 1500, 0, 0, 0, 0, 0, 0, 0, 0),
}
FRAGMENTED_FREE_PAGES = (5120 + 2048 * 2 + 512 * 4) + (30000 + 8000 * 2 + 1500 * 4)  # 63264
MIN_WATERMARK = {"node 0 zone DMA": 48, "node 0 zone DMA32": 9790, "node 0 zone Normal": 7056}
MIN_WATERMARK_PAGES = 48 + 9790 + 7056  # 16894 pages, 66 MiB

HOST = HostState(
    mem_total=16 * GiB, mem_free=8 * GiB, mem_available=12 * GiB, swap_total=2 * GiB,
    commit_limit=10 * GiB, committed_as=4 * GiB, overcommit_memory=0,
    free_blocks=BUDDY_HEALTHY, min_watermark=MIN_WATERMARK,
)

TASK = TaskState(total_vm=2 * GiB, data_vm=1 * GiB, locked_vm=0, pinned_vm=0, map_count=120,
                 rlim_as=None, rlim_data=None, rlim_memlock=8 * MiB, cap_ipc_lock=False,
                 mlock_future=False)

KMSG = ("__vm_enough_memory: pid: 12, comm: x, bytes: 4096 not enough memory for the "
        "allocation")


def host(**kw: Any) -> HostState:
    return dataclasses.replace(HOST, **kw)


def task(**kw: Any) -> TaskState:
    return dataclasses.replace(TASK, **kw)


def ev(h: HostState = HOST, cgroup: Optional[CgroupState] = None,
       mapped: Optional[bool] = None) -> Evidence:
    return Evidence(h, cgroup, mapped)


def cg(usage: Optional[int], limit: Optional[int], version: int = 2) -> CgroupState:
    return CgroupState(CGROUP, version, usage, limit, 12 if version == 1 else None)


def syscall(name: str, raw: Sequence[int], errno: Optional[str] = "ENOMEM",
            t: Optional[TaskState] = TASK, linked: Sequence[KernelFailure] = (),
            detail: Optional[Mapping[str, Any]] = None) -> Failure:
    """A failed syscall as the collector builds it from the raw registers."""
    primary = linked[0] if linked else None
    return Failure(time=T0, kind="syscall", pid=4242, tid=4242, comm="app", cgroup=CGROUP,
                   cgroup_id=7, syscall=name, errno=errno, size=size_from_syscall(name, raw),
                   order=primary.order if primary else None,
                   gfp=primary.gfp if primary else None,
                   args=describe_syscall_args(name, raw), linked=tuple(linked),
                   detail=dict(detail or {}), task=t)


def mmap(length: int, prot: int = RW, flags: int = ANON, **kw: Any) -> Failure:
    return syscall("mmap", [0, length, prot, flags, NO_FD, 0], **kw)


def brk(grow: int, t: TaskState) -> Failure:
    """brk fails silently: the old break comes back, no errno."""
    requested, returned = HEAP + grow, HEAP
    f = syscall("brk", [requested], errno=None, t=t)
    return dataclasses.replace(f, size=grow, detail={"requested_break": requested,
                                                     "returned_break": returned})


def brk_to(requested: int, returned: int, t: TaskState) -> Failure:
    """A failed brk to any break (brk() above grows the heap from HEAP)."""
    f = syscall("brk", [requested], errno=None, t=t)
    return dataclasses.replace(f, size=requested - returned,
                               detail={"requested_break": requested, "returned_break": returned})


def mremap(old: int, new: int, flags: int = MREMAP_MAYMOVE, new_addr: int = 0,
           **kw: Any) -> Failure:
    return syscall("mremap", [ADDR, old, new, flags, new_addr], **kw)


def kernel(kind: str, *, size: Optional[int] = None, order: Optional[int] = None,
           gfp: str = "GFP_KERNEL", syscall_name: Optional[str] = None) -> Failure:
    """A kernel allocation failure on its own (no failing syscall linked it)."""
    if kind == "page_alloc" and size is None:
        size = PAGE << (order or 0)
    return Failure(time=T0, kind=kind, pid=4242, tid=4242, comm="app", cgroup=CGROUP,
                   cgroup_id=7, syscall=syscall_name, size=size, order=order,
                   gfp=parse_gfp(gfp))


def oom(constraint: Optional[str]) -> Failure:
    detail: dict[str, Any] = {"total_vm_bytes": 6 * GiB, "rss_bytes": 500 * MiB, "uid": 1000}
    if constraint:
        detail["constraint"] = constraint
    return Failure(time=T0, kind="oom_kill", pid=4242, tid=4242, comm="app", cgroup=CGROUP,
                   cgroup_id=7, detail=detail)


MEMCG_EVENT = Failure(time=T0, kind="memcg", pid=0, tid=0, comm="", cgroup=CGROUP, cgroup_id=0,
                      detail={"event": "max", "increase": 3, "total": 17})


def linked_page(order: int, gfp: str = "GFP_KERNEL_ACCOUNT|__GFP_NOWARN",
                opportunistic: bool = False) -> KernelFailure:
    return KernelFailure("page_alloc", PAGE << order, order, parse_gfp(gfp), opportunistic)


def case(id: str, failure: Failure, evidence: Evidence, cause: str,
         facts: Optional[Mapping[str, Any]] = None, confidence: str = INFERRED,
         says: Sequence[str] = (), xfail: Optional[str] = None) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(failure, evidence, cause, dict(facts or {}), confidence, tuple(says),
                        id=id, marks=marks)


PIPE = syscall("fcntl", [5, F_SETPIPE_SZ, 1 * MiB], linked=[linked_page(8, opportunistic=True)])

CASES = [
    # -- rlimit_as: the address space would outgrow RLIMIT_AS ----------------------------------
    case("rlimit_as-mmap", mmap(1 * GiB, t=task(total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB)),
         ev(), "rlimit_as",
         {"total_vm": 3 * GiB + 512 * MiB, "request": 1 * GiB, "rlimit_as": 4 * GiB},
         says=("RLIMIT_AS", "ulimit -v")),
    case("rlimit_as-mremap-growth",
         syscall("mremap", [ADDR, 256 * MiB, 1 * GiB, MREMAP_MAYMOVE, 0],
                 t=task(total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB)),
         ev(), "rlimit_as", {"request": 768 * MiB, "rlimit_as": 4 * GiB},
         says=("RLIMIT_AS", "ulimit -v")),
    case("rlimit_as-brk", brk(64 * MiB, task(total_vm=4 * GiB - 16 * MiB, rlim_as=4 * GiB)),
         ev(), "rlimit_as", {"total_vm": 4 * GiB - 16 * MiB, "request": 64 * MiB},
         says=("RLIMIT_AS", "ulimit -v")),
    # -- rlimit_data: private writable memory would outgrow RLIMIT_DATA ------------------------
    case("rlimit_data-mmap-private-writable",
         mmap(256 * MiB, t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(), "rlimit_data",
         {"data_vm": 1 * GiB - 64 * MiB, "request": 256 * MiB, "rlimit_data": 1 * GiB},
         says=("RLIMIT_DATA", "ulimit -d")),
    case("rlimit_data-brk", brk(64 * MiB, task(data_vm=1 * GiB - 16 * MiB, rlim_data=1 * GiB)),
         ev(), "rlimit_data", {"request": 64 * MiB, "rlimit_data": 1 * GiB},
         says=("RLIMIT_DATA", "ulimit -d")),
    case("rlimit_data-mprotect-adds-PROT_WRITE",
         syscall("mprotect", [HEAP, 128 * MiB, RW],
                 t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(mapped=True), "rlimit_data", {"request": 128 * MiB, "rlimit_data": 1 * GiB},
         says=("RLIMIT_DATA", "ulimit -d")),
    case("not-rlimit_data-MAP_SHARED",  # shared mappings are not data (is_data_mapping)
         mmap(256 * MiB, flags=MAP_SHARED | MAP_ANONYMOUS,
              t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(), "unknown", {"syscall": "mmap", "errno": "ENOMEM", "rlimit_data": 1 * GiB}),
    case("rlimit_data-MAP_STACK-thread-stack",
         mmap(8 * MiB, flags=ANON | MAP_STACK,
              t=task(data_vm=1 * GiB - 4 * MiB, rlim_data=1 * GiB)),
         ev(), "rlimit_data", {"request": 8 * MiB, "rlimit_data": 1 * GiB}),
    # -- rlimit_memlock -------------------------------------------------------------------------
    case("rlimit_memlock-mlock",
         syscall("mlock", [ADDR, 16 * MiB], t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB)),
         ev(mapped=True), "rlimit_memlock",
         {"locked_vm": 56 * MiB, "request": 16 * MiB, "rlimit_memlock": 64 * MiB,
          "errno": "ENOMEM"},
         says=("RLIMIT_MEMLOCK", "ulimit -l")),
    case("rlimit_memlock-mmap-MAP_LOCKED-EAGAIN",
         mmap(16 * MiB, flags=ANON | MAP_LOCKED, errno="EAGAIN",
              t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB)),
         ev(), "rlimit_memlock",
         {"locked_vm": 56 * MiB, "request": 16 * MiB, "rlimit_memlock": 64 * MiB,
          "errno": "EAGAIN"},
         says=("RLIMIT_MEMLOCK", "ulimit -l")),
    case("rlimit_memlock-mmap-after-mlockall-MCL_FUTURE",
         mmap(16 * MiB, errno="EAGAIN",
              t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB, mlock_future=True)),
         ev(), "rlimit_memlock", {"locked_vm": 56 * MiB, "request": 16 * MiB, "errno": "EAGAIN"},
         says=("RLIMIT_MEMLOCK", "ulimit -l")),
    case("rlimit_memlock-mlockall-MCL_CURRENT",
         syscall("mlockall", [MCL_CURRENT | MCL_FUTURE],
                 t=task(total_vm=2 * GiB, rlim_memlock=64 * MiB)),
         ev(), "rlimit_memlock", {"rlimit_memlock": 64 * MiB},
         says=("RLIMIT_MEMLOCK", "ulimit -l")),
    case("not-rlimit_memlock-CAP_IPC_LOCK",
         syscall("mlock", [ADDR, 16 * MiB],
                 t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB, cap_ipc_lock=True)),
         ev(mapped=True), "unknown", {"syscall": "mlock"}),
    case("not-rlimit_memlock-mlock-EAGAIN-is-a-populate-failure",
         syscall("mlock", [ADDR, 16 * MiB], errno="EAGAIN",
                 t=task(locked_vm=0, rlim_memlock=64 * MiB),
                 linked=[linked_page(0, "GFP_HIGHUSER_MOVABLE")]),
         ev(host(mem_free=40 * MiB, mem_available=60 * MiB, free_blocks={}), mapped=True),
         "exhaustion", {"mem_free": 40 * MiB, "syscall": "mlock"}),
    # -- overcommit -----------------------------------------------------------------------------
    case("overcommit-heuristic-mode-0", mmap(32 * GiB), ev(), "overcommit",
         {"overcommit_memory": 0, "request": 32 * GiB, "mem_total": 16 * GiB,
          "swap_total": 2 * GiB},
         says=("vm.overcommit",)),
    case("overcommit-strict-mode-2", mmap(1 * GiB),
         ev(host(overcommit_memory=2, commit_limit=10 * GiB, committed_as=9 * GiB + 512 * MiB)),
         "overcommit",
         {"overcommit_memory": 2, "commit_limit": 10 * GiB,
          "committed_as": 9 * GiB + 512 * MiB, "request": 1 * GiB},
         says=("vm.overcommit_memory=2", "vm.overcommit_ratio")),
    case("overcommit-kernel-message-confirmed",
         mmap(PAGE, detail={"kernel_message": KMSG}),
         ev(host(overcommit_memory=2, commit_limit=10 * GiB, committed_as=10 * GiB)),
         "overcommit", {"request": 4096, "kernel_message": KMSG}, CONFIRMED,
         says=("vm.overcommit",)),
    case("not-overcommit-mode-1", mmap(32 * GiB), ev(host(overcommit_memory=1)), "unknown",
         {"syscall": "mmap", "errno": "ENOMEM"}),
    case("not-overcommit-PROT_NONE-MAP_NORESERVE-reservation",
         mmap(64 * GiB, prot=PROT_NONE, flags=ANON | MAP_NORESERVE,
              linked=[KernelFailure("slab", 184, None, parse_gfp("GFP_KERNEL_ACCOUNT"), False,
                                    cache="vm_area_struct")]),
         ev(cgroup=cg(512 * MiB, 512 * MiB)), "memcg_limit",
         {"syscall": "mmap", "limit": 512 * MiB}),
    # -- max_map_count --------------------------------------------------------------------------
    case("max_map_count-mmap-at-the-limit",  # do_mmap refuses once map_count > max_map_count
         mmap(PAGE, t=task(map_count=65531)), ev(), "max_map_count",
         {"map_count": 65531, "max_map_count": 65530}, says=("vm.max_map_count",)),
    case("max_map_count-mprotect-split-one-below",  # a middle range needs two splits
         syscall("mprotect", [ADDR + PAGE, PAGE, PROT_READ], t=task(map_count=65529)),
         ev(mapped=True), "max_map_count", {"map_count": 65529, "max_map_count": 65530},
         says=("vm.max_map_count",)),
    case("max_map_count-madvise-EAGAIN",  # madvise turns the split's ENOMEM into EAGAIN
         syscall("madvise", [ADDR + PAGE, PAGE, MADV_DONTFORK], errno="EAGAIN",
                 t=task(map_count=65530)),
         ev(mapped=True), "max_map_count", {"map_count": 65530}, says=("vm.max_map_count",)),
    # -- address_space --------------------------------------------------------------------------
    case("address_space-no-free-range",
         mmap(1 * GiB, t=task(total_vm=127 * TiB, unmapped_area_failed=True)), ev(),
         "address_space", {"request": 1 * GiB, "total_vm": 127 * TiB,
                           "unmapped_area_failed": True}),
    case("address_space-MAP_32BIT",
         mmap(1 * GiB, flags=ANON | MAP_32BIT, t=task(unmapped_area_failed=True)), ev(),
         "address_space", {"request": 1 * GiB}, says=("MAP_32BIT",)),
    case("address_space-mremap-in-place-without-MAYMOVE",
         syscall("mremap", [ADDR, 1 * MiB, 2 * MiB, 0, 0]), ev(), "address_space",
         {"request": 1 * MiB, "flags": "0"}, says=("MREMAP_MAYMOVE",)),
    # -- memcg_limit ----------------------------------------------------------------------------
    case("memcg_limit-linked-account-alloc-v2", PIPE,
         ev(cgroup=cg(64 * MiB - 256 * KiB, 64 * MiB)), "memcg_limit",
         {"cgroup": CGROUP, "usage": 64 * MiB - 256 * KiB, "limit": 64 * MiB,
          "request": 1 * MiB, "order": 8, "gfp": "GFP_KERNEL_ACCOUNT|__GFP_NOWARN",
          "syscall": "fcntl"},
         says=("memory.max",)),
    case("memcg_limit-linked-account-alloc-v1", PIPE,
         ev(cgroup=cg(64 * MiB - 256 * KiB, 64 * MiB, version=1)), "memcg_limit",
         {"usage": 64 * MiB - 256 * KiB, "limit": 64 * MiB},
         says=("memory.limit_in_bytes",)),
    case("memcg_limit-oom-CONSTRAINT_MEMCG", oom("CONSTRAINT_MEMCG"),
         ev(cgroup=cg(512 * MiB, 512 * MiB)), "memcg_limit",
         {"constraint": "CONSTRAINT_MEMCG", "victim_rss": 500 * MiB, "cgroup": CGROUP,
          "usage": 512 * MiB, "limit": 512 * MiB},
         CONFIRMED),
    case("memcg_limit-oom-no-constraint-near-limit", oom(None),
         ev(cgroup=cg(500 * MiB, 512 * MiB)), "memcg_limit",
         {"constraint": None, "usage": 500 * MiB, "limit": 512 * MiB}),
    case("memcg_limit-memcg-event", MEMCG_EVENT, ev(cgroup=cg(512 * MiB, 512 * MiB)),
         "memcg_limit",
         {"cgroup": CGROUP, "event": "max", "increase": 3, "usage": 512 * MiB,
          "limit": 512 * MiB}),
    # -- fragmentation --------------------------------------------------------------------------
    case("fragmentation-order-4",
         kernel("page_alloc", order=4, gfp="GFP_KERNEL|__GFP_COMP"),
         ev(host(mem_free=FRAGMENTED_FREE_PAGES * PAGE, free_blocks=BUDDY_FRAGMENTED)),
         "fragmentation",
         {"order": 4, "free_pages": FRAGMENTED_FREE_PAGES,
          "free_blocks": {z: list(b) for z, b in BUDDY_FRAGMENTED.items()}}),
    case("fragmentation-order-4-inside-syscall",
         syscall("fcntl", [5, F_SETPIPE_SZ, 64 * KiB], linked=[linked_page(4)]),
         ev(host(mem_free=FRAGMENTED_FREE_PAGES * PAGE, free_blocks=BUDDY_FRAGMENTED),
            cgroup=cg(100 * MiB, None)),
         "fragmentation", {"order": 4, "free_pages": FRAGMENTED_FREE_PAGES,
                           "syscall": "fcntl"}),
    case("fragmentation-order-4-DMA-zone-reserve-blocks",
         kernel("page_alloc", order=4, gfp="GFP_KERNEL|__GFP_COMP"),
         ev(host(mem_free=FRAGMENTED_FREE_PAGES * PAGE,
                 free_blocks={"node 0 zone DMA": (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3),
                              **BUDDY_FRAGMENTED})),
         "fragmentation", {"order": 4}),
    # -- exhaustion -----------------------------------------------------------------------------
    case("exhaustion-order-0-below-min-watermarks",
         kernel("page_alloc", order=0, gfp="GFP_HIGHUSER_MOVABLE"),
         ev(host(mem_free=40 * MiB, mem_available=60 * MiB, free_blocks={})), "exhaustion",
         {"mem_free": 40 * MiB, "min_watermark_pages": MIN_WATERMARK_PAGES,
          "mem_total": 16 * GiB}),
    case("exhaustion-oom-CONSTRAINT_NONE", oom("CONSTRAINT_NONE"),
         ev(host(mem_free=50 * MiB, mem_available=80 * MiB)), "exhaustion",
         {"constraint": "CONSTRAINT_NONE", "mem_available": 80 * MiB, "mem_total": 16 * GiB},
         CONFIRMED),
    # -- bad_range ------------------------------------------------------------------------------
    case("bad_range-mprotect-hole",
         syscall("mprotect", [ADDR, 64 * KiB, PROT_READ]), ev(mapped=False), "bad_range",
         {"addr": ADDR, "length": 64 * KiB, "range_mapped": False}),
    case("bad_range-mincore-process-gone",  # mincore's only ENOMEM is an unmapped range
         syscall("mincore", [ADDR, 64 * KiB, HEAP]), ev(mapped=None), "bad_range",
         {"addr": ADDR, "length": 64 * KiB, "range_mapped": None}),
    case("bad_range-mprotect-by-elimination",
         syscall("mprotect", [ADDR, 64 * KiB, PROT_READ]), ev(mapped=None), "bad_range",
         {"addr": ADDR, "length": 64 * KiB, "range_mapped": None}),
    case("not-bad_range-mprotect-fully-mapped",
         syscall("mprotect", [ADDR, 64 * KiB, PROT_READ]), ev(mapped=True), "unknown",
         {"syscall": "mprotect", "errno": "ENOMEM", "map_count": 120}),
    # -- too_large ------------------------------------------------------------------------------
    case("too_large-mmap-beyond-task-size", mmap(1 << 48), ev(), "too_large",
         {"request": 1 << 48, "address_space": 1 << 47}),
    case("too_large-linked-kmalloc-over-4MiB",
         syscall("setsockopt", [3, 1, 7, 0, 8 * MiB],
                 linked=[KernelFailure("slab", 8 * MiB, None, "GFP_KERNEL", False)]),
         ev(), "too_large", {"request": 8 * MiB, "kmalloc_max": 4 * MiB,
                             "syscall": "setsockopt"}),
    case("too_large-vmalloc-larger-than-RAM", kernel("vmalloc", size=32 * GiB), ev(),
         "too_large", {"request": 32 * GiB, "mem_total": 16 * GiB}),
    case("too_large-page-order-11", kernel("page_alloc", order=11), ev(), "too_large",
         {"order": 11}),
    # -- hugetlb --------------------------------------------------------------------------------
    case("hugetlb-mmap-MAP_HUGETLB",
         mmap(64 * MiB, flags=ANON | MAP_HUGETLB | MAP_HUGE_2MB),
         ev(host(hugepages_total=16, hugepages_free=10)), "hugetlb",
         {"request": 64 * MiB, "pages_needed": 32, "hugepages_total": 16,
          "hugepages_free": 10, "hugepages_reserved": 0},
         says=("vm.nr_hugepages",)),
    case("hugetlb-shmget-SHM_HUGETLB",
         syscall("shmget", [IPC_PRIVATE, 64 * MiB, IPC_CREAT | SHM_HUGETLB | 0o600]),
         ev(host(hugepages_total=16, hugepages_free=16, hugepages_rsvd=8)), "hugetlb",
         {"pages_needed": 32, "hugepages_free": 16, "hugepages_reserved": 8},
         says=("vm.nr_hugepages",)),
    # -- kernel_allocation ----------------------------------------------------------------------
    case("kernel_allocation-linked-page-alloc",
         syscall("fcntl", [5, F_SETPIPE_SZ, 32 * KiB], linked=[linked_page(3)]),
         ev(cgroup=cg(100 * MiB, None)), "kernel_allocation",
         {"kind": "page_alloc", "order": 3, "gfp": "GFP_KERNEL_ACCOUNT|__GFP_NOWARN",
          "size": 32 * KiB, "opportunistic": False}),
    case("kernel_allocation-kernel-failure-inside-syscall",
         kernel("slab", size=512, gfp="GFP_KERNEL", syscall_name="fcntl"), ev(),
         "kernel_allocation", {"kind": "slab", "size": 512, "gfp": "GFP_KERNEL"}),
    # -- unknown --------------------------------------------------------------------------------
    case("unknown-clone", syscall("clone", [CLONE_THREADLESS_FORK, 0, 0, 0, 0]), ev(),
         "unknown", {"syscall": "clone", "errno": "ENOMEM", "data_vm": 1 * GiB}),
    case("unknown-standalone-kernel-failure",
         kernel("slab", size=256, gfp="GFP_ATOMIC|__GFP_NOWARN"), ev(), "unknown",
         {"kind": "slab", "size": 256, "gfp": "GFP_ATOMIC|__GFP_NOWARN"}),
    case("unknown-oom-CONSTRAINT_CPUSET", oom("CONSTRAINT_CPUSET"),
         ev(cgroup=cg(500 * MiB, 512 * MiB)), "unknown", {"constraint": "CONSTRAINT_CPUSET"}),
    # -- which limit the kernel checks first ----------------------------------------------------
    case("rlimit_as-mremap-without-MAYMOVE",
         syscall("mremap", [ADDR, 256 * MiB, 1 * GiB, 0, 0],
                 t=task(total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB)),
         ev(), "rlimit_as", {"request": 768 * MiB, "rlimit_as": 4 * GiB}),
    case("rlimit_as-MAP_HUGETLB-with-a-free-pool",
         mmap(4 * MiB, flags=ANON | MAP_HUGETLB | MAP_HUGE_2MB,
              t=task(total_vm=4 * GiB - 1 * MiB, rlim_as=4 * GiB)),
         ev(host(hugepages_total=512, hugepages_free=512)), "rlimit_as",
         {"request": 4 * MiB, "rlimit_as": 4 * GiB}),
    case("rlimit_as-mmap-map_count-below-the-limit",
         mmap(1 * GiB, t=task(map_count=65529, total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB)),
         ev(), "rlimit_as", {"request": 1 * GiB, "rlimit_as": 4 * GiB}),
    # -- the kernel's own order of checks, per syscall ------------------------------------------
    case("too_large-mmap-128TiB-not-overcommit",  # __get_unmapped_area, before any commit
         mmap(128 * TiB), ev(), "too_large",
         {"request": 128 * TiB, "address_space": 128 * TiB, "task_size": TASK_SIZE},
         says=("commit",)),
    case("too_large-mmap-length-wraps-PAGE_ALIGN",  # do_mmap, even before the map count
         mmap((1 << 64) - 1, t=task(map_count=MAX_MAP_COUNT + 1)), ev(), "too_large",
         {"request": (1 << 64) - 1}),
    case("address_space-mmap-MAP_FIXED-past-the-top",  # __get_unmapped_area: addr > TASK_SIZE - len
         syscall("mmap", [TASK_SIZE - 2 * MiB, 4 * MiB, RW, ANON | MAP_FIXED, NO_FD, 0]),
         ev(), "address_space",
         {"addr": TASK_SIZE - 2 * MiB, "request": 4 * MiB, "end": TASK_SIZE + 2 * MiB,
          "task_size": TASK_SIZE},
         says=("TASK_SIZE", "__get_unmapped_area")),
    case("address_space-mmap-MAP_FIXED_NOREPLACE-past-the-top",  # do_mmap adds MAP_FIXED
         syscall("mmap", [TASK_SIZE, PAGE, RW, ANON | MAP_FIXED_NOREPLACE, NO_FD, 0]),
         ev(), "address_space", {"addr": TASK_SIZE, "end": TASK_SIZE + PAGE}),
    case("not-address_space-mmap-MAP_FIXED-ending-at-the-top",
         syscall("mmap", [TASK_SIZE - 4 * MiB, 4 * MiB, RW, ANON | MAP_FIXED, NO_FD, 0],
                 t=task(total_vm=4 * GiB - 1 * MiB, rlim_as=4 * GiB)),
         ev(), "rlimit_as", {"request": 4 * MiB}),
    case("rlimit_data-mprotect-read-only-to-writable-process-gone",  # mprotect_fixup
         syscall("mprotect", [HEAP, 128 * MiB, RW],
                 t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(mapped=None), "rlimit_data",
         {"data_vm": 1 * GiB - 64 * MiB, "request": 128 * MiB, "rlimit_data": 1 * GiB},
         says=("RLIMIT_DATA",)),
    case("rlimit_data-pkey_mprotect-adds-PROT_WRITE",
         syscall("pkey_mprotect", [HEAP, 128 * MiB, RW, 0],
                 t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(mapped=True), "rlimit_data", {"request": 128 * MiB}),
    case("not-rlimit_data-mprotect-when-RLIMIT_AS-is-over-too",  # may_expand_vm(oldflags) fails
         syscall("mprotect", [HEAP, 128 * MiB, RW],
                 t=task(total_vm=4 * GiB - 64 * MiB, rlim_as=4 * GiB,
                        data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(mapped=True), "unknown", {"syscall": "mprotect", "rlimit_data": 1 * GiB}),
    case("rlimit_data-mremap-growth-of-a-private-region",  # check_prep_vma: may_expand_vm
         mremap(64 * MiB, 256 * MiB, t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(), "rlimit_data", {"request": 192 * MiB, "rlimit_data": 1 * GiB},
         says=("RLIMIT_DATA",)),
    case("rlimit_data-mremap-in-place-without-MAYMOVE",  # the limit before expand_vma
         mremap(64 * MiB, 256 * MiB, flags=0,
                t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
         ev(), "rlimit_data", {"request": 192 * MiB}),
    case("rlimit_memlock-mremap-EAGAIN-mlocked-region",  # check_prep_vma: mlock_future_ok
         mremap(16 * MiB, 32 * MiB, errno="EAGAIN",
                t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB)),
         ev(), "rlimit_memlock", {"request": 16 * MiB, "errno": "EAGAIN"}),
    case("not-rlimit_memlock-mmap-MAP_LOCKED-ENOMEM",  # do_mmap's verdict would be EAGAIN
         mmap(16 * MiB, flags=ANON | MAP_LOCKED,
              t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB)),
         ev(), "unknown", {"syscall": "mmap", "errno": "ENOMEM"}),
    case("rlimit_memlock-brk-after-mlockall-MCL_FUTURE",  # check_brk_limits: mlock_future_ok
         brk(16 * MiB, task(locked_vm=56 * MiB, rlim_memlock=64 * MiB, mlock_future=True)),
         ev(), "rlimit_memlock", {"locked_vm": 56 * MiB, "request": 16 * MiB}),
    case("not-rlimit_data-MAP_GROWSDOWN-is-a-stack",  # is_data_mapping: VM_STACK is not data
         mmap(8 * MiB, flags=ANON | MAP_GROWSDOWN,
              t=task(data_vm=1 * GiB - 4 * MiB, rlim_data=1 * GiB)),
         ev(), "unknown", {"syscall": "mmap", "rlimit_data": 1 * GiB}),
    case("overcommit-MAP_NORESERVE-ignored-when-strict",  # do_mmap honours it only in modes 0/1
         mmap(1 * GiB, flags=ANON | MAP_NORESERVE),
         ev(host(overcommit_memory=2, commit_limit=10 * GiB, committed_as=9 * GiB + 512 * MiB)),
         "overcommit", {"overcommit_memory": 2, "request": 1 * GiB}),
    case("not-overcommit-MAP_NORESERVE-heuristic",
         mmap(32 * GiB, flags=ANON | MAP_NORESERVE), ev(), "unknown", {"syscall": "mmap"}),
    case("overcommit-mprotect-adds-PROT_WRITE-strict",  # mprotect_fixup charges the commit
         syscall("mprotect", [HEAP, 1 * GiB, RW]),
         ev(host(overcommit_memory=2, commit_limit=10 * GiB, committed_as=9 * GiB + 512 * MiB),
            mapped=True),
         "overcommit", {"overcommit_memory": 2, "request": 1 * GiB}),
    case("not-overcommit-mprotect-read-only",  # no VM_WRITE: no charge
         syscall("mprotect", [HEAP, 1 * GiB, PROT_READ]),
         ev(host(overcommit_memory=2, commit_limit=10 * GiB, committed_as=10 * GiB),
            mapped=True),
         "unknown", {"syscall": "mprotect"}),
    case("not-overcommit-shmat",  # the segment was charged by shmget; shmat maps it shared
         syscall("shmat", [5, 0, 0]),
         ev(host(overcommit_memory=2, commit_limit=10 * GiB, committed_as=10 * GiB)),
         "unknown", {"syscall": "shmat"}),
    case("overcommit-fork-heuristic",  # dup_mmap charges every VM_ACCOUNT mapping again
         syscall("clone", [CLONE_THREADLESS_FORK, 0, 0, 0, 0], t=task(data_vm=20 * GiB)),
         ev(), "overcommit", {"request": 20 * GiB}),
    case("address_space-brk-past-the-top",  # check_brk_limits: get_unmapped_area(MAP_FIXED)
         brk_to(TASK_SIZE + 48 * MiB, TASK_SIZE - 16 * MiB, TASK), ev(), "address_space",
         {"addr": TASK_SIZE - 16 * MiB, "request": 64 * MiB, "end": TASK_SIZE + 48 * MiB}),
    case("address_space-brk-into-the-next-mapping-by-elimination",
         brk(64 * MiB, TASK), ev(), "address_space",
         {"request": 64 * MiB, "requested_break": HEAP + 64 * MiB, "returned_break": HEAP},
         says=("inferred", "mmap")),
    case("unknown-brk-without-task-state",  # limits unknown: nothing to eliminate
         dataclasses.replace(brk(64 * MiB, TASK), task=None),
         ev(), "unknown", {"syscall": "brk"}),
    case("max_map_count-mremap-move-3-below",  # prep_move_vma: map_count >= max - 3
         mremap(1 * MiB, 2 * MiB, t=task(map_count=MAX_MAP_COUNT - 3)), ev(), "max_map_count",
         {"map_count": MAX_MAP_COUNT - 3, "max_map_count": MAX_MAP_COUNT}),
    case("address_space-mremap-in-place-3-below",  # no move, no map-count check
         mremap(1 * MiB, 2 * MiB, flags=0, t=task(map_count=MAX_MAP_COUNT - 3)), ev(),
         "address_space", {"request": 1 * MiB}),
    case("max_map_count-mremap-MREMAP_FIXED-5-below",  # check_mremap_params
         mremap(1 * MiB, 2 * MiB, flags=MREMAP_MAYMOVE | MREMAP_FIXED, new_addr=HEAP,
                t=task(map_count=MAX_MAP_COUNT - 5)), ev(), "max_map_count",
         {"map_count": MAX_MAP_COUNT - 5}),
    case("address_space-mremap-move-found-no-room",  # vrm_set_new_addr
         mremap(1 * GiB, 2 * GiB, t=task(unmapped_area_failed=True)), ev(), "address_space",
         {"request": 1 * GiB, "unmapped_area_failed": True}),
    case("bad_range-mprotect-past-TASK_SIZE-process-gone",  # nothing is mapped there
         syscall("mprotect", [TASK_SIZE, 64 * KiB, RW],
                 t=task(data_vm=1 * GiB - 16 * KiB, rlim_data=1 * GiB)),
         ev(mapped=None), "bad_range", {"addr": TASK_SIZE, "length": 64 * KiB},
         says=("past the top",)),
    case("max_map_count-munlock-split",  # munlock splits too; not an only-range syscall
         syscall("munlock", [ADDR + PAGE, PAGE], t=task(map_count=MAX_MAP_COUNT - 1)),
         ev(mapped=None), "max_map_count", {"map_count": MAX_MAP_COUNT - 1}),
]


@pytest.mark.parametrize("failure, evidence, cause, facts, confidence, says", CASES)
def test_diagnose(failure: Failure, evidence: Evidence, cause: str, facts: dict,
                  confidence: str, says: tuple) -> None:
    found = diagnosis.diagnose(failure, evidence)
    assert found.cause in CAUSES
    assert found.cause == cause, found.explanation
    assert {k: found.evidence.get(k, "<missing>") for k in facts} == facts
    assert found.confidence == confidence
    assert found.explanation.strip()
    for words in says:
        assert words in found.explanation


def _passing_cases() -> list[Any]:
    return [p for p in CASES if not p.marks]


def test_table_covers_every_cause() -> None:
    assert {p.values[2] for p in _passing_cases()} == set(CAUSES)


def test_syscall_args_are_what_the_decoder_gives() -> None:
    assert mmap(1 * GiB).args == {"addr": 0, "length": 1 * GiB, "prot": "PROT_READ|PROT_WRITE",
                                  "flags": "MAP_PRIVATE|MAP_ANONYMOUS", "fd": -1}
    assert "MAP_HUGETLB" in str(mmap(2 * MiB, flags=ANON | MAP_HUGETLB).args["flags"])
    assert brk(4 * MiB, TASK).errno is None


# -- rule order: the first rule that matches wins, as the kernel checks them ------------------

ORDER = [
    pytest.param(mmap(1 << 48, t=task(rlim_as=1 * GiB)), ev(),
                 "too_large", diagnosis.rule_rlimit_as, id="too_large-over-rlimit_as"),
    pytest.param(mmap(1 * GiB, t=task(map_count=65531, total_vm=3 * GiB + 512 * MiB,
                                      rlim_as=4 * GiB)), ev(),
                 "max_map_count", diagnosis.rule_rlimit_as, id="max_map_count-over-rlimit_as"),
    pytest.param(mmap(16 * MiB, flags=ANON | MAP_LOCKED, errno="EAGAIN",
                      t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB,
                             total_vm=4 * GiB - 1 * MiB, rlim_as=4 * GiB)), ev(),
                 "rlimit_memlock", diagnosis.rule_rlimit_as, id="rlimit_memlock-over-rlimit_as"),
    pytest.param(mmap(1 * GiB, t=task(total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB,
                                      data_vm=1 * GiB, rlim_data=1 * GiB)), ev(),
                 "rlimit_as", diagnosis.rule_rlimit_data, id="rlimit_as-over-rlimit_data"),
    pytest.param(mmap(32 * GiB, t=task(rlim_as=4 * GiB)), ev(),
                 "rlimit_as", diagnosis.rule_overcommit, id="rlimit_as-over-overcommit"),
    pytest.param(mmap(1 * GiB, t=task(data_vm=1 * GiB, rlim_data=1 * GiB)),
                 ev(host(overcommit_memory=2, committed_as=10 * GiB)),
                 "rlimit_data", diagnosis.rule_overcommit, id="rlimit_data-over-overcommit"),
    pytest.param(mmap(32 * GiB, flags=ANON | MAP_HUGETLB | MAP_HUGE_2MB,
                      t=task(rlim_as=4 * GiB)), ev(),
                 "rlimit_as", diagnosis.rule_hugetlb, id="rlimit_as-over-hugetlb"),
    pytest.param(syscall("mlock", [ADDR, 16 * MiB],
                         t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB)),
                 ev(mapped=False), "rlimit_memlock", diagnosis.rule_bad_range,
                 id="rlimit_memlock-over-bad_range"),
    pytest.param(mmap(4 * MiB, detail={"kernel_message": KMSG}, linked=[linked_page(0)]),
                 ev(cgroup=cg(100 * MiB, None)),
                 "overcommit", diagnosis.rule_linked_kernel_failure,
                 id="overcommit-over-linked-kernel-failure"),
    pytest.param(syscall("mprotect", [ADDR, 64 * KiB, PROT_READ], linked=[linked_page(0)]),
                 ev(cgroup=cg(100 * MiB, None)),
                 "kernel_allocation", diagnosis.rule_bad_range_by_elimination,
                 id="kernel_allocation-over-bad_range-by-elimination"),
    # mmap: do_mmap -> __get_unmapped_area -> mlock_future_ok -> __mmap_region
    pytest.param(mmap((1 << 64) - 1, t=task(map_count=MAX_MAP_COUNT + 1)), ev(),
                 "too_large", diagnosis.rule_max_map_count,
                 id="mmap-length-wraps-over-max_map_count"),
    pytest.param(mmap(1 << 48, t=task(map_count=MAX_MAP_COUNT + 1)), ev(),
                 "max_map_count", diagnosis.rule_too_large, id="mmap-max_map_count-over-too_large"),
    pytest.param(mmap(128 * TiB), ev(), "too_large", diagnosis.rule_overcommit,
                 id="mmap-too_large-over-overcommit"),
    pytest.param(syscall("mmap", [TASK_SIZE - 2 * MiB, 4 * MiB, RW, ANON | MAP_FIXED, NO_FD, 0],
                         t=task(total_vm=4 * GiB - 1 * MiB, rlim_as=4 * GiB)), ev(),
                 "address_space", diagnosis.rule_rlimit_as,
                 id="mmap-MAP_FIXED-past-the-top-over-rlimit_as"),
    pytest.param(mmap(1 * GiB, t=task(unmapped_area_failed=True, total_vm=3 * GiB + 512 * MiB,
                                      rlim_as=4 * GiB)), ev(),
                 "address_space", diagnosis.rule_rlimit_as, id="mmap-address_space-over-rlimit_as"),
    # mprotect: do_mprotect_pkey's range walk -> mprotect_fixup -> vma_modify_flags
    pytest.param(syscall("mprotect", [ADDR + PAGE, 128 * MiB, RW],
                         t=task(map_count=MAX_MAP_COUNT - 1, data_vm=1 * GiB - 64 * MiB,
                                rlim_data=1 * GiB)),
                 ev(mapped=True), "rlimit_data", diagnosis.rule_max_map_count,
                 id="mprotect-rlimit_data-over-max_map_count"),
    pytest.param(syscall("mprotect", [ADDR, 128 * MiB, RW],
                         t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
                 ev(mapped=False), "bad_range", diagnosis.rule_rlimit_data,
                 id="mprotect-bad_range-over-rlimit_data"),
    pytest.param(syscall("mprotect", [ADDR, 128 * MiB, RW],
                         t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
                 ev(mapped=None), "rlimit_data", diagnosis.rule_bad_range_by_elimination,
                 id="mprotect-rlimit_data-over-bad_range-by-elimination"),
    pytest.param(syscall("mprotect", [ADDR + PAGE, 1 * GiB, RW],
                         t=task(map_count=MAX_MAP_COUNT - 1)),
                 ev(host(overcommit_memory=2, committed_as=10 * GiB), mapped=True),
                 "overcommit", diagnosis.rule_max_map_count,
                 id="mprotect-overcommit-over-max_map_count"),
    # mlock: do_mlock's limit -> apply_vma_lock_flags -> mlock_fixup
    pytest.param(syscall("mlock", [ADDR + PAGE, 16 * MiB],
                         t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB,
                                map_count=MAX_MAP_COUNT - 1)),
                 ev(mapped=True), "rlimit_memlock", diagnosis.rule_max_map_count,
                 id="mlock-rlimit_memlock-over-max_map_count"),
    pytest.param(syscall("munlock", [ADDR + PAGE, PAGE], t=task(map_count=MAX_MAP_COUNT - 1)),
                 ev(mapped=None), "max_map_count", diagnosis.rule_bad_range_by_elimination,
                 id="munlock-max_map_count-over-bad_range-by-elimination"),
    # mremap: check_mremap_params -> check_prep_vma -> expand_vma -> move_vma
    pytest.param(mremap(1 * MiB, 2 * MiB, flags=MREMAP_MAYMOVE | MREMAP_FIXED, new_addr=HEAP,
                        t=task(map_count=MAX_MAP_COUNT - 5, total_vm=4 * GiB - 512 * KiB,
                               rlim_as=4 * GiB)), ev(),
                 "max_map_count", diagnosis.rule_rlimit_as,
                 id="mremap-fixed-max_map_count-over-rlimit_as"),
    pytest.param(mremap(16 * MiB, 32 * MiB, errno="EAGAIN",
                        t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB,
                               total_vm=4 * GiB - 1 * MiB, rlim_as=4 * GiB)), ev(),
                 "rlimit_memlock", diagnosis.rule_rlimit_as,
                 id="mremap-rlimit_memlock-over-rlimit_as"),
    pytest.param(mremap(256 * MiB, 1 * GiB, flags=0,
                        t=task(total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB)), ev(),
                 "rlimit_as", diagnosis.rule_mremap_in_place,
                 id="mremap-rlimit_as-over-in-place"),
    pytest.param(mremap(64 * MiB, 256 * MiB,
                        t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB,
                               map_count=MAX_MAP_COUNT - 3)), ev(),
                 "rlimit_data", diagnosis.rule_mremap_move_map_count,
                 id="mremap-rlimit_data-over-move-max_map_count"),
    pytest.param(mremap(1 * GiB, 2 * GiB, flags=0),
                 ev(host(overcommit_memory=2, committed_as=10 * GiB)),
                 "address_space", diagnosis.rule_overcommit,
                 id="mremap-in-place-over-inferred-overcommit"),
    pytest.param(mremap(1 * MiB, 2 * MiB, flags=0, detail={"kernel_message": KMSG}), ev(),
                 "overcommit", diagnosis.rule_mremap_in_place,
                 id="mremap-confirmed-overcommit-over-in-place"),
    pytest.param(mremap(1 * GiB, 2 * GiB,
                        t=task(unmapped_area_failed=True, map_count=MAX_MAP_COUNT - 3)), ev(),
                 "address_space", diagnosis.rule_mremap_move_map_count,
                 id="mremap-address_space-over-move-max_map_count"),
    pytest.param(mremap(1 * GiB, 2 * GiB, t=task(map_count=MAX_MAP_COUNT - 3)),
                 ev(host(overcommit_memory=2, committed_as=10 * GiB)),
                 "max_map_count", diagnosis.rule_overcommit,
                 id="mremap-move-max_map_count-over-overcommit"),
    # brk: check_data_rlimit -> check_brk_limits -> the next mapping -> do_brk_flags
    pytest.param(brk(64 * MiB, task(data_vm=1 * GiB - 16 * MiB, rlim_data=1 * GiB,
                                    total_vm=4 * GiB - 16 * MiB, rlim_as=4 * GiB)), ev(),
                 "rlimit_data", diagnosis.rule_rlimit_as, id="brk-rlimit_data-over-rlimit_as"),
    pytest.param(brk_to(TASK_SIZE + 48 * MiB, TASK_SIZE - 16 * MiB,
                        task(total_vm=4 * GiB - 16 * MiB, rlim_as=4 * GiB)), ev(),
                 "address_space", diagnosis.rule_rlimit_as,
                 id="brk-past-the-top-over-rlimit_as"),
    pytest.param(brk(16 * MiB, task(locked_vm=56 * MiB, rlim_memlock=64 * MiB, mlock_future=True,
                                    total_vm=4 * GiB - 8 * MiB, rlim_as=4 * GiB)), ev(),
                 "rlimit_memlock", diagnosis.rule_rlimit_as,
                 id="brk-rlimit_memlock-over-rlimit_as"),
    pytest.param(brk(64 * MiB, task(total_vm=4 * GiB - 16 * MiB, rlim_as=4 * GiB,
                                    map_count=MAX_MAP_COUNT + 1)), ev(),
                 "rlimit_as", diagnosis.rule_max_map_count, id="brk-rlimit_as-over-max_map_count"),
    pytest.param(brk(1 * GiB, task(map_count=MAX_MAP_COUNT + 1)),
                 ev(host(overcommit_memory=2, committed_as=10 * GiB)),
                 "max_map_count", diagnosis.rule_overcommit, id="brk-max_map_count-over-overcommit"),
    pytest.param(brk(1 * GiB, TASK), ev(host(overcommit_memory=2, committed_as=10 * GiB)),
                 "overcommit", diagnosis.rule_brk_next_mapping,
                 id="brk-overcommit-over-next-mapping"),
]


@pytest.mark.parametrize("failure, evidence, winner, loser", ORDER)
def test_rule_order(failure: Failure, evidence: Evidence, winner: str, loser: Any) -> None:
    assert loser(failure, evidence) is not None  # both rules match: the order decides
    assert diagnosis.diagnose(failure, evidence).cause == winner


# -- each rule mirrors one kernel check, and names it --------------------------------------------

D = diagnosis
STRICT_FULL = host(overcommit_memory=2, commit_limit=10 * GiB, committed_as=10 * GiB)
VMA_SLAB = KernelFailure("slab", 184, None, parse_gfp("GFP_KERNEL_ACCOUNT"), False,
                         cache="vm_area_struct")


def mirrors(rule: Any, kernel_function: str, failure: Failure, evidence: Evidence,
            cause: str) -> Any:
    return pytest.param(rule, kernel_function, failure, evidence, cause,
                        id=f"{rule.__name__}-{kernel_function}")


KERNEL_CHECKS = [
    mirrors(D.rule_length_wraps, "do_mmap", mmap((1 << 64) - 1), ev(), "too_large"),
    mirrors(D.rule_max_map_count, "do_mmap", mmap(PAGE, t=task(map_count=MAX_MAP_COUNT + 1)),
            ev(), "max_map_count"),
    mirrors(D.rule_max_map_count, "do_brk_flags", brk(PAGE, task(map_count=MAX_MAP_COUNT + 1)),
            ev(), "max_map_count"),
    mirrors(D.rule_max_map_count, "vms_gather_munmap_vmas",
            syscall("munmap", [ADDR + PAGE, PAGE], t=task(map_count=MAX_MAP_COUNT)), ev(),
            "max_map_count"),
    mirrors(D.rule_max_map_count, "split_vma",
            syscall("mprotect", [ADDR + PAGE, PAGE, PROT_READ], t=task(map_count=MAX_MAP_COUNT - 1)),
            ev(mapped=True), "max_map_count"),
    mirrors(D.rule_too_large, "__get_unmapped_area", mmap(128 * TiB), ev(), "too_large"),
    mirrors(D.rule_fixed_past_top, "__get_unmapped_area",
            syscall("mmap", [TASK_SIZE - PAGE, 2 * PAGE, RW, ANON | MAP_FIXED, NO_FD, 0]), ev(),
            "address_space"),
    mirrors(D.rule_address_space, "vm_unmapped_area",
            mmap(1 * GiB, t=task(unmapped_area_failed=True)), ev(), "address_space"),
    mirrors(D.rule_rlimit_memlock, "mlock_future_ok",
            mmap(16 * MiB, flags=ANON | MAP_LOCKED, errno="EAGAIN",
                 t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB)), ev(), "rlimit_memlock"),
    mirrors(D.rule_rlimit_memlock, "check_brk_limits",
            brk(16 * MiB, task(locked_vm=56 * MiB, rlim_memlock=64 * MiB, mlock_future=True)),
            ev(), "rlimit_memlock"),
    mirrors(D.rule_rlimit_memlock, "do_mlock",
            syscall("mlock2", [ADDR, 16 * MiB, 0],
                    t=task(locked_vm=56 * MiB, rlim_memlock=64 * MiB)),
            ev(mapped=False), "rlimit_memlock"),
    mirrors(D.rule_rlimit_memlock, "mlockall",
            syscall("mlockall", [MCL_CURRENT], t=task(total_vm=2 * GiB, rlim_memlock=64 * MiB)),
            ev(), "rlimit_memlock"),
    mirrors(D.rule_rlimit_as, "may_expand_vm",
            mmap(1 * GiB, t=task(total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB)), ev(),
            "rlimit_as"),
    mirrors(D.rule_rlimit_data, "may_expand_vm",
            mmap(256 * MiB, t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)), ev(),
            "rlimit_data"),
    mirrors(D.rule_rlimit_data, "mprotect_fixup",
            syscall("mprotect", [HEAP, 128 * MiB, RW],
                    t=task(data_vm=1 * GiB - 64 * MiB, rlim_data=1 * GiB)),
            ev(mapped=None), "rlimit_data"),
    mirrors(D.rule_brk_data_first, "check_data_rlimit",
            brk(64 * MiB, task(data_vm=1 * GiB - 16 * MiB, rlim_data=1 * GiB)), ev(),
            "rlimit_data"),
    mirrors(D.rule_overcommit, "accountable_mapping", mmap(1 * GiB), ev(STRICT_FULL),
            "overcommit"),
    mirrors(D.rule_overcommit, "__vm_enough_memory", mmap(32 * GiB), ev(), "overcommit"),
    mirrors(D.rule_overcommit, "dup_mmap",
            syscall("clone", [CLONE_THREADLESS_FORK, 0, 0, 0, 0], t=task(data_vm=20 * GiB)),
            ev(), "overcommit"),
    mirrors(D.rule_overcommit, "shmem_acct_size",
            syscall("shmget", [IPC_PRIVATE, 1 * GiB, IPC_CREAT]), ev(STRICT_FULL),
            "overcommit"),
    mirrors(D.rule_overcommit_confirmed, "vrm_calc_charge",
            mremap(1 * MiB, 2 * MiB, flags=0, detail={"kernel_message": KMSG}), ev(),
            "overcommit"),
    mirrors(D.rule_hugetlb, "hugetlb_reserve_pages",
            mmap(64 * MiB, flags=ANON | MAP_HUGETLB | MAP_HUGE_2MB),
            ev(host(hugepages_total=16, hugepages_free=10)), "hugetlb"),
    mirrors(D.rule_mremap_fixed_map_count, "check_mremap_params",
            mremap(1 * MiB, 2 * MiB, flags=MREMAP_MAYMOVE | MREMAP_FIXED, new_addr=HEAP,
                   t=task(map_count=MAX_MAP_COUNT - 5)), ev(), "max_map_count"),
    mirrors(D.rule_mremap_in_place, "expand_vma", mremap(1 * MiB, 2 * MiB, flags=0), ev(),
            "address_space"),
    mirrors(D.rule_mremap_move_map_count, "prep_move_vma",
            mremap(1 * MiB, 2 * MiB, t=task(map_count=MAX_MAP_COUNT - 3)), ev(),
            "max_map_count"),
    mirrors(D.rule_bad_range, "do_mprotect_pkey",
            syscall("mprotect", [ADDR, 64 * KiB, PROT_READ]), ev(mapped=False), "bad_range"),
    mirrors(D.rule_bad_range, "apply_vma_lock_flags",
            syscall("munlock", [ADDR, 64 * KiB]), ev(mapped=False), "bad_range"),
    mirrors(D.rule_bad_range, "madvise_walk_vmas",
            syscall("madvise", [ADDR, 64 * KiB, MADV_DONTFORK]), ev(mapped=False), "bad_range"),
    mirrors(D.rule_bad_range, "mincore",
            syscall("mincore", [ADDR, 64 * KiB, HEAP]), ev(mapped=None), "bad_range"),
    mirrors(D.rule_bad_range_by_elimination, "do_mprotect_pkey",
            syscall("mprotect", [ADDR, 64 * KiB, PROT_READ]), ev(mapped=None), "bad_range"),
    mirrors(D.rule_linked_kernel_failure, "vm_area_alloc",
            mmap(64 * MiB, linked=[VMA_SLAB]), ev(cgroup=cg(512 * MiB, 512 * MiB)),
            "memcg_limit"),
    mirrors(D.rule_brk_past_top, "check_brk_limits",
            brk_to(TASK_SIZE + 48 * MiB, TASK_SIZE - 16 * MiB, TASK), ev(), "address_space"),
    mirrors(D.rule_brk_next_mapping, "vm_start_gap", brk(64 * MiB, TASK), ev(),
            "address_space"),
]


@pytest.mark.parametrize("rule, kernel_function, failure, evidence, cause", KERNEL_CHECKS)
def test_rule_mirrors_its_kernel_check(rule: Any, kernel_function: str, failure: Failure,
                                       evidence: Evidence, cause: str) -> None:
    assert kernel_function in (rule.__doc__ or ""), f"{rule.__name__} should cite it"
    found = rule(failure, evidence)
    assert found is not None and found.cause == cause
    assert rule in D.checks_for(failure.syscall)  # the rule is in that syscall's order...
    assert D.diagnose(failure, evidence).cause == cause  # ... and nothing before it matches


def test_every_rule_in_the_order_is_table_tested() -> None:
    ordered = {r for checks in D.CHECK_ORDER.values() for r in checks} | set(D.DEFAULT_CHECKS)
    tested = {p.values[0] for p in KERNEL_CHECKS}
    assert {r.__name__ for r in ordered} == {r.__name__ for r in tested}


def test_every_rule_names_a_kernel_function() -> None:
    """A docstring cites the function (`name()`) whose check the rule mirrors."""
    ordered = {r for checks in D.CHECK_ORDER.values() for r in checks} | set(D.DEFAULT_CHECKS)
    for rule in ordered:
        assert re.search(r"\b[a-z_][a-z0-9_]*\(\)", rule.__doc__ or ""), rule.__name__


def test_syscalls_not_in_the_table_get_the_generic_checks() -> None:
    assert D.checks_for("fcntl") == D.DEFAULT_CHECKS
    assert D.checks_for(None) == D.DEFAULT_CHECKS
    assert D.checks_for("pkey_mprotect") == D.checks_for("mprotect")


def test_too_large_wins_inside_the_kernel_over_a_full_cgroup() -> None:
    big = syscall("setsockopt", [3, 1, 7, 0, 8 * MiB],
                  linked=[KernelFailure("slab", 8 * MiB, None, "GFP_KERNEL_ACCOUNT", False)])
    assert diagnosis.diagnose(big, ev(cgroup=cg(64 * MiB, 64 * MiB))).cause == "too_large"


def test_the_first_linked_failure_with_a_reason_explains_the_syscall() -> None:
    f = syscall("fcntl", [5, F_SETPIPE_SZ, 1 * MiB],
                linked=[linked_page(3, "GFP_KERNEL"), linked_page(8)])
    found = diagnosis.diagnose(f, ev(cgroup=cg(64 * MiB, 64 * MiB)))
    assert (found.cause, found.evidence["order"]) == ("memcg_limit", 8)


# -- explanations -------------------------------------------------------------------------------

@pytest.mark.parametrize("failure, evidence", [
    pytest.param(oom("CONSTRAINT_MEMCG"), ev(cgroup=cg(512 * MiB, 512 * MiB)),
                 id="oom-CONSTRAINT_MEMCG"),
    pytest.param(MEMCG_EVENT, ev(cgroup=cg(512 * MiB, 512 * MiB)), id="memcg-event"),
])
def test_memcg_limit_explanations_name_the_limit_file(failure: Failure,
                                                      evidence: Evidence) -> None:
    found = diagnosis.diagnose(failure, evidence)
    assert found.cause == "memcg_limit"
    assert "memory.max" in found.explanation


def test_overcommit_explanations_name_the_sysctl() -> None:
    for h in (host(overcommit_memory=0), host(overcommit_memory=2, committed_as=10 * GiB)):
        found = diagnosis.diagnose(mmap(32 * GiB), ev(h))
        assert found.cause == "overcommit"
        assert f"vm.overcommit_memory={1 if h.overcommit_memory == 0 else 2}" in \
            found.explanation


# -- apply --------------------------------------------------------------------------------------

def test_apply_copies_the_finding_and_keeps_the_failure() -> None:
    f = mmap(1 * GiB, t=task(total_vm=3 * GiB + 512 * MiB, rlim_as=4 * GiB))
    f = dataclasses.replace(f, user_stack=("mmap [libc.so.6]", "main [app]"),
                            kernel_stack=("do_syscall_64",))
    finding = diagnosis.diagnose(f, ev())
    out = diagnosis.apply(f, finding)
    assert (out.cause, out.explanation, out.confidence) == \
        ("rlimit_as", finding.explanation, INFERRED)
    assert out.evidence == dict(finding.evidence)
    assert out.evidence is not finding.evidence
    assert isinstance(out.evidence, dict)
    copied = {"cause", "explanation", "evidence", "confidence"}
    for fld in dataclasses.fields(Failure):
        if fld.name not in copied:
            assert getattr(out, fld.name) == getattr(f, fld.name), fld.name
    assert f.cause is None and f.evidence == {}  # the input is left alone


def test_apply_confirmed() -> None:
    finding = Finding("overcommit", "refused", {"request": 4096}, CONFIRMED)
    out = diagnosis.apply(mmap(PAGE), finding)
    assert (out.cause, out.explanation, out.evidence, out.confidence) == \
        ("overcommit", "refused", {"request": 4096}, CONFIRMED)


def test_finding_defaults_to_inferred() -> None:
    assert Finding("unknown", "x").confidence == INFERRED


# -- request_bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("failure, expected", [
    pytest.param(mmap(3 * MiB), 3 * MiB, id="mmap-length"),
    pytest.param(syscall("mremap", [ADDR, 1 * MiB, 5 * MiB, MREMAP_MAYMOVE, 0]), 4 * MiB,
                 id="mremap-growth"),
    pytest.param(syscall("mremap", [ADDR, 5 * MiB, 1 * MiB, 0, 0]), 0, id="mremap-shrink"),
    pytest.param(brk(64 * MiB, TASK), 64 * MiB, id="brk"),
    pytest.param(syscall("shmget", [IPC_PRIVATE, 2 * MiB, IPC_CREAT]), 2 * MiB, id="shmget"),
    pytest.param(syscall("mlockall", [MCL_CURRENT]), 0, id="mlockall"),
])
def test_request_bytes(failure: Failure, expected: int) -> None:
    assert diagnosis.request_bytes(failure) == expected
