"""Record, report and replay: the crash-safe writer, the size cut, bad recordings, and the fuzzed reader."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import string
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, PIPE_PAGE, READY, SNAPSHOT, T0
from tracer import cli
from tracer.cli import record as cli_record
from tracer.cli.record import record
from tracer.cli.report import report
from tracer.cli.top import replay_source
from tracer.errors import ReplayError
from tracer.model.failures import (
    KINDS,
    Failure,
    KernelCount,
    MemcgCount,
    Ready,
    Snapshot,
    SyscallCount,
)
from tracer.model.probes import ProbeStatus
from tracer.model.totals import Dashboard, Tally, snapshot_from_counts, summary_counts
from tracer.recording import format as jsonout
from tracer.recording.format import (
    LineError,
    NewerRecordingError,
    RecordedProbes,
    RecordedSummary,
    parse_record,
)
from tracer.recording.reader import RecordingReader, read_recording
from tracer.recording.replay import ReplaySource
from tracer.recording.report import Report, build_report
from tracer.recording.writer import RecordingWriter, parse_size, run_record
from tracer.run import FakeSource
from tracer.views.dashboard import render, render_plain, summary_text
from tracer.views.lines import format_line
from tracer.views.report import FROM_LINES, FROM_SUMMARY, report_obj, report_text
from tracer.views.top import run_top
from tracer.views.watch import run_watch

pytestmark = pytest.mark.unit

assert cli.main  # the group is imported before the commands (as the entry point does)

DIAGNOSED = dataclasses.replace(
    MMAP_FAIL, cause="overcommit", confidence="inferred",
    explanation="the kernel's overcommit heuristic refused 1 TiB: ask for less",
    evidence={"overcommit_memory": 0, "request": 1 << 40})
PAGE_FAIL = Failure(time=T0 + 1, kind="page_alloc", pid=200, tid=200, comm="piper",
                    cgroup="/tight", cgroup_id=43, syscall="fcntl", errno="ENOMEM", order=8,
                    gfp=PIPE_PAGE.gfp, opportunistic=True, kernel_stack=PIPE_PAGE.kernel_stack)
MEMCG_HIT = Failure(time=T0 + 2, kind="memcg", pid=0, tid=0, comm="", cgroup="/tight",
                    cgroup_id=0, cause="memcg_limit", explanation="/tight is at memory.max",
                    detail={"event": "max", "increase": 18, "total": 18})
SUMMARY_COUNTS = summary_counts(SNAPSHOT)
EXAMPLES = int(os.environ.get("MEMTRACE_FUZZ_EXAMPLES", "300"))  # more for a deeper run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def line(obj: dict[str, Any]) -> str:
    return jsonout.dumps(obj) + "\n"


def recording_lines(*failures: Failure, summary: Optional[Snapshot] = SNAPSHOT) -> list[str]:
    out = [line(jsonout.ready_obj(READY))] + [line(jsonout.failure_obj(f)) for f in failures]
    if summary is not None:
        out.append(line(jsonout.summary_obj(summary)))
    return out


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(lines))
    return str(path)


def invoke(command, *args: str):
    return CliRunner().invoke(command, list(args))


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text, size", [
    ("100M", 100 << 20), ("1G", 1 << 30), ("512k", 512 << 10), ("1.5G", 3 << 29),
    ("4096", 4096), ("2GiB", 2 << 30), ("10MB", 10 << 20), (" 3 T ", 3 << 40),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "0", "-1", "1X", "1.2.3G", "G"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_record_refuses_a_bad_max_size(tmp_path):
    r = invoke(record, "-o", str(tmp_path / "r.jsonl"), "--max-size", "lots")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Invalid value for '--max-size': 'lots' is not a size (e.g. 100M, 1G)" in r.output
    assert not (tmp_path / "r.jsonl").exists()


# --------------------------------------------------------------------------- writing


def _source(*batches: list[Failure]) -> FakeSource:
    return FakeSource(READY, batches=list(batches), snapshots=[Snapshot(), SNAPSHOT])


def _record(path: Path, source: FakeSource, max_size: int = 1 << 30,
            **kw: Any) -> tuple[RecordingWriter, list[str]]:
    told: list[str] = []
    writer = RecordingWriter(str(path), max_size, on_limit=lambda: told.append("limit"), **kw)
    try:
        run_record(source, writer, duration=0.5, log=told.append)
    finally:
        writer.close()
    return writer, told


def test_record_writes_the_watch_json_contract(tmp_path):
    path = tmp_path / "r.jsonl"
    writer, told = _record(path, _source([DIAGNOSED], [], [FCNTL_FAIL]))
    objs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [o["type"] for o in objs] == ["ready", "failure", "failure", "summary"]
    assert objs[0] == jsonout.ready_obj(READY)
    assert objs[1] == jsonout.failure_obj(DIAGNOSED)
    assert objs[2]["syscall"] == "fcntl" and objs[2]["linked"][0]["order"] == 8
    assert objs[3]["counts"] == SUMMARY_COUNTS
    assert objs[3]["dropped"] == {**SNAPSHOT.drops, "recording_size_limit": 0}
    assert (writer.failures, writer.dropped, writer.size) == (2, 0, path.stat().st_size)
    assert told[0] == ("memtrace 0.1.0 on 6.18.0-test: 2/3 probes attached; "
                       f"recording to {path}; Ctrl-C to stop")


def test_each_line_is_one_write_and_syncs_are_a_second_apart(tmp_path, monkeypatch):
    writes: list[bytes] = []
    syncs: list[float] = []
    now = [100.0]
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(bytes(data))
                        or real_write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(now[0]))
    writer = RecordingWriter(str(tmp_path / "r.jsonl"), 1 << 30, clock=lambda: now[0])
    writer.write_ready(READY)
    for i in range(6):
        now[0] += 0.4
        writer.write_failure(dataclasses.replace(MMAP_FAIL, time=T0 + i))
    writer.tick()
    assert syncs == pytest.approx([101.2, 102.4])  # at most one a second
    now[0] += 5
    writer.tick()  # nothing new since: no sync
    writer.write_summary(SNAPSHOT)  # the summary is synced at once
    writer.close()
    assert syncs == pytest.approx([101.2, 102.4, 107.4])
    assert len(writes) == 8
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)
    assert b"".join(writes) == (tmp_path / "r.jsonl").read_bytes()


def test_max_size_stops_failure_lines_but_counts_them(tmp_path):
    path = tmp_path / "r.jsonl"
    room = len(line(jsonout.ready_obj(READY))) + len(line(jsonout.failure_obj(DIAGNOSED)))
    failures = [dataclasses.replace(DIAGNOSED, time=T0 + i) for i in range(5)]
    writer, told = _record(path, _source(failures[:1], failures[1:3], failures[3:]),
                           max_size=room)
    assert told.count("limit") == 1  # told once
    assert (writer.failures, writer.dropped) == (1, 4)
    objs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [o["type"] for o in objs] == ["ready", "failure", "summary"]
    assert objs[-1]["dropped"]["recording_size_limit"] == 4
    assert objs[-1]["counts"] == SUMMARY_COUNTS  # the exact totals are not cut
    text = report_text(build_report(str(path), RecordingReader(path.open("rb"))))
    assert "4 failures not written (the recording reached its --max-size)" in text
    assert "recording_size_limit 4" in text


def test_max_size_warning_through_the_command(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    src = _source([DIAGNOSED], [FCNTL_FAIL])
    monkeypatch.setattr(cli_record, "live_source", lambda *a, **k: src)
    r = invoke(record, "-o", str(path), "--max-size", "100", "--duration", "0.5")
    assert r.exit_code == 0, r.output
    assert r.stderr.count(f"memtrace: warning: {path} reached --max-size 100 B: from now on "
                          "failures are counted in the summary, not written\n") == 1
    assert re.search(rf"memtrace: recorded 0 failures \(\S+ \S+, 2 more only counted "
                     rf"\(--max-size\)\) to {re.escape(str(path))}", r.stderr), r.stderr
    assert json.loads(path.read_text().splitlines()[-1])["dropped"]["recording_size_limit"] == 2


def test_record_cannot_write_is_one_line(tmp_path):
    r = invoke(record, "-o", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output == (f"memtrace: error: cannot write {tmp_path}/no/such/dir.jsonl: "
                        "No such file or directory\n")


def test_record_that_never_started_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = invoke(record, "-o", str(path), "--duration", "1")
    assert r.exit_code != 0 and "needs root" in r.output and "Traceback" not in r.output
    assert not path.exists()


def test_a_killed_recording_keeps_every_complete_line(tmp_path):
    """What SIGKILL leaves: no summary, maybe half a line; the rest reads back."""
    path = tmp_path / "r.jsonl"
    writer = RecordingWriter(str(path), 1 << 30)
    writer.write_ready(READY)
    writer.write_failure(DIAGNOSED)
    writer.write_failure(PAGE_FAIL)
    os.write(writer._fd, line(jsonout.failure_obj(FCNTL_FAIL))[:57].encode())  # cut mid-line
    # no close(): the process is gone
    problems: list[tuple[int, str]] = []
    rep = build_report(str(path), RecordingReader(path.open("rb"),
                                                  warn=lambda n, why: problems.append((n, why))))
    assert problems == [(4, "truncated: the recording was cut off mid-line")]
    assert rep.counts_from == "failure_lines" and rep.dropped is None
    assert rep.failure_lines == 2
    assert rep.counts["by_process"] == {"100": {"comm": "leaky", "failures": 1},
                                        "200": {"comm": "piper", "failures": 1}}
    assert rep.counts["page_alloc_by_order"] == {"8": {str(PIPE_PAGE.gfp): 1}}


# --------------------------------------------------------------------------- report


def test_report_round_trip_with_a_summary(tmp_path):
    path = write(tmp_path / "r.jsonl", recording_lines(DIAGNOSED, PAGE_FAIL, FCNTL_FAIL,
                                                       MEMCG_HIT))
    rep = build_report(path, RecordingReader(open(path, "rb")))
    assert rep.ready == READY
    assert (rep.counts_from, rep.counts, rep.failure_lines) == ("summary", SUMMARY_COUNTS, 4)
    assert rep.dropped == SNAPSHOT.drops
    assert rep.by_cause == {"memcg_limit": 1, "overcommit": 1}
    assert [who for who, _ in rep.findings] == ["cgroup /tight", "pid 100 (leaky)"]
    assert rep.findings[1][1] == DIAGNOSED
    assert (rep.first, rep.last) == (T0, T0 + 2)

    text = report_text(rep)
    assert text.startswith(f"memtrace report of {path}\nrecorded by memtrace 0.1.0 on kernel "
                           "6.18.0-test; 4 failure lines, ")
    assert FROM_SUMMARY in text and FROM_LINES not in text
    assert "failures: 7 (syscall 5, page_alloc 1, oom_kill 1)" in text
    for table in ("Failures by process", "Failures by cgroup", "Failures by syscall",
                  "Page allocation failures by order x GFP", "Failures by cause",
                  "Findings: the latest per process / cgroup"):
        assert f"\n{table}" in text, table
    assert re.search(r"^\| +100 \| leaky +\| +4 \|$", text, re.M)
    assert re.search(r"^\| mmap +\| ENOMEM +\| +3 \|$", text, re.M)
    assert re.search(r"^\| +8 \| 1 MiB \| GFP_KERNEL_ACCOUNT\|__GFP_NOWARN \| +1 \|$", text, re.M)
    assert re.search(r"^\| pid 100 \(leaky\) \| overcommit +\| inferred +\| the kernel's "
                     r"overcommit heuristic refused 1 TiB: ask for less \|$", text, re.M)
    assert "dropped: ringbuf_full 2, counter_map_full 0" in text
    assert text.isascii()


def test_report_without_a_summary_counts_the_failure_lines(tmp_path):
    path = write(tmp_path / "r.jsonl", recording_lines(DIAGNOSED, PAGE_FAIL, FCNTL_FAIL,
                                                       MEMCG_HIT, summary=None))
    rep = build_report(path, RecordingReader(open(path, "rb")))
    assert rep.counts_from == "failure_lines"
    tally = Tally()
    for f in (DIAGNOSED, PAGE_FAIL, FCNTL_FAIL, MEMCG_HIT):
        tally.add(f)
    assert rep.counts == summary_counts(tally.snapshot())
    assert rep.counts["total"] == 3 and rep.counts["by_kind"]["page_alloc"] == 1
    assert rep.counts["memcg_events"] == {"/tight": {"max": 18}}
    text = report_text(rep)
    assert FROM_LINES in text and "counts: from the failure lines" in text
    assert "dropped: unknown (no summary line)" in text


def test_report_command_text_and_json(tmp_path):
    path = write(tmp_path / "r.jsonl", recording_lines(DIAGNOSED, FCNTL_FAIL))
    r = invoke(report, path)
    assert r.exit_code == 0 and r.stderr == ""
    assert "leaky" in r.stdout and "overcommit" in r.stdout and FROM_SUMMARY in r.stdout
    r = invoke(report, "--json", path)
    assert r.exit_code == 0 and r.stderr == ""
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(objs) == 1
    obj = objs[0]
    assert {"type", "counts", "by_cause", "findings", "problems"} <= set(obj)
    assert (obj["type"], obj["counts_from"], obj["file"]) == ("report", "summary", path)
    assert (obj["version"], obj["kernel"], obj["failure_lines"]) == ("0.1.0", "6.18.0-test", 2)
    assert obj["counts"] == SUMMARY_COUNTS and obj["by_cause"] == {"overcommit": 1}
    assert obj["findings"] == [{
        "who": "pid 100 (leaky)", "time": "2026-09-21T14:13:20.000000Z", "kind": "syscall",
        "pid": 100, "comm": "leaky", "cgroup": "/box", "syscall": "mmap", "errno": "ENOMEM",
        "size": 1 << 40, "cause": "overcommit", "explanation": DIAGNOSED.explanation,
        "confidence": "inferred", "evidence": {"overcommit_memory": 0, "request": 1 << 40}}]
    assert obj["problems"] == [] and obj["first"] == obj["findings"][0]["time"]


def test_report_of_a_recording_without_failures(tmp_path):
    path = write(tmp_path / "r.jsonl", recording_lines(summary=Snapshot(drops={"x": 0})))
    r = invoke(report, path)
    assert r.exit_code == 0
    assert "no allocation failures recorded" in r.stdout and "0 failure lines" in r.stdout


# --------------------------------------------------------------------------- bad recordings


def _bad(tmp_path: Path, lines: list[str]):
    path = write(tmp_path / "bad.jsonl", lines)
    return path, invoke(report, path), invoke(report, "--json", path)


@pytest.mark.parametrize("bad, n, reason", [
    ("garbage\n", 3, "not JSON (Expecting value)"),
    ('{"type": "bogus"}\n', 3, "unknown record type 'bogus'"),
    ('{"no": "type"}\n', 3, "not a memtrace record (no type)"),
    ('[1, 2]\n', 3, "not a memtrace record (no type)"),
    ('{"type": "failure", "kind": "syscall"}\n', 3, "malformed failure record (no time)"),
    ('{"type": "failure", "time": "2026-01-01T00:00:00Z", "kind": "syscall", "pid": "x"}\n',
     3, "malformed failure record (pid is not an integer)"),
    ('{"type": "failure", "time": "yesterday", "kind": "syscall"}\n', 3,
     "malformed failure record (time 'yesterday' is not an ISO 8601 time)"),
    ('{"type": "summary", "counts": {"total": -1}}\n', 3,
     "malformed summary record (counts.total holds something that is not a count)"),
])
def test_a_bad_line_is_named_and_skipped(tmp_path, bad, n, reason):
    lines = recording_lines(DIAGNOSED, FCNTL_FAIL)
    lines.insert(n - 1, bad)
    path, text, as_json = _bad(tmp_path, lines)
    for r in (text, as_json):
        assert r.exit_code == 0 and "Traceback" not in r.output
        assert r.stderr == f"memtrace: warning: {path}: line {n}: {reason}; skipped\n"
    assert "leaky" in text.stdout and "piper" in text.stdout  # still reports
    assert f"skipped 1 unreadable line: line {n} ({reason})" in text.stdout
    obj = json.loads(as_json.stdout)
    assert obj["problems"] == [{"line": n, "problem": reason}]
    assert obj["counts"] == SUMMARY_COUNTS and obj["failure_lines"] == 2


def test_garbage_and_a_truncated_last_line(tmp_path):
    lines = recording_lines(DIAGNOSED, FCNTL_FAIL, summary=None)
    lines += ["\x00\x00garbage\n", line(jsonout.failure_obj(FCNTL_FAIL))[:40]]
    path, text, as_json = _bad(tmp_path, lines)
    assert text.exit_code == 0 and as_json.exit_code == 0
    assert text.stderr == (
        f"memtrace: warning: {path}: line 4: not JSON (Expecting value); skipped\n"
        f"memtrace: warning: {path}: line 5: truncated: the recording was cut off mid-line; "
        "skipped\n")
    assert "counts: from the failure lines" in text.stdout
    assert json.loads(as_json.stdout)["problems"] == [
        {"line": 4, "problem": "not JSON (Expecting value)"},
        {"line": 5, "problem": "truncated: the recording was cut off mid-line"}]


def test_an_unterminated_but_complete_last_line_is_kept(tmp_path):
    lines = recording_lines(DIAGNOSED)
    lines[-1] = lines[-1].rstrip("\n")
    path, text, _ = _bad(tmp_path, lines)
    assert text.exit_code == 0 and text.stderr == "" and FROM_SUMMARY in text.stdout


def test_invalid_utf8_is_a_skipped_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes("".join(recording_lines(DIAGNOSED)).encode() + b"\xff\xfe{}\n")
    r = invoke(report, str(path))
    assert r.exit_code == 0
    assert r.stderr == f"memtrace: warning: {path}: line 4: not UTF-8 text; skipped\n"


NEWER = ("line 1: recorded by memtrace 0.2.0, newer than this memtrace 0.1.0: "
         "upgrade memtrace to read it")


@pytest.mark.parametrize("version", ["0.2.0", "1.0", "0.10.3"])
def test_a_newer_recording_is_refused(tmp_path, capsys, version):
    lines = recording_lines(DIAGNOSED)
    lines[0] = lines[0].replace('"version":"0.1.0"', f'"version":"{version}"')
    path, text, as_json = _bad(tmp_path, lines)
    message = NEWER.replace("0.2.0", version, 1)
    for r in (text, as_json):
        assert r.exit_code == 2 and r.stdout == ""
        assert r.stderr == f"memtrace: error: {path}: {message}\n"
    with pytest.raises(SystemExit) as e:
        replay_source(path, 0)
    assert e.value.code == 2
    assert capsys.readouterr().err == f"memtrace: error: {path}: {message}\n"


def test_same_minor_newer_patch_or_older_is_read(tmp_path):
    for version in ("0.1.7", "0.0.9", "?"):
        lines = recording_lines(DIAGNOSED)
        lines[0] = lines[0].replace('"version":"0.1.0"', f'"version":"{version}"')
        path, text, _ = _bad(tmp_path, lines)
        assert text.exit_code == 0 and text.stderr == "", version


def test_empty_missing_directory(tmp_path, capsys):
    (tmp_path / "empty").write_text("")
    (tmp_path / "blank").write_text("\n\n")
    (tmp_path / "junk").write_text("junk\n")
    cases = [
        (tmp_path / "empty", "empty file, not a recording", ""),
        (tmp_path / "missing", "no such file", ""),
        (tmp_path, "is a directory, not a recording", ""),
        (tmp_path / "blank", "no memtrace records in it", ""),
        (tmp_path / "junk", "no memtrace records in it",
         f"memtrace: warning: {tmp_path / 'junk'}: line 1: not JSON (Expecting value); "
         "skipped\n"),
    ]
    for path, message, warning in cases:
        for r in (invoke(report, str(path)), invoke(report, "--json", str(path))):
            assert r.exit_code == 1 and r.stdout == "", path
            assert r.stderr == f"{warning}memtrace: error: {path}: {message}\n"
        with pytest.raises(SystemExit) as e:
            replay_source(str(path), 1.0)
        assert e.value.code == 1
        assert capsys.readouterr().err == f"{warning}memtrace: error: {path}: {message}\n"


def test_strict_reader_keeps_its_messages():
    assert read_recording(recording_lines(MMAP_FAIL)) == (READY, [MMAP_FAIL])
    with pytest.raises(NewerRecordingError, match=re.escape(NEWER)):
        read_recording([recording_lines()[0].replace("0.1.0", "0.2.0")])


# --------------------------------------------------------------------------- replay


class Clock:
    """A fake monotonic clock that sleeping advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _replay(lines: list[str], speed: float, clock: Optional[Clock] = None) -> ReplaySource:
    clock = clock or Clock()
    return ReplaySource(RecordingReader(lines), speed, clock=clock, sleep=clock.sleep)


