"""Evidence readers: /proc text, cgroup files and a process's mappings, from fake trees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, cast

import pytest

from tracer.diagnose import evidence
from tracer.diagnose.evidence import EvidenceSampler
from tracer.host.cgroups import Hierarchy
from tracer.host.state import (
    CgroupState,
    HostState,
    _meminfo,
    parse_buddyinfo,
    parse_zoneinfo_min,
    range_mapped,
    read_cgroup_state,
    read_host_state,
)
from tracer.model.failures import Failure

pytestmark = pytest.mark.unit

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# A real /proc/buddyinfo (x86-64, one node); lines end with a space.
BUDDYINFO = (
    "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n"
    "Node 0, zone    DMA32      1      1      4      2      5      4      3      3      4      2    752 \n"
    "Node 0, zone   Normal   6588   3832   3818   1985   1144   1599   1082    422    106     24     98 \n"
)  # fmt: skip

# A real /proc/zoneinfo, trimmed: per-node stats, pagesets and most counters cut short.
ZONEINFO = """\
Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 3847
      nr_active_anon 386
      nr_free_cma  0
  pages free     3840
        boost    0
        min      48
        low      60
        high     72
        promo    84
        spanned  4095
        present  3998
        managed  3840
        cma      0
        protection: (0, 3019, 5195, 5195, 5195)
      nr_free_pages 3840
      nr_free_pages_blocks 3584
      nr_mlock     0
  pagesets
    cpu: 0
              count:    0
              high:     0
              batch:    1
              high_min: 30
              high_max: 240
  vm stats threshold: 4
  node_unreclaimable:  0
  start_pfn:           1
Node 0, zone    DMA32
  pages free     772915
        boost    0
        min      9790
        low      12237
        high     14684
        promo    17131
        spanned  1044480
        present  782336
        managed  772915
        cma      0
        protection: (0, 0, 2176, 2176, 2176)
      nr_free_pages 772915
  pagesets
    cpu: 0
              count:    130
              high:     398
              batch:    63
  vm stats threshold: 40
  node_unreclaimable:  0
  start_pfn:           4096
Node 0, zone   Normal
  pages free     371255
        boost    0
        min      7056
        low      8820
        high     10584
        promo    12348
        spanned  5505024
        present  5505024
        managed  557056
        cma      0
        protection: (0, 0, 0, 0, 0)
      nr_free_pages 371255
  start_pfn:           1048576
Node 0, zone  Movable
  pages free     0
        boost    0
        min      32
        low      32
        high     32
        promo    32
        spanned  0
        present  0
        managed  0
        cma      0
        protection: (0, 0, 0, 0, 0)
Node 0, zone   Device
  pages free     0
        boost    0
        min      0
        low      0
        high     0
        promo    0
        spanned  0
        present  0
        managed  0
        cma      0
        protection: (0, 0, 0, 0, 0)
"""

MEMINFO = """\
MemTotal:       24684084 kB
MemFree:        23934828 kB
MemAvailable:   24234768 kB
Buffers:            4788 kB
Cached:           449728 kB
SwapTotal:       2097148 kB
SwapFree:        2097148 kB
CommitLimit:    12342040 kB
Committed_AS:     163700 kB
VmallocTotal:   34359738367 kB
HugePages_Total:      16
HugePages_Free:       10
HugePages_Rsvd:        2
HugePages_Surp:        0
Hugepagesize:       2048 kB
Hugetlb:           32768 kB
DirectMap1G:    25165824 kB
"""

# A real-looking /proc/PID/maps; the heap and the anonymous span after it are adjacent.
MAPS = """\
555fc2fd8000-555fc2fda000 r--p 00000000 fe:00 260386                     /usr/bin/app
555fc2fda000-555fc2fe0000 r-xp 00002000 fe:00 260386                     /usr/bin/app
555fc2fe4000-555fc2fe5000 rw-p 0000b000 fe:00 260386                     /usr/bin/app
555fc3a00000-555fc3a21000 rw-p 00000000 00:00 0                          [heap]
555fc3a21000-555fc3b00000 rw-p 00000000 00:00 0 
7ff6f2f31000-7ff6f2f33000 rw-p 00033000 fe:00 338944                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7fff21a6a000-7fff21a8b000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""  # noqa: W291 (anonymous mappings end in a space, as in the kernel's maps)


# -- /proc text --------------------------------------------------------------------------------

