"""The Prometheus exporter's families, built from a fake source: exact counts, bounded labels."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
import time
import urllib.request
from typing import Optional

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, READY, SNAPSHOT
from tracer.errors import ListenError
from tracer.model.failures import Failure, MemcgCount, Ready, Snapshot, SyscallCount
from tracer.run import FakeSource, SnapshotRequests
from tracer.views.prometheus import (
    LabelBound,
    MemtraceCollector,
    MetricsState,
    parse_listen,
    run_export,
)

pytestmark = pytest.mark.unit


def scrape(state: MetricsState) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MemtraceCollector(state))  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def state(max_cgroups: int = 50, per_process: bool = False) -> MetricsState:
    requests = SnapshotRequests()
    requests.close(SNAPSHOT)  # no loop: every scrape gets this snapshot
    st = MetricsState(requests, max_cgroups, per_process, 50)
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


class OneThreadSource(FakeSource):
    """A source that counts what it handed out and notes any call from another thread than
    the one that started it (a live source's maps and state are not thread-safe)."""

    def __init__(self, n_batches: int, per_batch: int) -> None:
        super().__init__(READY, [[MMAP_FAIL] * per_batch for _ in range(n_batches)])
        self.owner: Optional[int] = None
        self.foreign: list[str] = []
        self.handed = 0

    def _check(self, what: str) -> None:
        if self.owner is None:
            self.owner = threading.get_ident()
        elif threading.get_ident() != self.owner:
            self.foreign.append(what)
        time.sleep(0.001)  # widen the window a racing reader would need

    def start(self) -> Ready:
        self._check("start")
        return super().start()

    def poll(self, timeout: float = 0.1) -> list[Failure]:
        self._check("poll")
        out = super().poll(min(timeout, 0.02))
        self.handed += len(out)
        return out

    def snapshot(self) -> Snapshot:
        self._check("snapshot")
        n = self.handed
        return Snapshot(syscalls=(SyscallCount(100, "leaky", "/box", "mmap", "ENOMEM", n),)
                        if n else ())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scraped_mmap_failures(text: str) -> int:
    m = re.search(r'^memtrace_syscall_failures_total\{[^}]*syscall="mmap"\} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


def test_concurrent_scrapes_while_failures_stream_in():
    """Scrapes from other threads never touch the source, and each one is exact: never
    less than what the source had handed out when the scrape began, never decreasing."""
    src = OneThreadSource(n_batches=120, per_batch=5)
    port = _free_port()
    seen: list[tuple[int, int]] = []  # (handed out before the scrape, scraped)
    errors: list[str] = []
    done = threading.Event()

    def scraper() -> None:
        url = f"http://127.0.0.1:{port}/metrics"
        while not done.is_set():
            before = src.handed
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    seen.append((before, _scraped_mmap_failures(r.read().decode())))
            except OSError as e:
                # refused before the server is up; reset once the source has handed out
                # everything and the server shuts down: both are fine, nothing else is
                if src.started and src.handed < 600 and "refused" not in str(e):
                    errors.append(str(e))
                time.sleep(0.01)

    threads = [threading.Thread(target=scraper) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        final = run_export(src, listen=f"127.0.0.1:{port}", duration=2.5, log=lambda m: None)
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert src.foreign == [], f"the source was read from another thread: {src.foreign[:5]}"
    assert errors == []
    assert len(seen) >= 10, "too few scrapes to say anything"
    assert all(scraped >= before for before, scraped in seen), seen
    assert final.syscalls[0].count == src.handed == 600
    assert max(scraped for _, scraped in seen) <= 600


def test_memcg_events_of_cgroups_folded_into_other_add_up():
    # two cgroups cut by the bound with the same event: one sample, their sum (Prometheus
    # rejects a scrape with two samples of the same series)
    requests = SnapshotRequests()
    requests.close(Snapshot(memcg=(MemcgCount("/a", "max", 2), MemcgCount("/b", "max", 3),
                                   MemcgCount("/c", "max", 4))))
    st = MetricsState(requests, 1, False, 50)
    st.ready = READY
    text = scrape(st)
    assert 'memtrace_memcg_events_total{cgroup="/a",event="max"} 2.0' in text
    assert 'memtrace_memcg_events_total{cgroup="other",event="max"} 7.0' in text
    assert text.count('cgroup="other",event="max"') == 1


def test_adaptive_probes_count_as_attached_only_while_armed():
    from tracer.model.probes import ATTACHED, STANDBY, ProbeStatus

    def gauge(status: str) -> str:
        requests = SnapshotRequests()
        requests.close(dataclasses.replace(SNAPSHOT, probes=(
            ProbeStatus("syscall_exit", ATTACHED, "raw_tp", "sys_exit"),
            ProbeStatus("kmalloc", status, "raw_tp", "kmalloc"))))
        st = MetricsState(requests, 50, False, 50)
        st.ready = READY  # what was attached at start: the snapshot's states replace it
        return scrape(st)

    standby = gauge(STANDBY)
    assert 'memtrace_probe_attached{probe="kmalloc",via="raw_tp"} 0.0' in standby
    assert 'memtrace_probe_attached{probe="syscall_exit",via="raw_tp"} 1.0' in standby
    assert 'memtrace_probe_attached{probe="percpu"' not in standby
    assert 'memtrace_probe_attached{probe="kmalloc",via="raw_tp"} 1.0' in gauge(ATTACHED)
