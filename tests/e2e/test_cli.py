"""The installed `memtrace` command, run the way a user runs it, against the real kernel.

Each test starts memtrace as a subprocess (bounded by --duration or a signal, and by
subprocess timeouts), provokes real allocation failures with tests.workloads children and
reads what the user would read: JSON lines, the terminal dashboard (in tmux), plain text,
error messages and exit codes. Every process a test starts is killed in its `finally`;
cgroups and sysctls are restored by the workloads context managers."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import platform
import queue
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Optional

import pytest

from tests import needs
from tests import workloads as w
from tests.e2e import installed
from tests.e2e.tmux import complete_frame, tmux, wait_screen
from tracer import __version__
from tracer.model.decode import parse_gfp

pytestmark = pytest.mark.e2e

MEMTRACE = installed.MEMTRACE


READY_TIMEOUT = 60.0  # bcc compiles the BPF programs before `ready`
HUGE = 1 << 46
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
ANSI = re.compile(r"\x1b")
FAILURE_KEYS = {"type", "time", "kind", "pid", "tid", "comm", "cgroup", "cgroup_id", "syscall",
                "errno", "size", "order", "gfp", "cause", "user_stack", "kernel_stack", "args",
                "opportunistic", "linked", "detail"}
READY_KEYS = {"type", "version", "kernel", "probes", "notes"}
PROBE_KEYS = {"name", "status", "via", "reason"}


# --------------------------------------------------------------------------- helpers


class Memtrace:
    """One `memtrace ...` process: stdout read line by line in a thread, stderr to a file."""

    def __init__(self, *args: str):
        self.args = [MEMTRACE, *args]
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self._err,
                                     stdin=subprocess.DEVNULL, text=True)
        self._q: queue.Queue = queue.Queue()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def next_line(self, timeout: float) -> Optional[str]:
        """The next stdout line, or None at end of output; fails the test on timeout."""
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{' '.join(self.args)}: no output line within {timeout}s; "
                        f"stderr: {self.stderr()!r}")
        if line is not None:
            self.lines.append(line)
        return line

    def wait_ready(self, as_json: bool = True) -> str:
        line = self.next_line(READY_TIMEOUT)
        assert line is not None, f"memtrace ended before ready: rc={self.proc.poll()} " \
                                 f"stderr={self.stderr()!r}"
        return line

    def finish(self, timeout: float) -> int:
        """Wait for exit (failing the test if it does not come), then collect all stdout."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{' '.join(self.args)} did not exit within {timeout}s")
        self._reader.join(timeout=5)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return rc

    def stderr(self) -> str:
        self._err.flush()
        self._err.seek(0)
        return self._err.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "Memtrace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def own_cgroup_path() -> str:
    """This process's memory cgroup, as memtrace reports it (children inherit it)."""
    _mount, version = w.memory_hierarchy()
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            if (version == 1 and "memory" in controllers.split(",")) or (
                    version == 2 and _id == "0"):
                return path
    raise AssertionError("no memory cgroup in /proc/self/cgroup")


def parse_json_lines(lines: list[str]) -> list[dict]:
    objs = []
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise AssertionError(f"line {i} is not JSON ({e}): {line!r}") from None
        assert isinstance(obj, dict) and obj.get("type") in ("ready", "failure", "summary",
                                                             "probes"), line
        if obj["type"] == "probes":
            check_probes(obj)
        objs.append(obj)
    return objs


def check_probes(obj: dict) -> None:
    """A probes line: the names that changed, then every probe's state."""
    assert set(obj) == {"type", "time", "changed", "probes"}, obj.keys()
    names = [p["name"] for p in obj["probes"]]
    assert obj["changed"] and set(obj["changed"]) <= set(names), obj
    for p in obj["probes"]:
        assert set(p) == {"name", "status", "via", "reason"}, p
        assert p["status"] in ("attached", "standby", "unavailable", "failed"), p


