"""Evidence as of the failure: cgroup names learned from the kernel, the memory cgroup's charge
captured in the kernel, and how the diagnosis prefers them to files read later."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tracer.diagnose.evidence import Evidence, EvidenceSampler, host_as_of
from tracer.diagnose.rules import diagnose
from tracer.host.cgroups import CgroupResolver, Hierarchy, find_hierarchies
from tracer.host.state import CgroupState, HostState
from tracer.kernel import abi
from tracer.kernel.failures import host_at_failure, memcg_state
from tracer.model.decode import GfpDecoder
from tracer.model.failures import Failure, HostAtFailure, KernelFailure, MemcgState

pytestmark = pytest.mark.unit

KiB, MiB = 1 << 10, 1 << 20


# -- cgroup names learned from the kernel's cgroup_mkdir --------------------------------------

def _resolver(tmp_path: Path, max_learned: int = 4) -> CgroupResolver:
    v1 = Hierarchy(tmp_path / "memory", 1, True, 4)
    v2 = Hierarchy(tmp_path / "unified", 2, False, 0)
    for h in (v1, v2):
        h.mount.mkdir()
    return CgroupResolver([v1, v2], max_learned=max_learned)


def test_a_learned_cgroup_is_named_after_it_is_gone(tmp_path):
    r = _resolver(tmp_path)
    assert r.path(1234) is None  # never existed on disk
    assert r.learn(4, 1234, "/jobs/job-1")
    assert r.path(1234) == "/jobs/job-1"
    assert r.path(1234, memory=False) is None  # v1 memory ids are not v2 ids


def test_ids_are_per_hierarchy(tmp_path):
    r = _resolver(tmp_path)
    assert r.learn(0, 77, "/v2/one")
    assert r.learn(4, 77, "/v1/other")
    assert (r.path(77), r.path(77, memory=False)) == ("/v1/other", "/v2/one")
    assert not r.learn(3, 78, "/cpuset/x")  # a hierarchy memtrace does not resolve in
    assert r.path(78) is None


def test_learned_names_are_bounded_oldest_first(tmp_path):
    r = _resolver(tmp_path, max_learned=3)
    for i in range(1, 5):
        r.learn(4, i, f"/c{i}")
    assert [r.path(i) for i in range(1, 5)] == [None, "/c2", "/c3", "/c4"]
    r.learn(4, 2, "/c2-renamed")  # a rename refreshes it: c3 is now the oldest
    r.learn(4, 5, "/c5")
    assert [r.path(i) for i in (2, 3, 4, 5)] == ["/c2-renamed", None, "/c4", "/c5"]


@pytest.mark.parametrize("path", ["", "relative", "/a/../etc", "/a\nb", "/\x1b[2J"])
def test_hostile_cgroup_paths_are_refused(tmp_path, path):
    r = _resolver(tmp_path)
    assert not r.learn(4, 9, path)
    assert r.path(9) is None


def test_hierarchy_ids_come_from_proc_cgroups(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                      f"cgroup2 {tmp_path} cgroup2 rw 0 0\n")
    cgroups = tmp_path / "cgroups"
    cgroups.write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
                       "cpu\t1\t3\t1\nmemory\t4\t55\t1\n")
    found = find_hierarchies(str(mounts), str(cgroups))
    assert [(h.version, h.hierarchy_id) for h in found] == [(1, 4), (2, 0)]


# -- the memory cgroup's charge, captured in the kernel ---------------------------------------

def test_memcg_state_from_the_kernel_pages():
    m = abi.MemcgEvidence(usage=100, max=128, limit_usage=100, limit_max=128, limit_id=5,
                          limit_level=0, valid=1)
    assert memcg_state(m, "/job", "/job") == MemcgState(
        usage=100 * 4096, limit=128 * 4096, nearest_cgroup="/job", nearest_usage=100 * 4096,
        nearest_limit=128 * 4096, nearest_levels_up=0)
    unlimited = abi.MemcgEvidence(usage=7, max=(2**63 - 1) // 4096, limit_usage=7,
                                  limit_max=(2**63 - 1) // 4096, valid=1)
    s = memcg_state(unlimited, "/", "/")
    assert (s.limit, s.nearest_limit) == (None, None)


class _Resolver:
    def __init__(self, version: int) -> None:
        self.memory_hierarchy = Hierarchy(Path("/nonexistent"), version, True)


def _slab_failure(memcg: MemcgState | None, cgroup: str = "/jobs/job-1") -> Failure:
    gfp = GfpDecoder.default()
    accounted = gfp.value(gfp.mask("__GFP_ACCOUNT") | gfp.mask("__GFP_IO") | gfp.mask("__GFP_FS"))
    k = KernelFailure("page_alloc", 1 * MiB, 8, accounted, False)
    return Failure(time=0.0, kind="syscall", pid=1, tid=1, comm="job", cgroup=cgroup,
                   cgroup_id=9, syscall="fcntl", errno="ENOMEM", size=None, linked=(k,),
                   memcg=memcg)


def test_captured_charge_is_preferred_to_files_read_later(monkeypatch):
    import tracer.diagnose.evidence as evidence

    monkeypatch.setattr(evidence, "read_host_state", lambda: HostState())
    # the files, read later, say the cgroup is empty (it was removed and made again)
    monkeypatch.setattr(EvidenceSampler, "cgroup",
                        lambda self, path: CgroupState(path or "?", 1, 0, 1 * MiB))
    s = EvidenceSampler(cast(Any, _Resolver(1)))
    captured = MemcgState(usage=500 * KiB, limit=512 * KiB, nearest_cgroup="/jobs/job-1",
                          nearest_usage=500 * KiB, nearest_limit=512 * KiB)
    ev = s.evidence_for(_slab_failure(captured))
    assert ev.cgroup == CgroupState("/jobs/job-1", 1, 500 * KiB, 512 * KiB)
    found = diagnose(_slab_failure(captured), ev)
    assert found.cause == "memcg_limit"
    assert (found.evidence["usage"], found.evidence["limit"]) == (500 * KiB, 512 * KiB)
    assert "limit_in_bytes" in found.explanation  # v1's setting
    # without a capture the files are read, as before
    assert s.evidence_for(_slab_failure(None)).cgroup == CgroupState("/jobs/job-1", 1, 0, 1 * MiB)


def test_the_nearest_limit_may_be_an_ancestors():
    s = EvidenceSampler(cast(Any, _Resolver(2)))
    captured = MemcgState(usage=300 * KiB, limit=None, nearest_cgroup="/jobs",
                          nearest_usage=510 * KiB, nearest_limit=512 * KiB, nearest_levels_up=1)
    cg = s.captured_cgroup(_slab_failure(captured))
    assert cg == CgroupState("/jobs", 2, 510 * KiB, 512 * KiB)
    nameless = MemcgState(usage=1, limit=None, nearest_cgroup=None, nearest_usage=2,
                          nearest_limit=4, nearest_levels_up=2)
    cg = s.captured_cgroup(_slab_failure(nameless))
    assert cg is not None and cg.path == "2 level(s) above /jobs/job-1" and cg.limit == 4
    no_limit = MemcgState(usage=5, limit=None, nearest_cgroup="/", nearest_usage=5,
                          nearest_limit=None)
    assert s.captured_cgroup(_slab_failure(no_limit)) == CgroupState("/jobs/job-1", 2, 5, None)


# -- fast-changing host state, captured in the kernel -----------------------------------------

def test_mem_available_is_computed_as_the_kernel_does():
    # si_mem_available(): free - totalreserve + file - min(file/2, low) + reclaimable - ...
    h = abi.HostEvidence(free=1000, wmark_min=100, wmark_low=120, wmark_high=150, reserve=200,
                         file=400, reclaimable=100, managed=10000, flags=abi.HOST_ZONES)
    got = host_at_failure(h)
    assert got is not None
    assert got.available == (1000 - 200 + (400 - 120) + (100 - 50)) * 4096
    assert (got.free, got.min_watermark, got.managed) == (1000 * 4096, 100 * 4096, 10000 * 4096)
    assert got.hugepages_total is None and got.range_mapped is None
    starved = abi.HostEvidence(free=10, reserve=200, flags=abi.HOST_ZONES)
    got = host_at_failure(starved)
    assert got is not None and got.available == 0
    assert host_at_failure(abi.HostEvidence()) is None  # nothing captured


def test_huge_pages_and_range_flags():
    h = abi.HostEvidence(huge_total=4, huge_free=1, huge_reserved=1, huge_surplus=0,
                         huge_order=9, flags=abi.HOST_HUGETLB | abi.HOST_RANGE_CHECKED)
    got = host_at_failure(h)
    assert got is not None
    assert (got.hugepages_total, got.hugepages_free, got.hugepages_reserved,
            got.hugepage_size) == (4, 1, 1, 2 * MiB)
    assert got.range_mapped is False and got.free is None
    mapped = host_at_failure(abi.HostEvidence(
        flags=abi.HOST_RANGE_CHECKED | abi.HOST_RANGE_MAPPED))
    assert mapped is not None and mapped.range_mapped is True


def _oom(host: HostAtFailure | None) -> Failure:
    return Failure(time=0.0, kind="oom_kill", pid=7, tid=7, comm="hog", cgroup="/", cgroup_id=1,
                   detail={"constraint": "CONSTRAINT_NONE", "rss_bytes": 900 * MiB}, host=host)


def test_an_oom_kill_quotes_memory_as_it_was_at_the_kill():
    later = HostState(mem_total=958 * MiB, mem_free=700 * MiB, mem_available=743 * MiB)
    at_kill = HostAtFailure(free=20 * MiB, available=31 * MiB, min_watermark=16 * MiB)
    f = _oom(at_kill)
    found = diagnose(f, Evidence(host_as_of(later, f.host)))
    assert found.cause == "exhaustion"
    assert "31 MiB available" in found.explanation
    assert found.evidence["mem_available"] == 31 * MiB
    assert "743" not in found.explanation
    # without a capture (an older recording) the later reading is all there is
    assert diagnose(_oom(None), Evidence(later)).evidence["mem_available"] == 743 * MiB


def test_an_order0_page_failure_below_min_is_exhaustion_as_of_the_failure():
    later = HostState(mem_total=1024 * MiB, mem_free=600 * MiB,
                      min_watermark={"node 0 zone Normal": 4096})
    at_failure = HostAtFailure(free=12 * MiB, min_watermark=16 * MiB)
    f = Failure(time=0.0, kind="page_alloc", pid=7, tid=7, comm="x", cgroup=None, cgroup_id=0,
                order=0, size=4096, host=at_failure)
    assert diagnose(f, Evidence(later)).cause != "exhaustion"
    found = diagnose(f, Evidence(host_as_of(later, at_failure)))
    assert found.cause == "exhaustion" and found.evidence["mem_free"] == 12 * MiB


def test_an_oom_kill_quotes_free_memory_and_min_watermarks_of_the_moment():
    later = HostState(mem_total=958 * MiB, mem_free=700 * MiB,
                      min_watermark={"node 0 zone DMA32": 999})
    at_kill = HostAtFailure(free=20 * MiB, available=31 * MiB, min_watermark=16 * MiB)
    found = diagnose(_oom(at_kill), Evidence(host_as_of(later, at_kill)))
    assert found.evidence["mem_free"] == 20 * MiB
    assert found.evidence["min_watermark_pages"] == 16 * MiB // 4096
    assert found.evidence["captured"] is True
    assert "20 MiB free against min watermarks of 16 MiB" in found.explanation
    old = diagnose(_oom(None), Evidence(later))  # a recording without the capture
    assert (old.evidence["mem_free"], old.evidence["min_watermark_pages"]) == (700 * MiB, 999)
    assert old.evidence["captured"] is False


def _blocks_evidence(zones: dict[tuple[int, int], list[int]]) -> abi.HostEvidence:
    h = abi.HostEvidence(free=sum(n << o for b in zones.values() for o, n in enumerate(b)),
                         managed=1 << 18, flags=abi.HOST_ZONES)
    for i, ((node, zone), blocks) in enumerate(zones.items()):
        h.block_zone[i] = node << 4 | zone
        for o, n in enumerate(blocks):
            h.blocks[i][o] = n
    h.block_zones = len(zones)
    return h


def test_free_blocks_per_zone_are_named_as_buddyinfo_names_them():
    names = {0: "DMA", 1: "DMA32", 2: "Normal"}
    h = _blocks_evidence({(0, 0): [1, 0, 2] + [0] * 7 + [3], (0, 1): [5] * 11,
                          (1, 2): [7, 6] + [0] * 9})
    got = host_at_failure(h, zone_names=names, orders=11)
    assert got is not None and got.free_blocks == {
        "node 0 zone DMA": (1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3),
        "node 0 zone DMA32": (5,) * 11, "node 1 zone Normal": (7, 6) + (0,) * 9}
    # an unknown zone index is still shown; the slots kept never exceed the record's
    h.block_zone[0] = 0 << 4 | 9
    h.block_zones = 200
    got = host_at_failure(h, zone_names=names, orders=99)
    assert got is not None and got.free_blocks is not None
    assert "node 0 zone #9" in got.free_blocks and len(got.free_blocks) <= abi.MT_BLOCK_ZONES
    assert all(len(b) == abi.MT_BLOCK_ORDERS for b in got.free_blocks.values())


def test_fragmentation_is_judged_on_the_blocks_of_the_moment():
    # read later, memory has merged again into order-10 blocks: nothing to see
    later = HostState(mem_total=1536 * MiB, mem_free=900 * MiB, free_blocks={
        "node 0 zone DMA": (0,) * 10 + (3,), "node 0 zone DMA32": (10,) * 10 + (200,)})
    moment = host_at_failure(_blocks_evidence({
        (0, 0): [0] * 10 + [3],                  # ZONE_DMA keeps its few big blocks back
        (0, 1): [90000, 40000, 100] + [0] * 8}), zone_names={0: "DMA", 1: "DMA32"})
    f = Failure(time=0.0, kind="page_alloc", pid=7, tid=7, comm="x", cgroup=None, cgroup_id=0,
                order=10, size=4 << 20, host=moment)
    assert diagnose(f, Evidence(later)).cause != "fragmentation"
    found = diagnose(f, Evidence(host_as_of(later, moment)))
    assert found.cause == "fragmentation", found
    assert found.evidence["free_blocks"] == {"node 0 zone DMA32": [90000, 40000, 100] + [0] * 8}
    assert found.evidence["free_pages"] == 90000 + 80000 + 400


def test_the_huge_page_pool_as_it_was():
    later = HostState(hugepages_total=2, hugepages_free=2, hugepage_size=2 * MiB)
    at_failure = HostAtFailure(hugepages_total=0, hugepages_free=0, hugepages_reserved=0,
                               hugepages_surplus=0, hugepage_size=2 * MiB)
    h = host_as_of(later, at_failure)
    assert (h.hugepages_total, h.hugepages_free) == (0, 0)
    other_size = HostAtFailure(hugepages_total=0, hugepages_free=0, hugepage_size=1 << 30)
    assert host_as_of(later, other_size).hugepages_total == 2  # another pool: not comparable


# -- where processes' code is, as the kernel reported it --------------------------------------

def test_paths_come_innermost_first():
    from tracer.kernel.mappings import decode_path

    assert decode_path(b"libc.so.6\0x86_64-linux-gnu\0lib\0usr\0\0\0") == \
        "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert decode_path(b"init\0") == "/init"
    for hostile in (b"", b"\0usr\0", b"..\0etc\0", b"a/b\0usr\0"):
        assert decode_path(hostile) is None, hostile


def _elf_with_code(tmp_path: Path) -> Path:
    """A real executable to take program headers from: the test's own Python."""
    import os
    import sys

    return Path(os.path.realpath(sys.executable))


