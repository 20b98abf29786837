"""memtrace's own cost from fake BPF run-time stats: rates, the dashboard's line, doctor's
table and the exporter's counters."""

from __future__ import annotations

import io
import os
import re
import socket
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from tests.unit.fixtures import READY, SNAPSHOT
from tracer import cli
from tracer.kernel import failures as live
from tracer.kernel.cost import fdinfo, probe_names, sysctl_counting
from tracer.model.failures import Filter, Ready, Snapshot, SyscallCount
from tracer.model.probes import (
    Examination,
    ProbeCost,
    ProbeRun,
    ProbeStatus,
    cost_rates,
)
from tracer.model.totals import Dashboard
from tracer.run import FakeSource, SnapshotRequests
from tracer.views.cost import CostWatch, cost_line, cost_rows, cpu_share, events
from tracer.views.dashboard import render, render_plain, summary_text
from tracer.views.doctor import render_doctor
from tracer.views.prometheus import MemtraceCollector, MetricsState
from tracer.views.top import run_top

pytestmark = pytest.mark.unit

S = 1_000_000_000  # ns per second


def reading(t_s: float, counting: bool = True, **probes: tuple[int, int]) -> ProbeCost:
    """A reading at t_s seconds: probe=(runs, run_time_ns)."""
    return ProbeCost(int(t_s * S), counting,
                     tuple(ProbeRun(name, r, ns) for name, (r, ns) in probes.items()),
                     "" if counting else "not measured (BPF run-time stats are off)")


BEFORE = reading(10, syscall_exit=(5_000_000, 200_000_000), page_alloc=(100_000, 6_000_000),
                 kmem_cache_alloc=(0, 0))
# Two seconds later: 2 M syscall exits at 45 ns, 40 k page allocations at 60 ns, no slab.
AFTER = reading(12, syscall_exit=(7_000_000, 290_000_000), page_alloc=(140_000, 8_400_000),
                kmem_cache_alloc=(0, 0))


def test_rates_between_two_readings():
    r = cost_rates(BEFORE, AFTER)
    assert r is not None
    assert r.seconds == 2.0
    by = {p.probe: p for p in r.probes}
    assert by["syscall_exit"].events_per_s == 1_000_000
    assert by["syscall_exit"].ns_per_event == 45.0
    assert by["syscall_exit"].cpu == pytest.approx(90_000_000 / (2 * S))
    assert by["page_alloc"].events_per_s == 20_000 and by["page_alloc"].ns_per_event == 60.0
    assert by["kmem_cache_alloc"].ns_per_event is None  # it never ran: no made-up cost
    assert r.events_per_s == 1_020_000
    assert r.cpu == pytest.approx((90_000_000 + 2_400_000) / (2 * S))
    assert [p.probe for p in r.probes] == ["syscall_exit", "page_alloc", "kmem_cache_alloc"]


def test_no_rates_without_two_counted_readings_in_order():
    assert cost_rates(None, AFTER) is None
    assert cost_rates(BEFORE, None) is None
    assert cost_rates(AFTER, BEFORE) is None  # backwards in time
    assert cost_rates(BEFORE, BEFORE) is None  # no time passed
    off = reading(12, counting=False, syscall_exit=(7_000_000, 290_000_000))
    assert cost_rates(BEFORE, off) is None


def test_a_new_program_counts_from_zero_and_a_reloaded_one_is_left_out():
    after = reading(12, syscall_exit=(4_000_000, 1_000), oom_kill=(2, 2_000))
    r = cost_rates(BEFORE, after)
    assert r is not None
    assert [(p.probe, p.events_per_s, p.ns_per_event) for p in r.probes] == [
        ("oom_kill", 1.0, 1000.0)]  # syscall_exit went backwards: not the same program


@pytest.mark.parametrize("rate, text", [(0, "0"), (12.4, "12"), (999, "999"), (1500, "1.5 k"),
                                        (12_500, "12 k"), (850_000, "850 k"),
                                        (1_234_567, "1.2 M")])
def test_event_rates_are_short(rate, text):
    assert events(rate) == text


@pytest.mark.parametrize("share, text", [(0, "0%"), (0.0031, "0.31%"), (0.123, "12%"),
                                         (0.000045, "0.0045%"), (1e-9, "<0.001%")])
def test_cpu_share_has_two_significant_digits(share, text):
    assert cpu_share(share) == text