def test_parse_buddyinfo() -> None:
    assert parse_buddyinfo(BUDDYINFO) == {
        "node 0 zone DMA": (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3),
        "node 0 zone DMA32": (1, 1, 4, 2, 5, 4, 3, 3, 4, 2, 752),
        "node 0 zone Normal": (6588, 3832, 3818, 1985, 1144, 1599, 1082, 422, 106, 24, 98),
    }


def test_parse_buddyinfo_two_nodes_and_noise() -> None:
    text = ("\n" + BUDDYINFO
            + "Node 1, zone   Normal    12      3      1      0      0      0      0      0"
              "      0      0      0 \n"
            + "garbage line\n")
    out = parse_buddyinfo(text)
    assert list(out) == ["node 0 zone DMA", "node 0 zone DMA32", "node 0 zone Normal",
                         "node 1 zone Normal"]
    assert out["node 1 zone Normal"] == (12, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    assert parse_buddyinfo("") == {}


def test_parse_zoneinfo_min() -> None:
    # Only the "min" watermark line counts: not high_min, not the pagesets' "high:".
    assert parse_zoneinfo_min(ZONEINFO) == {
        "node 0 zone DMA": 48, "node 0 zone DMA32": 9790, "node 0 zone Normal": 7056,
        "node 0 zone Movable": 32, "node 0 zone Device": 0,
    }
    assert parse_zoneinfo_min("") == {}


def test_meminfo_kb_to_bytes_and_bare_counts() -> None:
    m = _meminfo(MEMINFO)
    assert m["MemTotal"] == 24684084 * KiB
    assert m["Hugepagesize"] == 2 * MiB
    assert m["HugePages_Total"] == 16  # a count, not kB
    assert m["VmallocTotal"] == 34359738367 * KiB


# -- read_host_state ---------------------------------------------------------------------------

def fake_proc(root: Path, sysctls: Optional[dict[str, str]] = None) -> Path:
    (root / "sys" / "vm").mkdir(parents=True)
    (root / "meminfo").write_text(MEMINFO)
    (root / "buddyinfo").write_text(BUDDYINFO)
    (root / "zoneinfo").write_text(ZONEINFO)
    for name, value in (sysctls or {}).items():
        (root / "sys" / "vm" / name).write_text(value)
    return root


def test_read_host_state(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {"overcommit_memory": "2\n", "overcommit_ratio": "80\n",
                                "max_map_count": "262144\n"})
    h = read_host_state(proc=str(proc))
    assert h.page_size == os.sysconf("SC_PAGE_SIZE")
    assert (h.mem_total, h.mem_free, h.mem_available) == \
        (24684084 * KiB, 23934828 * KiB, 24234768 * KiB)
    assert h.swap_total == 2097148 * KiB
    assert (h.commit_limit, h.committed_as) == (12342040 * KiB, 163700 * KiB)
    assert (h.hugepages_total, h.hugepages_free, h.hugepages_rsvd, h.hugepage_size) == \
        (16, 10, 2, 2 * MiB)
    assert (h.overcommit_memory, h.overcommit_ratio, h.max_map_count) == (2, 80, 262144)
    assert h.free_blocks == parse_buddyinfo(BUDDYINFO)
    assert h.min_watermark["node 0 zone Normal"] == 7056
    assert h.task_size == 1 << 47


def test_read_host_state_accepts_a_path(tmp_path: Path) -> None:
    proc = cast(str, fake_proc(tmp_path))  # f"{proc}/meminfo" works for a Path too
    assert read_host_state(proc=proc).mem_total == 24684084 * KiB


def test_read_host_state_missing_files_give_defaults(tmp_path: Path) -> None:
    (tmp_path / "sys" / "vm").mkdir(parents=True)
    (tmp_path / "sys" / "vm" / "overcommit_memory").write_text("")  # unreadable number
    h = read_host_state(proc=str(tmp_path))
    assert (h.mem_total, h.swap_total, h.commit_limit) == (0, 0, 0)
    assert (h.overcommit_memory, h.overcommit_ratio, h.max_map_count) == (0, 50, 65530)
    assert h.hugepage_size == 2 * MiB
    assert (h.free_blocks, h.min_watermark) == ({}, {})


# -- read_cgroup_state -------------------------------------------------------------------------

def cgroup_dir(root: Path, files: dict[str, str]) -> Path:
    d = root / "app.slice" / "app.service"
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


@pytest.mark.parametrize("version, files, expected", [
    pytest.param(2, {"memory.current": "536870912\n", "memory.max": "1073741824\n"},
                 CgroupState("/app.slice/app.service", 2, 512 * MiB, 1 * GiB), id="v2"),
    pytest.param(2, {"memory.current": "4096\n", "memory.max": "max\n"},
                 CgroupState("/app.slice/app.service", 2, 4096, None), id="v2-max-unlimited"),
    pytest.param(1, {"memory.usage_in_bytes": "536870912\n",
                     "memory.limit_in_bytes": "1073741824\n", "memory.failcnt": "17\n"},
                 CgroupState("/app.slice/app.service", 1, 512 * MiB, 1 * GiB, 17), id="v1"),
    pytest.param(1, {"memory.usage_in_bytes": "8192\n",
                     "memory.limit_in_bytes": "9223372036854771712\n",
                     "memory.failcnt": "0\n"},
                 CgroupState("/app.slice/app.service", 1, 8192, None, 0), id="v1-unlimited"),
])
def test_read_cgroup_state(tmp_path: Path, version: int, files: dict[str, str],
                           expected: CgroupState) -> None:
    d = cgroup_dir(tmp_path, files)
    assert read_cgroup_state(d, "/app.slice/app.service", version) == expected


@pytest.mark.parametrize("version, files", [
    pytest.param(2, {}, id="v2-gone"),
    pytest.param(2, {"memory.current": "4096\n"}, id="v2-no-memory.max"),
    pytest.param(2, {"memory.current": "lots\n", "memory.max": "max\n"}, id="v2-garbage"),
    pytest.param(1, {"memory.usage_in_bytes": "1\n", "memory.limit_in_bytes": "2\n"},
                 id="v1-no-failcnt"),
])
def test_read_cgroup_state_unreadable_is_none(tmp_path: Path, version: int,
                                              files: dict[str, str]) -> None:
    d = cgroup_dir(tmp_path, files)
    assert read_cgroup_state(d, "/app.slice/app.service", version) is None


# -- range_mapped ------------------------------------------------------------------------------

@pytest.fixture
def maps_proc(tmp_path: Path) -> str:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "maps").write_text(MAPS)
    return str(tmp_path)


