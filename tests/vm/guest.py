"""The VM tier's guest side: prepare the guest like a systemd host, run pytest, leave results.

Started by tests/vm/run_vm.py inside the virtme-ng guest as
`guest.py OUT -- PYTEST_ARGS...`; writes OUT/pytest.log (also copied to the console),
OUT/junit.xml, OUT/times.json and, last, OUT/rc (pytest's exit status). Refuses to run
anywhere but in a virtme-ng guest: the tests it starts push the machine into a global OOM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST_ENV = "MEMTRACE_VM_GUEST"  # tests/vm/conftest.py runs `vm` tests only when it is "1"


def in_virtme_guest() -> bool:
    try:
        return "virtme" in Path("/proc/cmdline").read_text()
    except OSError:
        return False


def enable_memory_controller(root: Path = Path("/sys/fs/cgroup")) -> None:
    """A pure cgroup v2 guest starts with no controller enabled for children; systemd
    enables memory on a real host, and the tests' cgroups need it."""
    controllers = root / "cgroup.controllers"
    if controllers.is_file() and "memory" in controllers.read_text().split():
        (root / "cgroup.subtree_control").write_text("+memory")


def protect_from_oom_killer() -> None:
    """This harness must outlive a test gone wrong (a global OOM that kills pytest) to hand
    back the log and pytest's status."""
    Path("/proc/self/oom_score_adj").write_text("-1000")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] == "--" or (len(argv) > 2 and argv[2] != "--"):
        print("usage: guest.py OUT -- [pytest arguments]", file=sys.stderr)
        return 2
    if not in_virtme_guest():
        print("guest.py: refusing to run outside a virtme-ng guest", file=sys.stderr)
        return 2
    out = Path(argv[1])
    pytest_args = argv[3:]
    started = time.monotonic()
    enable_memory_controller()
    env = {**os.environ, GUEST_ENV: "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.vm.report_now",
           "-v", "--durations=15",
           f"--junitxml={out / 'junit.xml'}", *pytest_args]
    rc = 1
    with (out / "pytest.log").open("w") as log:
        log.write("guest: " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        protect_from_oom_killer()  # after the fork: pytest and the tests' children are judged as usual
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
            sys.stdout.flush()
        rc = proc.wait()
    (out / "times.json").write_text(json.dumps(
        {"guest_pytest_s": round(time.monotonic() - started, 1)}) + "\n")
    (out / "rc").write_text(f"{rc}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