def test_learned_maps_follow_exec_mmap_and_fork(tmp_path):
    from tracer.kernel.mappings import LearnedMaps, code_mappings
    from tracer.unwind.elf import Module

    exe = str(_elf_with_code(tmp_path))
    module = Module.get(exe)
    assert module is not None
    first_code = min(s.vaddr for s in module.segments if s.flags & 1)
    bias = 0x555555554000
    maps = LearnedMaps(max_processes=2)
    maps.exec(10, exe, bias + first_code, 0)
    got = maps.maps(10)
    assert got == code_mappings(exe, bias) and got
    assert all(module.load_bias(m) == bias for m in got)  # the unwinder finds the same bias
    maps.mapped(10, 0x7f0000001000, 0x5000, 0x1000, "/usr/lib/libfoo.so")
    maps.mapped(10, 0x7f0000003000, 0x1000, 0x0, "/usr/lib/libbar.so")  # over libfoo's middle
    libs = [(m.start, m.path) for m in maps.maps(10) if m.path.startswith("/usr/lib/lib")]
    assert libs == [(0x7f0000003000, "/usr/lib/libbar.so")]  # a newer mapping replaces
    maps.forked(10, 11)
    assert maps.maps(11) == maps.maps(10) and maps.knows(11)
    maps.exec(12, exe, bias + first_code, 0)  # a third process: the oldest is forgotten
    assert not maps.knows(10) and maps.knows(11) and maps.knows(12)
    assert maps.maps(99) == [] and not maps.knows(99)