def _spaced() -> list[Failure]:
    return [dataclasses.replace(DIAGNOSED, time=T0), dataclasses.replace(FCNTL_FAIL, time=T0 + 2),
            dataclasses.replace(PAGE_FAIL, time=T0 + 2), dataclasses.replace(MEMCG_HIT, time=T0 + 5)]


@pytest.mark.parametrize("speed, seconds", [(1.0, [0, 2, 2, 5]), (2.0, [0, 1, 1, 2.5]),
                                            (0.5, [0, 4, 4, 10])])
def test_replay_hands_out_failures_when_their_time_comes(speed, seconds):
    clock = Clock()
    src = _replay(recording_lines(*_spaced()), speed, clock)
    assert src.start() == READY
    start, got = clock.now, []
    while not src.done:
        for f in src.poll(0.1):
            got.append((round(clock.now - start, 6), f))
    assert [t for t, _ in got] == pytest.approx(seconds, abs=0.11)
    assert [f for _, f in got] == _spaced()
    assert src.poll(0.1) == [] and src.drain() == []


def test_replay_speed_zero_is_at_once_and_totals_end_with_the_summary():
    clock = Clock()
    src = _replay(recording_lines(*_spaced()), 0, clock)
    src.start()
    assert src.poll() == _spaced() and clock.now == 1000.0
    assert src.done
    assert summary_counts(src.snapshot()) == SUMMARY_COUNTS
    assert src.snapshot().drops == SNAPSHOT.drops


