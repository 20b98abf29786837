"""Child processes that really fail to allocate memory, for the bpf and e2e tiers.

Each runs /usr/bin/python3 with a distinct command name, reports what it did as one
JSON line on stdout and lingers briefly so its stacks can still be symbolised."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

PYTHON = "/usr/bin/python3"

PRELUDE = """
import ctypes, ctypes.util, json, mmap, os, resource, sys, time
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.prctl(15, ctypes.c_char_p(sys.argv[1].encode()), 0, 0, 0)  # PR_SET_NAME
def report(**kw):
    kw["pid"] = os.getpid()
    sys.stdout.write(json.dumps(kw) + "\\n"); sys.stdout.flush()
if os.environ.get("MT_JOIN_CGROUP"):  # join after start-up: only what follows is charged there
    open(os.environ["MT_JOIN_CGROUP"], "w").write(str(os.getpid()))
def linger():
    time.sleep(float(os.environ.get("MT_LINGER", "0.6")))
"""


@dataclass
class ChildResult:
    pid: int
    returncode: int
    report: dict
    comm: str


def run_child(body: str, comm: str, cgroup_procs: Optional[Path] = None,
              timeout: float = 30.0, env: Optional[dict] = None) -> ChildResult:
    """Run `body` in a new Python child named `comm` (optionally inside a cgroup)."""
    code = PRELUDE + "\n" + textwrap.dedent(body)
    pre = None
    if cgroup_procs is not None:
        procs = str(cgroup_procs)

        def pre() -> None:  # join the cgroup before exec, so the whole child runs in it
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    proc = subprocess.Popen([PYTHON, "-c", code, comm], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=pre,
                            env={**os.environ, **(env or {})})
    out, err = proc.communicate(timeout=timeout)
    report = {}
    for line in out.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
    return ChildResult(proc.pid, proc.returncode, report, comm)


def unique_comm(prefix: str) -> str:
    return (prefix + "-" + uuid.uuid4().hex[:6])[:15]


# -- workloads ------------------------------------------------------------------------------

HUGE_MMAP = """
try:
    mmap.mmap(-1, 1 << 46)
    report(ok=True)
except OSError as e:
    report(ok=False, errno=e.errno, size=1 << 46)
linger()
"""

RLIMIT_AS_MMAP = """
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
limit = vm + (64 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
size = 256 << 20
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
p = libc.mmap(None, size, 3, 0x22, -1, 0)
err = ctypes.get_errno()
report(ok=p not in (None, ctypes.c_void_p(-1).value), errno=err, size=size, limit=limit)
linger()
"""

RLIMIT_DATA_BRK = """
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]
cur = libc.sbrk(0)
data = int(open("/proc/self/status").read().split("VmData:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (data + (1 << 20), resource.getrlimit(resource.RLIMIT_DATA)[1]))
grow = 64 << 20
r = libc.sbrk(grow)
err = ctypes.get_errno()
report(failed=r == ctypes.c_void_p(-1).value, errno=err, old_break=cur, requested=cur + grow)
linger()
"""

PIPE_GROW = """
import fcntl
r, w = os.pipe()
try:
    fcntl.fcntl(w, 1031, 64 << 20)  # F_SETPIPE_SZ
    report(ok=True)
except OSError as e:
    report(ok=False, errno=e.errno)
linger()
"""

MMAP_BURST = """
n = int(os.environ["MT_BURST"])
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
failed = 0
for _ in range(n):
    p = libc.mmap(None, 1 << 46, 3, 0x22, -1, 0)
    if p in (None, ctypes.c_void_p(-1).value):
        failed += 1
report(failed=failed)
linger()
"""

OOM_HOG = """
report(started=True)
chunks = []
for _ in range(256):
    chunks.append(bytearray(1 << 20))  # zero-filled: every page touched
report(survived=True)
"""


# -- memory cgroups -------------------------------------------------------------------------

def memory_hierarchy() -> tuple[Path, int]:
    """(mount, version) of the hierarchy with the memory controller."""
    v2 = None
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] == "cgroup" and "memory" in parts[3].split(","):
                return Path(parts[1]), 1
            if parts[2] == "cgroup2":
                v2 = Path(parts[1])
    if v2 is not None and "memory" in (v2 / "cgroup.controllers").read_text().split():
        return v2, 2
    raise RuntimeError("no memory cgroup controller on this host")


@contextlib.contextmanager
def memcg(limit: int, name: Optional[str] = None) -> Iterator[tuple[Path, str]]:
    """A memory cgroup with a hard limit; yields (directory, hierarchy-relative path).

    Removed afterwards (waiting for its processes to leave)."""
    mount, version = memory_hierarchy()
    name = name or f"memtrace-test-{uuid.uuid4().hex[:8]}"
    d = mount / name
    d.mkdir()
    try:
        if version == 1:
            (d / "memory.limit_in_bytes").write_text(str(limit))
        else:
            (d / "memory.max").write_text(str(limit))
            (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
        yield d, "/" + name
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@contextlib.contextmanager
def sysctl(path: str, value: str) -> Iterator[None]:
    p = Path("/proc/sys") / path.replace(".", "/")
    old = p.read_text().strip()
    p.write_text(value)
    try:
        yield
    finally:
        p.write_text(old)
