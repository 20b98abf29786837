"""The image built from deploy/Dockerfile: what it says it is, how small, and what it leaves out."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import pytest

import tracer
from tests.deploy import daemonset
from tests.deploy import podman as pm
from tests.deploy.conftest import BuiltImage, measured

pytestmark = pytest.mark.deploy

# Debian's python3-bpfcc pulls in LLVM and clang's libraries (~250 MB of the image): the
# budget leaves room for security updates, not for another toolchain or a second Python.
SIZE_BUDGET = 450 * 10**6

# Compilers, linkers, assemblers, make (/usr/bin/ld.so is the dynamic loader: not one).
TOOLCHAIN = re.compile(r"(x86_64-linux-gnu-|aarch64-linux-gnu-)?"
                       r"(gcc|g\+\+|cc|c\+\+|cpp|clang|clang\+\+|ld|ld\.(bfd|gold|lld)|as|make|ccache)"
                       r"(-[\d.]+)?")
BUILD_PACKAGES = re.compile(r"(gcc|g\+\+|cpp|clang|binutils|make|build-essential|ccache)"
                            r"(-[\d.]+)?|.+-dev|python3-(pip|hatchling|wheel|build)")
BIN_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "opt/memtrace/bin")


@pytest.fixture(scope="module")
def config(image: BuiltImage) -> dict:
    return json.loads(pm.podman("image", "inspect", image.ref).stdout)[0]


@pytest.fixture(scope="module")
def rootfs(image: BuiltImage) -> Iterator[Path]:
    """The image's files, mounted read-only on the host."""
    path = Path(pm.podman("image", "mount", image.ref).stdout.strip())
    try:
        yield path
    finally:
        pm.podman("image", "unmount", image.ref, check=False)


def test_the_image_says_what_it_is(config):
    labels = config["Config"]["Labels"]
    spec = daemonset.load()
    assert labels["org.opencontainers.image.title"] == "memtrace"
    assert labels["org.opencontainers.image.description"].strip()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"] == pm.SOURCE_URL
    # one version everywhere: the package, the image label, the tag the DaemonSet runs
    assert labels["org.opencontainers.image.version"] == tracer.__version__
    assert spec.image.rsplit(":", 1)[1] == tracer.__version__
    assert labels["org.opencontainers.image.base.name"].endswith("/" + pm.base_image())


def test_entrypoint_port_and_stop_signal(config):
    spec = daemonset.load()
    cfg = config["Config"]
    assert cfg["Entrypoint"] == ["memtrace"]
    assert cfg["Cmd"][0] == "export"
    assert set(cfg["ExposedPorts"]) == {f"{p}/tcp" for _name, p in spec.ports}
    assert cfg.get("StopSignal", "SIGTERM") in ("SIGTERM", "15")
    assert cfg.get("User", "") in ("", "root", "0"), "BPF needs root: the DaemonSet runs as 0"


def test_the_installed_memtrace_is_this_checkout(image, rootfs):
    r = pm.podman("run", "--rm", "--network=none", image.ref, "--version")
    assert r.stdout.strip() == f"memtrace, version {tracer.__version__}"
    (site,) = rootfs.glob("opt/memtrace/lib/python3*/site-packages")
    installed = {p.relative_to(site / "tracer").as_posix()
                 for p in (site / "tracer").rglob("*") if p.is_file() and "__pycache__" not in
                 p.parts}
    repo = pm.REPO
    checkout = {p.relative_to(repo / "tracer").as_posix() for p in (repo / "tracer").rglob("*.py")
                if "__pycache__" not in p.parts}
    checkout |= {"bpf/" + p.name for p in (repo / "bpf").iterdir() if p.is_file()}
    assert {p for p in installed if p.endswith(".py") or p.startswith("bpf/")} == checkout


def test_the_image_is_small(image, config):
    layers = pm.podman("history", "--format={{.Size}}\t{{.CreatedBy}}", image.ref).stdout
    big = [line.split("\t")[0] for line in layers.splitlines()
           if not line.startswith(("0B", "0 B"))]
    measured(f"image layers (newest first): {', '.join(big)}")
    assert image.size < SIZE_BUDGET, f"{image.size / 1e6:.0f} MB > {SIZE_BUDGET / 1e6:.0f} MB"


def test_no_build_tools_or_caches_in_the_final_stage(rootfs):
    found: list[str] = []
    for d in BIN_DIRS:
        if (rootfs / d).is_dir() and not (rootfs / d).is_symlink():
            found += [f"/{d}/{p.name}" for p in (rootfs / d).iterdir()
                      if TOOLCHAIN.fullmatch(p.name)]
    status = (rootfs / "var/lib/dpkg/status").read_text().split("\n\n")
    for entry in status:
        fields = dict(re.findall(r"^(Package|Status): (.*)$", entry, re.M))
        if fields.get("Status") == "install ok installed" and \
                BUILD_PACKAGES.fullmatch(fields["Package"]):
            found.append(f"package {fields['Package']}")
    for top, dirs, files in os.walk(rootfs):
        rel = "/" + os.path.relpath(top, rootfs)
        if rel.startswith(("/proc", "/sys", "/dev")):
            dirs[:] = []
            continue
        if rel.endswith("/.cache/pip") or rel.startswith("/tmp/pip-") or \
                re.search(r"/site-packages/(pip|setuptools|hatchling)$", rel):
            found.append(rel)
            dirs[:] = []
        if rel == "/var/cache/apt/archives":
            found += [f"{rel}/{f}" for f in files if f.endswith(".deb")]
        if rel == "/var/lib/apt/lists":
            found += [f"{rel}/{f}" for f in files if f != "lock"]
    for leftover in ("src", "wheels"):  # the wheel stage's tree, and the bind mount's target
        if (rootfs / leftover).exists():
            found.append("/" + leftover)
    assert not found, "\n".join(found)