def test_replay_totals_so_far_come_from_the_failures():
    clock = Clock()
    src = _replay(recording_lines(*_spaced()), 1.0, clock)
    src.start()
    assert src.poll() == _spaced()[:1]
    assert summary_counts(src.snapshot())["by_process"] == {"100": {"comm": "leaky",
                                                                    "failures": 1}}
    while not src.done:
        src.poll()
    assert summary_counts(src.snapshot()) == SUMMARY_COUNTS


def test_replay_without_summary_ends_with_the_failure_totals():
    src = _replay(recording_lines(*_spaced(), summary=None), 0)
    src.start()
    src.poll()
    assert src.done and summary_counts(src.snapshot())["total"] == 3


def test_replay_without_a_ready_line():
    src = _replay(recording_lines(MMAP_FAIL)[1:], 0)
    assert src.start().version == "?" and src.poll() == [MMAP_FAIL]


def test_top_replay_ends_by_itself_with_the_plain_tables(tmp_path):
    path = write(tmp_path / "r.jsonl", recording_lines(*_spaced()))
    src = replay_source(path, 0)
    out = io.StringIO()
    started = time.monotonic()
    run_top(src, duration=30, interval=0.2, out=out, terminal=False)
    assert time.monotonic() - started < 5
    text = out.getvalue()
    assert text.isascii() and "memtrace summary: 7 allocation failures" in text
    assert "[" in text and "memtrace 0.1.0 | kernel 6.18.0-test" in text
    assert re.search(r"^\| +100 \| leaky +\| +4 \|$", text, re.M)
    assert "overcommit" in text and "dropped: ringbuf_full 2" in text


