"""podman as the deploy tier runs it: its own storage and settings, runc, bounded commands."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests import needs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
BASE_SCRIPT = REPO / "deploy" / "debian-base.sh"

IMAGE = "localhost/memtrace:deploy-test"
# The wheel stage, tagged so that pruning leaves its layers cached for the next run.
WHEEL_IMAGE = "localhost/memtrace-wheel:deploy-test"
# Every container the tier starts carries this label (and is removed by id when done).
LABEL = "io.memtrace.test=deploy"
# What `podman build` is given, here and in deploy/README.md: no registry is asked for the
# base (--pull=never) and the RUN steps reach Debian's mirror through the host's network.
BUILD_FLAGS = ("--pull=never", "--network=host", "--file=deploy/Dockerfile")
SOURCE_URL = "https://example.invalid/memtrace"  # what a publisher passes as SOURCE_URL

# What scripts/setup-deploy.sh installs: (program, Debian package).
TOOLS = (("podman", "podman"), ("runc", "runc"), ("debootstrap", "debootstrap"))


def require_tools() -> None:
    """Fail the test if set-up should have installed a tool and did not (tests/needs.py)."""
    for name, package in TOOLS:
        needs.program(name, package)


def environment() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(HERE / "storage.conf")}


def podman(*args: str, timeout: float = 60, check: bool = True,
           stdout: Optional[int] = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` with the tier's settings; a failure raises with podman's own words."""
    r = subprocess.run(["podman", *args], env=environment(), cwd=REPO, text=True,
                       stdout=stdout, stderr=subprocess.PIPE, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {r.returncode}\n"
                             f"{(r.stderr or '')[-3000:]}")
    return r


def base_image() -> str:
    """The Dockerfile's FROM image, with its ARG defaults filled in (debian:bookworm-slim)."""
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    (first,) = re.findall(r"^FROM\s+(\S+)\s+AS\s+\w+", text, re.M | re.I)[:1]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], first)


@dataclass(frozen=True)
class Timed:
    seconds: float
    made: bool  # False when it was already there (cached)


def ensure_base(log: Path, timeout: float = 600) -> Timed:
    """Make the base image with deploy/debian-base.sh unless the tier's storage has it."""
    image = base_image()
    if podman("image", "exists", image, check=False).returncode == 0:
        return Timed(0.0, made=False)
    release = image.split(":", 1)[1].removesuffix("-slim")
    t0 = time.monotonic()
    with log.open("w") as out:
        r = subprocess.run(["bash", str(BASE_SCRIPT), release], env=environment(), cwd=REPO,
                           stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    assert r.returncode == 0, f"deploy/debian-base.sh failed:\n{log.read_text()[-3000:]}"
    return Timed(time.monotonic() - t0, made=True)


def build(log: Path, timeout: float = 900) -> Timed:
    """Build deploy/Dockerfile from the checkout as IMAGE; prune what older builds left."""
    t0 = time.monotonic()
    with log.open("w") as out:
        for target, tag in (("--target=wheel", WHEEL_IMAGE), (None, IMAGE)):
            cmd = ["podman", "build", *BUILD_FLAGS, f"--build-arg=SOURCE_URL={SOURCE_URL}",
                   *([target] if target else []), f"--tag={tag}", "."]
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            r = subprocess.run(cmd, env=environment(), cwd=REPO, stdout=out,
                               stderr=subprocess.STDOUT, timeout=timeout)
            assert r.returncode == 0, \
                f"podman build failed ({log}):\n{log.read_text()[-4000:]}"
    # Only this tier's storage: earlier builds of IMAGE, now untagged, and their layers.
    podman("image", "prune", "--force", timeout=120)
    return Timed(time.monotonic() - t0, made=True)


def remove_container(container_id: str) -> None:
    podman("rm", "--force", "--time=10", container_id, timeout=60, check=False)
