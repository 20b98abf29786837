"""memtrace's own cost on the real kernel: BPF run-time stats held on only while a source that
asks for them runs, run counts and run time of its real programs, doctor's measurement."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests import workloads as w
from tracer.host import system as host
from tracer.kernel.doctor import examine
from tracer.kernel.failures import LiveSource
from tracer.model.failures import Filter
from tracer.model.probes import ProbeCost, cost_rates

pytestmark = pytest.mark.bpf

SYSCALLS = 20_000

# A program of the test's own on sys_exit: it outlives memtrace's programs, so whether the
# kernel still counts after memtrace closed shows on it.
SENTINEL = b"int sentinel(struct bpf_raw_tracepoint_args *ctx) { return 0; }"


def stats_fds(pid: str = "self") -> int:
    """The BPF_ENABLE_STATS fds a process holds (each keeps the kernel counting)."""
    n = 0
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0
    for fd in fds:
        try:
            n += os.readlink(fd) == "anon_inode:bpf-stats"
        except OSError:
            continue
    return n


def others_hold_stats() -> bool:
    """Someone else keeps the kernel counting: the sysctl, or another process's fd."""
    if Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() != "0":
        return True
    me = str(os.getpid())
    return any(stats_fds(p.name) for p in Path("/proc").iterdir()
               if p.name.isdigit() and p.name != me)


def run_time_ns(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("run_time_ns:"):
            return int(line.split()[1])
    raise AssertionError("this kernel's fdinfo shows no run_time_ns")


def kernel_counts(fd: int) -> bool:
    """Does the kernel count BPF run time now? The sentinel's run time grows or not."""
    before = run_time_ns(fd)
    for _ in range(2000):
        os.getppid()
    return run_time_ns(fd) > before


@pytest.fixture
def sentinel() -> Iterator[int]:
    host.prepare_headers()
    from bcc import BPF  # the test's own program, not memtrace's

    bpf = BPF(text=SENTINEL)
    try:
        bpf.attach_raw_tracepoint(tp=b"sys_exit", fn_name=b"sentinel")
        yield int(bpf.funcs[b"sentinel"].fd)
    finally:
        bpf.cleanup()


def by_probe(cost: ProbeCost) -> dict[str, tuple[int, int]]:
    return {p.probe: (p.runs, p.run_time_ns) for p in cost.probes}


def test_stats_on_only_while_memtrace_runs_and_its_programs_counted(sentinel):
    own = stats_fds()
    others_before = others_hold_stats()
    counted_before = kernel_counts(sentinel)
    if not others_before:
        assert not counted_before  # nobody holds them on: the kernel does not count
    src = LiveSource(Filter(), probe_cost=True)
    src.start()
    try:
        assert stats_fds() == own + 1
        assert kernel_counts(sentinel)
        first = src.snapshot().cost
        assert first is not None and first.counting and first.note == ""
        assert {"syscall_exit", "page_alloc"} <= set(by_probe(first))
        comm = w.unique_comm("mt-cost")
        child = w.run_child(w.HUGE_MMAP, comm)  # a real ENOMEM, and page allocations
        assert child.report["ok"] is False
        for _ in range(SYSCALLS):
            os.getppid()
        second = src.snapshot().cost
        assert second is not None and second.counting
        runs0, ns0 = by_probe(first)["syscall_exit"]
        runs1, ns1 = by_probe(second)["syscall_exit"]
        assert runs1 - runs0 >= SYSCALLS  # every syscall exit ran the program, memtrace's own too
        assert ns1 > ns0 > 0
        assert by_probe(second)["page_alloc"][0] > by_probe(first)["page_alloc"][0]
        rates = cost_rates(first, second)
        assert rates is not None and rates.cpu > 0
        exit_rate = next(r for r in rates.probes if r.probe == "syscall_exit")
        assert exit_rate.ns_per_event is not None and exit_rate.ns_per_event > 0
    finally:
        src.close()
    assert stats_fds() == own  # the fd is closed with the source
    if others_hold_stats() == others_before:  # nobody else changed it meanwhile
        assert kernel_counts(sentinel) == counted_before  # restored: as it was before


def test_no_stats_unless_asked(live, sentinel):
    """The always-on commands (watch, export by default) leave the kernel's stats alone."""
    assert live.src.probe_cost is False
    assert stats_fds() == 0
    cost = live.src.snapshot().cost
    assert cost is not None
    if not others_hold_stats():
        assert not cost.counting and "off" in cost.note
        assert not kernel_counts(sentinel)


def test_doctor_measures_each_probe():
    done = threading.Event()

    def busy() -> None:  # a host with syscalls to count, however quiet this machine is
        while not done.is_set():
            os.getppid()

    t = threading.Thread(target=busy, daemon=True)
    t.start()
    try:
        exam = examine()
    finally:
        done.set()
        t.join()
    assert exam.core_attached
    assert exam.cost is not None, exam.cost_note
    assert 0.9 < exam.cost.seconds < 5
    exit_rate = next(r for r in exam.cost.probes if r.probe == "syscall_exit")
    assert exit_rate.events_per_s > 1000
    assert exit_rate.ns_per_event is not None and exit_rate.ns_per_event > 0
    assert stats_fds() == 0  # doctor held the stats on for its measurement only