def test_top_replay_in_a_terminal_and_not_diagnosed_again(tmp_path, monkeypatch):
    from tracer import run as runner

    monkeypatch.setattr(runner, "Diagnoser", lambda: pytest.fail("replay diagnosed again"))
    path = write(tmp_path / "r.jsonl", recording_lines(MMAP_FAIL, DIAGNOSED))
    out = io.StringIO()
    run_top(replay_source(path, 0), duration=30, interval=0.2, out=out, terminal=True)
    assert "leaky" in re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue())


def test_top_replay_warns_about_bad_lines_and_goes_on(tmp_path, capsys):
    lines = recording_lines(DIAGNOSED, FCNTL_FAIL)
    lines.insert(2, "{oops\n")
    path = write(tmp_path / "r.jsonl", lines)
    out = io.StringIO()
    run_top(replay_source(path, 0), duration=30, interval=0.2, out=out, terminal=False)
    assert capsys.readouterr().err == (f"memtrace: warning: {path}: line 3: not JSON "
                                       "(Expecting property name enclosed in double quotes); "
                                       "skipped\n")
    assert "piper" in out.getvalue()


# --------------------------------------------------------------------------- totals


def test_tally_counts_like_the_kernel_counters():
    tally = Tally()
    for f in (DIAGNOSED, FCNTL_FAIL, PAGE_FAIL, MEMCG_HIT, MEMCG_HIT):
        tally.add(f)
    s = tally.snapshot({"ringbuf_full": 1})
    assert set(s.syscalls) == {SyscallCount(100, "leaky", "/box", "mmap", "ENOMEM", 1),
                               SyscallCount(200, "piper", "/tight", "fcntl", "ENOMEM", 1)}
    assert s.kernel == (KernelCount(200, "piper", "/tight", "page_alloc", 8, PIPE_PAGE.gfp,
                                    False, 1),)
    assert s.memcg == (MemcgCount("/tight", "max", 36),)
    assert s.drops == {"ringbuf_full": 1}


