"""The VM tier's host side: boot Debian's stock kernel once with virtme-ng, run the tests inside, report.

Run as root: `make test-vm` (extra pytest arguments: `make test-vm PYTEST_ARGS="-k oom"`).
The guest shares this host's root filesystem read-only (9p); its writes go to virtme-ng's
overlays, and its results come back through one shared writable directory
(build/test-vm: pytest.log, junit.xml, rc, times.json). Exit status: the guest's pytest's,
or 1 when the guest never got that far (then the guest console's end is printed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "build" / "test-vm"
GUEST = REPO / "tests" / "vm" / "guest.py"
# What runs inside: the bpf tests about probes, causes and cgroups, and the guest-only tier.
# The kernel_allocation test goes last: it drains memory without an OOM kill of its own, and
# a process allocating at that moment may still be OOM-killed (pytest itself, at worst).
DEFAULT_TESTS = ("tests/bpf/test_live.py", "tests/bpf/test_causes.py",
                 "tests/bpf/test_decisions.py", "tests/vm/test_probes.py",
                 "tests/vm/test_cgroup_v2.py", "tests/vm/test_exhaustion.py",
                 "tests/vm/test_fragmentation.py", "tests/vm/test_kernel_allocation.py")
MEMORY = os.environ.get("MEMTRACE_VM_MEMORY", "1536M")  # bounded: the guest OOMs on purpose
CPUS = os.environ.get("MEMTRACE_VM_CPUS", "2")
# Memory nodes: two, so that a process bound to one (test_kernel_allocation.py) can run its
# node out of memory while the other keeps the rest of the machine going.
NODES = int(os.environ.get("MEMTRACE_VM_NODES", "2"))
TIMEOUT = float(os.environ.get("MEMTRACE_VM_TIMEOUT", str(25 * 60)))
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")  # a kernel message on the guest console
SCRIPT_START = "virtme-ng-init: starting script"


class VMError(Exception):
    """Why the VM tier could not run at all (printed as one line)."""


@dataclass(frozen=True)
class Guest:
    vng: Path
    kernel: Path
    release: str
    kvm: bool


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release))


def find_vng() -> Path:
    for venv in (REPO / ".venv", REPO / ".venv-vng"):
        vng = venv / "bin" / "vng"
        if vng.is_file() and os.access(vng, os.X_OK):
            return vng
    raise VMError("virtme-ng is not installed (run: sudo make setup, or scripts/setup-vm.sh)")


def find_kernel() -> tuple[Path, str]:
    """The guest kernel: MEMTRACE_VM_KERNEL, else the newest /boot/vmlinuz-* that has 9p
    modules (virtme-ng shares the root with 9p) and headers (bcc compiles against them)."""
    forced = os.environ.get("MEMTRACE_VM_KERNEL")
    candidates = [Path(forced)] if forced else sorted(Path("/boot").glob("vmlinuz-*"))
    usable = []
    for image in candidates:
        release = image.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / release
        if (modules / "kernel" / "fs" / "9p").is_dir() and (modules / "build" / "include").exists():
            usable.append((image, release))
    if not usable:
        raise VMError("no guest kernel: /boot/vmlinuz-* with 9p modules and headers "
                      "(run scripts/setup-vm.sh: it installs linux-image-amd64 and its headers)")
    return max(usable, key=lambda pair: _version_key(pair[1]))


def kvm_usable(cpuinfo: str = "/proc/cpuinfo", dev: str = "/dev/kvm") -> bool:
    """KVM only when the CPU offers hardware virtualisation: /dev/kvm alone is not enough
    (on a nested host without vmx/svm a KVM guest dies with an emulation failure)."""
    forced = os.environ.get("MEMTRACE_VM_KVM")
    if forced in ("0", "1"):
        return forced == "1"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) is not None


def find_guest() -> Guest:
    if os.geteuid() != 0:
        raise VMError("the VM tier needs root (run: sudo make test-vm)")
    if shutil.which("qemu-system-x86_64") is None:
        raise VMError("qemu-system-x86_64 not found (run scripts/setup-vm.sh)")
    kernel, release = find_kernel()
    return Guest(find_vng(), kernel, release, kvm_usable())


def vng_command(guest: Guest, out: Path, pytest_args: list[str]) -> list[str]:
    inner = [str(REPO / ".venv" / "bin" / "python"), str(GUEST), str(out), "--", *pytest_args]
    cmd = [str(guest.vng), "--verbose", "--force-9p", "--disable-microvm",
           "-r", str(guest.kernel), "-m", MEMORY, "-p", CPUS, "--rwdir", str(out),
           "-e", shlex.join(inner)]
    if not guest.kvm:
        cmd.insert(1, "--disable-kvm")
    cmd[-2:-2] = numa_options(MEMORY, int(CPUS), NODES)
    return cmd


def numa_options(memory: str, cpus: int, nodes: int) -> list[str]:
    """virtme-ng's --numa options: `memory` ("1536M") split evenly over `nodes` nodes, each
    node a contiguous share of the CPUs (a node may have none)."""
    m = re.fullmatch(r"(\d+)([MG])", memory)
    if nodes <= 1 or not m:
        return []
    mib = int(m.group(1)) * (1024 if m.group(2) == "G" else 1)
    if mib % nodes:
        raise VMError(f"{memory} does not split evenly over {nodes} memory nodes")
    out = []
    for node in range(nodes):
        spec = f"{mib // nodes}M"
        mine = list(range(node * cpus // nodes, (node + 1) * cpus // nodes))
        if mine:
            spec += f",cpus={mine[0]}-{mine[-1]}" if len(mine) > 1 else f",cpus={mine[0]}"
        out += ["--numa", spec]
    return out


class ConsoleCopy(threading.Thread):
    """Copies the guest console to a file, and the guest's own lines (not the kernel's) to
    stdout as they come; notes when the guest's script started (the end of the boot)."""

    def __init__(self, proc: subprocess.Popen, path: Path):
        super().__init__(daemon=True)
        self.proc = proc
        self.path = path
        self.booted: Optional[float] = None

    def run(self) -> None:
        assert self.proc.stdout is not None
        with self.path.open("w") as console:
            for line in self.proc.stdout:
                console.write(line)
                console.flush()
                if self.booted is None and SCRIPT_START in line:
                    self.booted = time.monotonic()
                elif self.booted is not None and not KERNEL_LINE.match(line):
                    sys.stdout.write(line)
                    sys.stdout.flush()


