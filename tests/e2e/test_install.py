"""The installed memtrace belongs to the system, not to a checkout: every user runs it, from anywhere."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from tests import needs
from tests.e2e import installed

pytestmark = pytest.mark.e2e

NOBODY = "65534"
LOGIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/", "LC_ALL": "C"}


def _as_nobody(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`argv` as an unprivileged user with a fresh login's PATH, started in `cwd`."""
    setpriv = needs.program("setpriv", "util-linux")
    return subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "env", "-i", *(f"{k}={v}" for k, v in LOGIN_ENV.items()), *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _readable_by_all(path: Path) -> bool:
    need = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
    return (path.stat().st_mode & need) == need


def test_the_install_is_a_world_readable_copy_outside_the_checkout():
    current = (installed.INSTALL_PREFIX / "current").resolve()
    r = _as_nobody([str(current / "bin" / "python"), "-I", "-c",
                    "import tracer, tracer.kernel.abi as abi; print(tracer.__file__); "
                    "print(abi.bpf_dir())"], cwd=Path("/"))
    assert r.returncode == 0, r.stderr
    module, bpf = (Path(line).resolve() for line in r.stdout.splitlines())
    assert module.is_relative_to(current) and bpf.is_relative_to(current), r.stdout
    assert (bpf / "memtrace.h").is_file() and (bpf / "memtrace.bpf.c").is_file()
    hidden = [p for p in [current, *current.rglob("*")]
              if not p.is_symlink() and not _readable_by_all(p)]
    assert not hidden, f"not readable by every user: {hidden[:5]}"


def test_any_user_runs_memtrace_from_path_in_a_directory_it_cannot_read(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root's, like a checkout cloned into /root
    r = _as_nobody(["sh", "-c", "exec memtrace explain --json $$"], cwd=private)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["type"] == "explain"
    r = _as_nobody(["memtrace", "watch", "--duration", "1"], cwd=private)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("memtrace: error:") and "needs root" in line, line
