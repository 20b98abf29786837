"""The installed `memtrace` command the e2e tier runs, as a user would, and proof it is this checkout's code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"
MEMTRACE = "/usr/local/bin/memtrace"  # what `make setup` installs, for every user
INSTALL_PREFIX = Path("/usr/local/lib/memtrace")  # the copy of the checkout it runs
LAUNCHER_MARKER = "# managed-by: memtrace scripts/setup.sh"


def ensure_current() -> None:
    """Make MEMTRACE run this checkout's code as it is now, or fail the tier.

    The installed command runs a copy, not the checkout (which other users may not be able
    to read), so an edit since the last `make setup` would otherwise test old code. This is
    set-up's own refresh: a no-op (about 0.1 s) when the copy is current, a reinstall of a
    few seconds when it is not; set-up's lock serialises it with other checkouts and runs."""
    r = subprocess.run(["bash", str(SETUP), "--refresh"], capture_output=True, text=True,
                       timeout=1900, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        pytest.fail(f"could not install this checkout's memtrace ({SETUP} --refresh, exit "
                    f"{r.returncode}): run sudo make setup\n{r.stdout}{r.stderr}", pytrace=False)
    if not os.access(MEMTRACE, os.X_OK):
        pytest.fail(f"set-up should have installed {MEMTRACE}: run sudo make setup", pytrace=False)
    if LAUNCHER_MARKER not in Path(MEMTRACE).read_text(errors="replace").splitlines():
        pytest.fail(f"{MEMTRACE} was not written by scripts/setup.sh (set-up leaves such a file "
                    f"alone): the e2e tier would not test this checkout", pytrace=False)
