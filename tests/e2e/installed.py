"""The installed `memtrace` command the e2e tier runs, as a user would (skips the module if absent)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def find() -> str:
    found = shutil.which("memtrace")
    if found:
        return found
    venv = REPO / ".venv" / "bin" / "memtrace"
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv)
    pytest.skip("no installed memtrace command (run scripts/setup.sh)", allow_module_level=True)
    raise AssertionError("unreachable")


MEMTRACE = find()
