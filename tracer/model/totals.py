"""Pure aggregation of model values: totals by process, cgroup, syscall and order; the
dashboard's state; totals rebuilt from failure events or from a summary's counts."""

from __future__ import annotations

import collections
from typing import Any, Deque, Iterable, Iterator, Mapping, Optional, Sequence

from .decode import Gfp, parse_gfp
from .failures import (
    KINDS,
    Failure,
    KernelCount,
    MemcgCount,
    Ready,
    Snapshot,
    SyscallCount,
)


def is_failure_count(c: KernelCount) -> bool:
    """Opportunistic attempts with a fallback are counted apart, never as failures."""
    return not c.opportunistic


def _add(d: dict, key: Any, n: int) -> None:
    d[key] = d.get(key, 0) + n


def failures_by_kind(s: Snapshot) -> dict[str, int]:
    out = {k: 0 for k in KINDS}
    for c in s.syscalls:
        out["syscall"] += c.count
    for k in s.kernel:
        if is_failure_count(k):
            _add(out, k.kind, k.count)
    for m in s.memcg:
        out["memcg"] += m.count
    return out


def opportunistic_by_kind(s: Snapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in s.kernel:
        if k.opportunistic:
            _add(out, k.kind, k.count)
    return out


def total_failures(s: Snapshot) -> int:
    """Allocation failures: syscalls, kernel allocations, OOM kills. Memory cgroup limit
    hits are counted apart (one failed allocation can hit a limit many times)."""
    return sum(n for kind, n in failures_by_kind(s).items() if kind != "memcg")


def memcg_limit_hits(s: Snapshot) -> list[tuple[str, str, int]]:
    """(cgroup, event, increase since start) largest first."""
    return sorted(((m.cgroup, m.event, m.count) for m in s.memcg), key=lambda t: (-t[2], t[0]))


def failures_by_process(s: Snapshot) -> list[tuple[int, str, int]]:
    """(pid, comm, failures) largest first; opportunistic kernel attempts excluded."""
    d: dict[tuple[int, str], int] = {}
    for c in s.syscalls:
        _add(d, (c.pid, c.comm), c.count)
    for k in s.kernel:
        if is_failure_count(k):
            _add(d, (k.pid, k.comm), k.count)
    return sorted(((p, c, n) for (p, c), n in d.items()), key=lambda t: (-t[2], t[0]))


def failures_by_cgroup(s: Snapshot) -> list[tuple[str, int]]:
    d: dict[str, int] = {}
    for c in s.syscalls:
        _add(d, c.cgroup or "?", c.count)
    for k in s.kernel:
        if is_failure_count(k):
            _add(d, k.cgroup or "?", k.count)
    return sorted(d.items(), key=lambda t: (-t[1], t[0]))


def failures_by_syscall(s: Snapshot) -> list[tuple[str, str, int]]:
    """(syscall, errno name or "brk failed", count) largest first."""
    d: dict[tuple[str, str], int] = {}
    for c in s.syscalls:
        _add(d, (c.syscall, c.errno or "no errno"), c.count)
    return sorted(((a, b, n) for (a, b), n in d.items()), key=lambda t: (-t[2], t[0]))


def page_alloc_by_order(s: Snapshot, opportunistic: Optional[bool] = False
                        ) -> list[tuple[int, str, int]]:
    """(order, gfp, count) for page allocation failures, ordered by order then count."""
    d: dict[tuple[int, str], int] = {}
    for k in s.kernel:
        if k.kind != "page_alloc":
            continue
        if opportunistic is not None and k.opportunistic != opportunistic:
            continue
        _add(d, (k.order or 0, str(k.gfp) if k.gfp is not None else "?"), k.count)
    return sorted(((o, g, n) for (o, g), n in d.items()), key=lambda t: (t[0], -t[2], t[1]))


def summary_counts(s: Snapshot) -> dict[str, Any]:
    """The `counts` object of the JSON summary: exact in-kernel totals."""
    by_syscall: dict[str, dict[str, int]] = {}
    for name, err, n in failures_by_syscall(s):
        by_syscall.setdefault(name, {})[err] = n
    by_order: dict[str, dict[str, int]] = {}
    for order, gfp, n in page_alloc_by_order(s, opportunistic=False):
        by_order.setdefault(str(order), {})[gfp] = n
    opp_by_order: dict[str, int] = {}
    for order, _gfp, n in page_alloc_by_order(s, opportunistic=True):
        _add(opp_by_order, str(order), n)
    memcg: dict[str, dict[str, int]] = {}
    for m in s.memcg:
        memcg.setdefault(m.cgroup, {})[m.event] = m.count
    return {
        "total": total_failures(s),
        "by_kind": failures_by_kind(s),
        "opportunistic": opportunistic_by_kind(s),
        "by_syscall": by_syscall,
        "by_process": {str(p): {"comm": c, "failures": n} for p, c, n in failures_by_process(s)},
        "by_cgroup": dict(failures_by_cgroup(s)),
        "page_alloc_by_order": by_order,
        "opportunistic_page_alloc_by_order": opp_by_order,
        "memcg_events": memcg,
    }


class Dashboard:
    """What the live views show: the latest exact totals plus the most recent events."""

    def __init__(self, recent: int = 200):
        self.ready: Optional[Ready] = None
        self.snapshot = Snapshot()
        self.recent: Deque[Failure] = collections.deque(maxlen=recent)
        self.events_seen = 0
        self.started: Optional[float] = None
        self.by_cause: dict[str, int] = {}  # from the events received (detail, not totals)
        self.findings: dict[str, Failure] = {}  # latest diagnosed failure per process/cgroup
        self.growth = False  # growth is tracked: the growing panel shows, empty or not

    def add(self, failures: Iterable[Failure]) -> None:
        for f in failures:
            self.recent.append(f)
            self.events_seen += 1
            if f.cause:
                _add(self.by_cause, f.cause, 1)
                who = f"pid {f.pid} ({f.comm})" if f.pid else f"cgroup {f.cgroup}"
                self.findings.pop(who, None)
                self.findings[who] = f  # re-inserted: newest last
                while len(self.findings) > 50:
                    self.findings.pop(next(iter(self.findings)))

    def latest_findings(self, n: int) -> list[tuple[str, Failure]]:
        return list(self.findings.items())[-n:][::-1]

    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def latest(self, n: int) -> Sequence[Failure]:
        return list(self.recent)[-n:]


class Tally:
    """Totals built from failure events, e.g. a recording's failure lines. Every kernel
    failure event is a failure (an opportunistic attempt only becomes an event when the
    syscall it happened in failed); attempts that never did are not in events at all."""

    def __init__(self) -> None:
        self._syscalls: dict[tuple[int, str, Optional[str], str, Optional[str]], int] = {}
        self._kernel: dict[tuple[int, str, Optional[str], str, Optional[int], Optional[Gfp]],
                           int] = {}
        self._memcg: dict[tuple[str, str], int] = {}
        self.events = 0

    def add(self, f: Failure) -> None:
        self.events += 1
        if f.kind == "syscall":
            key = (f.pid, f.comm, f.cgroup, f.syscall or "?", f.errno)
            self._syscalls[key] = self._syscalls.get(key, 0) + 1
        elif f.kind == "memcg":
            event, increase = f.detail.get("event"), f.detail.get("increase")
            if isinstance(event, str) and isinstance(increase, int):
                mkey = (f.cgroup or "?", event)
                self._memcg[mkey] = self._memcg.get(mkey, 0) + int(increase)
        else:
            kkey = (f.pid, f.comm, f.cgroup, f.kind,
                    f.order if f.kind == "page_alloc" else None,
                    f.gfp if f.kind in ("page_alloc", "slab") else None)
            self._kernel[kkey] = self._kernel.get(kkey, 0) + 1

    def snapshot(self, drops: Optional[Mapping[str, int]] = None) -> Snapshot:
        return Snapshot(
            tuple(SyscallCount(p, c, cg, s, e, n) for (p, c, cg, s, e), n in self._syscalls.items()),
            tuple(KernelCount(p, c, cg, k, o, g, False, n)
                  for (p, c, cg, k, o, g), n in self._kernel.items()),
            tuple(MemcgCount(cg, ev, n) for (cg, ev), n in self._memcg.items()),
            dict(drops or {}))


def _pair(columns: Sequence[list[tuple[Any, int]]], fillers: Sequence[Any]
          ) -> Iterator[tuple[tuple[Any, ...], int]]:
    """Rows (one key per column, count) whose sums per column give back each column's
    counts (the north-west corner rule); a column summing short is padded with its filler."""
    cols = [[(k, n) for k, n in col if n > 0] for col in columns]
    total = max((sum(n for _, n in c) for c in cols), default=0)
    for c, filler in zip(cols, fillers):
        short = total - sum(n for _, n in c)
        if short:
            c.append((filler, short))
    idx = [0] * len(cols)
    left = [c[0][1] if c else 0 for c in cols]
    while total > 0:
        m = min(left)
        yield tuple(c[i][0] for c, i in zip(cols, idx)), m
        total -= m
        for j, c in enumerate(cols):
            left[j] -= m
            if left[j] == 0 and idx[j] + 1 < len(c):
                idx[j] += 1
                left[j] = c[idx[j]][1]


def snapshot_from_counts(counts: Mapping[str, Any],
                         dropped: Optional[Mapping[str, int]] = None) -> Snapshot:
    """A Snapshot whose tables are a summary's counts (model.summary_counts gives them back).

    A summary keeps the tables apart (by process, by cgroup, by syscall or kind, by order),
    not which process made which syscall fail: the rows pair the tables up in order, so
    each table is exact and only the pairing between tables is made up."""
    procs = [((int(pid), v["comm"]), v["failures"]) for pid, v in counts["by_process"].items()]
    cgroups = [(None if cg == "?" else cg, n) for cg, n in counts["by_cgroup"].items()]
    what: list[tuple[tuple[str, Any, Any], int]] = []  # (kind, syscall or order, errno or gfp)
    for name, errs in counts["by_syscall"].items():
        for err, n in errs.items():
            what.append((("syscall", name, None if err == "no errno" else err), n))
    for order, gfps in counts["page_alloc_by_order"].items():
        for gfp, n in gfps.items():
            what.append((("page_alloc", int(order), None if gfp == "?" else parse_gfp(gfp)), n))
    for kind, n in counts["by_kind"].items():
        if kind not in ("syscall", "page_alloc", "memcg"):
            what.append(((kind, None, None), n))
    syscalls: list[SyscallCount] = []
    kernel: list[KernelCount] = []
    for ((pid, comm), cgroup, (kind, a, b)), n in _pair(
            [procs, cgroups, what], [(0, "?"), None, ("unknown", None, None)]):
        if kind == "syscall":
            syscalls.append(SyscallCount(pid, comm, cgroup, a, b, n))
        else:
            kernel.append(KernelCount(pid, comm, cgroup, kind, a, b, False, n))
    for order, n in counts["opportunistic_page_alloc_by_order"].items():
        if n:
            kernel.append(KernelCount(0, "", None, "page_alloc", int(order), None, True, n))
    for kind, n in counts["opportunistic"].items():
        if kind != "page_alloc" and n:
            kernel.append(KernelCount(0, "", None, kind, None, None, True, n))
    memcg = tuple(MemcgCount(cg, ev, n) for cg, evs in counts["memcg_events"].items()
                  for ev, n in evs.items())
    return Snapshot(tuple(syscalls), tuple(kernel), memcg, dict(dropped or {}))
