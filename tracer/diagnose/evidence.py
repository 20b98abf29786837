"""The evidence a diagnosis looks at besides the failure: host and cgroup state, sampled
right after the failure (briefly cached, since failures come in bursts)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..host.cgroups import CgroupResolver
from ..host.state import CgroupState, HostState, range_mapped, read_cgroup_state, read_host_state
from ..model.failures import Failure
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

    def evidence_for(self, f: Failure) -> Evidence:
        mapped = None
        if f.kind == "syscall" and f.syscall in RANGE_SYSCALLS and "addr" in f.args:
            mapped = range_mapped(f.pid, int(f.args["addr"]), request_bytes(f))
        return Evidence(self.host(), self.cgroup(f.cgroup), mapped)
