"""deploy/README.md shows the commands the deploy tier runs, flag for flag."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.deploy import daemonset
from tests.deploy import podman as pm

pytestmark = pytest.mark.deploy

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"


def shown_commands() -> list[list[str]]:
    """Every command of README's indented code blocks, continuation lines joined, no sudo."""
    out: list[list[str]] = []
    pending = ""
    for line in README.read_text().splitlines():
        if not line.startswith("    "):
            pending = ""
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(pending, comments=True)
        pending = ""
        if words[:1] == ["sudo"]:
            words = words[1:]
        if words:
            out.append(words)
    return out


def test_readme_runs_the_container_as_the_manifest_says():
    spec = daemonset.load()
    runs = [c for c in shown_commands() if c[:2] == ["podman", "run"]]
    assert runs == [spec.podman_run(spec.image, "memtrace")], \
        "deploy/README.md's podman run, from the manifest:\n" + \
        shlex.join(spec.podman_run(spec.image, "memtrace"))


def test_readme_builds_the_image_as_the_tier_does():
    spec = daemonset.load()
    (build,) = [c for c in shown_commands() if c[:2] == ["podman", "build"]]
    assert build[2:2 + len(pm.BUILD_FLAGS)] == list(pm.BUILD_FLAGS)
    assert f"--tag={spec.image}" in build and build[-1] == "."
    assert any(a.startswith("--build-arg=SOURCE_URL=") for a in build)


def test_readme_makes_the_base_image_with_the_script_the_tier_runs():
    release = pm.base_image().split(":")[1].removesuffix("-slim")
    assert ["deploy/debian-base.sh", release] in shown_commands()
    assert ["scripts/setup-deploy.sh"] in shown_commands()
