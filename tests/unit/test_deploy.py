"""The deployment files in deploy/: what the DaemonSet, image, dashboard and unit promise."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.unit.fixtures import MMAP_FAIL, READY
from tracer.model.decode import parse_gfp
from tracer.model.failures import KernelCount, MemcgCount, Snapshot, SyscallCount
from tracer.model.leaks import GrowingProcess
from tracer.model.probes import ProbeCost, ProbeRun
from tracer.run import SnapshotRequests
from tracer.views.prometheus import MemtraceCollector, MetricsState

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PORT = 9464

# What `memtrace export` serves: series name -> labels (plus `comm` with --per-process).
METRICS: dict[str, set[str]] = {
    "memtrace_syscall_failures_total": {"syscall", "errno", "cgroup"},
    "memtrace_failures_by_cause_total": {"kind", "syscall", "cause", "cgroup"},
    "memtrace_page_alloc_failures_total": {"order", "gfp_class", "cgroup"},
    "memtrace_page_alloc_opportunistic_total": {"order", "gfp_class", "cgroup"},
    "memtrace_slab_failures_total": {"cgroup"},
    "memtrace_vmalloc_failures_total": {"cgroup"},
    "memtrace_percpu_failures_total": {"cgroup"},
    "memtrace_oom_kills_total": {"cgroup"},
    "memtrace_memcg_events_total": {"cgroup", "event"},
    "memtrace_growing_bytes_per_second": {"rank", "cgroup"},  # + pid with --per-process
    "memtrace_dropped_events_total": {"reason"},
    "memtrace_label_values_cut_total": {"label"},
    "memtrace_probe_attached": {"probe", "via"},
    "memtrace_probe_runs_total": {"probe"},  # with export --probe-cost
    "memtrace_probe_run_seconds_total": {"probe"},
    "memtrace_probe_stats_enabled": set(),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
METRIC_NAME = re.compile(r"memtrace_[a-z_]+")


# ---------------------------------------------------------------- the exporter itself


def exported_series() -> dict[str, set[str]]:
    """Series name -> labels, from the real collector over a snapshot of every kind."""
    snap = Snapshot(
        syscalls=(SyscallCount(1, "a", "/box", "mmap", "ENOMEM", 2),),
        kernel=(
            KernelCount(1, "a", "/box", "page_alloc", 3, parse_gfp("GFP_KERNEL"), False, 1),
            KernelCount(1, "a", "/box", "page_alloc", 9, parse_gfp("GFP_TRANSHUGE"), True, 1),
            *(KernelCount(1, "a", "/box", kind, None, None, False, 1)
              for kind in ("slab", "vmalloc", "percpu", "oom_kill")),
        ),
        memcg=(MemcgCount("/box", "max", 1),),
        drops={"ringbuf_full": 1},
        cost=ProbeCost(1, True, (ProbeRun("syscall_exit", 10, 500),)),
        growing=(GrowingProcess(1, "a", "/box", 1e6, 8 << 20, ("grow (a)",), 1e6),),
    )
    requests = SnapshotRequests()
    requests.close(snap)  # no loop: every scrape gets this snapshot
    st = MetricsState(requests, 50, False, 50)
    st.ready = READY
    st.add([MMAP_FAIL])
    out: dict[str, set[str]] = {}
    for fam in MemtraceCollector(st).collect():
        assert fam.samples, f"{fam.name}: no sample from a snapshot of every kind"
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_the_metric_contract_matches_the_exporter():
    assert exported_series() == METRICS


# ---------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "memtrace.yaml").read_text())
            if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    assert set(by_kind) == {"Namespace", "ServiceAccount", "DaemonSet", "Service"}
    return by_kind


def container(ds: dict[str, Any]) -> dict[str, Any]:
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c


def test_objects_share_the_namespace(k8s):
    ns = k8s["Namespace"]["metadata"]["name"]
    assert ns == "memtrace"
    for kind in ("ServiceAccount", "DaemonSet", "Service"):
        assert k8s[kind]["metadata"]["namespace"] == ns
    assert k8s["DaemonSet"]["spec"]["template"]["spec"]["serviceAccountName"] == \
        k8s["ServiceAccount"]["metadata"]["name"]
    # privileged + hostPID + hostPath are refused by the baseline Pod Security Standard
    assert k8s["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "privileged"


def test_daemonset_is_privileged_in_the_host_pid_namespace(k8s):
    ds = k8s["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert container(ds)["securityContext"]["privileged"] is True
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["terminationGracePeriodSeconds"] > 0
    assert {"operator": "Exists"} in pod["tolerations"], "runs on every node, control-plane too"
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("path", ["/sys", "/sys/kernel/tracing", "/sys/fs/cgroup",
                                  "/lib/modules", "/usr/src"])
def test_host_paths_are_mounted_read_only(k8s, path):
    ds = k8s["DaemonSet"]
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in container(ds)["volumeMounts"] if m["mountPath"] == path]
    assert len(mounts) == 1, f"{path} mounted once"
    (m,) = mounts
    assert m.get("readOnly") is True, f"{path} must be read-only"
    assert volumes[m["name"]]["hostPath"]["path"] == path, "the host's own path, same place"


def test_resources_have_requests_and_limits(k8s):
    res = container(k8s["DaemonSet"])["resources"]
    for kind in ("requests", "limits"):
        assert set(res[kind]) >= {"cpu", "memory"}, kind


def test_metrics_port_and_probes(k8s):
    c = container(k8s["DaemonSet"])
    (port,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert port["containerPort"] == PORT and port.get("protocol", "TCP") == "TCP"
    # listens beyond loopback inside the pod, or the kubelet and Prometheus cannot reach it
    args = c.get("args", [])
    assert args[:1] == ["export"] and "0.0.0.0:9464" in args
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/metrics", probe
        assert get["port"] in ("metrics", PORT), probe


def test_prometheus_annotations(k8s):
    want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
            "prometheus.io/path": "/metrics"}
    for obj in (k8s["DaemonSet"]["spec"]["template"], k8s["Service"]):
        annotations = obj["metadata"]["annotations"]
        assert {k: annotations.get(k) for k in want} == want
        assert all(isinstance(v, str) for v in annotations.values()), "annotations are strings"


def test_service_selects_the_daemonset_pods(k8s):
    svc = k8s["Service"]["spec"]
    pod_labels = k8s["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert svc.get("type", "ClusterIP") == "ClusterIP"
    assert svc["selector"] and svc["selector"].items() <= pod_labels.items()
    (port,) = svc["ports"]
    assert port["name"] == "metrics" and port["port"] == PORT
    assert port["targetPort"] in ("metrics", PORT)


# ---------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, stage by stage (ARGs before the first FROM dropped)."""
    out: list[list[tuple[str, str]]] = []
    for ins in instructions((DEPLOY / "Dockerfile").read_text()):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def runs(stage: list[tuple[str, str]]) -> str:
    return "\n".join(args for word, args in stage if word == "RUN")


