"""The DaemonSet of deploy/kubernetes/memtrace.yaml read as a container runtime would run it.

The deploy tier runs the image with the flags `podman_flags` derives from the manifest, so the
manifest and what was tested cannot drift apart. A field the translation does not know is an
error, not something silently left out: whoever adds one to the manifest decides here what it
means for the container (or that it only matters to a cluster)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "memtrace.yaml"

# Fields with no meaning for one container on one host: scheduling, identity in the cluster.
CLUSTER_ONLY_POD_FIELDS = {"serviceAccountName", "automountServiceAccountToken",
                           "priorityClassName", "nodeSelector", "tolerations"}
POD_FIELDS = CLUSTER_ONLY_POD_FIELDS | {"containers", "volumes", "hostPID", "hostNetwork",
                                        "hostIPC", "terminationGracePeriodSeconds"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports",
                    "securityContext", "resources", "startupProbe", "readinessProbe",
                    "livenessProbe", "volumeMounts"}
SECURITY_FIELDS = {"privileged", "runAsUser", "runAsGroup", "readOnlyRootFilesystem"}
MOUNT_FIELDS = {"name", "mountPath", "readOnly"}
PROBE_FIELDS = {"httpGet", "periodSeconds", "timeoutSeconds", "failureThreshold",
                "initialDelaySeconds", "successThreshold"}
PULL_POLICIES = {"IfNotPresent": "missing", "Always": "always", "Never": "never"}

MEMORY_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
                "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


class ManifestError(ValueError):
    """The manifest says something the deploy tier cannot run faithfully."""


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "1G", "1048576") in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]i|[kMGT])?", str(quantity))
    if not m:
        raise ManifestError(f"memory quantity {quantity!r}")
    return int(m.group(1)) * MEMORY_UNITS[m.group(2) or ""]


def cpu_millis(quantity: str) -> int:
    """A Kubernetes CPU quantity ("500m", "0.5", "2") in thousandths of a CPU."""
    text = str(quantity)
    if re.fullmatch(r"\d+m", text):
        return int(text[:-1])
    if re.fullmatch(r"\d+(\.\d{1,3})?", text):
        return round(float(text) * 1000)
    raise ManifestError(f"cpu quantity {quantity!r}")


def _unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    extra = set(obj) - known
    if extra:
        raise ManifestError(f"{where}: the deploy tier does not know {sorted(extra)}; "
                            "say in tests/deploy/daemonset.py what they mean for the container")


@dataclass(frozen=True)
class HostMount:
    """A hostPath volume mounted into the container."""

    host_path: str
    container_path: str
    read_only: bool
    must_be_directory: bool


@dataclass(frozen=True)
class HttpProbe:
    """One of the kubelet's HTTP probes, resolved to a port number."""

    path: str
    port: int
    period: float
    timeout: float
    failure_threshold: int
    initial_delay: float

    @property
    def budget(self) -> float:
        """How long the kubelet waits before it gives up (restarts or marks unready)."""
        return self.initial_delay + self.period * self.failure_threshold


@dataclass(frozen=True)
class DaemonSetContainer:
    """What the DaemonSet's pod template says about its one container."""

    namespace: str
    name: str
    image: str
    pull_policy: str
    command: Optional[tuple[str, ...]]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    privileged: bool
    user: Optional[int]
    group: Optional[int]
    read_only_root: bool
    host_pid: bool
    host_network: bool
    host_ipc: bool
    mounts: tuple[HostMount, ...]
    ports: tuple[tuple[str, int], ...]
    memory_limit: Optional[int]
    memory_request: Optional[int]
    cpu_limit_millis: Optional[int]
    cpu_request_millis: Optional[int]
    grace_seconds: int
    probes: tuple[tuple[str, HttpProbe], ...]
    annotations: tuple[tuple[str, str], ...]

    def probe(self, kind: str) -> HttpProbe:
        return dict(self.probes)[kind]

    def port(self, name: str) -> int:
        return dict(self.ports)[name]

    def podman_flags(self) -> list[str]:
        """`podman run` options that give the container what the pod template gives it."""
        flags: list[str] = []
        if self.privileged:
            flags.append("--privileged")
        if self.host_pid:
            flags.append("--pid=host")
        if self.host_network:
            flags.append("--network=host")
        if self.host_ipc:
            flags.append("--ipc=host")
        if self.user is not None:
            flags.append(f"--user={self.user}" + (f":{self.group}" if self.group is not None
                                                   else ""))
        if self.read_only_root:
            flags.append("--read-only")
        for m in self.mounts:
            flags.append(f"--volume={m.host_path}:{m.container_path}"
                         + (":ro" if m.read_only else ""))
        for k, v in self.env:
            flags.append(f"--env={k}={v}")
        if self.memory_limit is not None:
            flags.append(f"--memory={_docker_bytes(self.memory_limit)}")
        if self.cpu_limit_millis is not None:
            flags.append(f"--cpus={self.cpu_limit_millis / 1000:g}")
        if self.cpu_request_millis is not None:
            # the kubelet's own conversion of a CPU request into cgroup shares
            flags.append(f"--cpu-shares={max(2, self.cpu_request_millis * 1024 // 1000)}")
        flags.append(f"--stop-timeout={self.grace_seconds}")
        flags.append(f"--pull={PULL_POLICIES[self.pull_policy]}")
        if self.command is not None:
            flags.append(f"--entrypoint={self.command[0]}")
        return flags

    def podman_run(self, image: str, name: str, extra: tuple[str, ...] = ()) -> list[str]:
        """The whole `podman run` command line, detached, for `image` under `name`."""
        tail = list(self.command[1:]) if self.command is not None else []
        return ["podman", "run", "--detach", f"--name={name}", *extra, *self.podman_flags(),
                image, *tail, *self.args]


