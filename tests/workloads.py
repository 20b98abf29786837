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
from typing import Callable, Iterator, Optional

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
              timeout: float = 30.0, env: Optional[dict] = None,
              while_running: Optional[Callable[[], None]] = None) -> ChildResult:
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
    if while_running is not None:  # e.g. read the tracer's events while the child lives
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            while_running()
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

# MT_N huge mmaps, each failing with ENOMEM (overcommit): a known number of failures.
HUGE_MMAPS = """
n = int(os.environ["MT_N"])
failed = 0
for _ in range(n):
    try:
        mmap.mmap(-1, 1 << 46)
    except OSError:
        failed += 1
report(failed=failed)
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


# -- one reproduction per cause (tests/bpf/test_causes.py) ---------------------------------

MMAP_HELPERS = """
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
FAILED = ctypes.c_void_p(-1).value
def mm(size, flags, prot=3):
    p = libc.mmap(None, size, prot, flags, -1, 0)
    return (None if p == FAILED else p), ctypes.get_errno()
"""

RLIMIT_DATA_MMAP = MMAP_HELPERS + """
data = int(open("/proc/self/status").read().split("VmData:")[1].split()[0]) * 1024
limit = data + (8 << 20)
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
p, err = mm(64 << 20, 0x22)  # MAP_PRIVATE|MAP_ANONYMOUS, PROT_READ|PROT_WRITE
report(ok=p is not None, errno=err, size=64 << 20, limit=limit)
linger()
"""

MEMLOCK = MMAP_HELPERS + """
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # no CAP_IPC_LOCK any more
resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 << 10, 64 << 10))
buf, _ = mm(1 << 20, 0x22)
r = libc.mlock(buf, 1 << 20)
mlock_errno = ctypes.get_errno() if r else 0
p, locked_errno = mm(1 << 20, 0x22 | 0x2000)  # MAP_LOCKED
report(mlock_errno=mlock_errno, map_locked_errno=locked_errno if p is None else 0)
linger()
"""

STRICT_OVERCOMMIT = MMAP_HELPERS + """
size = int(os.environ["MT_SIZE"])
p, err = mm(size, 0x22)
report(ok=p is not None, errno=err, size=size)
linger()
"""

MAP_COUNT = MMAP_HELPERS + """
limit = int(open("/proc/sys/vm/max_map_count").read())
pages = limit + 8
base, _ = mm(pages * 4096, 0x22, prot=0)
err = 0
for i in range(0, pages, 2):
    if libc.mprotect(base + i * 4096, 4096, 1) != 0:
        err = ctypes.get_errno()
        break
maps = sum(1 for _ in open("/proc/self/maps"))
report(errno=err, maps=maps, max_map_count=limit)
linger()
"""

MAP_32BIT = MMAP_HELPERS + """
p, err = mm(2 << 30, 0x22 | 0x40)  # MAP_32BIT: only a 1 GiB window exists
report(ok=p is not None, errno=err)
linger()
"""

BAD_RANGE = MMAP_HELPERS + """
buf, _ = mm(3 * 4096, 0x22)
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.munmap(buf + 4096, 4096)  # a hole in the middle
r = libc.mprotect(buf, 3 * 4096, 1)
mprotect_errno = ctypes.get_errno() if r else 0
vec = ctypes.create_string_buffer(3)
r = libc.mincore(buf, 3 * 4096, vec)
mincore_errno = ctypes.get_errno() if r else 0
report(mprotect_errno=mprotect_errno, mincore_errno=mincore_errno, addr=buf)
linger()
"""

TOO_LARGE = MMAP_HELPERS + """
p, err = mm(1 << 48, 0x22)
report(ok=p is not None, errno=err)
linger()
"""

HUGETLB = MMAP_HELPERS + """
p, err = mm(2 << 20, 0x22 | 0x40000)  # MAP_HUGETLB with an empty pool
report(ok=p is not None, errno=err)
linger()
"""

HUGE_PIPE = """
import fcntl
r, w = os.pipe()
try:
    fcntl.fcntl(w, 1031, 1 << 30)  # its ring needs a kmalloc far above the largest
    report(ok=True)
except OSError as e:
    report(ok=False, errno=e.errno)
linger()
"""

FORK_IN_DEAD_PID_NS = """
libc.unshare(0x20000000)  # CLONE_NEWPID: the next child is the namespace's init
c = os.fork()
if c == 0:
    os._exit(0)
os.waitpid(c, 0)
try:
    os.fork()
    report(ok=True)
except OSError as e:
    report(ok=False, errno=e.errno)
linger()
"""
