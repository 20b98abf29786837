"""The dashboard's diagnosis panels: failures by cause and the latest finding per process."""

from __future__ import annotations

import dataclasses

import pytest
from rich.console import Console

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, READY, SNAPSHOT
from tracer.model.failures import MemcgCount
from tracer.model.totals import Dashboard
from tracer.views.dashboard import render, render_plain, summary_text
from tracer.views.lines import format_line

pytestmark = pytest.mark.unit

MMAP = dataclasses.replace(MMAP_FAIL, cause="overcommit", confidence="inferred",
                           explanation="the kernel's overcommit heuristic refused 1 TiB")
FCNTL = dataclasses.replace(FCNTL_FAIL, cause="memcg_limit", confidence="inferred",
                            explanation="cgroup /tight is at its 512 KiB limit")


def board() -> Dashboard:
    d = Dashboard()
    d.ready = READY
    d.update(dataclasses.replace(SNAPSHOT, memcg=(MemcgCount("/tight", "failcnt", 18),)))
    d.add([MMAP, FCNTL, dataclasses.replace(MMAP, time=MMAP.time + 5)])
    return d


def test_counts_by_cause_and_latest_finding_per_process():
    d = board()
    assert d.by_cause == {"overcommit": 2, "memcg_limit": 1}
    assert [who for who, _ in d.latest_findings(5)] == ["pid 100 (leaky)", "pid 200 (piper)"]


def test_live_dashboard_shows_causes_and_findings():
    c = Console(record=True, width=160, force_terminal=True)
    c.print(render(board(), width=160, height=80))
    text = c.export_text()
    assert "Failures by cause" in text and "overcommit" in text
    assert "Latest finding" in text and "512 KiB limit" in text
    assert "Memory cgroup limit hits" in text and "failcnt" in text


def test_plain_and_summary_show_causes_and_limit_hits_apart_from_failures():
    for text in (render_plain(board(), now=MMAP.time), summary_text(board())):
        assert "Failures by cause" in text and "memcg_limit" in text
        assert "memory cgroup limit hits: 18" in text
        assert "failures: 7 (" in text and "memcg 18" not in text


def test_watch_line_ends_with_the_cause():
    assert format_line(FCNTL).endswith("[cause: memcg_limit]")
