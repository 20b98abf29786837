"""`memtrace explain`: headroom from a fake /proc tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.diagnose.headroom import headroom, parse_limits
from tracer.errors import ExplainError
from tracer.host.state import HostState

pytestmark = pytest.mark.unit

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max data size             unlimited            unlimited            bytes
Max locked memory         65536                65536                bytes
Max address space         104857600            unlimited            bytes
"""


def fake_proc(tmp_path: Path, pid: int = 42, vmsize_kb: int = 97280, caps: str = "0") -> Path:
    d = tmp_path / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_text(f"Name:\tx\nVmSize:\t{vmsize_kb} kB\nVmData:\t2048 kB\n"
                              f"VmLck:\t32 kB\nVmPin:\t0 kB\nCapEff:\t{caps}\n")
    (d / "limits").write_text(LIMITS)
    (d / "maps").write_text("00400000-00401000 r-xp 0 0:0 0 /x\n" * 10)
    (d / "cgroup").write_text("0::/\n")
    (d / "comm").write_text("x\n")
    return tmp_path


def test_parse_limits():
    lim = parse_limits(LIMITS)
    assert lim["Max address space"] == 100 << 20
    assert lim["Max data size"] is None
    assert lim["Max locked memory"] == 65536


def test_headroom_sorted_by_danger(tmp_path):
    proc = fake_proc(tmp_path)
    rows = headroom(42, proc, HostState(max_map_count=100, commit_limit=1, committed_as=0))
    assert [r.name for r in rows[:3]] == ["RLIMIT_AS", "RLIMIT_MEMLOCK", "vm.max_map_count"]
    assert rows[0].used == 97280 * 1024 and rows[0].limit == 100 << 20
    assert rows[0].fraction == pytest.approx(0.95)
    assert rows[1].fraction == pytest.approx(0.5)
    assert rows[2].used == 10 and rows[2].fraction == pytest.approx(0.1)
    commit = next(r for r in rows if r.name == "CommitLimit")
    assert commit.limit is None  # no commit limit outside strict overcommit


def test_cap_ipc_lock_lifts_memlock(tmp_path):
    proc = fake_proc(tmp_path, caps=f"{1 << 14:016x}")
    memlock = next(r for r in headroom(42, proc, HostState()) if r.name == "RLIMIT_MEMLOCK")
    assert memlock.limit is None and "CAP_IPC_LOCK" in memlock.note


def test_strict_overcommit_has_a_commit_limit(tmp_path):
    proc = fake_proc(tmp_path)
    rows = headroom(42, proc, HostState(overcommit_memory=2, commit_limit=1000, committed_as=950))
    commit = next(r for r in rows if r.name == "CommitLimit")
    assert commit.fraction == pytest.approx(0.95)


def test_missing_process(tmp_path):
    with pytest.raises(ExplainError, match="no such process: 7"):
        headroom(7, tmp_path, HostState())