names = st.text(string.ascii_letters + "/_-.", min_size=1, max_size=8)
syscall_counts = st.builds(SyscallCount, st.integers(1, 5), st.sampled_from(["a", "b"]),
                           st.one_of(st.none(), st.sampled_from(["/x", "/y"])),
                           st.sampled_from(["mmap", "brk", "fcntl"]),
                           st.one_of(st.none(), st.sampled_from(["ENOMEM", "EAGAIN"])),
                           st.integers(1, 9))
kernel_counts = st.builds(KernelCount, st.integers(1, 5), st.sampled_from(["a", "b"]),
                          st.one_of(st.none(), st.sampled_from(["/x", "/y"])),
                          st.sampled_from(["page_alloc", "slab", "vmalloc", "oom_kill"]),
                          st.integers(0, 10), st.sampled_from(["GFP_KERNEL", "GFP_NOWAIT"]),
                          st.booleans(), st.integers(1, 9))
memcg_counts = st.builds(MemcgCount, names, st.sampled_from(["max", "oom"]), st.integers(1, 9))
snapshots = st.builds(Snapshot, st.lists(syscall_counts, max_size=6).map(tuple),
                      st.lists(kernel_counts, max_size=6).map(tuple),
                      st.lists(memcg_counts, max_size=3,
                               unique_by=lambda m: (m.cgroup, m.event)).map(tuple),
                      st.dictionaries(names, st.integers(0, 9), max_size=3))


