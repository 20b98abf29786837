"""tests/needs.py: a program set-up should have installed fails the test; one the distribution lacks skips it."""

from __future__ import annotations

import shutil

import pytest

from tests import needs

pytestmark = pytest.mark.unit

MISSING_COMMAND = "memtrace-test-no-such-command"


def test_a_present_program_is_found():
    assert needs.program("sh", "dash") == shutil.which("sh")


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="not a Debian/Ubuntu host (no apt)")
def test_missing_program_of_an_available_package_fails():
    assert needs.candidate("python3")  # every Debian and Ubuntu has it
    with pytest.raises(pytest.fail.Exception, match="set-up should have installed python3"):
        needs.program(MISSING_COMMAND, "python3")


def test_missing_program_of_a_package_the_distribution_lacks_skips():
    assert needs.candidate("memtrace-test-no-such-package") is None
    with pytest.raises(pytest.skip.Exception, match="no 'memtrace-test-no-such-package' package"):
        needs.program(MISSING_COMMAND, "memtrace-test-no-such-package")
