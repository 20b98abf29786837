"""Fixtures of the deploy tier: the image built from deploy/Dockerfile, and what the tier measured."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.deploy import podman as pm

# Lines for the end of the run: sizes, timings, resource use (pytest_terminal_summary).
MEASURED: list[str] = []
STARTED = time.monotonic()


def measured(line: str) -> None:
    MEASURED.append(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="deploy tier: needs root (privileged containers, BPF)")
    for item in items:
        if item.get_closest_marker("deploy"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if MEASURED:
        terminalreporter.section("deploy tier")
        for line in MEASURED:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"deploy tier: {time.monotonic() - STARTED:.0f} s in all")


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    image_id: str
    size: int  # bytes, as `podman image inspect` reports it


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """deploy/Dockerfile built from this checkout, on a debian base made without a registry."""
    pm.require_tools()
    logs = tmp_path_factory.mktemp("deploy-build")
    base = pm.ensure_base(logs / "debian-base.log")
    measured(f"base image {pm.base_image()}: "
             + (f"made by deploy/debian-base.sh in {base.seconds:.0f} s" if base.made
                else "cached from an earlier run"))
    built = pm.build(logs / "build.log")
    info = pm.podman("image", "inspect", "--format={{.Id}} {{.Size}}", pm.IMAGE).stdout.split()
    img = BuiltImage(pm.IMAGE, info[0], int(info[1]))
    measured(f"image {img.ref} ({img.image_id[:12]}): {img.size / 1e6:.0f} MB, "
             f"built in {built.seconds:.0f} s")
    yield img
