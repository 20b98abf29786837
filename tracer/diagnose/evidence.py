"""The evidence a diagnosis looks at besides the failure: what the kernel side captured at the
moment of failure where it did (the memory cgroup's charge), else host and cgroup state
sampled right after the failure (briefly cached, since failures come in bursts)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..host.cgroups import CgroupResolver
from ..host.state import CgroupState, HostState, range_mapped, read_cgroup_state, read_host_state
from ..model.failures import Failure, HostAtFailure
from .requests import RANGE_SYSCALLS, request_bytes


@dataclass(frozen=True)
class Evidence:
    """Everything the rules may look at besides the failure itself."""

    host: HostState
    cgroup: Optional[CgroupState] = None
    range_mapped: Optional[bool] = None  # for range syscalls: was the whole range mapped?



class EvidenceSampler:
    """Reads host and cgroup evidence at most every `ttl` seconds (failures come in bursts)."""

    def __init__(self, resolver: Optional[CgroupResolver] = None, ttl: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.resolver = resolver
        self.ttl = ttl
        self.clock = clock
        self._host: Optional[HostState] = None
        self._host_at = 0.0
        self._cgroups: dict[str, tuple[float, Optional[CgroupState]]] = {}

    def host(self) -> HostState:
        now = self.clock()
        if self._host is None or now - self._host_at > self.ttl:
            self._host = read_host_state()
            self._host_at = now
        return self._host

    def cgroup(self, path: Optional[str]) -> Optional[CgroupState]:
        if not path or self.resolver is None:
            return None
        h = self.resolver.memory_hierarchy
        if h is None:
            return None
        now = self.clock()
        hit = self._cgroups.get(path)
        if hit is None or now - hit[0] > self.ttl:
            state = read_cgroup_state(h.mount / path.lstrip("/"), path, h.version)
            self._cgroups[path] = (now, state)
            return state
        return hit[1]

    def captured_cgroup(self, f: Failure) -> Optional[CgroupState]:
        """The memory cgroup as the kernel side saw it at the failure: the cgroup whose limit
        was nearest (the task's own, or an ancestor whose limit applies to it as well)."""
        m = f.memcg
        if m is None:
            return None
        h = self.resolver.memory_hierarchy if self.resolver is not None else None
        version = h.version if h is not None else 2
        if m.nearest_limit is None:  # no limit anywhere above: the cgroup's own charge
            return CgroupState(f.cgroup or "?", version, m.usage, None)
        path = m.nearest_cgroup or (f.cgroup if m.nearest_levels_up == 0 else None)
        if path is None:
            path = f"{m.nearest_levels_up} level(s) above {f.cgroup or 'its cgroup'}"
        return CgroupState(path, version, m.nearest_usage, m.nearest_limit)

    def evidence_for(self, f: Failure) -> Evidence:
        captured = f.host
        mapped = captured.range_mapped if captured is not None else None
        if mapped is None and f.kind == "syscall" and f.syscall in RANGE_SYSCALLS \
                and "addr" in f.args:
            mapped = range_mapped(f.pid, int(f.args["addr"]), request_bytes(f))
        cgroup = self.captured_cgroup(f)
        if cgroup is None:
            cgroup = self.cgroup(f.cgroup)
        return Evidence(host_as_of(self.host(), captured), cgroup, mapped)


def host_as_of(host: HostState, captured: Optional[HostAtFailure]) -> HostState:
    """The host's state with what the kernel side captured at the failure put in place of
    what was read afterwards (free memory, watermarks, the huge page pool)."""
    if captured is None:
        return host
    changes: dict[str, Any] = {}
    if captured.free is not None:
        changes.update(mem_free=captured.free, min_watermark={
            "all zones, at the failure": (captured.min_watermark or 0) // host.page_size})
    if captured.free_blocks:
        changes["free_blocks"] = captured.free_blocks
    if captured.available is not None:
        changes["mem_available"] = captured.available
    if captured.hugepages_total is not None and captured.hugepage_size == host.hugepage_size:
        changes.update(hugepages_total=captured.hugepages_total,
                       hugepages_free=captured.hugepages_free or 0,
                       hugepages_rsvd=captured.hugepages_reserved or 0)
    return dataclasses.replace(host, **changes) if changes else host
