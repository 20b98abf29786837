"""Hand-made model values for unit tests."""

from __future__ import annotations

from tracer.model.decode import parse_gfp
from tracer.model.failures import Failure, KernelCount, KernelFailure, Ready, Snapshot, SyscallCount
from tracer.model.probes import ProbeStatus

T0 = 1_790_000_000.0

READY = Ready("0.1.0", "6.18.0-test", (
    ProbeStatus("syscall_exit", "attached", "raw_tp", "sys_exit"),
    ProbeStatus("page_alloc", "attached", "raw_tp", "mm_page_alloc"),
    ProbeStatus("percpu", "unavailable", None, "no such tracepoint"),
))

PIPE_GFP = parse_gfp("GFP_KERNEL_ACCOUNT|__GFP_NOWARN")

PIPE_PAGE = KernelFailure("page_alloc", 1 << 20, 8, PIPE_GFP, True,
                          kernel_stack=("__alloc_pages_noprof", "pipe_resize_ring"))

MMAP_FAIL = Failure(time=T0, kind="syscall", pid=100, tid=101, comm="leaky", cgroup="/box",
                    cgroup_id=42, syscall="mmap", errno="ENOMEM", size=1 << 40,
                    user_stack=("mmap [libc.so.6]", "main [leaky]"),
                    kernel_stack=("do_syscall_64",),
                    args={"length": 1 << 40, "flags": "MAP_PRIVATE|MAP_ANONYMOUS"})

FCNTL_FAIL = Failure(time=T0 + 1, kind="syscall", pid=200, tid=200, comm="piper", cgroup="/tight",
                     cgroup_id=43, syscall="fcntl", errno="ENOMEM", order=8,
                     gfp=PIPE_GFP, linked=(PIPE_PAGE,))

SNAPSHOT = Snapshot(
    syscalls=(
        SyscallCount(100, "leaky", "/box", "mmap", "ENOMEM", 3),
        SyscallCount(100, "leaky", "/box", "brk", None, 1),
        SyscallCount(200, "piper", "/tight", "fcntl", "ENOMEM", 1),
    ),
    kernel=(
        KernelCount(200, "piper", "/tight", "page_alloc", 8, PIPE_GFP,
                    False, 1),
        KernelCount(300, "kswapd0", "/", "page_alloc", 9, parse_gfp("GFP_TRANSHUGE_LIGHT"), True, 50),
        KernelCount(400, "victim", "/box", "oom_kill", None, None, False, 1),
    ),
    drops={"ringbuf_full": 2, "counter_map_full": 0},
)
