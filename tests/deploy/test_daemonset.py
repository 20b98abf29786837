"""The image run as deploy/kubernetes/memtrace.yaml runs it, scraped by a real Prometheus.

One container for the module, started with exactly the privileges, mounts, arguments, env and
resources the manifest gives it; real allocation failures made on the host, in cgroups of
their own; Debian's Prometheus finding the target through the pod's annotations; every
query of deploy/grafana/memtrace.json evaluated against what it scraped."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests import needs
from tests import workloads as w
from tests.deploy import daemonset, usage
from tests.deploy import podman as pm
from tests.deploy.conftest import BuiltImage, measured

pytestmark = pytest.mark.deploy

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "memtrace.json"
N_MMAPS = 7
# A bound on the container's whole life, should the tier itself be killed before it cleans up.
CONTAINER_TIMEOUT = 1800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (test's own hosts)
        return r.status, r.read().decode()


@dataclass(frozen=True)
class Running:
    container_id: str
    name: str
    address: str  # where the pod's ports are reached: its own IP, as a pod IP
    pid: int  # the container's main process, in the host's PID namespace
    ready_after: float  # seconds from `podman run` to the startup probe's first success


@pytest.fixture(scope="module")
def spec() -> daemonset.DaemonSetContainer:
    return daemonset.load()


@pytest.fixture(scope="module")
def early_memcg() -> Iterator[tuple[Path, str]]:
    """A memory cgroup made before the container starts, as most of a node's are: memtrace
    can only name it by reading the host's cgroup hierarchy through its mounts (cgroups made
    later it also learns from the kernel as they are made)."""
    with w.memcg(256 << 20, f"memtrace-deploy-early-{uuid.uuid4().hex[:6]}") as made:
        yield made


@pytest.fixture(scope="module")
def container(image: BuiltImage, spec: daemonset.DaemonSetContainer,
              early_memcg: tuple[Path, str]) -> Iterator[Running]:
    for m in spec.mounts:
        if m.must_be_directory:  # the kubelet refuses the pod otherwise
            assert Path(m.host_path).is_dir(), f"hostPath {m.host_path} is not a directory"
    name = f"memtrace-deploy-{uuid.uuid4().hex[:8]}"
    cmd = spec.podman_run(image.ref, name,
                          extra=(f"--label={pm.LABEL}", f"--timeout={CONTAINER_TIMEOUT}"))
    t0 = time.monotonic()
    try:
        container_id = pm.podman(*cmd[1:], timeout=120).stdout.strip()
    except (AssertionError, subprocess.TimeoutExpired):
        pm.remove_container(name)  # created but never started, if it got that far
        raise
    try:
        state = json.loads(pm.podman("inspect", container_id).stdout)[0]
        address = "127.0.0.1" if spec.host_network else \
            state["NetworkSettings"]["IPAddress"]
        assert address, "the container has no IP address of its own"
        startup = spec.probe("startupProbe")
        url = f"http://{address}:{startup.port}{startup.path}"
        deadline = t0 + startup.budget
        while True:
            try:
                if http_get(url, startup.timeout)[0] == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            running = pm.podman("inspect", "--format={{.State.Running}}", container_id).stdout
            if running.strip() != "true" or time.monotonic() > deadline:
                logs = pm.podman("logs", container_id, check=False)
                raise AssertionError(f"the startup probe ({url}) never passed; container "
                                     f"running={running.strip()}\n{logs.stdout}{logs.stderr}")
            time.sleep(0.5)
        ready_after = time.monotonic() - t0
        measured(f"container ready (startup probe {startup.path}) {ready_after:.1f} s "
                 f"after podman run; budget {startup.budget:.0f} s")
        yield Running(container_id, name, address, int(state["State"]["Pid"]), ready_after)
    finally:
        pm.remove_container(container_id)


# ---------------------------------------------------------------- Prometheus


def annotation_label(key: str) -> str:
    """How Kubernetes service discovery names a pod annotation's label."""
    return "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def prometheus_config(spec: daemonset.DaemonSetContainer, run: Running) -> dict[str, Any]:
    """A scrape job that finds the pod as Kubernetes pod discovery would present it.

    The target carries the labels discovery gives a pod (its address with the declared
    port, namespace, name, annotations); the relabelling is the usual annotation-driven
    one, so port and path come from the manifest's prometheus.io annotations."""
    sd = {annotation_label(k): v for k, v in spec.annotations}
    sd.update({"__meta_kubernetes_namespace": spec.namespace,
               "__meta_kubernetes_pod_name": run.name,
               "__meta_kubernetes_pod_container_name": spec.name})
    (port_name, port), *_ = spec.ports
    sd.update({"__meta_kubernetes_pod_container_port_name": port_name,
               "__meta_kubernetes_pod_container_port_number": str(port)})
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "static_configs": [{"targets": [f"{run.address}:{port}"], "labels": sd}],
            "relabel_configs": [
                {"source_labels": [annotation_label("prometheus.io/scrape")],
                 "regex": "true", "action": "keep"},
                {"source_labels": [annotation_label("prometheus.io/path")],
                 "regex": "(.+)", "target_label": "__metrics_path__"},
                {"source_labels": ["__address__", annotation_label("prometheus.io/port")],
                 "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
                 "target_label": "__address__"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }],
    }