def test_the_dashboard_line():
    assert cost_line(cost_rates(BEFORE, AFTER), AFTER) == (
        "cost: 4.6% of one CPU, 1.0 M events/s, syscall_exit 45 ns/event (1.0 M/s), "
        "page_alloc 60 ns/event (20 k/s)")
    assert cost_line(None, AFTER) == "cost: measuring..."
    off = reading(12, counting=False)
    assert cost_line(None, off) == "cost: not measured (BPF run-time stats are off)"
    assert cost_line(None, None) is None  # a replay: no line at all


def test_cost_watch_rates_the_last_interval_and_the_whole_run():
    watch = CostWatch()
    assert watch.line() is None and watch.summary() is None
    watch.update(BEFORE)
    assert watch.line() == "cost: measuring..."
    watch.update(AFTER)
    watch.update(AFTER)  # the same reading again (a scrape and a tick): no zero interval
    later = reading(22, syscall_exit=(8_000_000, 300_000_000), page_alloc=(140_000, 8_400_000))
    watch.update(later)
    # last interval: 1 M exits in 10 s at 10 ns; the whole run: 3 M in 12 s
    assert watch.line() is not None and "syscall_exit 10 ns/event (100 k/s)" in watch.line()
    summary = watch.summary()
    assert summary is not None and summary.startswith("cost over 12 s: ")
    assert "1.0 M events/s" not in summary and "syscall_exit 33 ns/event (250 k/s)" in summary


def test_cost_watch_starts_over_when_counting_stops():
    watch = CostWatch()
    watch.update(BEFORE)
    watch.update(reading(11, counting=False))
    assert watch.line() == "cost: not measured (BPF run-time stats are off)"
    watch.update(AFTER)
    assert watch.line() == "cost: measuring..."


def board() -> Dashboard:
    d = Dashboard()
    d.ready = READY
    d.update(Snapshot(syscalls=(SyscallCount(100, "leaky", "/box", "mmap", "ENOMEM", 3),),
                      cost=AFTER))
    return d


LINE = cost_line(cost_rates(BEFORE, AFTER), AFTER)


def test_the_dashboard_shows_the_line_under_the_footer():
    console = Console(record=True, width=160, force_terminal=True)
    console.print(render(board(), width=160, height=40, cost=LINE))
    lines = console.export_text().splitlines()
    footer = next(i for i, line in enumerate(lines) if line.startswith("dropped: "))
    assert lines[footer + 1].strip() == LINE
    console = Console(record=True, width=160, force_terminal=True)
    console.print(render(board(), width=160, height=40))
    assert "cost:" not in console.export_text()


def test_plain_dashboard_and_summary_carry_the_line():
    assert LINE is not None
    plain = render_plain(board(), cost=LINE)
    assert plain.isascii() and plain.rstrip("\n").endswith(LINE)
    assert summary_text(board(), cost="cost over 5 s: 0.1% of one CPU").rstrip("\n").endswith(
        "cost over 5 s: 0.1% of one CPU")
    assert "cost" not in render_plain(board())


def linear(k: int) -> Snapshot:
    """Reading k: k seconds in, 1000 syscall exits a second at 45 ns each."""
    return Snapshot(cost=reading(k, syscall_exit=(1000 * k, 45_000 * k)))


def test_top_shows_the_cost_from_the_source_snapshots():
    src = FakeSource(Ready("1", "6.18", ()), snapshots=[linear(k) for k in range(1, 400)])
    out = io.StringIO()
    run_top(src, duration=0.8, interval=0.2, out=out, terminal=False)
    text = out.getvalue()
    assert re.search(r"^cost over \d+ s: 0\.0045% of one CPU, 1\.0 k events/s, syscall_exit "
                     r"45 ns/event \(1\.0 k/s\)$", text, re.M), text


def test_the_filter_keeps_the_cost():
    snap = Snapshot(syscalls=(SyscallCount(1, "a", None, "mmap", "ENOMEM", 1),), cost=AFTER)
    assert Filter(pids=frozenset({2})).snapshot(snap).cost == AFTER


