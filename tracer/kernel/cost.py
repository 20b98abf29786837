"""What memtrace's own BPF programs cost: the kernel's BPF run-time stats, read per probe.

The kernel counts runs and run time of every BPF program only while BPF run-time stats are
on. memtrace turns them on with BPF_ENABLE_STATS, which holds them on for as long as one fd
stays open: closing it, or memtrace dying, turns them off again (unless someone else holds
them on too, e.g. the kernel.bpf_stats_enabled sysctl). The sysctl itself is never written.
The counting is not free: two clock reads per program run (about 150 ns per syscall on a
2-core VM), so only the commands that show the cost turn it on."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ..model.probes import ATTACHED, ProbeCost, ProbeRun, ProbeStatus
from .probes import PLAN

# The bpf(2) syscall's number where Python's os module does not say (it never does).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "loongarch64": 280,
            "ppc64le": 361, "ppc64": 361, "s390x": 351, "i686": 357, "i386": 357,
            "armv7l": 386}
_BPF_ENABLE_STATS = 32  # enum bpf_cmd (include/uapi/linux/bpf.h), since Linux 5.8
_BPF_STATS_RUN_TIME = 0  # enum bpf_stats_type
_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


class RunTimeStats:
    """BPF run-time stats held on through one BPF_ENABLE_STATS fd (close-on-exec)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def enable(cls) -> tuple[Optional["RunTimeStats"], str]:
        """(the holder, "") when the kernel now counts, else (None, why not)."""
        nr = _SYS_BPF.get(platform.machine())
        if nr is None:
            return None, f"no bpf(2) syscall number known for {platform.machine()}"
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.create_string_buffer(8)  # union bpf_attr: enable_stats.type, zero padded
        ctypes.c_uint32.from_buffer(attr).value = _BPF_STATS_RUN_TIME
        fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(_BPF_ENABLE_STATS), attr,
                          ctypes.c_uint(len(attr)))
        if fd >= 0:
            return cls(int(fd)), ""
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            return None, "this kernel cannot turn BPF run-time stats on for a process (< 5.8)"
        return None, f"BPF run-time stats could not be turned on ({os.strerror(err)})"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def sysctl_counting(path: str = _SYSCTL) -> bool:
    """kernel.bpf_stats_enabled: someone turned the stats on for everyone."""
    try:
        with open(path) as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return False


def fdinfo(fd: int) -> dict[str, str]:
    """/proc/self/fdinfo/<fd> as a dict (a BPF program's shows prog_id, run_time_ns, run_cnt)."""
    out: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Program:
    probe: str  # the probe's name in the plan, or the program's own
    fd: int
    prog_id: int  # checked at each reading: the fd must still be this program


def probe_names(statuses: Iterable[ProbeStatus]) -> dict[str, str]:
    """BPF function name -> probe name, for the probes that attached."""
    attached = {(s.name, s.via, s.reason) for s in statuses if s.status == ATTACHED}
    out = {}
    for spec in PLAN:
        for cand in spec.candidates:
            if cand.fn and (spec.name, cand.via, cand.target) in attached:
                out[cand.fn] = spec.name
    return out


def programs(bpf: Any, statuses: Iterable[ProbeStatus]) -> tuple[Program, ...]:
    """Every program the BPF object loaded (bcc keeps their fds in `funcs`), named by probe."""
    names = probe_names(statuses)
    out = []
    for key, fn in getattr(bpf, "funcs", {}).items():
        fn_name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        fd = int(fn.fd)
        try:
            prog_id = int(fdinfo(fd).get("prog_id", -1))
        except (OSError, ValueError):
            continue
        out.append(Program(names.get(fn_name, fn_name), fd, prog_id))
    return tuple(sorted(out, key=lambda p: p.probe))


class CostMeter:
    """Reads the kernel's counters for memtrace's programs; with `enable`, holds BPF run-time
    stats on until close()."""

    def __init__(self, bpf: Any, statuses: Iterable[ProbeStatus], enable: bool) -> None:
        self.programs = programs(bpf, statuses)
        self.stats: Optional[RunTimeStats] = None
        self.note = "not measured (BPF run-time stats are off)"
        if enable:
            self.stats, why = RunTimeStats.enable()
            if self.stats is not None:
                self.note = ""
            elif why:
                self.note = why

    @property
    def counting(self) -> bool:
        return self.stats is not None or sysctl_counting()

    def read(self) -> ProbeCost:
        runs = []
        for p in self.programs:
            try:
                info = fdinfo(p.fd)
                if int(info.get("prog_id", -1)) != p.prog_id:
                    continue  # the fd is no longer this program
                runs.append(ProbeRun(p.probe, int(info.get("run_cnt", 0)),
                                     int(info.get("run_time_ns", 0))))
            except (OSError, ValueError):
                continue
        counting = self.counting
        return ProbeCost(at_ns=time.monotonic_ns(), counting=counting, probes=tuple(runs),
                         note="" if counting else self.note)

    def close(self) -> None:
        if self.stats is not None:
            self.stats.close()
            self.stats = None
