"""SEED.md's three examples (the article memtrace was born from), run under `memtrace watch`."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from tests import needs
from tests import workloads as w
from tests.e2e import installed

pytestmark = pytest.mark.e2e

MEMTRACE = installed.MEMTRACE
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
READY_TIMEOUT = 60.0  # bcc compiles the BPF programs before `ready`
WATCH_SECONDS = 5.0  # after `ready`: each example ends in well under a second
MiB = 1 << 20


class Watch:
    """`memtrace watch --json ARGS`, bounded by --duration: its JSON lines, read in a thread."""

    def __init__(self, *args: str):
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [MEMTRACE, "watch", "--json", "--duration", str(WATCH_SECONDS), *args],
            stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr(self) -> str:
        self._err.flush()
        self._err.seek(0)
        return self._err.read()

    def wait_ready(self) -> None:
        try:
            line = self._lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"memtrace was not ready within {READY_TIMEOUT}s: {self.stderr()!r}")
        assert line is not None, f"memtrace ended before ready: {self.stderr()!r}"
        assert json.loads(line)["type"] == "ready", line

    def objects(self) -> list[dict]:
        """Everything after `ready`, once memtrace has stopped by itself (--duration)."""
        try:
            rc = self.proc.wait(timeout=WATCH_SECONDS + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"memtrace watch did not stop after --duration {WATCH_SECONDS}")
        assert rc == 0, self.stderr()
        out = []
        while (line := self._lines.get(timeout=10)) is not None:
            out.append(json.loads(line))
        assert out and out[-1]["type"] == "summary", out[-1:]
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._err.close()


def watched(args: tuple[str, ...], workload: Callable[[], None]) -> list[dict]:
    """Run `workload` while memtrace watches; its failures, in the order they came."""
    mt = Watch(*args)
    try:
        mt.wait_ready()
        workload()
        objs = mt.objects()
    finally:
        mt.close()
    return [o for o in objs if o["type"] == "failure"]


def build(source: str, name: str, tmp: Path) -> Path:
    """Compile a fixture the way programs usually ship: -O2, no frame pointers."""
    gcc = needs.program("gcc", "gcc")
    out = tmp / name
    subprocess.run([gcc, "-O2", "-g", "-fomit-frame-pointer", "-o", str(out),
                    str(FIXTURES / source)], check=True, timeout=120)
    return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"[:15]  # a whole command name (TASK_COMM_LEN)


def joining(procs: Path) -> Callable[[], None]:
    """A preexec_fn that moves the child into a cgroup before it execs (raw os calls: the
    forked child of a threaded parent should take no Python-level locks)."""
    path = str(procs)

    def pre() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    return pre


def function_names(stack: list[str]) -> list[str]:
    """`grow_cache (seedleak-1a2b3c)` -> `grow_cache`: the function part of each frame."""
    return [frame.split(" (", 1)[0].split("+", 1)[0] for frame in stack]


# -- example 1: a C program leaks 1 MiB per malloc until malloc returns NULL ------------------

AS_LIMIT = 64 * MiB


def test_malloc_leak_bounded_by_rlimit_as(tmp_path: Path) -> None:
    """The article's first example, mallocing through grow_cache() under a 64 MiB RLIMIT_AS.

    glibc serves a 1 MiB malloc (above its 128 KiB mmap threshold) with mmap; when that
    fails it falls back to growing the heap with brk and then to a larger mmap, so the
    process fails mmap, brk (silently), mmap, and exits 1 at once. memtrace must name the
    process, the syscalls, RLIMIT_AS as the cause, and grow_cache in every user stack: the
    program is built without frame pointers and gone a moment later, so the stack must be
    unwound with .eh_frame from what was captured at the failure."""
    name = unique("seedleak")
    binary = build("seed_malloc_leak.c", name, tmp_path)
    child: dict = {}

    def limit_as() -> None:
        resource.setrlimit(resource.RLIMIT_AS,
                           (AS_LIMIT, resource.getrlimit(resource.RLIMIT_AS)[1]))

    def run() -> None:
        r = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30,
                           preexec_fn=limit_as)
        child.update(rc=r.returncode, out=r.stdout, err=r.stderr)

    failures = watched(("--comm", name), run)
    assert child["rc"] == 1, child
    leaked = int(child["out"].split()[-1])
    assert 32 <= leaked < AS_LIMIT // MiB, child  # the loop ran into the limit, not before
    assert "Memory allocation failed: Cannot allocate memory" in child["err"]

    calls = [f for f in failures if f["kind"] == "syscall"]
    assert calls, failures
    assert {f["comm"] for f in calls} == {name}
    assert len({f["pid"] for f in calls}) == 1
    assert calls[0]["syscall"] == "mmap" and calls[0]["errno"] == "ENOMEM", calls[0]
    assert calls[0]["size"] >= MiB and calls[0]["args"]["flags"] == \
        "MAP_PRIVATE|MAP_ANONYMOUS", calls[0]
    assert {f["syscall"] for f in calls} <= {"mmap", "brk"}, [f["syscall"] for f in calls]
    for f in calls:
        assert f["cause"] == "rlimit_as", f
        assert f["evidence"]["rlimit_as"] == AS_LIMIT, f
        assert f["evidence"]["total_vm"] + f["evidence"]["request"] > AS_LIMIT, f
        assert "ulimit -v" in f["explanation"]
    for f in calls:  # the leaking function, named in a stack without frame pointers
        names = function_names(f["user_stack"])
        assert "grow_cache" in names, (f["syscall"], f["user_stack"])
        assert f"grow_cache ({name}" in " ".join(f["user_stack"]), f["user_stack"]
        assert "main" in names[names.index("grow_cache"):], f["user_stack"]


# -- example 2: a bash script sets `ulimit -v 1000` and grows an array ------------------------

SEED_SCRIPT = """#!/bin/bash
ulimit -v 1000 # Set virtual memory limit to 1000 KB
array=()
for i in $(seq 1 100000); do
  array+=("$i")
