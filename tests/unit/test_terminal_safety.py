"""Terminal safety: names the traced system chooses (comm, cgroup, frames, kernel text) reach
every human output inert, markup is never parsed, and only tracer/views/terminal.py makes a
rich Console."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.unit.fixtures import READY, T0
from tracer import cli
from tracer.cli import common
from tracer.cli.report import report as report_command
from tracer.model.failures import Failure, KernelFailure, MemcgCount, Ready, Snapshot, SyscallCount
from tracer.model.leaks import GROWTH, AllocFailure, LeakProfile
from tracer.model.probes import Examination, ProbeStatus
from tracer.model.totals import Dashboard
from tracer.recording import format as jsonout
from tracer.recording.reader import RecordingReader
from tracer.recording.report import build_report
from tracer.run import FakeSource
from tracer.views import terminal
from tracer.views.dashboard import render, render_plain, summary_text
from tracer.views.doctor import render_doctor
from tracer.views.explain import run_explain
from tracer.views.flamegraph import flamegraph_html
from tracer.views.leaks import render as render_leaks
from tracer.views.leaks import summary as leaks_summary
from tracer.views.lines import format_line
from tracer.views.report import report_text
from tracer.views.top import run_top
from tracer.views.watch import run_watch

pytestmark = pytest.mark.unit

assert cli.main  # the group is imported before the commands (as the entry point does)

TRACER = Path(__file__).resolve().parents[2] / "tracer"

# Clear the screen, set the window title, rich markup (one tag that would style, one that
# would not even parse), a right-to-left override that reverses what follows.
HOSTILE_COMM = "\x1b[2J\x1b]0;pwned\x07[bold]x\u202e"
SHOWN_COMM = "\\x1b[2J\\x1b]0;pwned\\x07[bold]x\\u202e"
# A cgroup directory an unprivileged user with a delegated subtree can create: a colour
# change, a closing tag without an opening one, a bidi isolate, a newline and a byte that
# is not UTF-8 (os.walk hands it over as a lone surrogate).
HOSTILE_CGROUP = "/user.slice/evil\x1b[31m[/]\u2066\n\udcff"
SHOWN_CGROUP = "/user.slice/evil\\x1b[31m[/]\\u2066\\n\\xff"
# A symbol or file name from the process's own binary: an OSC 8 hyperlink, the one-byte
# C1 CSI, DEL and a zero-width space.
HOSTILE_FRAME = "evil\x1b]8;;http://x/\x07fn\x9b2J\x7f\u200b"
SHOWN_FRAME = "evil\\x1b]8;;http://x/\\x07fn\\x9b2J\\x7f\\u200b"
HOSTILE_CACHE = "kmalloc\x1b[8m-64"

# rich's own escape sequences (styles, the alternate screen, cursor) that a live view may
# write; any other ESC in an output came from the traced system.
RICH_OWN = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?(?:1049|25)[hl]|\x1b\[H")
UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Cn"})


def assert_inert(text: str) -> None:
    """No character a terminal would act on, other than newlines and rich's own styling."""
    bare = RICH_OWN.sub("", text)
    bad = sorted({c for c in bare if c != "\n" and unicodedata.category(c) in UNSAFE})
    assert bad == [], f"raw {[hex(ord(c)) for c in bad]} in {text!r}"
    bare.encode("utf-8")  # and it can be written to a UTF-8 terminal at all


def plain(text: str) -> str:
    """What the terminal shows, rich's styling removed."""
    return RICH_OWN.sub("", text)


# --------------------------------------------------------------------------- inert()


