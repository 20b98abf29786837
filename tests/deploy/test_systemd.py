"""deploy/systemd/memtrace-export.service: verified by systemd, and its command line run by hand.

The test machines have no systemd as PID 1, so the unit is not started for real: its
ExecStart is expanded the way systemd expands it (Environment=, EnvironmentFile=, $VAR
split into words), run with the unit's clean environment and LimitMEMLOCK, scraped, and
stopped with its KillSignal within TimeoutStopSec."""

from __future__ import annotations

import configparser
import os
import re
import resource
import select
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests import needs
from tests.deploy.conftest import measured
from tests.e2e import installed

pytestmark = pytest.mark.deploy

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "memtrace-export.service"
# The environment systemd gives a system service before the unit's own settings.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp


def assignments(text: str) -> dict[str, str]:
    """Environment= values: space-separated KEY=VALUE words, quotes allowed."""
    return dict(word.split("=", 1) for word in shlex.split(text))


def environment_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile=: KEY=VALUE lines, # comments, quoted values."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            out[key.strip()] = " ".join(shlex.split(value))
    return out


def expand_exec(line: str, env: dict[str, str]) -> list[str]:
    """ExecStart= as systemd runs it: "$VAR" splits into words, "${VAR}" stays one word."""
    line = line.lstrip("-@:+!")
    out: list[str] = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$(\w+)", word)
        if whole:
            out += env.get(whole.group(1), "").split()
        else:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return out


def test_systemd_verifies_the_unit():
    tool = needs.program("systemd-analyze", "systemd")
    r = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    sec = subprocess.run([tool, "security", "--offline=true", str(UNIT)], capture_output=True,
                         text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+ \w+)", sec.stdout)
    assert level, sec.stdout + sec.stderr
    measured(f"systemd-analyze security: {level.group(1)} (root, BPF: see the unit's comments)")


def test_exec_start_serves_metrics_and_stops_on_the_kill_signal(tmp_path):
    installed.ensure_current()  # the unit's /usr/local/bin/memtrace runs this checkout
    svc = unit()["Service"]
    port = free_port()
    # what deploy/README.md says to put in /etc/default/memtrace-export
    defaults = tmp_path / "memtrace-export"
    defaults.write_text(f'MEMTRACE_EXPORT_ARGS="--listen 127.0.0.1:{port} --max-cgroups 200"\n')
    env = {"PATH": SYSTEMD_PATH, **assignments(svc["Environment"])}
    assert svc["EnvironmentFile"].lstrip("-") == "/etc/default/memtrace-export"
    env.update(environment_file(defaults))
    cmd = expand_exec(svc["ExecStart"], env)
    assert cmd[1:] == ["export", "--listen", f"127.0.0.1:{port}", "--max-cgroups", "200"]
    assert Path(cmd[0]).is_file(), f"{cmd[0]} is missing: sudo make setup writes it"
    memlock = resource.RLIM_INFINITY if svc["LimitMEMLOCK"] == "infinity" else \
        int(svc["LimitMEMLOCK"])
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if not may_raise_limits() and (memlock == resource.RLIM_INFINITY or memlock > hard) \
            and hard != resource.RLIM_INFINITY:
        # systemd (PID 1) could; this test runs without CAP_SYS_RESOURCE. Since 5.11 BPF
        # maps are charged to the memory cgroup, not to RLIMIT_MEMLOCK, so it runs anyway.
        measured(f"LimitMEMLOCK={svc['LimitMEMLOCK']} not applied by hand: no "
                 f"CAP_SYS_RESOURCE here, ran with the hard limit {hard} bytes")
        memlock = hard

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))

    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=limits, cwd="/")
    try:
        assert proc.stdout is not None
        log, deadline = b"", time.monotonic() + 180
        while b"metrics on" not in log:
            assert proc.poll() is None and time.monotonic() < deadline, log.decode()
            if select.select([proc.stdout], [], [], 1)[0]:
                log += os.read(proc.stdout.fileno(), 4096)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert 'memtrace_probe_attached{probe="syscall_exit",via="tp_btf"} 1.0' in body
        assert b"\x1b[" not in log, "NO_COLOR and TERM=dumb: plain text for the journal"
        kill = getattr(signal, svc["KillSignal"])
        t0 = time.monotonic()
        proc.send_signal(kill)
        out, _ = proc.communicate(timeout=int(svc["TimeoutStopSec"]))
        log += out
        measured(f"systemd unit's ExecStart: stopped {time.monotonic() - t0:.1f} s after "
                 f"{svc['KillSignal']}")
        # 0: Restart=on-failure leaves a cleanly stopped exporter stopped
        assert proc.returncode == 0, log.decode()
        assert b"Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def may_raise_limits() -> bool:
    """Whether this process has CAP_SYS_RESOURCE (may raise hard rlimits)."""
    status = Path("/proc/self/status").read_text()
    effective = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(effective >> 24 & 1)  # CAP_SYS_RESOURCE is capability 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
