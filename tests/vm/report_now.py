"""A pytest plugin for the guest: print each failure's traceback at once, not at the session's end.

A guest test can push the machine into global OOM; should pytest itself be killed, what
failed before is already on the console and in build/test-vm/pytest.log."""

from __future__ import annotations

import sys

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        sys.stdout.write(f"\n--- {report.nodeid} ({report.when}) failed:\n"
                         f"{report.longreprtext}\n--- end of {report.nodeid}\n")
        sys.stdout.flush()
