"""`memtrace record`, `report` and `top --replay` as a user runs them, on a real failure and a killed recording."""

from __future__ import annotations

import errno
import json
import platform
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import workloads as w
from tests.e2e import installed
from tracer import __version__

pytestmark = pytest.mark.e2e

MEMTRACE = installed.MEMTRACE
READY_TIMEOUT = 60.0  # bcc compiles the BPF programs before `ready`
HUGE = 1 << 46
ANSI = re.compile(r"\x1b")



def memtrace(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([MEMTRACE, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def lines_of(path: Path) -> list[dict]:
    """The complete lines (a line being written while we read is left out)."""
    return [json.loads(x) for x in path.read_text().split("\n")[:-1]]


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen, err: Path) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"memtrace record ended (rc={proc.returncode}) before {what}: "
                        f"{err.read_text()!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s: {err.read_text()!r}")
        time.sleep(0.1)


def has_ready(path: Path) -> bool:
    text = path.read_text() if path.exists() else ""
    return "\n" in text and json.loads(text.split("\n", 1)[0])["type"] == "ready"


def huge_mmap(prefix: str) -> w.ChildResult:
    child = w.run_child(w.HUGE_MMAP, w.unique_comm(prefix), timeout=20)
    assert child.report == {"ok": False, "errno": errno.ENOMEM, "size": HUGE, "pid": child.pid}
    return child


class Recorder:
    """`memtrace record -o path ...` in the background; stderr to a file."""

    def __init__(self, path: Path, *args: str):
        self.path = path
        self.err = path.with_suffix(".err")
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen([MEMTRACE, "record", "-o", str(path), *args],
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         stdin=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        wait_for(lambda: has_ready(self.path), READY_TIMEOUT, "ready line", self.proc, self.err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Recorded:
    path: Path
    child: w.ChildResult
    rc: int
    stderr: str


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Recorded:
    """One real recording, shared: a huge mmap refused by the overcommit heuristic."""
    path = tmp_path_factory.mktemp("record") / "rec.jsonl"
    rec = Recorder(path, "--duration", "6")
    try:
        rec.wait_ready()
        child = huge_mmap("mt-e2e-rec")
        rc = rec.proc.wait(timeout=30)
    finally:
        rec.stop()
    return Recorded(path, child, rc, rec.err.read_text())


def test_record_writes_ready_the_failure_and_the_summary(recorded):
    assert recorded.rc == 0, recorded.stderr
    assert "Traceback" not in recorded.stderr
    assert f"recording to {recorded.path}; Ctrl-C to stop" in recorded.stderr
    assert re.search(rf"memtrace: recorded \d+ failures? \(.*\) to {re.escape(str(recorded.path))}",
                     recorded.stderr), recorded.stderr
    objs = lines_of(recorded.path)
    assert objs[0]["type"] == "ready" and objs[-1]["type"] == "summary"
    assert (objs[0]["version"], objs[0]["kernel"]) == (__version__, platform.release())
    # the failure (or tight memory) armed the slab hooks: one probes line says so
    assert sorted(o["type"] for o in objs[1:-1]) == ["failure"] * (len(objs) - 3) + ["probes"]
    [armed] = [o for o in objs if o["type"] == "probes"]
    assert sorted(armed["changed"]) == ["kmalloc", "kmem_cache_alloc"], armed
    mine = [o for o in objs if o["type"] == "failure" and o["pid"] == recorded.child.pid]
    assert [(f["kind"], f["syscall"], f["errno"], f["size"], f["comm"]) for f in mine] == [
        ("syscall", "mmap", "ENOMEM", HUGE, recorded.child.comm)]
    assert mine[0]["cause"] == "overcommit" and mine[0]["explanation"], mine[0]
    summary = objs[-1]
    assert summary["counts"]["by_process"][str(recorded.child.pid)] == {
        "comm": recorded.child.comm, "failures": 1}
    assert summary["dropped"]["recording_size_limit"] == 0


def test_report_shows_the_failure_and_its_cause(recorded):
    r = memtrace("report", str(recorded.path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = r.stdout
    assert out.startswith(f"memtrace report of {recorded.path}\n"
                          f"recorded by memtrace {__version__} on kernel {platform.release()}")
    assert "counts: from the summary line: the exact in-kernel totals" in out
    pid, comm = recorded.child.pid, recorded.child.comm
    assert re.search(rf"^\| +{pid} \| {re.escape(comm)} +\| +1 \|$", out, re.M), out
    assert re.search(r"^\| mmap +\| ENOMEM +\| +\d+ \|$", out, re.M), out
    assert re.search(r"^\| overcommit +\| +\d+ \|$", out, re.M), out
    assert re.search(rf"^\| pid {pid} \({re.escape(comm)}\) +\| overcommit +\| \w+ +\| .*"
                     r"overcommit", out, re.M), out


def test_report_json(recorded):
    r = memtrace("report", "--json", str(recorded.path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(objs) == 1
    obj = objs[0]
    assert (obj["type"], obj["counts_from"], obj["problems"]) == ("report", "summary", [])
    pid, comm = recorded.child.pid, recorded.child.comm
    assert obj["counts"]["by_process"][str(pid)] == {"comm": comm, "failures": 1}
    assert obj["counts"]["by_syscall"]["mmap"]["ENOMEM"] >= 1
    assert obj["by_cause"]["overcommit"] >= 1
    mine = [f for f in obj["findings"] if f["who"] == f"pid {pid} ({comm})"]
    assert [(f["syscall"], f["cause"], f["size"]) for f in mine] == [("mmap", "overcommit", HUGE)]
    assert mine[0]["explanation"]


def test_top_replay_prints_the_plain_tables(recorded, tmp_path):
    out_file = tmp_path / "top.txt"
    with open(out_file, "w") as out:
        r = subprocess.run([MEMTRACE, "top", "--replay", str(recorded.path), "--speed", "0"],
                           stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                           text=True, timeout=30)
    text = out_file.read_text()
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not ANSI.search(text) and text.isascii()
    assert re.search(rf"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\] memtrace {re.escape(__version__)}"
                     rf" \| kernel {re.escape(platform.release())} \| up ", text, re.M), text
    _, _, summary = text.partition("memtrace summary:")
    assert summary, text
    pid, comm = recorded.child.pid, recorded.child.comm
    assert re.search(rf"^\| +{pid} \| {re.escape(comm)} +\| +1 \|$", summary, re.M), summary
    assert re.search(r"^\| mmap +\| ENOMEM +\| +\d+ \|$", summary, re.M), summary
    assert "overcommit" in summary and "recording_size_limit 0" in summary


def test_a_corrupt_recording_is_warned_about_and_still_reported(recorded, tmp_path):
    path = tmp_path / "corrupt.jsonl"
    text = recorded.path.read_text()
    n = text.count("\n")
    path.write_text(text + "this is not json\n" + text.splitlines()[1][:60])
    r = memtrace("report", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stderr == (
        f"memtrace: warning: {path}: line {n + 1}: not JSON (Expecting value); skipped\n"
        f"memtrace: warning: {path}: line {n + 2}: truncated: the recording was cut off "
        "mid-line; skipped\n")
    assert recorded.child.comm in r.stdout and "overcommit" in r.stdout
    assert f"skipped 2 unreadable lines: line {n + 1} (" in r.stdout


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"type": "ready", "version": "99.0.0", "kernel": "x",
                                 "probes": [], "notes": []}) + "\n")
    for args, code, message in [
        (["report", str(tmp_path / "missing.jsonl")], 1, "no such file"),
        (["report", str(tmp_path)], 1, "is a directory, not a recording"),
        (["report", str(tmp_path / "empty.jsonl")], 1, "empty file, not a recording"),
        (["report", str(newer)], 2, "line 1: recorded by memtrace 99.0.0, newer than this "
                                    f"memtrace {__version__}: upgrade memtrace to read it"),
        (["top", "--replay", str(newer), "--speed", "0"], 2, "line 1: recorded by memtrace "
         f"99.0.0, newer than this memtrace {__version__}: upgrade memtrace to read it"),
    ]:
        r = memtrace(*args)
        assert (r.returncode, r.stdout) == (code, ""), (args, r.stdout, r.stderr)
        assert r.stderr == f"memtrace: error: {args[-1] if args[0] == 'report' else args[2]}: " \
                           f"{message}\n", r.stderr


def test_a_recording_killed_with_sigkill_still_reports(tmp_path):
    path = tmp_path / "killed.jsonl"
    rec = Recorder(path)
    try:
        rec.wait_ready()
        child = huge_mmap("mt-e2e-kill")

        def failure_written() -> bool:
            return any(o["type"] == "failure" and o["pid"] == child.pid for o in lines_of(path))

        wait_for(failure_written, 10, "failure line", rec.proc, rec.err)
        rec.proc.send_signal(signal.SIGKILL)
        assert rec.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        rec.stop()
    objs = lines_of(path)
    assert objs[0]["type"] == "ready" and "summary" not in [o["type"] for o in objs]

    r = memtrace("report", str(path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "counts: from the failure lines: the recording has no summary line" in r.stdout
    assert re.search(rf"^\| +{child.pid} \| {re.escape(child.comm)} +\| +1 \|$", r.stdout,
                     re.M), r.stdout
    assert "overcommit" in r.stdout and "dropped: unknown (no summary line)" in r.stdout

    r = memtrace("report", "--json", str(path))
    obj = json.loads(r.stdout)
    assert obj["counts_from"] == "failure_lines" and obj["dropped"] is None
    assert obj["counts"]["by_process"][str(child.pid)] == {"comm": child.comm, "failures": 1}

    r = memtrace("top", "--replay", str(path), "--speed", "0", timeout=30)
    assert r.returncode == 0 and child.comm in r.stdout, r.stderr