done
"""


def test_bash_ulimit_v_1000(tmp_path: Path) -> None:
    """The article's second example, the script verbatim: what really fails is not bash.

    `ulimit -v 1000` succeeds although bash already maps more than 1000 KB (RLIMIT_AS only
    refuses growth), and bash itself never grows again. The command substitution forks a
    subshell (fork does not check RLIMIT_AS) that execs seq with the 1000 KB limit: the
    kernel loads seq and ld.so (under 1000 KB together), then ld.so's mmap of libc.so.6
    (about 2 MiB) fails with ENOMEM, and seq exits 127 ("failed to map segment from shared
    object"). The loop gets no words, the array stays empty, and the script exits 0: the
    only sign is seq's message. memtrace must name that process (seq, a pid that is not the
    script's), its mmap, and RLIMIT_AS of 1000 KiB as the cause; the script's own process
    has no failure. The script runs in a memory cgroup of its own (limit far above its use)
    only so that the test watches its processes and no one else's."""
    script = tmp_path / unique("seedul")
    script.write_text(SEED_SCRIPT)
    script.chmod(0o755)
    ran: dict = {}
    with w.memcg(256 * MiB) as (cg_dir, cg_path):
        def run() -> None:
            p = subprocess.Popen([str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, preexec_fn=joining(cg_dir / "cgroup.procs"))
            out, err = p.communicate(timeout=30)
            ran.update(pid=p.pid, rc=p.returncode, out=out, err=err)

        failures = watched(("--cgroup", cg_path), run)

    assert ran["rc"] == 0, ran  # the script "succeeds"
    assert "seq: error while loading shared libraries: libc.so.6: failed to map segment " \
        "from shared object" in ran["err"], ran
    assert failures, "the failing process was not reported"
    assert all(f["pid"] != ran["pid"] for f in failures), "bash itself never fails here"
    assert [(f["kind"], f["comm"], f["syscall"], f["errno"]) for f in failures] == \
        [("syscall", "seq", "mmap", "ENOMEM")], failures
    f = failures[0]
    assert f["cgroup"] == cg_path
    assert f["args"]["fd"] >= 0 and f["args"]["prot"] == "PROT_READ", f["args"]  # a file: libc
    assert f["size"] > 1000 * 1024
    assert f["cause"] == "rlimit_as", f
    assert f["evidence"]["rlimit_as"] == 1000 * 1024
    assert f["evidence"]["total_vm"] < 1000 * 1024 < f["evidence"]["total_vm"] + f["size"]
    assert "ulimit -v" in f["explanation"]


# -- example 3: mmap + memset 1 MiB in a loop, inside a small memory cgroup ----------------

MEMCG_LIMIT = 64 * MiB


def test_mmap_memset_loop_in_a_memory_cgroup(tmp_path: Path) -> None:
    """The article's third example inside a 64 MiB memory cgroup (the machine-wide version
    runs in the VM tier): mmap keeps succeeding; the page faults of memset charge the
    cgroup until it is full, and its OOM killer ends the process with SIGKILL, so no errno
    ever reaches it. memtrace must report an oom_kill of that process in that cgroup,
    caused by the cgroup's limit (the kernel's own CONSTRAINT_MEMCG: confirmed)."""
    name = unique("seedmm")
    binary = build("seed_mmap_touch.c", name, tmp_path)
    ran: dict = {}
    with w.memcg(MEMCG_LIMIT) as (cg_dir, cg_path):
        def run() -> None:
            p = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, preexec_fn=joining(cg_dir / "cgroup.procs"))
            try:
                out, err = p.communicate(timeout=30)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
            ran.update(pid=p.pid, rc=p.returncode, out=out, err=err)
            time.sleep(1.2)  # memory cgroup counters are polled once a second

        failures = watched(("--cgroup", cg_path), run)

    assert ran["rc"] == -signal.SIGKILL, ran
    touched = [int(line.split()[1]) for line in ran["out"].split("\n") if line]
    assert touched and 32 <= touched[-1] <= MEMCG_LIMIT // MiB, ran
    kills = [f for f in failures if f["kind"] == "oom_kill"]
    assert [(f["pid"], f["comm"], f["cgroup"]) for f in kills] == [(ran["pid"], name, cg_path)], \
        failures
    kill = kills[0]
    assert kill["cause"] == "memcg_limit", kill
    assert kill["confidence"] == "confirmed", kill
    assert kill["detail"]["constraint"] == "CONSTRAINT_MEMCG"
    assert kill["evidence"]["limit"] == MEMCG_LIMIT
    assert kill["detail"]["rss_bytes"] > MEMCG_LIMIT // 2  # it was the one using the memory
    assert cg_path in kill["explanation"]
    assert not [f for f in failures if f["kind"] == "syscall"], "mmap itself never failed"
