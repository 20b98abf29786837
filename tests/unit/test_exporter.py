"""The Prometheus exporter's families, built from a fake source: exact counts, bounded labels."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, READY, SNAPSHOT
from tracer.errors import ListenError
from tracer.run import FakeSource
from tracer.views.prometheus import LabelBound, MemtraceCollector, MetricsState, parse_listen

pytestmark = pytest.mark.unit


def scrape(state: MetricsState) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MemtraceCollector(state))  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def state(max_cgroups: int = 50, per_process: bool = False) -> MetricsState:
    src = FakeSource(READY, snapshots=[SNAPSHOT])
    st = MetricsState(src, max_cgroups, per_process, 50)
    st.ready = READY
    return st


def test_exact_counters_with_help():
    text = scrape(state())
    assert "# HELP memtrace_syscall_failures_total" in text
    assert 'memtrace_syscall_failures_total{cgroup="/box",errno="ENOMEM",syscall="mmap"} 3.0' in text
    assert 'memtrace_syscall_failures_total{cgroup="/box",errno="none",syscall="brk"} 1.0' in text
    assert ('memtrace_page_alloc_failures_total{cgroup="/tight",gfp_class="GFP_KERNEL_ACCOUNT",'
            'order="8"} 1.0') in text
    assert ('memtrace_page_alloc_opportunistic_total{cgroup="/",gfp_class="GFP_TRANSHUGE_LIGHT",'
            'order="9"} 50.0') in text
    assert 'memtrace_oom_kills_total{cgroup="/box"} 1.0' in text
    assert 'memtrace_dropped_events_total{reason="ringbuf_full"} 2.0' in text
    assert 'memtrace_probe_attached{probe="percpu",via="none"} 0.0' in text
    assert "pid=" not in text  # no per-process labels by default


def test_causes_from_events():
    st = state()
    st.add([dataclasses.replace(MMAP_FAIL, cause="overcommit"),
            dataclasses.replace(FCNTL_FAIL, cause="memcg_limit")])
    text = scrape(st)
    assert ('memtrace_failures_by_cause_total{cause="overcommit",cgroup="/box",kind="syscall",'
            'syscall="mmap"} 1.0') in text


def test_cgroup_cardinality_is_bounded_and_the_cut_counted():
    text = scrape(state(max_cgroups=1))
    assert 'cgroup="other"' in text
    assert 'memtrace_label_values_cut_total{label="cgroup"} 2.0' in text


def test_per_process_labels_are_opt_in():
    assert 'comm="leaky"' in scrape(state(per_process=True))


def test_label_bound():
    b = LabelBound("cgroup", 2)
    assert [b(x) for x in ("/a", "/b", "/c", "/a", None)] == ["/a", "/b", "other", "/a", "other"]
    assert b.cut == {"/c", "unknown"}


@pytest.mark.parametrize("text, ok", [("127.0.0.1:9464", ("127.0.0.1", 9464)),
                                      ("[::1]:80", ("::1", 80)), (":9000", ("127.0.0.1", 9000)),
                                      ("9464", None), ("host:0", None), ("host:x", None)])
def test_parse_listen(text, ok):
    if ok is None:
        with pytest.raises(ListenError):
            parse_listen(text)
    else:
        assert parse_listen(text) == ok
