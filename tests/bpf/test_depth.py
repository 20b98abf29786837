"""Adaptive depth on the real kernel: the slab hooks attached only after a failure, detached
when quiet, and a slab failure still caught (through its page allocation) while they are not."""

from __future__ import annotations

import errno
import sys
import time
from typing import Iterator

import pytest

from tests import workloads as w
from tests.bpf.conftest import Recorder
from tracer.kernel.failures import LiveSource
from tracer.model.failures import Filter
from tracer.model.probes import ATTACHED, STANDBY
from tracer.model.totals import failures_by_syscall

pytestmark = pytest.mark.bpf

SLAB_PROBES = ("kmalloc", "kmem_cache_alloc")
QUIET = 3.0  # seconds without a failure before the slab hooks are detached (300 by default)


@pytest.fixture()
def adaptive() -> Iterator[Recorder]:
    src = LiveSource(Filter(), log=lambda m: print(m, file=sys.stderr), arm_quiet=QUIET)
    src.start()
    try:
        yield Recorder(src)
    finally:
        src.close()


def slab_states(rec: Recorder) -> dict[str, str]:
    return {s.name: s.status for s in rec.src.statuses if s.name in SLAB_PROBES}


def attached_raw_tracepoints(rec: Recorder) -> set[str]:
    """What the kernel has attached for this tracer (bcc's fd of each raw tracepoint)."""
    return {tp.decode() for tp in rec.src.bpf.raw_tracepoint_fds}


def grow_pipe(rec: Recorder, comm: str) -> tuple[int, list]:
    with w.sysctl("fs.pipe-max-size", str(64 << 20)), w.memcg(512 << 10) as (d, _path):
        child = w.run_child(w.PIPE_GROW, comm, env={"MT_JOIN_CGROUP": str(d / "cgroup.procs")})
        assert child.report["ok"] is False and child.report["errno"] == errno.ENOMEM
        mine = rec.wait(lambda fs: any(f.kind == "syscall" for f in fs), child.pid)
    return child.pid, mine


def counts(rec: Recorder, pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in rec.src.snapshot().kernel:
        if c.pid == pid and not c.opportunistic:
            out[c.kind] = out.get(c.kind, 0) + c.count
    return out


def test_slab_hooks_wait_for_a_failure_and_leave_when_quiet(adaptive):
    rec = adaptive
    assert slab_states(rec) == {n: STANDBY for n in SLAB_PROBES}
    assert not attached_raw_tracepoints(rec) & set(SLAB_PROBES)
    assert {"sys_exit", "mm_page_alloc"} <= attached_raw_tracepoints(rec)  # the cheap hooks

    # 1. Detached: the pipe's ring is a kmalloc too large for a slab; its page allocation
    # fails in the memory cgroup. The page hook sees it and names the slab allocator and its
    # caller from the kernel stack; it is counted as the slab failure it was.
    pid, mine = grow_pipe(rec, w.unique_comm("mt-depth1"))
    assert not [f for f in mine if f.kind == "slab"]  # no slab hook was there to see it
    pages = [f for f in mine if f.kind == "page_alloc"]
    assert len(pages) == 1, mine
    assert pages[0].detail["slab"] == {"allocator": "kmalloc (page-backed)",
                                       "function": "kmalloc", "caller": "pipe_resize_ring"}
    snap = Filter(pids=frozenset({pid})).snapshot(rec.src.snapshot())
    assert failures_by_syscall(snap) == [("fcntl", "ENOMEM", 1)]  # exact, as always
    assert counts(rec, pid) == {"page_alloc": 1, "slab": 1}

    # 2. That failure armed the slab hooks, host-wide.
    assert slab_states(rec) == {n: ATTACHED for n in SLAB_PROBES}
    assert set(SLAB_PROBES) <= attached_raw_tracepoints(rec)
    reasons = {s.reason for s in rec.src.statuses if s.name in SLAB_PROBES}
    assert reasons == {f"armed: fcntl() ENOMEM in pid {pid} ({mine[0].comm})"}, reasons

    # 3. Armed, the same failure again is seen in full: the kmalloc hook's own event with its
    # size, linked to the syscall, and counted once (by the hook, not the page's stack).
    pid2, mine2 = grow_pipe(rec, w.unique_comm("mt-depth2"))
    slabs = [f for f in mine2 if f.kind == "slab"]
    assert len(slabs) == 1 and slabs[0].size == 640 << 10, mine2
    call = next(f for f in mine2 if f.kind == "syscall")
    assert [k.kind for k in call.linked] == ["page_alloc", "slab"], call.linked
    assert counts(rec, pid2) == {"page_alloc": 1, "slab": 1}

    # 4. Quiet for QUIET seconds: detached again; still counting exactly.
    deadline = time.monotonic() + QUIET + 5
    while time.monotonic() < deadline and slab_states(rec) != {n: STANDBY for n in SLAB_PROBES}:
        rec.pump(0.2)
    assert slab_states(rec) == {n: STANDBY for n in SLAB_PROBES}
    assert not attached_raw_tracepoints(rec) & set(SLAB_PROBES)
    pid3, mine3 = grow_pipe(rec, w.unique_comm("mt-depth3"))
    assert not [f for f in mine3 if f.kind == "slab"]
    assert counts(rec, pid3) == {"page_alloc": 1, "slab": 1}


def test_exact_counts_of_a_burst_while_the_slab_hooks_are_detached(adaptive):
    n = 500
    child = w.run_child(w.MMAP_BURST, w.unique_comm("mt-depthb"),
                        env={"MT_BURST": str(n), "MT_LINGER": "0"})
    assert child.report["failed"] == n
    adaptive.pump(1.0)
    snap = Filter(pids=frozenset({child.pid})).snapshot(adaptive.src.snapshot())
    assert failures_by_syscall(snap) == [("mmap", "ENOMEM", n)]