def _consistent(s: Snapshot) -> Snapshot:
    """What the collector produces: a pid has one comm, kinds other than page_alloc and
    slab carry no gfp, only page_alloc an order."""
    kernel = tuple(dataclasses.replace(
        k, comm=f"c{k.pid}", order=k.order if k.kind == "page_alloc" else None,
        gfp=k.gfp if k.kind in ("page_alloc", "slab") else None) for k in s.kernel)
    syscalls = tuple(dataclasses.replace(c, comm=f"c{c.pid}") for c in s.syscalls)
    return Snapshot(syscalls, kernel, s.memcg, s.drops)


@FUZZ
@given(snapshots.map(_consistent))
def test_a_summary_replays_into_the_same_tables(s):
    counts = summary_counts(s)
    rec = parse_record(1, jsonout.dumps(jsonout.summary_obj(s)))
    assert isinstance(rec, RecordedSummary) and rec.counts == counts
    assert summary_counts(snapshot_from_counts(rec.counts, rec.dropped)) == counts


# --------------------------------------------------------------------------- fuzzing


def _check_parsed(rec: object) -> None:
    """What the reader returns is safe for every view."""
    if isinstance(rec, Failure):
        format_line(rec)
        Tally().add(rec)
        jsonout.dumps(jsonout.failure_obj(rec))
    elif isinstance(rec, RecordedSummary):
        rep = Report("f", None, dict(rec.counts), "summary", dict(rec.dropped), 0, {},
                               [], [])
        report_text(rep)
        jsonout.dumps(report_obj(rep))
        summary_counts(snapshot_from_counts(rec.counts, rec.dropped))
    else:
        assert isinstance(rec, Ready)