@pytest.mark.parametrize("raw, shown", [
    ("\x1b", "\\x1b"), ("\x07", "\\x07"), ("\x00", "\\x00"), ("\x08", "\\x08"),
    ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\x7f", "\\x7f"),
    ("\x80", "\\x80"), ("\x9b", "\\x9b"), ("\x9d", "\\x9d"), ("\x9f", "\\x9f"),
    ("\u202a", "\\u202a"), ("\u202e", "\\u202e"), ("\u2066", "\\u2066"),
    ("\u2069", "\\u2069"), ("\u200e", "\\u200e"), ("\u061c", "\\u061c"),
    ("\u200b", "\\u200b"), ("\u200d", "\\u200d"), ("\ufeff", "\\ufeff"),
    ("\u00ad", "\\xad"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    ("\U000e0041", "\\U000e0041"),  # a Unicode tag character: invisible
    ("\udcff", "\\xff"), ("\udc80", "\\x80"),  # bytes that were not UTF-8 (surrogateescape)
    ("\ud800", "\\ud800"),  # any other lone surrogate
    ("\U0010fffe", "\\U0010fffe"),  # a noncharacter, unassigned
    (HOSTILE_COMM, SHOWN_COMM), (HOSTILE_CGROUP, SHOWN_CGROUP), (HOSTILE_FRAME, SHOWN_FRAME),
])
def test_inert_escapes_what_a_terminal_would_act_on(raw, shown):
    assert terminal.inert(raw) == shown
    assert_inert(terminal.inert(raw))


@pytest.mark.parametrize("text", [
    "leaky", "kworker/0:1", "café", "数据库", "😀", "naïve\u0301", "a b", "\u00a0nbsp",
    "[bold]literal[/]", ":smile:", "C:\\path", "system-getty.slice/getty@tty\\x2d1.service",
    "\ue000",  # private use: drawn as a glyph
])
def test_inert_keeps_printable_text_as_it_is(text):
    assert terminal.inert(text) == text


def test_inert_is_idempotent_and_takes_any_value():
    once = terminal.inert(HOSTILE_COMM + HOSTILE_CGROUP)
    assert terminal.inert(once) == once
    assert terminal.inert(42) == "42" and terminal.inert(None) == "None"


def test_inert_ascii_escapes_the_rest_of_unicode_too():
    assert terminal.inert_ascii("café\x1b\u202e") == "caf\\xe9\\x1b\\u202e"
    assert terminal.inert_ascii(HOSTILE_COMM).isascii()


# --------------------------------------------------------------------------- the Console


def _console_constructions(path: Path) -> list[str]:
    """Where `path` calls or imports rich's Console (under any alias)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rich"):
            found += [f"{path}:{node.lineno}: imports Console" for a in node.names
                      if a.name == "Console"]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                else ""
            if name == "Console":
                found.append(f"{path}:{node.lineno}: calls Console(...)")
    return found


def test_only_the_terminal_module_makes_a_console():
    owner = TRACER / "views" / "terminal.py"
    assert _console_constructions(owner), "the checker sees terminal.py's own Console"
    wrong = [hit for f in sorted(TRACER.rglob("*.py")) if f != owner
             for hit in _console_constructions(f)]
    assert wrong == []
    for f in sorted(TRACER.rglob("*.py")):  # and the plain text agrees with the AST
        if f != owner:
            assert "Console(" not in f.read_text(), f


@pytest.mark.parametrize("make", [
    lambda out: terminal.live_console(out, True),
    lambda out: terminal.live_console(out, False),
    lambda out: terminal.table_console(out),
])
def test_consoles_print_markup_and_emoji_codes_literally(make):
    out = io.StringIO()
    make(out).print("[bold red]x[/] [/x] :smile:")
    assert plain(out.getvalue()).strip() == "[bold red]x[/] [/x] :smile:"


def test_the_measuring_console_writes_nowhere_and_counts_lines():
    from rich.text import Text

    console = terminal.measuring_console(10)
    lines = console.render_lines(Text("a" * 25), console.options, pad=False)
    assert len(lines) == 3
    assert console.file.getvalue() == ""  # type: ignore[attr-defined]


def test_cell_is_an_inert_text_never_parsed():
    t = terminal.cell(HOSTILE_COMM, "red")
    assert t.plain == SHOWN_COMM and str(t.style) == "red" and not t.spans


# --------------------------------------------------------------------------- hostile events

MMAP = Failure(time=T0, kind="syscall", pid=666, tid=666, comm=HOSTILE_COMM,
               cgroup=HOSTILE_CGROUP, cgroup_id=9, syscall="mmap", errno="ENOMEM", size=1 << 46,
               user_stack=(HOSTILE_FRAME, "main (evil)"), kernel_stack=("do_mmap",),
               cause="overcommit", confidence="inferred",
               explanation=f"pid 666 ({HOSTILE_COMM}) asked more than overcommit allows")
SLAB = Failure(time=T0 + 1, kind="syscall", pid=666, tid=666, comm=HOSTILE_COMM,
               cgroup=HOSTILE_CGROUP, cgroup_id=9, syscall="pipe2", errno="ENOMEM",
               linked=(KernelFailure("slab", 64, None, None, False, cache=HOSTILE_CACHE,
                                     kernel_stack=(HOSTILE_FRAME,)),),
               kernel_stack=(HOSTILE_FRAME,))
HIT = Failure(time=T0 + 2, kind="memcg", pid=0, tid=0, comm="", cgroup=HOSTILE_CGROUP,
              cgroup_id=0, cause="memcg_limit",
              explanation=f"{HOSTILE_CGROUP} is at memory.max",
              detail={"event": "max", "increase": 3, "total": 3})
HOSTILE_READY = Ready("0.1.0", "6.18.0\x1b]0;kernel\x07", (
    ProbeStatus("syscall_exit", "attached", "raw_tp", "sys_exit"),
    ProbeStatus("evil\x1b[2J", "failed", None, "bcc said \x1b[5m no"),
))
TOTALS = Snapshot(
    syscalls=(SyscallCount(666, HOSTILE_COMM, HOSTILE_CGROUP, "mmap", "ENOMEM", 1),
              SyscallCount(666, HOSTILE_COMM, HOSTILE_CGROUP, "pipe2", "ENOMEM", 1)),
    memcg=(MemcgCount(HOSTILE_CGROUP, "max", 3),),
    drops={"ringbuf_full": 0},
)


def _source(ready: Ready = READY) -> FakeSource:
    return FakeSource(ready, batches=[[MMAP], [SLAB, HIT]], snapshots=[Snapshot(), TOTALS])


def _dashboard() -> Dashboard:
    d = Dashboard()
    d.started, d.ready = T0, HOSTILE_READY
    d.update(TOTALS)
    d.add([MMAP, SLAB, HIT])
    return d


def test_watch_lines_and_summary_are_inert():
    out = io.StringIO()
    run_watch(_source(HOSTILE_READY), duration=0.3, as_json=False, out=out)
    text = out.getvalue()
    assert_inert(text)
    lines = text.splitlines()
    assert lines[0].startswith("memtrace 0.1.0 on 6.18.0\\x1b]0;kernel\\x07: 1/2 probes")
    assert "evil\\x1b[2J failed" in lines[0]
    assert f"pid 666 ({SHOWN_COMM}) cgroup {SHOWN_CGROUP}" in text
    assert f"from {'kmalloc' + chr(92) + 'x1b[8m-64'}" in text  # the slab cache
    assert "memtrace summary" in text
    summary = text[text.index("memtrace summary"):]
    assert f"| {SHOWN_COMM} " in summary and f"| {SHOWN_CGROUP} " in summary
    # one line per failure: a newline in a cgroup name cannot forge a line of output
    assert sum(1 for x in lines if x[:2].isdigit() and "pid 666" in x) == 2


def test_watch_json_keeps_the_exact_names():
    out = io.StringIO()
    run_watch(_source(), duration=0.3, as_json=True, out=out)
    assert "\x1b" not in out.getvalue() and "\u202e" not in out.getvalue()
    objs = [json.loads(x) for x in out.getvalue().splitlines()]
    failure = next(o for o in objs if o["type"] == "failure")
    assert failure["comm"] == HOSTILE_COMM and failure["cgroup"] == HOSTILE_CGROUP
    assert failure["user_stack"][0] == HOSTILE_FRAME


def test_format_line_is_inert():
    line = format_line(MMAP)
    assert_inert(line)
    assert SHOWN_COMM in line and SHOWN_CGROUP in line and "[cause: overcommit]" in line


def test_top_plain_report_is_inert():
    out = io.StringIO()
    run_top(_source(HOSTILE_READY), duration=0.6, interval=0.2, out=out, terminal=False)
    text = out.getvalue()
    assert_inert(text)
    assert text.isascii()
    assert "kernel 6.18.0\\x1b]0;kernel\\x07" in text
    assert f"| {SHOWN_COMM} " in text and f"| {SHOWN_CGROUP} " in text
    assert "failed evil\\x1b[2J" in text
    assert render_plain(_dashboard(), now=T0 + 5).count(SHOWN_COMM) >= 2  # tables, findings


def test_top_live_dashboard_is_inert_and_prints_markup_literally():
    out = io.StringIO()
    run_top(_source(HOSTILE_READY), duration=0.6, interval=0.2, out=out, terminal=True)
    text = out.getvalue()
    assert_inert(text)
    shown = plain(text)
    assert SHOWN_COMM in shown  # "[bold]x" printed, not applied, "[/]" did not break it
    assert "kernel 6.18.0\\x1b]0;kernel\\x07" in shown and "evil\\x1b[2J(failed)" in shown


@pytest.mark.parametrize("width", [60, 120, 200])
def test_dashboard_render_is_inert_at_every_width(width):
    out = io.StringIO()
    console = terminal.live_console(out, True)
    console.width = width
    console.print(render(_dashboard(), width=width, height=60, now=T0 + 5))
    assert_inert(out.getvalue())
    shown = plain(out.getvalue())
    if width >= 120:  # wide enough that nothing is cut short
        assert SHOWN_COMM in shown and "evil\\x1b]8;;http" in shown
        assert "[cause: overcommit]" in shown
    summary = summary_text(_dashboard())
    assert_inert(summary)
    assert SHOWN_CGROUP in summary


def _recording(tmp_path: Path) -> str:
    lines = [jsonout.ready_obj(HOSTILE_READY), jsonout.failure_obj(MMAP),
             jsonout.failure_obj(SLAB), jsonout.failure_obj(HIT), jsonout.summary_obj(TOTALS)]
    path = tmp_path / "hostile\x1b[2J.jsonl"  # the file name is the user's own, but still
    path.write_text("".join(jsonout.dumps(o) + "\n" for o in lines))
    return str(path)


def test_report_text_is_inert(tmp_path):
    path = _recording(tmp_path)
    text = report_text(build_report(path, RecordingReader(open(path, "rb"))))
    assert_inert(text)
    assert text.isascii()
    assert "hostile\\x1b[2J.jsonl" in text
    assert "recorded by memtrace 0.1.0 on kernel 6.18.0\\x1b]0;kernel\\x07" in text
    assert f"| {SHOWN_COMM} " in text and f"| {SHOWN_CGROUP} " in text
    assert f"pid 666 ({SHOWN_COMM})" in text  # the findings' who and why


def test_report_command_text_is_inert_and_json_exact(tmp_path):
    path = _recording(tmp_path)
    r = CliRunner().invoke(report_command, [path])
    assert r.exit_code == 0, r.output
    assert_inert(r.stdout)
    assert SHOWN_COMM in r.stdout
    r = CliRunner().invoke(report_command, ["--json", path])
    assert "\x1b" not in r.stdout
    findings = json.loads(r.stdout)["findings"]
    assert next(f for f in findings if f["pid"] == 666)["comm"] == HOSTILE_COMM


def test_leaks_live_view_and_summary_are_inert():
    p = LeakProfile(GROWTH, [666])
    p.grow(666, 0x10000, 1 << 20, (HOSTILE_FRAME, "main (evil[/])"))
    p.failed(AllocFailure(time=T0, pid=666, function="malloc", size=64,
                          frames=(HOSTILE_FRAME,)))
    p.drops["ringbuf\x1b[2J"] = 1
    p.tick(T0)
    out = io.StringIO()
    terminal.live_console(out, True).print(render_leaks(p, 160, 5, {666}, 3.0))
    assert_inert(out.getvalue())
    assert SHOWN_FRAME in plain(out.getvalue()) and "main (evil[/])" in plain(out.getvalue())
    text = leaks_summary(p, 5)
    assert_inert(text)
    assert f"       {SHOWN_FRAME}" in text and "ringbuf\\x1b[2J 1" in text


def test_doctor_is_inert():
    exam = Examination(
        "6.18\x1b]0;t\x07",
        (("root", "yes", ""), ("kernel headers", "generic",
                               "6.18 at /usr/src/linux-headers\x1b[2J[/]")),
        (ProbeStatus("slab", "failed", "raw_tp", "bcc: \x1b[31mfailed to attach[/x]\u202e"),),
        True)
    out = io.StringIO()
    assert render_doctor(exam, out) == 0
    assert_inert(out.getvalue())
    shown = plain(out.getvalue())
    assert "kernel 6.18\\x1b]0;t\\x07" in shown
    assert "linux-headers\\x1b[2J[/]" in shown
    assert "raw_tp: bcc: \\x1b[31mfailed to attach[/x]\\u202e" in shown


# A process of the test's own that names itself: prctl takes any bytes (15 at most).
NAMED_CHILD = """
import ctypes, sys, time
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[1].encode("utf-8", "surrogateescape"), 0, 0, 0)  # PR_SET_NAME
print("named", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("comm, shown", [
    ("\x1b[2J\x1b]0;x\x07", "\\x1b[2J\\x1b]0;x\\x07"),
    ("[bold][/]\u202e", "[bold][/]\\u202e"),
])
def test_explain_of_a_process_with_a_hostile_name_is_inert(comm, shown):
    child = subprocess.Popen([sys.executable, "-c", NAMED_CHILD, comm], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "named\n"
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/comm").read_text() != comm + "\n":
            assert time.monotonic() < deadline, "the child did not rename itself"
            time.sleep(0.01)
        out = io.StringIO()
        run_explain(child.pid, as_json=False, out=out)
        assert_inert(out.getvalue())
        assert f"headroom of pid {child.pid} ({shown})" in plain(out.getvalue())
        out = io.StringIO()
        run_explain(child.pid, as_json=True, out=out)
        assert json.loads(out.getvalue())["comm"] == comm
    finally:
        child.kill()
        child.wait(timeout=5)


def test_messages_on_stderr_are_inert(capsys):
    common.log(f"memtrace: could not decode an event: no such file {HOSTILE_FRAME}")
    with pytest.raises(SystemExit) as exit_info:
        common.fail(f"no such cgroup: {HOSTILE_CGROUP}", 2)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert_inert(err)
    assert err.splitlines() == [f"memtrace: could not decode an event: no such file {SHOWN_FRAME}",
                                f"memtrace: error: no such cgroup: {SHOWN_CGROUP}"]


def test_flamegraph_html_stays_html_escaped():
    frame = "<script>alert(1)</script>\x1b[2J&amp;"
    page = flamegraph_html([{"bytes": 4096, "frames": [frame, "main"]}], f"pids [1] {frame}")
    assert "<script>alert" not in page and "</script>\x1b" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # title and the noscript list
    data = page.split('id="fg-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and frame in json.loads(data)["names"]


def test_explanations_quoting_names_stay_inert_in_every_table():
    d = _dashboard()
    d.add([dataclasses.replace(MMAP, time=T0 + 3, pid=667)])
    for text in (render_plain(d, now=T0 + 5), summary_text(d)):
        assert_inert(text)
        assert f"pid 666 ({SHOWN_COMM}) asked more" in text


def test_metrics_label_values_are_inert_and_a_scrape_never_fails_to_encode():
    from prometheus_client import CollectorRegistry, generate_latest

    from tracer.run import SnapshotRequests
    from tracer.views.prometheus import MemtraceCollector, MetricsState

    requests = SnapshotRequests()
    requests.close(TOTALS)  # no loop: every scrape gets this snapshot
    state = MetricsState(requests, 50, True, 50)
    state.ready = READY
    state.add([MMAP])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemtraceCollector(state))  # type: ignore[arg-type]
    text = generate_latest(registry).decode("utf-8")  # a non-UTF-8 cgroup name used to raise
    assert_inert(text)
    # the exposition format escapes the backslashes of the inert form once more
    assert 'cgroup="/user.slice/evil\\\\x1b[31m[/]\\\\u2066\\\\n\\\\xff"' in text
    assert 'comm="\\\\x1b[2J\\\\x1b]0;pwned\\\\x07[bold]x\\\\u202e"' in text