def test_dockerfile_builds_the_wheel_in_its_own_stage(stages):
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert re.search(r"\bAS\s+\w+", builder[0][1], re.I), "a named build stage"
    assert re.search(r"pip wheel\b.*--no-deps.*\s\.(\s|$)", runs(builder))
    assert "pip wheel" not in runs(final)


def test_dockerfile_installs_the_wheel_into_a_system_site_packages_venv(stages):
    final = runs(stages[-1])
    venv = re.search(r"-m venv --system-site-packages ([^\s;&]+)", final)
    assert venv, "bcc lives in the distribution's dist-packages"
    assert re.search(rf"{re.escape(venv.group(1))}/bin/pip install \S*\.whl", final)
    name = stages[0][0][1].split()[-1]
    assert any(w in ("RUN", "COPY") and f"from={name}" in a for w, a in stages[-1])
    assert re.search(r"apt-get install\b[^\n]*python3-bpfcc", final.replace('"', " "))


def test_dockerfile_cleans_apt_lists(stages):
    for stage in stages:
        for word, args in stage:
            if word == "RUN" and "apt-get install" in args:
                assert "rm -rf /var/lib/apt/lists" in args, args


def test_dockerfile_entrypoint_and_cmd(stages):
    final = dict(stages[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["memtrace"]
    assert json.loads(final["CMD"]) == ["export", "--listen", f"0.0.0.0:{PORT}"]
    assert "org.opencontainers.image.source" in final["LABEL"]


def test_dockerfile_copies_what_exists_and_the_ignore_file_keeps_it(stages):
    keep = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for word, args in stages[0]:
        if word == "COPY" and "--from" not in args:
            *sources, _dest = args.split()
            for src in sources:
                assert (REPO / src).exists(), src
                assert f"!{src}" in keep, f"{src} is not excluded from the build context"


# ---------------------------------------------------------------- Grafana


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "memtrace.json").read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]


