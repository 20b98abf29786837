"""Memory cgroup limit hits, from the cgroups' own counters (this kernel has no tracepoint for them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .cgroups import CgroupResolver, Hierarchy

# v2 memory.events keys that mean the limit was hit (low/high are throttling, reported too).
V2_EVENTS = ("max", "oom", "oom_kill", "oom_group_kill", "high")


def read_counters(directory: Path, version: int) -> dict[str, int]:
    """The limit counters of one memory cgroup; {} when it is gone or unreadable."""
    out: dict[str, int] = {}
    try:
        if version == 2:
            for line in (directory / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in V2_EVENTS:
                    out[key] = int(value)
        else:
            out["failcnt"] = int((directory / "memory.failcnt").read_text().strip() or 0)
            for line in (directory / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in ("oom_kill", "under_oom"):
                    out[key] = int(value)
    except (OSError, ValueError):
        return {}
    return out


class MemcgWatcher:
    """Reports increases of the limit counters of the cgroups that showed failures.

    Every memory cgroup's counters are read once at start, so a hit that happened
    just before a cgroup first showed a failure is still counted; cgroups created
    later start from zero."""

    def __init__(self, resolver: CgroupResolver):
        self.resolver = resolver
        self.hierarchy: Optional[Hierarchy] = resolver.memory_hierarchy
        self._baseline: dict[str, dict[str, int]] = {}
        self._last: dict[str, dict[str, int]] = {}
        self._watched: set[str] = set()
        if self.hierarchy is not None:
            for root, _dirs, _files in os.walk(self.hierarchy.mount):
                rel = "/" if root == str(self.hierarchy.mount) else "/" + os.path.relpath(
                    root, self.hierarchy.mount)
                self._baseline[rel] = read_counters(Path(root), self.hierarchy.version)

    def watch(self, cgroup_path: Optional[str]) -> None:
        if cgroup_path and cgroup_path != "/" and self.hierarchy is not None:
            self._watched.add(cgroup_path)

    def poll(self) -> list[tuple[str, str, int, int]]:
        """(cgroup, event, increase since last poll, total since start) for each increase."""
        out: list[tuple[str, str, int, int]] = []
        if self.hierarchy is None:
            return out
        for path in sorted(self._watched):
            now = read_counters(self.hierarchy.mount / path.lstrip("/"), self.hierarchy.version)
            if not now:
                continue
            base = self._baseline.setdefault(path, {})
            last = self._last.get(path, base)
            for key, value in now.items():
                if key == "under_oom":
                    if value and not last.get(key, 0):
                        out.append((path, key, 1, 1))
                    continue
                prev = last.get(key, 0)
                if value > prev:
                    out.append((path, key, value - prev, value - base.get(key, 0)))
            self._last[path] = now
        return out

    def totals(self) -> list[tuple[str, str, int]]:
        """(cgroup, event, increase since start) for the watched cgroups."""
        out = []
        for path in sorted(self._watched):
            base = self._baseline.get(path, {})
            for key, value in self._last.get(path, {}).items():
                if key == "under_oom":
                    continue
                n = value - base.get(key, 0)
                if n > 0:
                    out.append((path, key, n))
        return out
