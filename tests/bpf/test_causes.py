"""Every cause this kernel can produce, reproduced for real in a child, diagnosed live."""

from __future__ import annotations

import errno

import pytest

from tests import workloads as w
from tracer.model.decode import parse_gfp
from tracer.model.failures import Failure

pytestmark = pytest.mark.bpf


def diagnosed(live, body: str, comm_prefix: str, syscall: str, **kw) -> tuple[w.ChildResult,
                                                                              Failure]:
    """Run a child; return it and its (single) diagnosed failure of `syscall`."""
    from tracer.diagnose.diagnoser import Diagnoser

    comm = w.unique_comm(comm_prefix)
    child = w.run_child(body, comm, **kw)
    mine = live.wait(lambda fs: any(f.syscall == syscall and f.kind == "syscall" for f in fs),
                     child.pid)
    calls = [f for f in mine if f.syscall == syscall and f.kind == "syscall"]
    assert len(calls) >= 1, (child, mine)
    return child, Diagnoser()([calls[0]])[0]


def test_rlimit_as(live):
    child, f = diagnosed(live, w.RLIMIT_AS_MMAP, "mt-as", "mmap")
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "rlimit_as"
    # confirmed where the kernel's own verdict (a kretprobe on may_expand_vm) was seen
    statuses = {p.name: p.status for p in live.src.statuses}
    if statuses.get("decision_vm_limit") == "attached":
        assert (f.confidence, f.evidence["kernel_decision"]) == ("confirmed", "vm_limit")
    else:
        assert f.confidence == "inferred"
    assert f.evidence["rlimit_as"] == child.report["limit"]
    assert f.evidence["request"] == 256 << 20
    assert f.evidence["total_vm"] + (256 << 20) > child.report["limit"]
    assert "RLIMIT_AS" in f.explanation


def test_rlimit_data_brk(live):
    child, f = diagnosed(live, w.RLIMIT_DATA_BRK, "mt-dbrk", "brk")
    assert child.report["failed"]
    assert f.cause == "rlimit_data"
    assert f.evidence["request"] == 64 << 20
    assert f.evidence["rlimit_data"] < f.evidence["data_vm"] + (64 << 20)


def test_rlimit_data_mmap(live):
    child, f = diagnosed(live, w.RLIMIT_DATA_MMAP, "mt-dmap", "mmap")
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "rlimit_data"
    assert f.evidence["rlimit_data"] == child.report["limit"]


def test_rlimit_memlock_mlock_enomem_and_map_locked_eagain(live):
    comm = w.unique_comm("mt-lock")
    child = w.run_child(w.MEMLOCK, comm)
    assert child.report == {"mlock_errno": errno.ENOMEM, "map_locked_errno": errno.EAGAIN,
                            "pid": child.pid}
    mine = live.wait(lambda fs: {f.syscall for f in fs} >= {"mlock", "mmap"}, child.pid)
    from tracer.diagnose.diagnoser import Diagnoser

    found = {f.syscall: f for f in Diagnoser()([f for f in mine if f.kind == "syscall"])}
    assert found["mlock"].errno == "ENOMEM" and found["mlock"].cause == "rlimit_memlock"
    assert found["mlock"].evidence["rlimit_memlock"] == 64 << 10
    assert found["mmap"].errno == "EAGAIN"  # the real errno is kept
    assert found["mmap"].cause == "rlimit_memlock"


def test_overcommit_heuristic(live):
    child, f = diagnosed(live, w.HUGE_MMAP, "mt-oc", "mmap")
    assert f.cause == "overcommit"
    assert f.evidence["overcommit_memory"] == 0
    assert f.evidence["request"] == 1 << 46
    # the kernel's own refusal line (when not rate-limited away) or, where kprobes exist, its
    # verdict at __vm_enough_memory makes it confirmed
    statuses = {p.name: p.status for p in live.src.statuses}
    if statuses.get("decision_overcommit") == "attached":
        assert (f.confidence, f.evidence["kernel_decision"]) == ("confirmed", "overcommit")
    assert f.confidence in ("confirmed", "inferred")
    if f.confidence == "confirmed" and "kernel_decision" not in f.evidence:
        assert "__vm_enough_memory" in f.evidence["kernel_message"]