def test_dashboard_datasource_input_and_variables(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    (inp,) = dashboard["__inputs"]
    assert (inp["name"], inp["type"], inp["pluginId"]) == ("DS_PROMETHEUS", "datasource",
                                                          "prometheus")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    cgroup = variables["cgroup"]
    query = cgroup["query"]["query"] if isinstance(cgroup["query"], dict) else cgroup["query"]
    assert re.sub(r"\s", "", query) == "label_values(memtrace_syscall_failures_total,cgroup)"
    assert cgroup["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_every_panel_queries_the_prometheus_input(dashboard):
    panels = [p for p in all_panels(dashboard["panels"]) if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert t["expr"].strip(), p["title"]


def test_dashboard_uses_only_exported_metrics_and_their_labels(dashboard):
    used: set[str] = set()
    for expr in exprs(dashboard):
        names = set(METRIC_NAME.findall(expr))
        assert names, expr
        assert names <= set(METRICS), f"unknown metric in {expr!r}"
        used |= names
        labels = set().union(*(METRICS[n] for n in names)) | TARGET_LABELS
        grouped = {w.strip() for g in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                   for w in g.split(",") if w.strip()}
        matched = set(re.findall(r"[{,]\s*([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", expr))
        assert grouped | matched <= labels, f"label not on {sorted(names)} in {expr!r}"
    assert used == set(METRICS), f"not charted: {sorted(set(METRICS) - used)}"


def test_dashboard_counters_go_through_rate_or_increase(dashboard):
    # label_values_cut counts distinct values ever cut: its current value is the answer.
    for expr in exprs(dashboard):
        for m in METRIC_NAME.finditer(expr):
            if m.group().endswith("_total") and m.group() != "memtrace_label_values_cut_total":
                assert re.search(r"\b(rate|increase)\($", expr[:m.start()]), expr


def test_dashboard_promql_parses(dashboard, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    subst = {"$cgroup": ".*", "$__rate_interval": "5m", "$__range": "1h"}
    rules = []
    for i, expr in enumerate(exprs(dashboard)):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        assert "$" not in expr, expr
        rules.append({"record": f"memtrace:panel_{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- systemd

UNIT = DEPLOY / "systemd" / "memtrace-export.service"


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp


def test_unit_runs_memtrace_export(unit):
    svc = unit["Service"]
    assert svc["ExecStart"].split()[:2] == ["/usr/local/bin/memtrace", "export"]
    assert svc["Restart"] == "on-failure"
    assert svc["KillSignal"] == "SIGTERM"
    assert int(svc["TimeoutStopSec"]) > 0
    assert svc["LimitMEMLOCK"] == "infinity"
    assert {"NO_COLOR=1", "TERM=dumb"} <= set(svc["Environment"].split())
    assert "User" not in svc, "BPF needs root"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    after = unit["Unit"]["After"].split()
    assert "network-online.target" in after and "local-fs.target" in after


@pytest.mark.parametrize("option", ["ProtectKernelTunables", "ProtectKernelModules",
                                    "PrivateDevices", "SystemCallFilter",
                                    "MemoryDenyWriteExecute", "CapabilityBoundingSet"])
def test_unit_hardening_leaves_bpf_working(unit, option):
    assert option not in unit["Service"], f"{option} breaks BPF, tracefs or the headers"


def test_unit_verifies():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    r = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True)
    output = (r.stdout + r.stderr).splitlines()
    ours = [line for line in output if UNIT.name in line]
    complaints = [line for line in ours if "/usr/local/bin/memtrace" not in line]
    assert not complaints, "\n".join(complaints)
    if r.returncode != 0:
        pytest.skip("systemd-analyze verify: " + ("; ".join(ours) or "\n".join(output)))
