"""Readers of host-wide memory state: /proc/meminfo, sysctls, buddyinfo, zoneinfo, a memory
cgroup's usage and limit, a process's mappings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional


@dataclass(frozen=True)
class HostState:
    """Machine-wide limits and free memory at one moment. Sizes in bytes."""

    page_size: int = 4096
    mem_total: int = 0
    mem_free: int = 0
    mem_available: int = 0
    swap_total: int = 0
    commit_limit: int = 0
    committed_as: int = 0
    hugepages_total: int = 0
    hugepages_free: int = 0
    hugepages_rsvd: int = 0
    hugepage_size: int = 2 << 20
    overcommit_memory: int = 0
    overcommit_ratio: int = 50
    max_map_count: int = 65530
    task_size: int = 1 << 47  # the user address space (4-level paging)
    # free blocks per order, per "node N zone NAME"
    free_blocks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # min watermark per zone, in pages
    min_watermark: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CgroupState:
    path: str
    version: int
    usage: Optional[int]
    limit: Optional[int]  # None = no limit
    failcnt: Optional[int] = None


def _meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            n = int(parts[0])
            out[key] = n * 1024 if len(parts) > 1 and parts[1] == "kB" else n
    return out


def parse_buddyinfo(text: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in text.splitlines():
        parts = line.replace(",", " ").split()
        # Node 0 zone Normal 1 2 3 ...
        if len(parts) > 4 and parts[0] == "Node" and parts[2] == "zone":
            out[f"node {parts[1]} zone {parts[3]}"] = tuple(int(x) for x in parts[4:])
    return out


def parse_zoneinfo_min(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    zone = None
    for line in text.splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 4 and parts[0] == "Node" and parts[2] == "zone":
            zone = f"node {parts[1]} zone {parts[3]}"
        elif zone and len(parts) == 2 and parts[0] == "min":
            out[zone] = int(parts[1])
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _int(path: str, default: int) -> int:
    try:
        return int(_read(path).split()[0])
    except (IndexError, ValueError):
        return default


def read_host_state(proc: str = "/proc") -> HostState:
    m = _meminfo(_read(f"{proc}/meminfo"))
    return HostState(
        page_size=os.sysconf("SC_PAGE_SIZE"),
        mem_total=m.get("MemTotal", 0), mem_free=m.get("MemFree", 0),
        mem_available=m.get("MemAvailable", 0), swap_total=m.get("SwapTotal", 0),
        commit_limit=m.get("CommitLimit", 0), committed_as=m.get("Committed_AS", 0),
        hugepages_total=m.get("HugePages_Total", 0), hugepages_free=m.get("HugePages_Free", 0),
        hugepages_rsvd=m.get("HugePages_Rsvd", 0), hugepage_size=m.get("Hugepagesize", 2 << 20),
        overcommit_memory=_int(f"{proc}/sys/vm/overcommit_memory", 0),
        overcommit_ratio=_int(f"{proc}/sys/vm/overcommit_ratio", 50),
        max_map_count=_int(f"{proc}/sys/vm/max_map_count", 65530),
        free_blocks=parse_buddyinfo(_read(f"{proc}/buddyinfo")),
        min_watermark=parse_zoneinfo_min(_read(f"{proc}/zoneinfo")),
    )


def parse_limit(text: str) -> Optional[int]:
    text = text.strip()
    if not text or text == "max":
        return None
    n = int(text)
    return None if n >= 2**62 else n


def read_cgroup_state(directory: Path, path: str, version: int) -> Optional[CgroupState]:
    try:
        if version == 2:
            usage = int((directory / "memory.current").read_text())
            limit = parse_limit((directory / "memory.max").read_text())
            return CgroupState(path, 2, usage, limit)
        usage = int((directory / "memory.usage_in_bytes").read_text())
        limit = parse_limit((directory / "memory.limit_in_bytes").read_text())
        failcnt = int((directory / "memory.failcnt").read_text())
        return CgroupState(path, 1, usage, limit, failcnt)
    except (OSError, ValueError):
        return None


def range_mapped(pid: int, start: int, length: int, proc: str = "/proc") -> Optional[bool]:
    """Whether [start, start+length) is fully covered by the process's mappings; None
    when the process is gone."""
    try:
        with open(f"{proc}/{pid}/maps") as f:
            spans: list[tuple[int, int]] = []
            for line in f:
                first, _, last = line.split(" ", 1)[0].partition("-")
                spans.append((int(first, 16), int(last, 16)))
    except (OSError, ValueError):
        return None
    end = start + max(length, 1)
    pos = start
    for lo, hi in sorted(spans):
        if hi <= pos:
            continue
        if lo > pos:
            return False
        pos = hi
        if pos >= end:
            return True
    return pos >= end


def parse_zoneinfo_watermark(text: str, which: str = "low") -> int:
    """The sum over zones of one watermark ("min", "low" or "high"), in pages."""
    total = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == which and parts[1].isdigit():
            total += int(parts[1])
    return total


def parse_pressure_some_avg10(text: str) -> Optional[float]:
    """The share of the last 10 s in which some task stalled on memory (percent), from
    /proc/pressure/memory; None without pressure stall information."""
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["some"]:
            for part in parts[1:]:
                key, _, value = part.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


# Memory is tight when tasks stall on it this much (PSI "some" avg10, percent), or when
# what is available comes within this many low watermarks (kswapd wakes at one).
TIGHT_PRESSURE = 1.0
TIGHT_LOW_WATERMARKS = 4


def low_watermark_pages(proc: str = "/proc") -> int:
    return parse_zoneinfo_watermark(_read(f"{proc}/zoneinfo"), "low")


def memory_tight(proc: str = "/proc", low_watermark_pages: Optional[int] = None,
                 page_size: int = 4096) -> Optional[str]:
    """Why memory is tight right now, or None: two small reads (~30 us), made once a second."""
    stall = parse_pressure_some_avg10(_read(f"{proc}/pressure/memory"))
    if stall is not None and stall >= TIGHT_PRESSURE:
        return f"memory pressure: tasks stalled {stall:g}% of the last 10 s"
    if low_watermark_pages is None:
        low_watermark_pages = parse_zoneinfo_watermark(_read(f"{proc}/zoneinfo"), "low")
    available = _meminfo(_read(f"{proc}/meminfo")).get("MemAvailable")
    if available is not None and low_watermark_pages:
        near = TIGHT_LOW_WATERMARKS * low_watermark_pages * page_size
        if available < near:
            return (f"memory tight: {available >> 20} MiB available, within "
                    f"{TIGHT_LOW_WATERMARKS}x the low watermarks ({near >> 20} MiB)")
    return None