def check_ready(obj: dict) -> None:
    assert obj["type"] == "ready"
    assert set(obj) == READY_KEYS, obj.keys()
    assert obj["version"] == __version__
    assert obj["kernel"] == platform.release()
    assert isinstance(obj["notes"], list)
    assert isinstance(obj["probes"], list) and obj["probes"]
    for p in obj["probes"]:
        assert set(p) == PROBE_KEYS, p
        assert p["status"] in ("attached", "standby", "unavailable", "failed"), p
        assert isinstance(p["name"], str) and isinstance(p["reason"], str), p
    statuses = {p["name"]: p["status"] for p in obj["probes"]}
    assert statuses["syscall_exit"] == "attached"
    assert statuses["page_alloc"] == "attached"


def check_summary(obj: dict) -> None:
    assert obj["type"] == "summary"
    counts = obj["counts"]
    for key in ("total", "by_kind", "by_syscall", "by_process", "by_cgroup",
                "page_alloc_by_order", "memcg_events"):
        assert key in counts, key
    dropped = obj["dropped"]
    assert isinstance(dropped, dict) and dropped, dropped
    assert all(type(v) is int and v >= 0 for v in dropped.values()), dropped


def check_failure_common(f: dict) -> None:
    assert FAILURE_KEYS <= set(f), sorted(FAILURE_KEYS - set(f))
    assert ISO_Z.match(f["time"]), f["time"]
    when = dt.datetime.strptime(f["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.timezone.utc)
    assert abs(when.timestamp() - time.time()) < 300, f["time"]
    # The brief's contract was "cause": null; since db656a6 (diagnosis) it may name a cause.
    assert "cause" in f and (f["cause"] is None or isinstance(f["cause"], str)), f["cause"]
    assert isinstance(f["user_stack"], list) and isinstance(f["kernel_stack"], list)
    assert all(isinstance(x, str) for x in f["user_stack"] + f["kernel_stack"])


def run_huge_mmap(prefix: str) -> w.ChildResult:
    comm = w.unique_comm(prefix)
    child = w.run_child(w.HUGE_MMAP, comm, timeout=20)
    assert child.report == {"ok": False, "errno": errno.ENOMEM, "size": HUGE, "pid": child.pid}
    return child


# --------------------------------------------------------------------------- 1. watch --json


def test_watch_json_contract_with_real_failures():
    with Memtrace("watch", "--json", "--duration", "6") as mt:
        ready = json.loads(mt.wait_ready())
        check_ready(ready)

        huge = run_huge_mmap("mt-e2e-huge")
        pipe_comm = w.unique_comm("mt-e2e-pipe")
        with w.sysctl("fs.pipe-max-size", str(64 << 20)), w.memcg(512 << 10) as (d, cg_path):
            pipe = w.run_child(w.PIPE_GROW, pipe_comm, timeout=20,
                               env={"MT_JOIN_CGROUP": str(d / "cgroup.procs")})
            assert pipe.report["ok"] is False and pipe.report["errno"] == errno.ENOMEM
            time.sleep(1.2)  # memcg counters are polled once a second
        rc = mt.finish(timeout=20)
        assert rc == 0, mt.stderr()

    objs = parse_json_lines(mt.lines)
    assert objs[0] == ready
    assert [o["type"] for o in objs].count("ready") == 1
    assert objs[-1]["type"] == "summary" and [o["type"] for o in objs].count("summary") == 1
    # the first failure (or tight memory: PSI) armed the slab hooks, adaptive by default:
    # said once
    changes = [i for i, o in enumerate(objs) if o["type"] == "probes"]
    assert len(changes) == 1, [objs[i] for i in changes]
    armed = objs[changes[0]]
    assert sorted(armed["changed"]) == ["kmalloc", "kmem_cache_alloc"], armed
    states = {p["name"]: p for p in armed["probes"]}
    assert all(states[n]["status"] == "attached" and states[n]["reason"].startswith("armed: ")
               for n in armed["changed"]), armed
    failures = [o for o in objs if o["type"] == "failure"]
    for f in failures:
        assert FAILURE_KEYS <= set(f), sorted(FAILURE_KEYS - set(f))

    # the huge anonymous mmap
    mine = [f for f in failures if f["pid"] == huge.pid]
    assert [(f["kind"], f["syscall"], f["errno"]) for f in mine] == [("syscall", "mmap", "ENOMEM")]
    f = mine[0]
    check_failure_common(f)
    assert (f["size"], f["comm"], f["tid"], f["cgroup"]) == (HUGE, huge.comm, huge.pid,
                                                              own_cgroup_path())
    assert f["order"] is None and f["gfp"] is None
    assert f["args"]["length"] == HUGE
    assert f["user_stack"], "a user stack"
    assert f["kernel_stack"] == []  # at sys_exit the kernel stack is only the exit path

    # the pipe growth refused inside a 512 KiB memory cgroup
    mine = [f for f in failures if f["pid"] == pipe.pid]
    for f in mine:
        check_failure_common(f)
        assert f["comm"] == pipe_comm and f["cgroup"] == cg_path, f
    calls = [f for f in mine if f["kind"] == "syscall"]
    assert [(f["syscall"], f["errno"]) for f in calls] == [("fcntl", "ENOMEM")]
    call = calls[0]
    assert call["args"]["cmd"] == "F_SETPIPE_SZ"
    linked_pages = [k for k in call["linked"] if k["kind"] == "page_alloc"]
    assert linked_pages and linked_pages[0]["order"] == 8
    assert parse_gfp(linked_pages[0]["gfp"]).accounted  # __GFP_ACCOUNT: charged to the memcg
    pages = [f for f in mine if f["kind"] == "page_alloc"]
    assert [(p["order"], p["syscall"], p["errno"]) for p in pages] == [(8, "fcntl", "ENOMEM")]
    assert parse_gfp(pages[0]["gfp"]).accounted, pages[0]["gfp"]

    # the summary: exact in-kernel totals
    summary = objs[-1]
    check_summary(summary)
    counts = summary["counts"]
    assert counts["by_syscall"]["mmap"]["ENOMEM"] >= 1
    assert counts["by_syscall"]["fcntl"]["ENOMEM"] >= 1
    assert counts["by_process"][str(huge.pid)] == {"comm": huge.comm, "failures": 1}
    assert counts["by_process"][str(pipe.pid)]["comm"] == pipe_comm
    assert counts["by_process"][str(pipe.pid)]["failures"] >= 2  # fcntl + its page allocation
    assert counts["total"] >= 3
    # the limit hit itself, from the cgroup's own counters
    hits = [f for f in failures if f["kind"] == "memcg" and f["cgroup"] == cg_path]
    assert hits and all(f["detail"]["increase"] > 0 for f in hits), hits


PIPE_HELPER = w.PRELUDE + """
import fcntl
report(waiting=True)
sys.stdin.readline()  # "go": the test has moved this process into its memory cgroup
""" + w.PIPE_GROW


def test_watch_json_names_a_cgroup_created_right_after_ready():
    """A job started in a brand-new cgroup just after memtrace is ready (a container
    starting, a systemd scope) must still have its cgroup reported."""
    comm = w.unique_comm("mt-e2e-newcg")
    helper = subprocess.Popen([w.PYTHON, "-c", PIPE_HELPER, comm], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "MT_LINGER": "0"})
    try:
        assert helper.stdout is not None and helper.stdin is not None
        assert json.loads(helper.stdout.readline()) == {"waiting": True, "pid": helper.pid}
        with w.sysctl("fs.pipe-max-size", str(64 << 20)), \
                Memtrace("watch", "--json", "--duration", "3") as mt:
            check_ready(json.loads(mt.wait_ready()))
            with w.memcg(512 << 10) as (d, cg_path):
                (d / "cgroup.procs").write_text(str(helper.pid))
                helper.stdin.write("go\n")
                helper.stdin.flush()
                out, _ = helper.communicate(timeout=10)
                report = json.loads(out.strip().splitlines()[-1])
                assert report == {"ok": False, "errno": errno.ENOMEM, "pid": helper.pid}
                time.sleep(1.2)  # memcg counters are polled once a second
            assert mt.finish(timeout=20) == 0, mt.stderr()
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(timeout=5)

    objs = parse_json_lines(mt.lines)
    mine = [o for o in objs if o["type"] == "failure" and o["pid"] == helper.pid]
    calls = [f for f in mine if f["kind"] == "syscall"]
    assert [(f["syscall"], f["errno"], f["comm"]) for f in calls] == [("fcntl", "ENOMEM", comm)]
    assert [(f["kind"], f["cgroup"]) for f in mine] == [(f["kind"], cg_path) for f in mine]
    assert objs[-1]["counts"]["by_cgroup"].get(cg_path, 0) >= 1
    hits = [o for o in objs if o["type"] == "failure" and o["kind"] == "memcg"
            and o["cgroup"] == cg_path]
    assert hits, "the cgroup's limit hits were never reported"


# --------------------------------------------------------------------------- 2. watch -p


HELPER = w.PRELUDE + """
go, deadline = sys.argv[2], time.time() + 30
report(waiting=True)
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
""" + w.HUGE_MMAP


def test_watch_pid_filter_shows_only_that_process(tmp_path):
    comm = w.unique_comm("mt-e2e-pid")
    go = tmp_path / "go"
    helper = subprocess.Popen([w.PYTHON, "-c", HELPER, comm, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        assert helper.stdout is not None
        assert json.loads(helper.stdout.readline()) == {"waiting": True, "pid": helper.pid}
        with Memtrace("watch", "--json", "-p", str(helper.pid), "--duration", "4") as mt:
            check_ready(json.loads(mt.wait_ready()))
            other = run_huge_mmap("mt-e2e-other")  # fails too, but is not the watched pid
            go.touch()
            out, _ = helper.communicate(timeout=15)
            report = json.loads(out.strip().splitlines()[-1])
            assert report == {"ok": False, "errno": errno.ENOMEM, "size": HUGE,
                              "pid": helper.pid}
            assert mt.finish(timeout=20) == 0, mt.stderr()
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(timeout=5)

    objs = parse_json_lines(mt.lines)
    failures = [o for o in objs if o["type"] == "failure"]
    assert {f["pid"] for f in failures} == {helper.pid}, [(f["pid"], f["comm"]) for f in failures]
    assert other.pid not in {f["pid"] for f in failures}
    assert [(f["syscall"], f["errno"], f["size"], f["comm"]) for f in failures] == [
        ("mmap", "ENOMEM", HUGE, comm)]
    summary = objs[-1]
    check_summary(summary)
    assert summary["counts"]["by_process"] == {str(helper.pid): {"comm": comm, "failures": 1}}
    assert summary["counts"]["by_syscall"] == {"mmap": {"ENOMEM": 1}}


# --------------------------------------------------------------------------- 3. signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_watch_json_stops_cleanly_on_signal(sig):
    with Memtrace("watch", "--json") as mt:
        check_ready(json.loads(mt.wait_ready()))
        time.sleep(0.3)
        mt.proc.send_signal(sig)
        rc = mt.finish(timeout=5)
        err = mt.stderr()
    assert rc == 0, err
    assert "Traceback" not in err, err
    objs = parse_json_lines(mt.lines)
    assert objs[0]["type"] == "ready"
    check_summary(objs[-1])


def test_watch_text_prints_human_summary_on_ctrl_c():
    with Memtrace("watch") as mt:
        first = mt.wait_ready()
        assert first.startswith(f"memtrace {__version__} on {platform.release()}"), first
        assert "probes attached" in first
        time.sleep(0.3)
        mt.proc.send_signal(signal.SIGINT)
        rc = mt.finish(timeout=5)
        err = mt.stderr()
    assert rc == 0, err
    assert "Traceback" not in err, err
    out = "\n".join(mt.lines)
    assert "memtrace summary" in out, out
    assert "dropped:" in out


# --------------------------------------------------------------------------- 4. the TUI


def test_top_dashboard_in_a_terminal():
    needs.program("tmux", "tmux")
    # a private tmux server on its own socket: only ours is killed, and its socket removed
    sock = os.path.join(tempfile.gettempdir(), f"memtrace-e2e-tmux-{uuid.uuid4().hex[:8]}")
    session = "top"
    cmd = f"{shlex.quote(MEMTRACE)} --duration 12; sleep 30"
    header = re.compile(rf"memtrace {re.escape(__version__)} \S+ kernel \S+ \S+ \d+ failures")
    r = tmux(sock, "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd)
    assert r.returncode == 0, r.stderr
    try:
        screen = wait_screen(sock, session, lambda s: header.search(s) and "probes:" in s,
                              READY_TIMEOUT)
        assert "syscall_exit" in screen and "page_alloc" in screen
        started = time.monotonic()

        child = run_huge_mmap("mt-e2e-tui")
        # A frame is complete once its footer (the dropped line) is drawn below the
        # events: tmux may be read in the middle of a redraw.
        screen = wait_screen(sock, session, lambda s: complete_frame(s) and child.comm in s
                              and "mmap" in s and "ENOMEM" in s and str(child.pid) in s, 8)
        assert header.search(screen), screen
        assert "Recent events" in screen
        assert str(child.pid) in screen

        remaining = 12 - (time.monotonic() - started)
        final = wait_screen(sock, session, lambda s: "memtrace summary" in s,
                             max(remaining, 0) + 10, history=True)
        summary = final[final.index("memtrace summary"):]
        assert child.comm in summary and "mmap" in summary and "ENOMEM" in summary, summary
        assert "dropped:" in summary
    finally:
        tmux(sock, "kill-server")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


# --------------------------------------------------------------------------- 5. plain top


def test_top_plain_output_when_not_a_terminal(tmp_path):
    out_file = tmp_path / "top.txt"
    err_file = tmp_path / "top.err"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        proc = subprocess.Popen([MEMTRACE, "top", "--duration", "3"], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while "memtrace" not in out_file.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, "no plain report"
                time.sleep(0.1)
            child = run_huge_mmap("mt-e2e-plain")
            rc = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    text = out_file.read_text()
    assert rc == 0, err_file.read_text()
    assert not ANSI.search(text), repr(text[:500])
    assert text.isascii()
    reports = re.findall(rf"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\] memtrace {re.escape(__version__)}"
                         rf" \| kernel {re.escape(platform.release())} \| up ", text, re.M)
    assert len(reports) >= 2, text  # the first report, then one after the failure
    periodic, _, summary = text.partition("memtrace summary:")
    assert summary, text
    assert "probes: attached syscall_exit, page_alloc" in periodic
    for part in (periodic, summary):
        assert "Failures by syscall" in part
        assert re.search(r"^\| mmap +\| ENOMEM +\| +\d+ \|$", part, re.M), part
        assert re.search(rf"^\| +{child.pid} \| {re.escape(child.comm)} +\| +1 \|$", part,
                         re.M), part
        assert "dropped: " in part


# --------------------------------------------------------------------------- 6. bad input


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    assert r.stdout == "", r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("memtrace: error: "), lines[0]
    return lines[0]


def test_unknown_pid():
    line = _one_line_error(_run([MEMTRACE, "watch", "-p", "999999"]))
    assert "999999" in line and "no such process" in line


def test_unknown_cgroup():
    line = _one_line_error(_run([MEMTRACE, "watch", "--cgroup", "/no/such/cgroup"]))
    assert "/no/such/cgroup" in line and "no such cgroup" in line


def test_not_root():
    needs.program("setpriv", "util-linux")
    r = _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              MEMTRACE, "watch", "--duration", "1"])
    line = _one_line_error(r)
    assert "needs root" in line, line


def test_invalid_option_value_is_a_usage_error():
    r = _run([MEMTRACE, "watch", "--duration", "abc"])
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("Usage: memtrace watch"), r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "--duration" in errors[0] and "'abc'" in errors[0], r.stderr


# --------------------------------------------------------------------------- 7. doctor, version


def test_doctor_lists_attached_probes():
    r = _run([MEMTRACE, "doctor"], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for name in ("syscall_exit", "page_alloc", "kmalloc", "oom_kill"):
        assert re.search(rf"probe {name}\s+\S\s+attached\b", r.stdout), (name, r.stdout)
    assert "core probes attach: yes" in r.stdout


def test_version():
    r = _run([MEMTRACE, "--version"])
    assert r.returncode == 0
    assert r.stdout.strip() == f"memtrace, version {__version__}"
