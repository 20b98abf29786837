"""How close one process is to each limit that can make its next allocation fail (`memtrace explain`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ExplainError
from ..host.cgroups import find_hierarchies
from ..host.state import HostState, read_cgroup_state, read_host_state
from ..model.decode import format_bytes

DANGER = 0.9  # above this fraction of a limit, `explain` exits 1
_CAP_IPC_LOCK = 14


@dataclass(frozen=True)
class Headroom:
    name: str
    used: Optional[int]
    limit: Optional[int]  # None: unlimited
    unit: str  # "bytes" or "count"
    setting: str  # what raises it
    note: str = ""

    @property
    def fraction(self) -> Optional[float]:
        if self.used is None or not self.limit:
            return None
        return self.used / self.limit

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "used": self.used, "limit": self.limit, "unit": self.unit,
                "fraction": None if self.fraction is None else round(self.fraction, 4),
                "setting": self.setting, "note": self.note}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise ExplainError(f"no such process: {path.parent.name}") from None
    except PermissionError:
        raise ExplainError(f"cannot read {path}: run as root or as the process's owner") from None


def _status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _kb(status: dict[str, str], key: str) -> int:
    try:
        return int(status.get(key, "0 kB").split()[0]) * 1024
    except ValueError:
        return 0


def parse_limits(text: str) -> dict[str, Optional[int]]:
    """Soft limits from /proc/PID/limits, by name ("Max address space" -> bytes or None)."""
    out: dict[str, Optional[int]] = {}
    for line in text.splitlines()[1:]:
        name = line[:26].strip()
        soft = line[26:47].strip()
        out[name] = None if soft == "unlimited" else int(soft)
    return out


def _cgroup_headroom(proc: Path, pid: int) -> Optional[Headroom]:
    rels: dict[str, str] = {}
    for line in _read(proc / str(pid) / "cgroup").splitlines():
        hid, controllers, path = line.split(":", 2)
        rels["v2" if hid == "0" else controllers] = path
    for h in find_hierarchies():
        if not h.memory:
            continue
        rel = rels.get("v2") if h.version == 2 else next(
            (p for c, p in rels.items() if "memory" in c.split(",")), None)
        if rel is None:
            continue
        state = read_cgroup_state(h.mount / rel.lstrip("/"), rel, h.version)
        if state is None or state.usage is None:
            continue
        setting = f"memory.max of {rel}" if h.version == 2 else f"memory.limit_in_bytes of {rel}"
        return Headroom("cgroup memory", state.usage, state.limit, "bytes", setting,
                        f"cgroup {rel}")
    return None


def headroom(pid: int, proc: Path = Path("/proc"), host: Optional[HostState] = None
             ) -> list[Headroom]:
    status = _status(_read(proc / str(pid) / "status"))
    limits = parse_limits(_read(proc / str(pid) / "limits"))
    maps = _read(proc / str(pid) / "maps").count("\n")
    host = host or read_host_state(str(proc))
    cap_eff = int(status.get("CapEff", "0"), 16)
    rows = [
        Headroom("RLIMIT_AS", _kb(status, "VmSize"), limits.get("Max address space"), "bytes",
                 "ulimit -v / LimitAS= / prlimit --as"),
        Headroom("RLIMIT_DATA", _kb(status, "VmData"), limits.get("Max data size"), "bytes",
                 "ulimit -d / LimitDATA= / prlimit --data"),
        Headroom("RLIMIT_MEMLOCK", _kb(status, "VmLck") + _kb(status, "VmPin"),
                 None if cap_eff >> _CAP_IPC_LOCK & 1 else limits.get("Max locked memory"),
                 "bytes", "ulimit -l / LimitMEMLOCK= / CAP_IPC_LOCK",
                 "CAP_IPC_LOCK: not limited" if cap_eff >> _CAP_IPC_LOCK & 1 else ""),
        Headroom("vm.max_map_count", maps, host.max_map_count, "count",
                 "sysctl vm.max_map_count"),
    ]
    cg = _cgroup_headroom(proc, pid)
    if cg is not None:
        rows.append(cg)
    strict = host.overcommit_memory == 2
    rows.append(Headroom("CommitLimit", host.committed_as, host.commit_limit if strict else None,
                         "bytes", "vm.overcommit_ratio / vm.overcommit_kbytes / swap",
                         "strict overcommit" if strict else
                         f"vm.overcommit_memory={host.overcommit_memory}: no commit limit"))
    for zone, blocks in sorted(host.free_blocks.items()):
        largest = max((o for o, n in enumerate(blocks) if n), default=None)
        note = ("no free block" if largest is None else
                f"largest free block order {largest} ({format_bytes(host.page_size << largest)})")
        rows.append(Headroom(f"free blocks {zone}", None, None, "bytes",
                             "vm.compact_memory / vm.min_free_kbytes", note))
    return sorted(rows, key=lambda r: -(r.fraction if r.fraction is not None else -1))


def read_comm(pid: int, proc: Path = Path("/proc")) -> str:
    return _read(proc / str(pid) / "comm").strip()
