"""e2e tier set-up: before the first e2e test, the installed memtrace is made to run this checkout's code."""

from __future__ import annotations

import pytest

from tests.e2e import installed


@pytest.fixture(scope="session", autouse=True)
def installed_memtrace_is_this_checkout() -> None:
    installed.ensure_current()
