"""Cgroup ids to paths and back, for cgroup v1 (memory controller) and v2 hierarchies."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Hierarchy:
    mount: Path
    version: int  # 1 or 2
    memory: bool  # this hierarchy has the memory controller


def find_hierarchies(mounts_file: str = "/proc/self/mounts") -> list[Hierarchy]:
    """The memory v1 hierarchy (if any) and the cgroup2 one, memory first."""
    out: list[Hierarchy] = []
    try:
        with open(mounts_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    v2: list[Hierarchy] = []
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt, fstype, opts = parts[1], parts[2], parts[3].split(",")
        if fstype == "cgroup" and "memory" in opts:
            out.append(Hierarchy(Path(mnt), 1, True))
        elif fstype == "cgroup2":
            controllers = Path(mnt) / "cgroup.controllers"
            has_mem = False
            try:
                has_mem = "memory" in controllers.read_text().split()
            except OSError:
                pass
            v2.append(Hierarchy(Path(mnt), 2, has_mem))
    # A v2 hierarchy with the memory controller is the memory hierarchy of a pure-v2 host.
    v2.sort(key=lambda h: not h.memory)
    if out:
        return out + v2
    return v2


class CgroupResolver:
    """Maps kernfs ids (the inode numbers of cgroup directories) to paths, lazily.

    The BPF side reports the memory cgroup's id; on a hybrid host that is a v1 memory
    cgroup, on a pure v2 host a v2 cgroup. Paths are relative to their hierarchy's
    root ("/" for the root cgroup), as /proc/PID/cgroup shows them."""

    def __init__(self, hierarchies: Optional[list[Hierarchy]] = None, rescan_interval: float = 1.0):
        self.hierarchies = find_hierarchies() if hierarchies is None else hierarchies
        self._ids: dict[Path, dict[int, str]] = {}
        self._missed: dict[tuple[Path, int], float] = {}
        self._last_scan = 0.0
        self._rescan_interval = rescan_interval
        self._scan()

    @property
    def memory_hierarchy(self) -> Optional[Hierarchy]:
        for h in self.hierarchies:
            if h.memory:
                return h
        return None

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        for h in self.hierarchies:
            ids = self._ids.setdefault(h.mount, {})
            for root, _dirs, _files in os.walk(h.mount):
                try:
                    ino = os.stat(root).st_ino
                except OSError:
                    continue
                rel = "/" if root == str(h.mount) else "/" + os.path.relpath(root, h.mount)
                ids[ino] = rel

    def _hierarchy(self, memory: bool) -> Optional[Hierarchy]:
        if memory:
            return self.memory_hierarchy
        for h in self.hierarchies:
            if h.version == 2:
                return h
        return None

    def path(self, cgroup_id: int, memory: bool = True) -> Optional[str]:
        """Path of a memory cgroup id (memory=True) or of a cgroup v2 id."""
        h = self._hierarchy(memory)
        if h is None or not cgroup_id:
            return None
        hit = self._ids.get(h.mount, {}).get(cgroup_id)
        if hit is None:
            # An id not seen before (a cgroup created since the last scan) triggers a
            # rescan at once; an id that stayed unknown is retried only after a while.
            key = (h.mount, cgroup_id)
            missed_at = self._missed.get(key)
            now = time.monotonic()
            if missed_at is None or now - missed_at >= self._rescan_interval:
                self._scan()
                hit = self._ids.get(h.mount, {}).get(cgroup_id)
                if hit is None:
                    self._missed[key] = now
        return hit

    def resolve_user_path(self, given: str) -> tuple[Hierarchy, str]:
        """A cgroup the user named, as an absolute directory or a hierarchy-relative path.

        Raises LookupError with a one-line message when no hierarchy has it."""
        p = Path(given)
        for h in self.hierarchies:
            if p.is_absolute():
                try:
                    inside = p.resolve().relative_to(h.mount)
                except ValueError:
                    continue
                if (h.mount / inside).is_dir():
                    return h, "/" if str(inside) == "." else "/" + str(inside)
        rel = "/" + given.strip("/")
        for h in self.hierarchies:
            if (h.mount / rel.lstrip("/")).is_dir():
                return h, rel
        where = ", ".join(str(h.mount) for h in self.hierarchies) or "no cgroup mounts"
        raise LookupError(f"no such cgroup: {given} (looked in {where})")
