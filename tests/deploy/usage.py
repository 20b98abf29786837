"""What a running container costs, read from its cgroups on the host (cgroup v1 or v2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Usage:
    memory_bytes: int
    peak_memory_bytes: int
    memory_limit_bytes: Optional[int]  # None: no limit
    cpu_seconds: float
    cpu_limit: Optional[float]  # CPUs the quota allows; None: no quota
    oom_kills: int
    anon_bytes: int = 0  # anonymous memory (v1 total_rss, v2 anon): what only the OOM killer frees
    file_bytes: int = 0  # page cache charged to the cgroup (v1 total_cache, v2 file)
    inactive_file_bytes: int = 0

    @property
    def working_set_bytes(self) -> int:
        """Usage less the inactive page cache, as the kubelet counts it for eviction and
        `kubectl top` shows it: page cache the container was first to read (the clang and
        LLVM libraries of its compile, on a host whose cache was cold) is charged to it but
        the kernel takes it back before any OOM kill."""
        return max(0, self.memory_bytes - self.inactive_file_bytes)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = right.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            out.append((left.split()[4], fstype, set(options.split(","))))
    return out


def cgroup_dirs(pid: int) -> dict[str, Path]:
    """Controller ("memory", "cpu", "cpuacct", or "unified" for v2) -> the pid's cgroup dir."""
    mounts = _mounts()
    dirs: dict[str, Path] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        for mnt, fstype, opts in mounts:
            if controllers == "" and fstype == "cgroup2":
                dirs["unified"] = Path(mnt + path)
            elif controllers and fstype == "cgroup" and set(controllers.split(",")) <= opts:
                for c in controllers.split(","):
                    dirs[c] = Path(mnt + path)
    return dirs


def _int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def usage(pid: int) -> Usage:
    """The cgroup usage of the container whose main process is `pid`."""
    d = cgroup_dirs(pid)
    if "memory" in d:  # cgroup v1 memory controller
        mem = d["memory"]
        limit: Optional[int] = _int(mem / "memory.limit_in_bytes")
        if limit is not None and limit >= 1 << 62:
            limit = None
        oom = _keyed(mem / "memory.oom_control").get("oom_kill", 0)
        current, peak = _int(mem / "memory.usage_in_bytes"), _int(mem / "memory.max_usage_in_bytes")
        stat = _keyed(mem / "memory.stat")
        anon, file = stat.get("total_rss", 0), stat.get("total_cache", 0)
        inactive_file = stat.get("total_inactive_file", 0)
    else:
        mem = d["unified"]
        raw = (mem / "memory.max").read_text().strip()
        limit = None if raw == "max" else int(raw)
        oom = _keyed(mem / "memory.events").get("oom_kill", 0)
        current = _int(mem / "memory.current")
        peak = _int(mem / "memory.peak") if (mem / "memory.peak").exists() else current
        stat = _keyed(mem / "memory.stat")
        anon, file = stat.get("anon", 0), stat.get("file", 0)
        inactive_file = stat.get("inactive_file", 0)
    if "cpuacct" in d:
        cpu_seconds = _int(d["cpuacct"] / "cpuacct.usage") / 1e9
        quota, period = _int(d["cpu"] / "cpu.cfs_quota_us"), _int(d["cpu"] / "cpu.cfs_period_us")
        cpu_limit = None if quota < 0 else quota / period
    else:
        cpu_seconds = _keyed(d["unified"] / "cpu.stat")["usage_usec"] / 1e6
        q, p = (d["unified"] / "cpu.max").read_text().split()
        cpu_limit = None if q == "max" else int(q) / int(p)
    return Usage(current, peak, limit, cpu_seconds, cpu_limit, oom, anon, file, inactive_file)