def test_the_stack_copy_is_bounded_by_the_record(monkeypatch):
    import ctypes as ct

    from tracer.kernel.failures import stack_copy

    full = abi.EventFull()
    full.e.ustack_len = 64
    for i in range(64):
        full.stack[i] = i
    addr = ct.addressof(full)
    assert stack_copy(addr, ct.sizeof(abi.EventFull), full.e) == bytes(range(64))
    # a record shorter than the event says (hostile or truncated): only what is there
    assert stack_copy(addr, ct.sizeof(abi.Event) + 10, full.e) == bytes(range(10))
    assert stack_copy(addr, ct.sizeof(abi.Event), full.e) == b""
    full.e.ustack_len = 1 << 30
    assert len(stack_copy(addr, ct.sizeof(abi.EventFull), full.e)) == abi.MT_USTACK_BYTES


def test_kmalloc_ranges_from_kallsyms(tmp_path):
    from tracer.kernel.build import kmalloc_ranges

    k = tmp_path / "kallsyms"
    k.write_text("ffffffff81646940 T __kmalloc_large_node_noprof\n"
                 "ffffffff8164a2a0 T __kmalloc_noprof\n"
                 "ffffffff8164a800 t some_helper\n"
                 "ffffffff8164fbe0 T __kvmalloc_node_noprof\n"
                 "ffffffff8164fd00 d some_data\n"
                 "ffffffff81650520 T __kmalloc_cache_noprof\n")
    assert kmalloc_ranges(str(k)) == [(0xffffffff8164a2a0, 0xffffffff8164a800),
                                      (0xffffffff8164fbe0, 0xffffffff81650520)]
    hidden = tmp_path / "hidden"
    hidden.write_text("0000000000000000 T __kmalloc_noprof\n0000000000000000 T x\n")
    assert kmalloc_ranges(str(hidden)) == []
    assert kmalloc_ranges(str(tmp_path / "missing")) == []
