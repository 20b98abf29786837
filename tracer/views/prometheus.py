"""`memtrace export`: Prometheus metrics from the exact in-kernel counters, with bounded labels."""

from __future__ import annotations

import errno
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, TextIO

from ..errors import ListenError
from ..model.failures import Failure, Ready, Snapshot
from ..model.probes import ATTACHED, attached_count
from ..run import SnapshotRequests, Source, run
from .terminal import inert

OTHER = "other"  # the label value that stands for everything cut by a cardinality bound
GROWING_SERIES = 5  # the growing gauge's samples: the processes growing fastest, ranked


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenError(f"--listen wants HOST:PORT, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


@dataclass
class LabelBound:
    """Keeps at most `limit` distinct values of one label; the rest become "other"."""

    name: str
    limit: int
    seen: set[str] = field(default_factory=set)
    cut: set[str] = field(default_factory=set)

    def __call__(self, value: Optional[str]) -> str:
        # inert: a cgroup or comm is the traced system's choice, and a lone surrogate (a
        # directory name that is not UTF-8) would make every scrape fail to encode
        v = inert(value) if value else "unknown"
        if v in self.seen:
            return v
        if len(self.seen) < self.limit:
            self.seen.add(v)
            return v
        self.cut.add(v)
        return OTHER


class MetricsState:
    """What a scrape reports: the latest exact totals, causes of the events seen, probes.

    The tracing loop adds failures; the HTTP server's thread builds the families. They share
    the label bounds and the causes under one lock. The source itself is only ever read by
    the loop: a scrape asks it for a fresh snapshot through `requests` (run.SnapshotRequests),
    so a scrape after N failures says N."""

    def __init__(self, requests: SnapshotRequests, max_cgroups: int, per_process: bool,
                 max_processes: int):
        self.requests = requests
        self.lock = threading.Lock()
        self.ready: Optional[Ready] = None
        self.cgroup = LabelBound("cgroup", max_cgroups)
        self.process = LabelBound("comm", max_processes) if per_process else None
        self.causes: dict[tuple[str, ...], int] = {}

    def add(self, failures: list[Failure]) -> None:
        with self.lock:
            for f in failures:
                if f.kind == "memcg" or f.opportunistic and f.kind != "syscall":
                    continue
                key: tuple[str, ...] = (f.kind, f.syscall or "", f.cause or "unknown",
                                        self.cgroup(f.cgroup))
                if self.process is not None:
                    key += (self.process(f.comm),)
                self.causes[key] = self.causes.get(key, 0) + 1

    def refresh(self) -> Snapshot:
        with self.lock:
            if self.ready is None:
                return Snapshot()
        return self.requests.ask()


class MemtraceCollector:
    """A prometheus_client collector that builds every family at scrape time."""

    def __init__(self, state: MetricsState):
        self.state = state

    def describe(self) -> list[Any]:
        return []  # families are only known at scrape time

    def collect(self) -> Iterator[Any]:
        snap = self.state.refresh()  # outside the lock: the loop may be adding failures
        with self.state.lock:
            families = self._families(snap)
        yield from families

    def _families(self, snap: Snapshot) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.state
        out: list[Any] = []
        extra = ["comm"] if st.process is not None else []

        def proc(comm: str) -> list[str]:
            return [st.process(comm)] if st.process is not None else []

        sys_f = CounterMetricFamily(
            "memtrace_syscall_failures", "Syscalls that failed with ENOMEM (any syscall) or "
            "EAGAIN (memory syscalls), and brk's silent failures, exact in-kernel counts.",
            labels=["syscall", "errno", "cgroup", *extra])
        agg: dict[tuple[str, ...], int] = {}
        for c in snap.syscalls:
            key = (c.syscall, c.errno or "none", st.cgroup(c.cgroup), *proc(c.comm))
            agg[key] = agg.get(key, 0) + c.count
        for key, n in sorted(agg.items()):
            sys_f.add_metric(list(key), n)
        out.append(sys_f)

        cause_f = CounterMetricFamily(
            "memtrace_failures_by_cause", "Allocation failures by diagnosed cause, from the "
            "events received (dropped events are in memtrace_dropped_events_total).",
            labels=["kind", "syscall", "cause", "cgroup", *extra])
        for key, n in sorted(st.causes.items()):
            cause_f.add_metric(list(key), n)
        out.append(cause_f)

        page_f = CounterMetricFamily(
            "memtrace_page_alloc_failures", "Page allocator failures (no fallback, or their "
            "syscall failed), exact in-kernel counts.", labels=["order", "gfp_class", "cgroup"])
        opp_f = CounterMetricFamily(
            "memtrace_page_alloc_opportunistic", "Opportunistic page allocation attempts that "
            "failed and had a fallback (THP, large folios): not failures.",
            labels=["order", "gfp_class", "cgroup"])
        simple = {k: CounterMetricFamily(f"memtrace_{k}_failures", f"{k} allocation failures, "
                                         "exact in-kernel counts.", labels=["cgroup"])
                  for k in ("slab", "vmalloc", "percpu")}
        oom_f = CounterMetricFamily("memtrace_oom_kills", "OOM kills, by the victim's memory "
                                    "cgroup.", labels=["cgroup"])
        sums: dict[tuple[str, ...], int] = {}
        for k in snap.kernel:
            cg = st.cgroup(k.cgroup)
            if k.kind == "page_alloc":
                name = "opp" if k.opportunistic else "page"
                key = (name, str(k.order or 0), k.gfp.label if k.gfp is not None else "none", cg)
            else:
                key = (k.kind, cg)
            sums[key] = sums.get(key, 0) + k.count
        for key, n in sorted(sums.items()):
            if key[0] == "page":
                page_f.add_metric(list(key[1:]), n)
            elif key[0] == "opp":
                opp_f.add_metric(list(key[1:]), n)
            elif key[0] == "oom_kill":
                oom_f.add_metric([key[1]], n)
            elif key[0] in simple:
                simple[key[0]].add_metric([key[1]], n)
        out.append(page_f)
        out.append(opp_f)
        out.extend(simple.values())
        out.append(oom_f)

        out.append(_growing_family(snap, st))

        memcg_f = CounterMetricFamily("memtrace_memcg_events", "Memory cgroup limit events "
                                      "since memtrace started (v2 memory.events, v1 failcnt "
                                      "and oom_control).", labels=["cgroup", "event"])
        events: dict[tuple[str, str], int] = {}  # cgroups folded into "other" add up
        for m in snap.memcg:
            key = (st.cgroup(m.cgroup), m.event)
            events[key] = events.get(key, 0) + m.count
        for (cgroup, event), n in sorted(events.items()):
            memcg_f.add_metric([cgroup, event], n)
        out.append(memcg_f)

        drop_f = CounterMetricFamily("memtrace_dropped_events", "Event details lost, by reason "
                                     "(totals stay exact).", labels=["reason"])
        for reason, n in sorted(snap.drops.items()):
            drop_f.add_metric([reason], n)
        out.append(drop_f)

        cut_f = CounterMetricFamily("memtrace_label_values_cut", "Distinct label values "
                                    "folded into \"other\" by a cardinality bound.",
                                    labels=["label"])
        cut_f.add_metric(["cgroup"], len(st.cgroup.cut))
        if st.process is not None:
            cut_f.add_metric(["comm"], len(st.process.cut))
        out.append(cut_f)

        probe_f = GaugeMetricFamily("memtrace_probe_attached", "1 when the probe is attached "
                                    "(adaptive ones only while armed).", labels=["probe", "via"])
        probes = snap.probes or (st.ready.probes if st.ready is not None else ())
        if probes:
            for p in probes:
                probe_f.add_metric([p.name, p.via or "none"], 1 if p.status == ATTACHED else 0)
        out.append(probe_f)
        out.extend(_cost_families(snap))
        return out


def _growing_family(snap: Snapshot, st: MetricsState) -> Any:
    """The processes growing fastest as a gauge: at most GROWING_SERIES samples, by rank (1
    the fastest) and cgroup; pid and comm only with --per-process, like every process label."""
    from prometheus_client.core import GaugeMetricFamily

    per_process = ["pid", "comm"] if st.process is not None else []
    fam = GaugeMetricFamily(
        "memtrace_growing_bytes_per_second", "Resident memory growth of the processes "
        "growing fastest, in bytes per second over the growth window, rank 1 the fastest "
        f"(top {GROWING_SERIES}; nothing with --no-growth).",
        labels=["rank", "cgroup", *per_process])
    fastest = sorted(snap.growing, key=lambda g: -g.bytes_per_second)[:GROWING_SERIES]
    for rank, g in enumerate(fastest, 1):
        labels = [str(rank), st.cgroup(g.cgroup)]
        if st.process is not None:
            labels += [str(g.pid), st.process(g.comm)]
        fam.add_metric(labels, g.bytes_per_second)
    return fam


def _cost_families(snap: Snapshot) -> list[Any]:
    """memtrace's own probes: the kernel's BPF run-time stats for its programs, as counters
    (samples only while the kernel counts them: `memtrace export --probe-cost`)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    runs_f = CounterMetricFamily(
        "memtrace_probe_runs", "Runs of memtrace's own BPF programs by probe, as the kernel "
        "counts them while BPF run-time stats are on (memtrace export --probe-cost).",
        labels=["probe"])
    seconds_f = CounterMetricFamily(
        "memtrace_probe_run_seconds", "Time spent in memtrace's own BPF programs by probe "
        "(BPF run-time stats; memtrace export --probe-cost).", labels=["probe"])
    on_f = GaugeMetricFamily("memtrace_probe_stats_enabled", "1 while the kernel counts the "
                             "runs and run time of memtrace's BPF programs.")
    cost = snap.cost
    counting = cost is not None and cost.counting
    if cost is not None and counting:
        per_probe: dict[str, tuple[int, int]] = {}
        for p in cost.probes:  # one sample per probe, however many programs it has
            runs, ns = per_probe.get(p.probe, (0, 0))
            per_probe[p.probe] = (runs + p.runs, ns + p.run_time_ns)
        for name, (runs, ns) in sorted(per_probe.items()):
            runs_f.add_metric([inert(name)], runs)
            seconds_f.add_metric([inert(name)], ns / 1e9)
    on_f.add_metric([], 1 if counting else 0)
    return [runs_f, seconds_f, on_f]


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ListenError(f"{host}:{port} is already in use (--listen HOST:PORT)") from None
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    finally:
        s.close()


def run_export(source: Source, *, listen: str, max_cgroups: int = 50, per_process: bool = False,
               max_processes: int = 50, duration: Optional[float] = None,
               log: Optional[Any] = None, err: TextIO = sys.stderr) -> Snapshot:
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_listen(listen)
    _check_port(host, port)
    requests = SnapshotRequests()
    state = MetricsState(requests, max_cgroups, per_process, max_processes)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemtraceCollector(state))  # type: ignore[arg-type]

    def say(msg: str) -> None:
        (log or (lambda m: print(m, file=err, flush=True)))(msg)

    server: list[Any] = []

    def on_ready(r: Ready) -> None:
        with state.lock:
            state.ready = r
        srv = start_http_server(port, addr=host, registry=registry)
        server.append(srv)
        attached = attached_count(r.probes)
        say(f"memtrace export: {attached}/{len(r.probes)} probes attached; metrics on "
            f"http://{host}:{port}/metrics")

    def on_summary(s: Snapshot) -> None:
        say(f"memtrace export: stopped after {sum(c.count for c in s.syscalls)} syscall "
            "failures")

    try:
        return run(source, duration=duration, on_ready=on_ready, on_failures=state.add,
                   on_summary=on_summary, requests=requests)
    finally:
        for item in server:
            srv = item[0] if isinstance(item, tuple) else item
            try:
                srv.shutdown()
            except Exception:
                pass