@pytest.mark.parametrize("start, length, expected", [
    pytest.param(0x555FC2FD8000, 0x1000, True, id="inside-one-span"),
    pytest.param(0x555FC2FD8000, 0x8000, True, id="two-adjacent-spans-joined"),
    pytest.param(0x555FC3A00000, 0x100000, True, id="heap-and-anon-joined"),
    pytest.param(0x555FC3A10000, 0xF0000, True, id="ends-exactly-at-span-end"),
    pytest.param(0x555FC2FD8000, 0x9000, False, id="runs-into-a-hole"),
    pytest.param(0x555FC2FE0000, 0x1000, False, id="starts-in-a-hole"),
    pytest.param(0x555FC3AFF000, 0x2000, False, id="beyond-the-end-of-a-span"),
    pytest.param(0x7FFF21A8B000, 0x1000, False, id="just-past-the-stack"),
    pytest.param(0x1000, 0x1000, False, id="below-every-mapping"),
    pytest.param(0xFFFFFFFFFF600000, 0x1000, True, id="vsyscall"),
    pytest.param(0x555FC3A20FFF, 0, True, id="zero-length-counts-one-byte"),
    pytest.param(0x555FC3B00000, 0, False, id="zero-length-in-a-hole"),
])
def test_range_mapped(maps_proc: str, start: int, length: int, expected: bool) -> None:
    assert range_mapped(4242, start, length, proc=maps_proc) is expected


def test_range_mapped_unsorted_lines(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "maps").write_text(
        "7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n"
        "7f0000000000-7f0000002000 rw-p 00000000 00:00 0 \n")
    assert range_mapped(7, 0x7F0000000000, 0x3000, proc=str(tmp_path)) is True


def test_range_mapped_missing_pid_is_none(maps_proc: str) -> None:
    assert range_mapped(999999, 0x555FC2FD8000, 0x1000, proc=maps_proc) is None


def test_range_mapped_unparsable_maps_is_none(tmp_path: Path) -> None:
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "maps").write_text("not a maps line\n")
    assert range_mapped(8, 0x1000, 0x1000, proc=str(tmp_path)) is None


# -- EvidenceSampler ---------------------------------------------------------------------------

class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeResolver:
    def __init__(self, hierarchy: Optional[Hierarchy]) -> None:
        self.memory_hierarchy = hierarchy