def run(pytest_args: list[str]) -> int:
    guest = find_guest()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    args = pytest_args or []
    if not any(not a.startswith("-") and ("tests/" in a or a.startswith("tests")) for a in args):
        args = [*DEFAULT_TESTS, *args]
    cmd = vng_command(guest, OUT, args)
    env = {**os.environ, "PATH": f"{guest.vng.parent}:{os.environ.get('PATH', '')}"}
    print(f"test-vm: booting {guest.kernel} ({'KVM' if guest.kvm else 'TCG, no KVM'}, "
          f"{MEMORY}, {CPUS} CPUs, {NODES} memory nodes); results in {OUT}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=str(OUT), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    console = ConsoleCopy(proc, OUT / "console.log")
    console.start()
    timed_out = False
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        console.join(timeout=10)
    booted = console.booted
    total = time.monotonic() - started
    boot = (booted - started) if booted is not None else None
    times = {"boot_s": boot, "total_s": round(total, 1), "kvm": guest.kvm, "memory": MEMORY}
    guest_times = OUT / "times.json"
    if guest_times.is_file():
        times.update(json.loads(guest_times.read_text()))
    (OUT / "host-times.json").write_text(json.dumps(times, indent=1) + "\n")
    print(f"test-vm: boot {boot:.0f} s, whole tier {total:.0f} s" if boot is not None
          else f"test-vm: the guest never started its script ({total:.0f} s)")
    rc_file = OUT / "rc"
    if timed_out or not rc_file.is_file():
        why = f"timed out after {TIMEOUT:.0f} s" if timed_out else "ended without a result"
        tail = (OUT / "console.log").read_text(errors="replace").splitlines()[-80:]
        print(f"test-vm: FAILED: the guest {why}; the end of its console:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
        return 1
    rc = int(rc_file.read_text().strip() or 1)
    if rc not in (0, 5):
        log = (OUT / "pytest.log").read_text(errors="replace").splitlines()
        summary = [line for line in log if line.startswith(("FAILED ", "ERROR "))]
        print(f"test-vm: FAILED: the guest's pytest exited {rc} (its whole output: "
              f"{OUT / 'pytest.log'}, junit: {OUT / 'junit.xml'}):", file=sys.stderr)
        print("\n".join(summary or log[-40:]), file=sys.stderr)
        return rc
    if rc == 5:
        print("test-vm: FAILED: the guest collected no tests", file=sys.stderr)
        return 1
    print("test-vm: passed")
    return 0


def main() -> int:
    try:
        return run(sys.argv[1:])
    except VMError as e:
        print(f"test-vm: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
