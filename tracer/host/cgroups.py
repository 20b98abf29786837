"""Cgroup ids to paths and back, for cgroup v1 (memory controller) and v2 hierarchies."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Cgroup paths learned from the kernel as cgroups are made (BPF's cgroup_mkdir stream), kept
# after the cgroup is gone so late failures and counters in it are still named; the oldest
# is forgotten first past this many.
MAX_LEARNED = 4096
# The kernel's hierarchy id of the cgroup v2 hierarchy (cgrp_dfl_root).
V2_HIERARCHY_ID = 0


@dataclass(frozen=True)
class Hierarchy:
    mount: Path
    version: int  # 1 or 2
    memory: bool  # this hierarchy has the memory controller
    hierarchy_id: Optional[int] = None  # the kernel's id (/proc/cgroups; 0 for v2), if known


def _memory_hierarchy_id(proc_cgroups: str) -> Optional[int]:
    """The hierarchy id of the memory controller in /proc/cgroups, None when unknown."""
    try:
        with open(proc_cgroups) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "memory":
                    return int(parts[1])
    except (OSError, ValueError):
        pass
    return None


def find_hierarchies(mounts_file: str = "/proc/self/mounts",
                     proc_cgroups: str = "/proc/cgroups") -> list[Hierarchy]:
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
            out.append(Hierarchy(Path(mnt), 1, True, _memory_hierarchy_id(proc_cgroups)))
        elif fstype == "cgroup2":
            controllers = Path(mnt) / "cgroup.controllers"
            has_mem = False
            try:
                has_mem = "memory" in controllers.read_text().split()
            except OSError:
                pass
            v2.append(Hierarchy(Path(mnt), 2, has_mem, V2_HIERARCHY_ID))
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

    def __init__(self, hierarchies: Optional[list[Hierarchy]] = None, rescan_interval: float = 1.0,
                 max_learned: int = MAX_LEARNED):
        self.hierarchies = find_hierarchies() if hierarchies is None else hierarchies
        self._ids: dict[Path, dict[int, str]] = {}
        self._missed: dict[tuple[Path, int], float] = {}
        # (mount, kernfs id) -> path, as the kernel announced it; oldest first
        self._learned: OrderedDict[tuple[Path, int], str] = OrderedDict()
        self.max_learned = max_learned
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

    def learn(self, hierarchy_id: int, cgroup_id: int, path: str) -> bool:
        """Remember a cgroup's path as the kernel announced it when the cgroup was made (or
        renamed); True when the hierarchy is one memtrace resolves ids in. Hostile input is
        refused: a path must be absolute, printable and free of '..' components."""
        h = next((h for h in self.hierarchies if h.hierarchy_id == hierarchy_id), None)
        if h is None or not cgroup_id or not path.startswith("/") or not path.isprintable() \
                or ".." in path.split("/"):
            return False
        key = (h.mount, cgroup_id)
        self._learned[key] = path
        self._learned.move_to_end(key)
        while len(self._learned) > self.max_learned:
            self._learned.popitem(last=False)
        self._missed.pop(key, None)
        return True

    def path(self, cgroup_id: int, memory: bool = True) -> Optional[str]:
        """Path of a memory cgroup id (memory=True) or of a cgroup v2 id."""
        h = self._hierarchy(memory)
        if h is None or not cgroup_id:
            return None
        learned = self._learned.get((h.mount, cgroup_id))
        if learned is not None:
            return learned
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