def test_overcommit_strict(live):
    meminfo = dict(line.split(":") for line in open("/proc/meminfo"))
    limit = int(meminfo["CommitLimit"].split()[0]) * 1024
    committed = int(meminfo["Committed_AS"].split()[0]) * 1024
    if committed > limit // 2:
        pytest.skip("too much memory already committed to switch to strict overcommit safely")
    size = limit - committed + (1 << 30)
    with w.sysctl("vm.overcommit_memory", "2"):
        child, f = diagnosed(live, w.STRICT_OVERCOMMIT, "mt-strict", "mmap",
                             env={"MT_SIZE": str(size), "MT_LINGER": "0.3"})
        from tracer.diagnose.diagnoser import Diagnoser

        f = Diagnoser()([f.__class__(**{**f.__dict__, "cause": None})])[0]
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "overcommit"
    assert f.evidence["overcommit_memory"] == 2
    assert f.evidence["request"] == size


def test_max_map_count(live):
    child, f = diagnosed(live, w.MAP_COUNT, "mt-maps", "mprotect")
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "max_map_count"
    assert f.evidence["max_map_count"] == child.report["max_map_count"]
    assert f.evidence["map_count"] >= child.report["max_map_count"] - 1


def test_address_space_map_32bit(live):
    child, f = diagnosed(live, w.MAP_32BIT, "mt-32", "mmap")
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "address_space"
    assert f.evidence["unmapped_area_failed"] is True
    assert f.evidence["request"] == 2 << 30


def test_bad_range(live):
    comm = w.unique_comm("mt-range")
    child = w.run_child(w.BAD_RANGE, comm)
    assert child.report["mprotect_errno"] == errno.ENOMEM
    assert child.report["mincore_errno"] == errno.ENOMEM
    mine = live.wait(lambda fs: {f.syscall for f in fs} >= {"mprotect", "mincore"}, child.pid)
    from tracer.diagnose.diagnoser import Diagnoser

    found = {f.syscall: f for f in Diagnoser()([f for f in mine if f.kind == "syscall"])}
    for name in ("mprotect", "mincore"):
        assert found[name].cause == "bad_range", name
        assert found[name].evidence["addr"] == child.report["addr"]
        assert found[name].evidence["length"] == 3 * 4096


def test_too_large_mmap(live):
    child, f = diagnosed(live, w.TOO_LARGE, "mt-big", "mmap")
    assert f.cause == "too_large"
    assert f.evidence["request"] == 1 << 48


def test_too_large_kmalloc_inside_fcntl(live):
    with w.sysctl("fs.pipe-max-size", str(1 << 30)):
        child, f = diagnosed(live, w.HUGE_PIPE, "mt-kbig", "fcntl")
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "too_large"
    assert f.evidence["request"] > f.evidence["kmalloc_max"] == 4 << 20
    assert any(k.kind == "slab" for k in f.linked)


def test_hugetlb(live):
    if int(open("/proc/sys/vm/nr_hugepages").read()) != 0:
        pytest.skip("this host has a huge page pool; the test needs it empty")
    child, f = diagnosed(live, w.HUGETLB, "mt-huge2m", "mmap")
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "hugetlb"
    assert f.evidence["pages_needed"] == 1 and f.evidence["hugepages_free"] == 0


def test_memcg_limit_kernel_charge(live):
    with w.sysctl("fs.pipe-max-size", str(64 << 20)), w.memcg(512 << 10) as (d, path):
        child, f = diagnosed(live, w.PIPE_GROW, "mt-mcg", "fcntl",
                             env={"MT_JOIN_CGROUP": str(d / "cgroup.procs")})
        assert f.cause == "memcg_limit"
        assert f.evidence["cgroup"] == path
        assert f.evidence["limit"] == 512 << 10
        assert parse_gfp(f.evidence["gfp"]).accounted  # __GFP_ACCOUNT, whatever the composite


def test_unknown_when_no_rule_matches(live):
    # fork in a PID namespace whose init has exited: ENOMEM that no memory rule explains
    child, f = diagnosed(live, w.FORK_IN_DEAD_PID_NS, "mt-pidns", "clone")
    assert child.report["errno"] == errno.ENOMEM
    assert f.cause == "unknown"
    assert f.evidence["syscall"] == "clone"
