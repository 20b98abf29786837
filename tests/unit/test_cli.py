"""CLI argument errors and the views driven by a fake source (no root, no kernel)."""

from __future__ import annotations

import io
import json
import os
import re

import pytest
from click.testing import CliRunner

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, READY, SNAPSHOT
from tracer import cli
from tracer.model.failures import Filter, Snapshot
from tracer.run import FakeSource
from tracer.views.top import run_top
from tracer.views.watch import run_watch

pytestmark = pytest.mark.unit

ANSI = re.compile(r"\x1b\[")


def invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


def one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert needle in lines[0]


def test_unknown_pid():
    one_line_error(invoke("watch", "-p", "999999999"), "no such process: 999999999")


def test_unknown_pid_through_default_top():
    one_line_error(invoke("-p", "999999999"), "no such process: 999999999")


def test_unknown_cgroup():
    one_line_error(invoke("watch", "--cgroup", "/no/such/cgroup-xyz"), "no such cgroup")


def test_not_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    one_line_error(invoke("watch", "--duration", "1"), "needs root")


def test_bad_option_value_is_a_usage_error():
    r = invoke("watch", "--duration", "abc")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Invalid value for '--duration'" in r.output


def test_version_and_help():
    assert invoke("--version").output.strip().endswith("0.1.0")
    r = invoke("--help")
    assert r.exit_code == 0 and "watch" in r.output and "doctor" in r.output


def _source(**kw):
    return FakeSource(READY, batches=[[MMAP_FAIL], [], [FCNTL_FAIL]],
                      snapshots=[Snapshot(), SNAPSHOT], **kw)


def test_watch_json_lines():
    out = io.StringIO()
    run_watch(_source(), duration=0.5, as_json=True, out=out)
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [o["type"] for o in objs] == ["ready", "failure", "failure", "summary"]
    assert objs[1]["syscall"] == "mmap" and objs[2]["linked"][0]["order"] == 8
    assert objs[-1]["counts"]["total"] == 7


def test_watch_text_lines_name_the_cause_chain():
    out = io.StringIO()
    run_watch(_source(), duration=0.5, as_json=False, out=out)
    text = out.getvalue()
    assert "mmap() -> ENOMEM asking 1 TiB, pid 100 (leaky) cgroup /box" in text
    assert ("fcntl() -> ENOMEM, pid 200 (piper) cgroup /tight because an order-8 "
            "GFP_KERNEL_ACCOUNT|__GFP_NOWARN page allocation failed") in text
    assert "memtrace summary" in text


def test_watch_applies_the_filter_to_events_and_totals():
    out = io.StringIO()
    run_watch(_source(filt=Filter(pids=frozenset({200}))), duration=0.5, as_json=True, out=out)
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [o["pid"] for o in objs if o["type"] == "failure"] == [200]
    assert set(objs[-1]["counts"]["by_process"]) == {"200"}


def test_top_without_a_terminal_prints_plain_tables():
    out = io.StringIO()
    run_top(_source(), duration=1.5, interval=0.2, out=out, terminal=False)
    text = out.getvalue()
    assert not ANSI.search(text)
    assert text.isascii()
    assert "leaky" in text and "fcntl" in text and "memtrace summary" in text


def test_top_in_a_terminal_renders_the_dashboard():
    out = io.StringIO()
    run_top(_source(), duration=1.5, interval=0.2, out=out, terminal=True)
    text = ANSI.sub("", out.getvalue())
    assert "memtrace" in text and "leaky" in text and "ENOMEM" in text


def test_fake_source_is_closed_after_a_run():
    src = _source()
    run_watch(src, duration=0.2, as_json=True, out=io.StringIO())
    assert src.started and src.closed
