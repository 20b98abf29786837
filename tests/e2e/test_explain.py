"""`memtrace explain PID` as users run it: exit status gates scripts; no root for own processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import needs
from tests.e2e import installed

pytestmark = pytest.mark.e2e

MEMTRACE = installed.MEMTRACE

NEAR_RLIMIT_AS = """
import resource, sys, time
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (int(vm / 0.95), resource.RLIM_INFINITY))
print("ready", flush=True)
time.sleep(30)
"""


def _child(code: str) -> subprocess.Popen:
    p = subprocess.Popen(["/usr/bin/python3", "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_exit_1_when_a_limit_is_nearly_used():
    p = _child(NEAR_RLIMIT_AS)
    try:
        r = subprocess.run([MEMTRACE, "explain", "--json", str(p.pid)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 1, r.stderr
        obj = json.loads(r.stdout)
        assert obj["danger"] == ["RLIMIT_AS"]
        first = obj["limits"][0]
        assert first["name"] == "RLIMIT_AS" and first["fraction"] > 0.9
        text = subprocess.run([MEMTRACE, "explain", str(p.pid)], capture_output=True, text=True,
                              timeout=30)
        assert text.returncode == 1 and "RLIMIT_AS" in text.stdout and "ulimit -v" in text.stdout
    finally:
        p.kill()
        p.wait()


def test_exit_0_for_a_process_with_room():
    p = _child("import time; print('ready', flush=True); time.sleep(30)")
    try:
        r = subprocess.run([MEMTRACE, "explain", str(p.pid)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nothing above 90%" in r.stdout
    finally:
        p.kill()
        p.wait()


def test_no_root_needed_for_own_process():
    needs.program("setpriv", "util-linux")
    # an unprivileged user examines its own shell
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "sh", "-c", f'exec {MEMTRACE} explain --json $$'],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HOME": "/tmp"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["type"] == "explain"


def test_unknown_pid_is_one_line():
    r = subprocess.run([MEMTRACE, "explain", "999999999"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "memtrace: error: no such process: 999999999"
    assert r.stdout == ""


def test_python_is_the_system_one():
    assert sys.version_info >= (3, 9)