def _docker_bytes(n: int) -> str:
    for suffix, unit in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return f"{n}b"


def _probe(spec: dict[str, Any], ports: dict[str, int], where: str) -> HttpProbe:
    _unknown(spec, PROBE_FIELDS, where)
    if "httpGet" not in spec:
        raise ManifestError(f"{where}: only httpGet probes are run by the deploy tier")
    get = spec["httpGet"]
    _unknown(get, {"path", "port"}, f"{where}.httpGet")
    port = get["port"]
    number = ports[port] if isinstance(port, str) else int(port)
    return HttpProbe(path=get.get("path", "/"), port=number,
                     period=float(spec.get("periodSeconds", 10)),
                     timeout=float(spec.get("timeoutSeconds", 1)),
                     failure_threshold=int(spec.get("failureThreshold", 3)),
                     initial_delay=float(spec.get("initialDelaySeconds", 0)))


def load(path: Path = MANIFEST) -> DaemonSetContainer:
    """The DaemonSet's container from the manifest, checked for fields the tier cannot run."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (ds,) = [d for d in docs if d.get("kind") == "DaemonSet"]
    template = ds["spec"]["template"]
    pod = template["spec"]
    _unknown(pod, POD_FIELDS, "DaemonSet pod spec")
    (c,) = pod["containers"]
    _unknown(c, CONTAINER_FIELDS, f"container {c.get('name')}")

    volumes: dict[str, dict[str, Any]] = {}
    for v in pod.get("volumes", []):
        _unknown(v, {"name", "hostPath"}, f"volume {v.get('name')}")
        if "hostPath" not in v:
            raise ManifestError(f"volume {v['name']}: only hostPath volumes are run")
        _unknown(v["hostPath"], {"path", "type"}, f"volume {v['name']}.hostPath")
        kind = v["hostPath"].get("type", "")
        if kind not in ("", "Directory"):
            raise ManifestError(f"volume {v['name']}: hostPath type {kind!r} is not run")
        volumes[v["name"]] = v["hostPath"]
    mounts = []
    for m in c.get("volumeMounts", []):
        _unknown(m, MOUNT_FIELDS, f"volumeMount {m.get('name')}")
        hp = volumes[m["name"]]
        mounts.append(HostMount(hp["path"], m["mountPath"], bool(m.get("readOnly", False)),
                                hp.get("type") == "Directory"))

    ports = {}
    for p in c.get("ports", []):
        _unknown(p, {"name", "containerPort", "protocol"}, f"port {p.get('name')}")
        if p.get("protocol", "TCP") != "TCP":
            raise ManifestError(f"port {p.get('name')}: only TCP")
        ports[p["name"]] = int(p["containerPort"])

    sec = c.get("securityContext", {})
    _unknown(sec, SECURITY_FIELDS, "securityContext")
    res = c.get("resources", {})
    _unknown(res, {"requests", "limits"}, "resources")
    limits, requests = res.get("limits", {}), res.get("requests", {})
    for part, name in ((limits, "limits"), (requests, "requests")):
        _unknown(part, {"cpu", "memory"}, f"resources.{name}")

    env = []
    for e in c.get("env", []):
        _unknown(e, {"name", "value"}, f"env {e.get('name')}")
        env.append((e["name"], str(e["value"])))

    probes = tuple((kind, _probe(c[kind], ports, kind))
                   for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in c)
    annotations = tuple((k, str(v)) for k, v in
                        (template["metadata"].get("annotations") or {}).items())
    return DaemonSetContainer(
        namespace=ds["metadata"]["namespace"], name=c["name"], image=c["image"],
        pull_policy=c.get("imagePullPolicy", "IfNotPresent"),
        command=tuple(c["command"]) if "command" in c else None,
        args=tuple(str(a) for a in c.get("args", [])), env=tuple(env),
        privileged=bool(sec.get("privileged", False)),
        user=sec.get("runAsUser"), group=sec.get("runAsGroup"),
        read_only_root=bool(sec.get("readOnlyRootFilesystem", False)),
        host_pid=bool(pod.get("hostPID", False)),
        host_network=bool(pod.get("hostNetwork", False)),
        host_ipc=bool(pod.get("hostIPC", False)),
        mounts=tuple(mounts), ports=tuple(ports.items()),
        memory_limit=memory_bytes(limits["memory"]) if "memory" in limits else None,
        memory_request=memory_bytes(requests["memory"]) if "memory" in requests else None,
        cpu_limit_millis=cpu_millis(limits["cpu"]) if "cpu" in limits else None,
        cpu_request_millis=cpu_millis(requests["cpu"]) if "cpu" in requests else None,
        grace_seconds=int(pod.get("terminationGracePeriodSeconds", 30)),
        probes=probes, annotations=annotations)