def sampler(root: Path, clock: Clock, ttl: float = 0.5) -> EvidenceSampler:
    """A sampler whose v2 memory hierarchy is mounted at `root`."""
    return EvidenceSampler(cast(Any, FakeResolver(Hierarchy(root, 2, True))), ttl=ttl,
                           clock=clock)


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> list[HostState]:
    """Every read_host_state() the sampler makes, each a distinct object."""
    reads: list[HostState] = []

    def fake_read(proc: str = "/proc") -> HostState:
        reads.append(HostState(mem_free=len(reads) * GiB))
        return reads[-1]

    monkeypatch.setattr(evidence, "read_host_state", fake_read)
    return reads


def test_sampler_caches_host_within_ttl(host_reads: list[HostState]) -> None:
    clock = Clock()
    s = EvidenceSampler(ttl=0.5, clock=clock)
    first = s.host()
    clock.now += 0.25
    assert s.host() is first
    clock.now += 0.25  # exactly ttl: still fresh
    assert s.host() is first
    assert len(host_reads) == 1
    clock.now += 0.01
    second = s.host()
    assert second is not first and len(host_reads) == 2
    assert s.host() is second


def test_sampler_caches_cgroups_per_path(tmp_path: Path) -> None:
    d = cgroup_dir(tmp_path, {"memory.current": "4096\n", "memory.max": "8192\n"})
    clock = Clock()
    s = sampler(tmp_path, clock)
    first = s.cgroup("/app.slice/app.service")
    assert first == CgroupState("/app.slice/app.service", 2, 4096, 8192)
    (d / "memory.current").write_text("8192\n")
    clock.now += 0.5
    assert s.cgroup("/app.slice/app.service") is first
    clock.now += 0.01
    assert s.cgroup("/app.slice/app.service") == \
        CgroupState("/app.slice/app.service", 2, 8192, 8192)


def test_sampler_caches_a_missing_cgroup_too(tmp_path: Path) -> None:
    clock = Clock()
    s = sampler(tmp_path, clock)
    assert s.cgroup("/gone") is None
    cgroup_dir(tmp_path, {"memory.current": "1\n", "memory.max": "max\n"})
    assert s.cgroup("/gone") is None  # cached miss


@pytest.mark.parametrize("resolver, path", [
    pytest.param(None, "/app.slice/app.service", id="no-resolver"),
    pytest.param(FakeResolver(None), "/app.slice/app.service", id="no-memory-hierarchy"),
    pytest.param(FakeResolver(Hierarchy(Path("/nonexistent"), 2, True)), None, id="no-path"),
])
def test_sampler_without_a_cgroup(resolver: Any, path: Optional[str]) -> None:
    assert EvidenceSampler(cast(Any, resolver)).cgroup(path) is None


def _failure(syscall: str, args: dict[str, Any]) -> Failure:
    return Failure(time=0.0, kind="syscall", pid=4242, tid=4242, comm="app",
                   cgroup="/app.slice/app.service", cgroup_id=7, syscall=syscall,
                   errno="ENOMEM", args=args)


def test_evidence_for_checks_the_range_of_range_syscalls(
        tmp_path: Path, host_reads: list[HostState], monkeypatch: pytest.MonkeyPatch) -> None:
    cgroup_dir(tmp_path, {"memory.current": "4096\n", "memory.max": "max\n"})
    calls: list[tuple[int, int, int]] = []

    def fake_range(pid: int, start: int, length: int, proc: str = "/proc") -> bool:
        calls.append((pid, start, length))
        return False

    monkeypatch.setattr(evidence, "range_mapped", fake_range)
    s = sampler(tmp_path, Clock())
    ev = s.evidence_for(_failure("mprotect", {"addr": 0x7F0000000000, "length": 0x4000,
                                              "prot": "PROT_READ"}))
    assert calls == [(4242, 0x7F0000000000, 0x4000)]
    assert ev.range_mapped is False
    assert ev.host is host_reads[0]
    assert ev.cgroup == CgroupState("/app.slice/app.service", 2, 4096, None)

    ev = s.evidence_for(_failure("mmap", {"addr": 0, "length": 0x4000,
                                          "prot": "PROT_READ|PROT_WRITE",
                                          "flags": "MAP_PRIVATE|MAP_ANONYMOUS", "fd": -1}))
    assert len(calls) == 1 and ev.range_mapped is None  # mmap has no range to check
    assert ev.host is host_reads[0]  # same burst, same host sample