def scrape(snap: Snapshot) -> str:
    requests = SnapshotRequests()
    requests.close(snap)
    state = MetricsState(requests, 50, False, 50)
    state.ready = READY
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MemtraceCollector(state))  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def test_exporter_counters_per_probe():
    twice = ProbeCost(AFTER.at_ns, True, AFTER.probes + (ProbeRun("page_alloc", 10, 1000),))
    text = scrape(Snapshot(cost=twice))
    assert "# TYPE memtrace_probe_runs_total counter" in text
    assert "# TYPE memtrace_probe_run_seconds_total counter" in text
    assert 'memtrace_probe_runs_total{probe="syscall_exit"} 7e+06' in text
    assert 'memtrace_probe_run_seconds_total{probe="syscall_exit"} 0.29' in text
    # two programs of one probe are one sample: Prometheus rejects duplicate series
    assert 'memtrace_probe_runs_total{probe="page_alloc"} 140010.0' in text
    assert 'memtrace_probe_run_seconds_total{probe="page_alloc"} 0.008401' in text
    assert "memtrace_probe_stats_enabled 1.0" in text


def test_exporter_has_no_cost_samples_when_not_counting():
    for snap in (Snapshot(), Snapshot(cost=reading(1, counting=False, syscall_exit=(5, 5)))):
        text = scrape(snap)
        assert "memtrace_probe_stats_enabled 0.0" in text
        assert "memtrace_probe_runs_total{" not in text
        assert "memtrace_probe_run_seconds_total{" not in text


def exam(**kw) -> Examination:
    return Examination("6.18", (("root", "yes", ""),),
                       (ProbeStatus("syscall_exit", "attached", "raw_tp", "sys_exit"),), True,
                       **kw)


def test_doctor_shows_each_probe_cost():
    rates = cost_rates(BEFORE, AFTER)
    assert rates is not None
    assert cost_rows(rates)[0] == ("syscall_exit", "1.0 M", "45 ns", "4.5%")
    out = io.StringIO()
    assert render_doctor(exam(cost=rates, cost_note="over 2.0 s of this host's activity"),
                         out) == 0
    text = out.getvalue()
    assert "memtrace's own cost" in text and "over 2.0 s" in text
    row = next(line for line in text.splitlines() if "syscall_exit" in line and "45 ns" in line)
    assert "1.0 M" in row and "4.5%" in row
    assert "in all: 4.6% of one CPU, 1.0 M events/s (the kernel's BPF run-time stats, over 2.0 s" in text


def test_doctor_says_why_there_is_no_cost():
    out = io.StringIO()
    render_doctor(exam(cost_note="this kernel cannot turn BPF run-time stats on"), out)
    assert "memtrace's own cost: this kernel cannot turn BPF run-time stats on" in out.getvalue()


def test_probe_names_of_attached_programs():
    statuses = [ProbeStatus("syscall_exit", "attached", "raw_tp", "sys_exit"),
                ProbeStatus("page_alloc", "attached", "raw_tp", "mm_page_alloc"),
                ProbeStatus("kmalloc", "unavailable", None, "no tracepoint"),
                ProbeStatus("memcg_events", "attached", "poll", "cgroup memory counters")]
    assert probe_names(statuses) == {"mt_sys_exit": "syscall_exit",
                                     "mt_page_alloc": "page_alloc"}


def test_sysctl_and_fdinfo_readers(tmp_path):
    path = tmp_path / "bpf_stats_enabled"
    path.write_text("0\n")
    assert not sysctl_counting(str(path))
    path.write_text("1\n")
    assert sysctl_counting(str(path))
    assert not sysctl_counting(str(tmp_path / "missing"))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fdinfo(fd)["pos"] == "0"
    finally:
        os.close(fd)


class Recorded:
    """Stands in for LiveSource in the CLI: remembers its keyword arguments."""

    kwargs: dict[str, Any] = {}

    def __new__(cls, filt: Any = None, **kwargs: Any) -> Any:  # type: ignore[misc]
        Recorded.kwargs = kwargs
        return FakeSource(READY, batches=[], snapshots=[SNAPSHOT])


def test_only_top_and_export_probe_cost_turn_the_stats_on(monkeypatch, tmp_path):
    monkeypatch.setattr(live, "LiveSource", Recorded)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    export = ["export", "--listen", f"127.0.0.1:{port}"]
    for command, asked in ((["watch", "--json"], False), (["record", "-o", str(tmp_path / "r")],
                                                            False),
                           (["top"], True), (["top", "--no-probe-cost"], False),
                           (export, False), ([*export, "--probe-cost"], True)):
        Recorded.kwargs = {}
        r = CliRunner().invoke(cli.main, [*command, "--duration", "0"])
        assert r.exit_code == 0, (command, r.output)
        assert Recorded.kwargs.get("probe_cost", False) is asked, command
