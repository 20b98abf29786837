"""`memtrace export` scraped by a real Prometheus server (Debian's prometheus) on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests import needs
from tests import workloads as w
from tests.e2e import installed

pytestmark = pytest.mark.e2e

MEMTRACE = installed.MEMTRACE
N = 7



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return r.read().decode()


def query(prom: str, promql: str) -> list[dict]:
    body = get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    obj = json.loads(body)
    assert obj["status"] == "success", obj
    return obj["data"]["result"]


def test_prometheus_scrapes_exact_counts_and_labels(tmp_path):
    prometheus = needs.program("prometheus", "prometheus")
    metrics_port, prom_port = free_port(), free_port()
    exporter = subprocess.Popen([MEMTRACE, "export", "--listen", f"127.0.0.1:{metrics_port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: memtrace\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n")
    prom = None
    try:
        assert exporter.stderr is not None
        deadline = time.monotonic() + 60
        line = ""
        while "metrics on" not in line:
            line = exporter.stderr.readline()
            assert line and time.monotonic() < deadline, "memtrace export never got ready"
        text = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert "# HELP memtrace_syscall_failures_total" in text
        assert 'memtrace_probe_attached{probe="syscall_exit",via="tp_btf"} 1.0' in text
        prom = subprocess.Popen([prometheus, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{prom_port}"
        deadline = time.monotonic() + 60
        while True:  # wait until Prometheus has scraped memtrace once
            try:
                if query(base, 'up{job="memtrace"}') and \
                        query(base, 'up{job="memtrace"}')[0]["value"][1] == "1":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus never scraped memtrace"
            time.sleep(0.5)
        comm = w.unique_comm("mt-prom")
        child = w.run_child(w.HUGE_MMAPS, comm, env={"MT_N": str(N)})
        assert child.report["failed"] == N  # all N ran, and all N failed
        cgroup = next(line.rsplit(":", 1)[1].strip() for line in open("/proc/self/cgroup")
                      if ":memory:" in line or line.startswith("0::"))
        promql = (f'sum(memtrace_syscall_failures_total{{syscall="mmap",errno="ENOMEM",'
                  f'cgroup="{cgroup}"}})')
        causes = (f'sum by (cause) (memtrace_failures_by_cause_total{{syscall="mmap",'
                  f'cgroup="{cgroup}"}})')
        deadline = time.monotonic() + 30
        got = None
        while time.monotonic() < deadline:
            before = query(base, promql)
            got = int(float(before[0]["value"][1])) if before else None
            if got is not None and got >= N:
                break
            time.sleep(1)
        # the exporter is system-wide: only this cgroup's mmap failures are ours, and
        # nothing else in the test's cgroup asks for 64 TiB
        assert got == N, got
        by_cause = {r["metric"]["cause"]: int(float(r["value"][1])) for r in query(base, causes)}
        assert by_cause == {"overcommit": N}
    finally:
        for p in (prom, exporter):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    assert exporter.returncode == 0  # SIGTERM stops it cleanly


def test_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([MEMTRACE, "export", "--listen", f"127.0.0.1:{port}",
                            "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"memtrace: error: 127.0.0.1:{port} is already in use (--listen HOST:PORT)")


def test_bad_listen_value():
    r = subprocess.run([MEMTRACE, "export", "--listen", "nonsense"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "HOST:PORT" in r.stderr


def _stats_fds(pid: int) -> int:
    """BPF_ENABLE_STATS fds the process holds (each keeps the kernel's BPF run-time stats on)."""
    import os

    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-stats"
        except OSError:
            continue
    return n


def _exporter(*extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = subprocess.Popen([MEMTRACE, "export", "--listen", f"127.0.0.1:{port}", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    deadline = time.monotonic() + 60
    line = ""
    while "metrics on" not in line:
        line = p.stderr.readline()
        assert line and time.monotonic() < deadline, "memtrace export never got ready"
    return p, port


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_probe_cost_counters_in_a_real_scrape():
    p, port = _exporter("--probe-cost")
    try:
        assert _stats_fds(p.pid) == 1  # it holds the kernel's BPF run-time stats on
        first = get(f"http://127.0.0.1:{port}/metrics")
        for _ in range(2000):
            socket.gethostname()  # a few syscalls of our own, at least
        time.sleep(0.5)
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        _stop(p)
    assert p.returncode == 0
    assert "# TYPE memtrace_probe_runs_total counter" in text
    assert "# TYPE memtrace_probe_run_seconds_total counter" in text
    assert "memtrace_probe_stats_enabled 1.0" in text

    def sample(body: str, name: str) -> float:
        line = next(x for x in body.splitlines() if x.startswith(f'{name}{{probe="syscall_exit"}}'))
        return float(line.rsplit(" ", 1)[1])

    assert sample(text, "memtrace_probe_runs_total") > sample(first, "memtrace_probe_runs_total")
    assert sample(text, "memtrace_probe_run_seconds_total") > 0


def test_export_leaves_bpf_stats_off_by_default():
    p, port = _exporter()
    try:
        assert _stats_fds(p.pid) == 0
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        _stop(p)
    assert "# TYPE memtrace_probe_stats_enabled gauge" in text
    if open("/proc/sys/kernel/bpf_stats_enabled").read().strip() == "0":  # not on for everyone
        assert "memtrace_probe_stats_enabled 0.0" in text
        assert "memtrace_probe_runs_total{" not in text