def _parse(n: int, text: Any) -> None:
    try:
        rec = parse_record(n, text)
    except LineError as e:
        assert e.line == n and str(e).startswith(f"line {n}: ")
        assert str(e).isascii() or not isinstance(text, str)
        return
    _check_parsed(rec)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)
FAILURE_KEYS = list(jsonout.failure_obj(FCNTL_FAIL))
SUMMARY_KEYS = list(jsonout.summary_obj(SNAPSHOT)["counts"])


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text):
    _parse(7, text)


@FUZZ
@given(st.binary(max_size=100))
def test_fuzz_arbitrary_bytes(data):
    _parse(1, data)


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json(value):
    _parse(2, json.dumps(value))


@FUZZ
@given(st.sampled_from([jsonout.failure_obj(DIAGNOSED), jsonout.failure_obj(FCNTL_FAIL),
                        jsonout.failure_obj(PAGE_FAIL), jsonout.failure_obj(MEMCG_HIT),
                        jsonout.ready_obj(READY), jsonout.summary_obj(SNAPSHOT)]),
       st.lists(st.tuples(st.sampled_from(FAILURE_KEYS + SUMMARY_KEYS + [
           "kind", "probes", "counts", "dropped", "version", "type"]), json_values),
           min_size=1, max_size=4),
       st.sampled_from(list(KINDS)))
def test_fuzz_valid_records_with_fields_replaced(obj, changes, kind):
    obj = json.loads(json.dumps(obj))
    if obj["type"] == "failure":
        obj["kind"] = kind
    for key, value in changes:
        counts = obj.get("counts")
        target = counts if isinstance(counts, dict) and key in SUMMARY_KEYS else obj
        target[key] = value
    _parse(3, json.dumps(obj))


@FUZZ
@given(st.sampled_from(recording_lines(DIAGNOSED, FCNTL_FAIL, MEMCG_HIT)),
       st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 40), st.text(max_size=6)),
                min_size=1, max_size=5))
def test_fuzz_mutated_lines(text, edits):
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut:]
    _parse(4, text)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(recording_lines(DIAGNOSED, FCNTL_FAIL)),
                          st.text(max_size=30), json_values.map(json.dumps)), max_size=8))
def test_fuzz_whole_recordings(lines):
    problems: list[tuple[int, str]] = []
    try:
        recs = list(RecordingReader(lines, warn=lambda n, why: problems.append((n, why))))
    except ReplayError:
        return
    for _n, rec in recs:
        _check_parsed(rec)
    try:
        src = ReplaySource(iter(recs), 0)
    except ReplayError:
        return
    src.start()
    while not src.done:
        src.poll()
    board = Dashboard()
    board.ready = src.start()
    board.add([rec for _n, rec in recs if isinstance(rec, Failure)])
    board.update(src.snapshot())
    assert render_plain(board).isascii() and summary_text(board).isascii()
    Console(file=io.StringIO(), width=100).print(render(board, width=100, height=40))