class Prometheus:
    """A client of the Prometheus HTTP API."""

    def __init__(self, base: str):
        self.base = base

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        try:
            _status, body = http_get(url, 10)
        except urllib.error.HTTPError as e:  # 400 bad_data (a parse error) has a JSON body
            body = e.read().decode()
        obj = json.loads(body)
        assert obj["status"] == "success", f"{path} {params}: {obj.get('error')}"
        return obj["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("query", query=promql)["result"]

    def counts(self, promql: str, *labels: str) -> dict[tuple[str, ...], int]:
        """An instant vector as {label values: integer value}."""
        return {tuple(r["metric"].get(k, "") for k in labels): int(float(r["value"][1]))
                for r in self.query(promql)}


@pytest.fixture(scope="module")
def prometheus(spec: daemonset.DaemonSetContainer, container: Running,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prometheus_bin = needs.program("prometheus", "prometheus")
    d = tmp_path_factory.mktemp("prometheus")
    (d / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(spec, container)))
    port = free_port()
    proc = subprocess.Popen([prometheus_bin, f"--config.file={d / 'prometheus.yml'}",
                             f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(d / "log").open("w"))
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                up = prom.query('up{job="kubernetes-pods"}')
                if up and up[0]["value"][1] == "1":
                    break
            except (OSError, urllib.error.URLError):
                pass
            assert proc.poll() is None, (d / "log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus never scraped the container"
            time.sleep(0.5)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- failures on the host



@dataclass(frozen=True)
class HostFailures:
    mmap_cgroup: str  # N_MMAPS huge mmaps failed with ENOMEM here (made before memtrace)
    pipe_cgroup: str  # one pipe growth failed here: a page and a slab allocation failed
    oom_cgroup: str  # one process was OOM-killed here


@pytest.fixture(scope="module")
def host_failures(prometheus: Prometheus, early_memcg: tuple[Path, str]
                  ) -> Iterator[HostFailures]:
    """Real failures, each kind in a memory cgroup of its own, kept until the module ends
    (a cgroup removed before memtrace first saw its id could not be named)."""
    tag = uuid.uuid4().hex[:6]
    with contextlib.ExitStack() as stack:
        d, mmap_cg = early_memcg
        child = w.run_child(w.HUGE_MMAPS, w.unique_comm("mt-dep-mmap"), cgroup_procs=d / "cgroup.procs",
                            env={"MT_N": str(N_MMAPS)})
        assert child.report == {"failed": N_MMAPS, "pid": child.pid}  # all N ran, and all N failed

        d, pipe_cg = stack.enter_context(w.memcg(512 << 10, f"memtrace-deploy-pipe-{tag}"))
        with w.sysctl("fs.pipe-max-size", str(64 << 20)):
            child = w.run_child(w.PIPE_GROW, w.unique_comm("mt-dep-pipe"),
                                env={"MT_JOIN_CGROUP": str(d / "cgroup.procs")})
        assert (child.report["ok"], child.report["errno"]) == (False, errno.ENOMEM)

        d, oom_cg = stack.enter_context(w.memcg(48 << 20, f"memtrace-deploy-oom-{tag}"))
        child = w.run_child(w.OOM_HOG, w.unique_comm("mt-dep-oom"),
                            cgroup_procs=d / "cgroup.procs")
        assert child.returncode == -signal.SIGKILL

        yield HostFailures(mmap_cg, pipe_cg, oom_cg)


def wait_for(prom: Prometheus, promql: str, labels: tuple[str, ...],
             want: dict[tuple[str, ...], int], timeout: float = 30) -> dict[tuple[str, ...], int]:
    """The query's counts once they reach `want` (or at the deadline), then once more."""
    deadline = time.monotonic() + timeout
    while True:
        got = prom.counts(promql, *labels)
        if all(got.get(k, 0) >= v for k, v in want.items()) or time.monotonic() > deadline:
            time.sleep(2)  # two more scrapes: nothing more may arrive
            return prom.counts(promql, *labels)
        time.sleep(0.5)


# ---------------------------------------------------------------- the container as run


def test_the_container_gets_what_the_manifest_gives_it(spec, container):
    state = json.loads(pm.podman("inspect", container.container_id).stdout)[0]
    host = state["HostConfig"]
    assert host["Privileged"] is spec.privileged
    assert (host["PidMode"] == "host") is spec.host_pid
    assert (host["NetworkMode"] == "host") is spec.host_network
    assert state["Config"]["User"] == str(spec.user)
    mounts = {m["Destination"]: m for m in state["Mounts"]}
    for m in spec.mounts:
        got = mounts[m.container_path]
        assert (got["Source"], got["RW"]) == (m.host_path, not m.read_only), m
    env = dict(e.split("=", 1) for e in state["Config"]["Env"])
    for k, v in spec.env:
        assert env[k] == v
    assert state["Config"]["Cmd"] == list(spec.args)
    assert state["Config"]["StopTimeout"] == spec.grace_seconds
    # the limits reach the kernel: the container's cgroup has them
    use = usage.usage(container.pid)
    assert use.memory_limit_bytes == spec.memory_limit
    assert spec.cpu_limit_millis is not None and use.cpu_limit == spec.cpu_limit_millis / 1000
    # in the host's PID namespace: its main process is a host pid running memtrace
    cmdline = Path(f"/proc/{container.pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"memtrace" in part for part in cmdline[:2]), cmdline


def test_kubelet_probes_pass(spec, container):
    for kind in ("readinessProbe", "livenessProbe"):
        p = spec.probe(kind)
        status, body = http_get(f"http://{container.address}:{p.port}{p.path}", p.timeout)
        assert status == 200 and "# TYPE memtrace_probe_attached gauge" in body, kind


def test_prometheus_finds_the_pod_through_its_annotations(spec, container, prometheus):
    (target,) = prometheus.api("targets", state="active")["activeTargets"]
    ann = dict(spec.annotations)
    assert target["health"] == "up", target.get("lastError")
    assert target["scrapeUrl"] == \
        f"http://{container.address}:{ann['prometheus.io/port']}{ann['prometheus.io/path']}"
    assert target["labels"]["namespace"] == spec.namespace
    assert target["labels"]["pod"] == container.name


def test_exact_counts_of_huge_mmaps_by_cgroup(prometheus, host_failures):
    cg = host_failures.mmap_cgroup
    got = wait_for(prometheus, f'sum by (syscall, errno) (memtrace_syscall_failures_total'
                   f'{{cgroup="{cg}"}})', ("syscall", "errno"), {("mmap", "ENOMEM"): N_MMAPS})
    # the child ran in this cgroup from exec: nothing else of it failed
    assert got == {("mmap", "ENOMEM"): N_MMAPS}
    causes = prometheus.counts(f'sum by (kind, cause) (memtrace_failures_by_cause_total'
                               f'{{cgroup="{cg}"}})', "kind", "cause")
    assert causes == {("syscall", "overcommit"): N_MMAPS}


def test_kernel_allocator_failures_by_cgroup(prometheus, host_failures):
    cg = host_failures.pipe_cgroup
    got = wait_for(prometheus, f'sum by (order) (memtrace_page_alloc_failures_total'
                   f'{{cgroup="{cg}"}})', ("order",), {("8",): 1})
    assert got == {("8",): 1}  # the pipe's ring: 64 MiB / 4 KiB pages -> an order-8 array
    assert prometheus.counts(f'sum by (syscall, errno) (memtrace_syscall_failures_total'
                             f'{{cgroup="{cg}"}})', "syscall", "errno") == \
        {("fcntl", "ENOMEM"): 1}
    slab = prometheus.counts(f'sum(memtrace_slab_failures_total{{cgroup="{cg}"}})')
    assert slab and list(slab.values())[0] >= 1
    assert prometheus.counts(f'sum(memtrace_page_alloc_opportunistic_total{{cgroup="{cg}"}})'
                             ) == {}


def test_oom_kill_and_memcg_events_by_cgroup(prometheus, host_failures):
    cg = host_failures.oom_cgroup
    got = wait_for(prometheus, f'sum(memtrace_oom_kills_total{{cgroup="{cg}"}})', (), {(): 1})
    assert got == {(): 1}
    events = wait_for(prometheus, f'sum by (event) (memtrace_memcg_events_total'
                      f'{{cgroup="{cg}"}})', ("event",), {}, timeout=5)
    assert any(n > 0 for n in events.values()), events


def test_cgroup_labels_are_resolved(prometheus, host_failures):
    """Through the host's /sys/fs/cgroup mounted in the container: without it, a cgroup
    made before memtrace started is "unknown" (the container's own cgroup namespace view
    has only its own subtree)."""
    values = set(prometheus.api("label/cgroup/values",
                                **{"match[]": "memtrace_syscall_failures_total"}))
    assert {host_failures.mmap_cgroup, host_failures.pipe_cgroup} <= values, values


def test_probe_gauges(prometheus):
    probes = {(r["metric"]["probe"], r["metric"]["via"]): r["value"][1]
              for r in prometheus.query("memtrace_probe_attached")}
    attached = {p for (p, _via), v in probes.items() if v == "1"}
    # the probes every supported kernel has (tests/bpf/test_live.py asks the same)
    assert {"syscall_exit", "page_alloc", "kmalloc", "kmem_cache_alloc", "vmalloc",
            "percpu", "oom_kill"} <= attached, probes
    assert all(v in ("0", "1") for v in probes.values())
    assert all(via != "none" for (p, via) in probes if p in attached)


def test_the_containers_own_resource_use(spec, container, host_failures):
    use = usage.usage(container.pid)
    mib = 2**20
    measured(f"container memory: {use.memory_bytes / mib:.0f} MiB now (anon "
             f"{use.anon_bytes / mib:.0f} MiB, page cache {use.file_bytes / mib:.0f} MiB of which "
             f"{use.inactive_file_bytes / mib:.0f} MiB inactive; working set "
             f"{use.working_set_bytes / mib:.0f} MiB), "
             f"{use.peak_memory_bytes / mib:.0f} MiB peak (request "
             f"{(spec.memory_request or 0) / 2**20:.0f} MiB, limit "
             f"{(spec.memory_limit or 0) / 2**20:.0f} MiB); CPU {use.cpu_seconds:.1f} s "
             f"(limit {use.cpu_limit} CPU)")
    assert use.oom_kills == 0
    assert spec.memory_limit is not None and use.peak_memory_bytes < spec.memory_limit
    # the limit is sized for start-up (the clang compile): the steady state has to sit well
    # below it, or the first busy moment gets the tracer OOM-killed. Counted as the working
    # set (usage less inactive page cache): on a host whose cache was cold, the libraries the
    # container read first are charged to it (220 MiB of 322 once), and the kernel reclaims
    # them before it kills anything
    assert use.working_set_bytes < spec.memory_limit / 2
    assert use.anon_bytes < spec.memory_limit / 2


# ---------------------------------------------------------------- the Grafana dashboard


def dashboard_targets() -> list[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    board = json.loads(DASHBOARD.read_text())
    return [(f"{p['title']}/{t.get('refId', '')}", t["expr"])
            for p in walk(board["panels"]) for t in p.get("targets", [])]


def dashboard_variables() -> dict[str, Any]:
    board = json.loads(DASHBOARD.read_text())
    return {v["name"]: v for v in board["templating"]["list"]}


TARGETS = dashboard_targets()
METRIC = re.compile(r"\b(memtrace_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def grafana_substitute(expr: str, cgroup: str) -> str:
    """What Grafana sends: its variables replaced (scrapes every 1 s: windows of seconds)."""
    subst = {"$__rate_interval": "10s", "$__range": "10m", "$__interval": "2s",
             "$cgroup": cgroup}
    for k in sorted(subst, key=len, reverse=True):
        expr = expr.replace("${" + k[1:] + "}", subst[k]).replace(k, subst[k])
    assert "$" not in expr, f"a variable the tier does not fill in: {expr}"
    return expr


def grafana_regex_value(value: str) -> str:
    """One value of the cgroup variable as Grafana writes it into a =~ matcher: regex
    metacharacters escaped, and each escape doubled for the PromQL string."""
    return "".join("\\\\" + c if c in "\\^$.|?*+()[]{}" else c for c in value)


@pytest.fixture(scope="module")
def scraped(prometheus: Prometheus, host_failures: HostFailures) -> dict[str, set[str]]:
    """Every memtrace metric the target declared -> label names of its scraped series."""
    wait_for(prometheus, f'sum(memtrace_oom_kills_total{{cgroup="{host_failures.oom_cgroup}"}})',
             (), {(): 1})
    declared = set()
    for m in prometheus.api("targets/metadata", match_target='{job="kubernetes-pods"}'):
        # Prometheus asks for OpenMetrics, where a counter family is named without _total
        name = m["metric"]
        if m["type"] == "counter" and not name.endswith("_total"):
            name += "_total"
        declared.add(name)
    out: dict[str, set[str]] = {name: set() for name in declared if name.startswith("memtrace_")}
    for s in prometheus.api("series", **{"match[]": '{__name__=~"memtrace_.+"}'}):
        out.setdefault(s["__name__"], set()).update(k for k in s if k != "__name__")
    empty = sorted(k for k, v in out.items() if not v)
    measured(f"scraped {len(out)} memtrace metrics; declared without a series this run "
             f"(labels checked by tests/unit/test_deploy.py only): {', '.join(empty) or 'none'}")
    return out


def test_the_cgroup_variable_lists_the_failing_cgroups(prometheus, host_failures):
    query = dashboard_variables()["cgroup"]["query"]
    text = query["query"] if isinstance(query, dict) else query
    m = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)\s*", text)
    assert m, text
    values = prometheus.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
    assert {host_failures.mmap_cgroup, host_failures.pipe_cgroup} <= set(values)


@pytest.mark.parametrize("expr", [e for _, e in TARGETS], ids=[i for i, _ in TARGETS])
def test_dashboard_query_against_the_scraped_series(prometheus, scraped, host_failures, expr):
    target_labels = {"instance", "job", "namespace", "pod"}
    names = {m.group(1) for m in METRIC.finditer(expr)}
    assert names, f"no memtrace metric in {expr!r}"
    for name in sorted(names):
        assert name in scraped, f"{name}: not a metric the exporter serves"
    for m in METRIC.finditer(expr):
        have = scraped[m.group(1)]
        for label in MATCHER.findall(m.group(2) or ""):
            assert not have or label in have | target_labels, \
                f"{m.group(1)} has no label {label!r} (it has {sorted(have)})"
    grouped = {x.strip() for g in GROUPING.findall(expr) for x in g.split(",") if x.strip()}
    have_any = set().union(*(scraped[n] for n in names))
    if have_any:
        assert grouped <= have_any | target_labels, f"grouping by {sorted(grouped - have_any)}"
    # parses and evaluates, for "All" cgroups and for one of them
    for cgroup in (dashboard_variables()["cgroup"].get("allValue") or ".*",
                   grafana_regex_value(host_failures.mmap_cgroup)):
        prometheus.query(grafana_substitute(expr, cgroup))


# ---------------------------------------------------------------- stopping (last)


def test_stops_within_the_grace_period(spec, container):
    t0 = time.monotonic()
    pm.podman("stop", container.container_id, timeout=spec.grace_seconds + 30)
    took = time.monotonic() - t0
    state = json.loads(pm.podman("inspect", container.container_id).stdout)[0]["State"]
    logs = pm.podman("logs", container.container_id)
    measured(f"container stopped {took:.1f} s after SIGTERM (grace {spec.grace_seconds} s)")
    assert took < spec.grace_seconds, "killed at the end of the grace period, not stopped"
    assert (state["ExitCode"], state["OOMKilled"]) == (0, False), logs.stderr
    assert "Traceback" not in logs.stdout + logs.stderr
    assert "memtrace export: stopped after" in logs.stdout + logs.stderr
