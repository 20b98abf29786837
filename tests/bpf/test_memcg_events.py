"""Limit events of a memory cgroup in which nothing ever fails, read from its own counters."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import workloads as w

pytestmark = pytest.mark.bpf

MiB = 1 << 20
LIMIT = 16 * MiB
FILE_SIZE = 64 * MiB  # four times the limit: the cgroup's page cache hits it again and again

# Reads a file whose pages are not cached: each page read is charged to the child's cgroup,
# which reclaims its own clean page cache at the limit (v1 memory.failcnt grows) and never
# fails an allocation, OOM-kills or makes a syscall fail.
PAGE_CACHE_READER = """
fd = os.open(os.environ["MT_FILE"], os.O_RDONLY)
total = 0
while True:
    chunk = os.read(fd, 1 << 20)
    if not chunk:
        break
    total += len(chunk)
os.close(fd)
report(read=total)
"""


def _uncached_file(path: Path, size: int) -> None:
    """A file on disk, written and then dropped from the page cache."""
    block = b"\x5a" * MiB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MiB):
            os.write(fd, block)
        os.fsync(fd)  # clean pages can be dropped, dirty ones not
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_failcnt_of_a_limited_cgroup_where_nothing_failed_is_reported(live, tmp_path):
    mount, version = w.memory_hierarchy()
    if version != 1:
        pytest.skip("v1 memory.failcnt; cgroup v2's memory.high is covered by tests/vm")
    data = tmp_path / "uncached.bin"
    try:
        _uncached_file(data, FILE_SIZE)
        with w.memcg(LIMIT) as (d, path):
            comm = w.unique_comm("mt-failcnt")
            child = w.run_child(PAGE_CACHE_READER, comm, env={
                "MT_JOIN_CGROUP": str(d / "cgroup.procs"), "MT_FILE": str(data),
                "MT_LINGER": "0"})
            assert child.returncode == 0 and child.report["read"] == FILE_SIZE, child
            failcnt = int((d / "memory.failcnt").read_text())
            assert failcnt > 0  # the limit was hit (and reclaimed) in the kernel's own count
            # found by the watcher's rescan (every 2 s), then polled once a second
            deadline = time.monotonic() + 15
            reported = 0
            while time.monotonic() < deadline and reported < failcnt:
                live.pump(0.5)
                reported = sum(f.detail["increase"] for f in live.failures
                               if f.kind == "memcg" and f.cgroup == path
                               and f.detail["event"] == "failcnt")
            assert int((d / "memory.failcnt").read_text()) == failcnt  # nothing grew since
            oom_kills = int(dict(line.split() for line in
                                 (d / "memory.oom_control").read_text().splitlines())["oom_kill"])
    finally:
        data.unlink(missing_ok=True)
    mine = [f for f in live.failures if f.cgroup == path]
    # nothing failed in it: no failure could have told the tracer to watch this cgroup
    assert {f.kind for f in mine} == {"memcg"}, [(f.kind, f.syscall) for f in mine]
    assert oom_kills == 0
    hits = [f for f in mine if f.detail["event"] == "failcnt"]
    # every hit since the cgroup was made (after the tracer started): the exact count
    assert reported == failcnt, (reported, failcnt)
    assert hits[-1].detail["total"] == failcnt
    assert {f.pid for f in mine} == {0}

    from tracer.diagnose.diagnoser import Diagnoser
    diagnosed = Diagnoser()([hits[-1]])[0]
    assert diagnosed.cause == "memcg_limit" and path in diagnosed.explanation