def test_fuzz_deep_nesting_and_huge_numbers():
    for text in ("[" * 100_000 + "]" * 100_000, '{"type": "failure", "pid": ' + "9" * 5000 + "}",
                 '{"type": "ready", "version": "' + "9" * 5000 + '.1"}', "NaN", "1e999",
                 '{"type": "failure", "time": "2026-01-01T00:00:00", "kind": "page_alloc", '
                 '"order": 70}',
                 '{"type": "failure", "time": "0001-01-01T00:00:00-23:59", "kind": "memcg"}'):
        _parse(5, text)


# --------------------------------------------------------------------------- probe changes
STANDBY_READY = dataclasses.replace(READY, probes=(
    *READY.probes, ProbeStatus("kmalloc", "standby", "raw_tp", "attached after a failure")))
ARMED = tuple(dataclasses.replace(p, status="attached", reason="armed: mmap() ENOMEM")
              if p.name == "kmalloc" else p for p in STANDBY_READY.probes)


def _arming_source() -> FakeSource:
    """Standby at ready; attached from the first tick on (the source's states as LiveSource
    reports them after a failure armed the slab hooks)."""
    return FakeSource(STANDBY_READY, snapshots=[Snapshot(probes=STANDBY_READY.probes),
                                                Snapshot(probes=ARMED)])


def test_watch_json_says_when_a_probe_attaches_once():
    out = io.StringIO()
    run_watch(_arming_source(), duration=2.3, as_json=True, out=out)
    objs = [json.loads(x) for x in out.getvalue().splitlines()]
    changes = [o for o in objs if o["type"] == "probes"]
    assert len(changes) == 1, objs  # two ticks, one change
    assert changes[0]["changed"] == ["kmalloc"]
    assert {p["name"]: p["status"] for p in changes[0]["probes"]}["kmalloc"] == "attached"
    rec = parse_record(3, json.dumps(changes[0]))
    assert isinstance(rec, RecordedProbes) and rec.changed == ("kmalloc",)
    assert [p.status for p in rec.probes] == [p.status for p in ARMED]


def test_watch_json_is_silent_while_no_probe_changes():
    out = io.StringIO()
    source = FakeSource(STANDBY_READY, snapshots=[Snapshot(probes=STANDBY_READY.probes)])
    run_watch(source, duration=1.3, as_json=True, out=out)
    assert [json.loads(x)["type"] for x in out.getvalue().splitlines()] == ["ready", "summary"]


def test_a_recording_keeps_probe_changes_and_report_reads_past_them(tmp_path):
    path = tmp_path / "r.jsonl"
    told: list[str] = []
    writer = RecordingWriter(str(path), 1 << 30, on_limit=lambda: None)
    try:
        run_record(_arming_source(), writer, duration=1.3, log=told.append)
    finally:
        writer.close()
    types = [json.loads(x)["type"] for x in path.read_text().splitlines()]
    assert types == ["ready", "probes", "summary"]
    with open(path, "rb") as fh:
        recs = [rec for _n, rec in RecordingReader(fh)]
    assert isinstance(recs[1], RecordedProbes) and recs[1].changed == ("kmalloc",)
    r = CliRunner().invoke(report, [str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["problems"] == []  # the probes line is no bad line


@pytest.mark.parametrize("bad", [
    {"type": "probes", "time": "2026-01-01T00:00:00Z", "probes": "kmalloc"},
    {"type": "probes", "time": "2026-01-01T00:00:00Z", "probes": [{"name": 3}]},
    {"type": "probes", "time": "2026-01-01T00:00:00Z", "changed": [1], "probes": []},
])
def test_a_malformed_probes_record_is_one_line_error(bad):
    with pytest.raises(LineError, match="malformed probes record"):
        parse_record(4, json.dumps(bad))


def test_a_change_after_the_last_tick_comes_before_the_summary(tmp_path):
    out = io.StringIO()
    run_watch(_arming_source(), duration=0.4, as_json=True, out=out)  # no tick at all
    assert [json.loads(x)["type"] for x in out.getvalue().splitlines()] == [
        "ready", "probes", "summary"]
    path = tmp_path / "r.jsonl"
    writer = RecordingWriter(str(path), 1 << 30, on_limit=lambda: None)
    try:
        run_record(_arming_source(), writer, duration=0.4, log=lambda _m: None)
    finally:
        writer.close()
    assert [json.loads(x)["type"] for x in path.read_text().splitlines()] == [
        "ready", "probes", "summary"]
