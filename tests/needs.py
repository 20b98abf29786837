"""Programs the test tiers need from packages that set-up installs: a missing one is a failure.

A test skips only when this distribution has no such package at all (`apt-cache policy`
names no candidate), which scripts/setup.sh reports too. Anything set-up could have
installed and did not is a set-up bug, and a skip would hide it."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

import pytest


def candidate(package: str) -> Optional[str]:
    """The version apt would install for `package`, or None if this distribution has none."""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        return None
    # The C locale: the "Candidate:" label is translated in others. The whole output is read
    # (no reader that stops early), so apt-cache is never cut off by a closed pipe.
    r = subprocess.run([apt_cache, "policy", package], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL,
                       env={**os.environ, "LC_ALL": "C"})
    for line in r.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            value = value.strip()
            return None if value in ("", "(none)") else value
    return None


def program(name: str, package: str) -> str:
    """The path of `name` (a command on PATH, or an absolute path) that `package` provides.

    Fails the test if it is missing although the distribution has `package`; skips it if
    the distribution has no such package."""
    found = shutil.which(name)
    if found:
        return found
    if candidate(package) is None:
        pytest.skip(f"{name}: this distribution has no '{package}' package "
                    f"(apt-cache policy {package} names no candidate)")
    pytest.fail(f"set-up should have installed {package} ({name} is missing): "
                f"run sudo make setup", pytrace=False)
