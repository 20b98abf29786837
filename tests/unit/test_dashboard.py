"""Tests for tracer.views.dashboard: the live dashboard, its plain fallback and the exit summary."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from tracer.model.decode import parse_gfp
from tracer.model.failures import Failure, KernelCount, KernelFailure, Ready, Snapshot, SyscallCount
from tracer.model.probes import ProbeStatus
from tracer.model.totals import Dashboard
from tracer.views.dashboard import render, render_plain, summary_text

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
GFP = parse_gfp("GFP_KERNEL_ACCOUNT|__GFP_NOWARN")
DROPS = {"ringbuf_full": 2, "counter_map_full": 0, "linked_overflow": 0,
         "user_stack": 0, "kernel_stack": 0}


def make_dashboard() -> Dashboard:
    d = Dashboard()
    d.started = T0
    d.ready = Ready(
        version="9.8.7",
        kernel="6.1.0-test",
        probes=(
            ProbeStatus("syscall_exit", "attached", "raw_tp", ""),
            ProbeStatus("kmalloc", "unavailable", None, "no tracepoint"),
            ProbeStatus("oom_kill", "failed", "raw_tp", "verifier said no"),
        ),
    )
    d.update(Snapshot(
        syscalls=(
            SyscallCount(100, "leaky", "/box", "mmap", "ENOMEM", 3),
            SyscallCount(200, "grower", "/user.slice", "brk", None, 1),
        ),
        kernel=(
            KernelCount(100, "leaky", "/box", "page_alloc", 8, GFP, False, 1),
            KernelCount(300, "kworker/0:1", "/", "page_alloc", 9, "GFP_NOWAIT", True, 50),
        ),
        drops=DROPS,
    ))
    linked = KernelFailure("page_alloc", None, 8, GFP, False,
                           kernel_stack=("__alloc_pages+0x1a/0x300", "kmalloc_large+0x20/0x90",
                                         "do_mmap", "vm_mmap_pgoff"))
    d.add([
        Failure(T0 + 1, "syscall", 100, 100, "leaky", "/box", 7, syscall="mmap",
                errno="ENOMEM", size=1 << 20, linked=(linked,),
                kernel_stack=linked.kernel_stack,
                user_stack=("__mmap+0x12 [libc.so.6]", "grow [leaky]", "main [leaky]")),
        Failure(T0 + 2, "syscall", 200, 200, "grower", "/user.slice", 8, syscall="brk"),
        Failure(T0 + 3, "page_alloc", 100, 101, "leaky", "/box", 7, order=8, gfp=GFP),
    ])
    return d


def rendered(d: Dashboard, width: int = 120, height: int = 40) -> str:
    console = Console(record=True, width=width, force_terminal=True)
    console.print(render(d, width=width, height=height, now=T0 + 65))
    return console.export_text()


def test_header_totals_exclude_opportunistic() -> None:
    text = rendered(make_dashboard())
    assert "memtrace 9.8.7" in text
    assert "kernel 6.1.0-test" in text
    assert "5 failures" in text  # 3 mmap + 1 brk + 1 order-8 page allocation
    assert "50 opportunistic" in text
    assert "55" not in text
    assert "up 1m05s" in text


def test_probe_names_shown() -> None:
    text = rendered(make_dashboard())
    for name in ("syscall_exit", "kmalloc", "oom_kill"):
        assert name in text
    assert "kmalloc(unavailable)" in text
    assert "oom_kill(failed)" in text


def test_probe_colours() -> None:
    console = Console(record=True, width=120, force_terminal=True, color_system="standard")
    console.print(render(make_dashboard(), now=T0))
    styled = console.export_text(styles=True)
    assert re.search(r"\x1b\[[0-9;]*32m[^\x1b]*syscall_exit", styled)
    assert re.search(r"\x1b\[[0-9;]*33m[^\x1b]*kmalloc", styled)
    assert re.search(r"\x1b\[[0-9;]*31m[^\x1b]*oom_kill", styled)


def test_tables() -> None:
    text = rendered(make_dashboard())
    assert "Failures by process" in text
    assert re.search(r"\b100\s+leaky\s+4\b", text)
    assert re.search(r"\b200\s+grower\s+1\b", text)
    assert re.search(r"/box\s+4\b", text)
    assert re.search(r"/user\.slice\s+1\b", text)
    assert re.search(r"mmap\s+ENOMEM\s+3\b", text)
    assert re.search(r"brk\s+no errno\s+1\b", text)
    assert re.search(r"\b8\s+1 MiB\s+GFP_KERNEL_ACCOUNT\|__GFP_NOWARN\s+1\b", text)


def test_opportunistic_apart() -> None:
    text = rendered(make_dashboard())
    assert re.search(r"Opportunistic.*not failures", text)
    assert re.search(r"\b9\s+2 MiB\s+50\b", text)
    assert "GFP_NOWAIT" not in text  # opportunistic attempts never join the failure table
    assert not re.search(r"kworker", text)  # nor the per-process failures


def test_recent_events() -> None:
    text = rendered(make_dashboard())
    assert "Recent events" in text
    assert "mmap() -> ENOMEM" in text
    assert "because an order-8" in re.sub(r"\s+", " ", text)
    assert "__alloc_pages < kmalloc_large < do_mmap" in text  # offsets dropped, 3 frames
    assert "vm_mmap_pgoff" not in text
    assert "__mmap < grow < main" in text
    assert "brk() -> no errno" in text


def test_footer_drops_and_events() -> None:
    text = rendered(make_dashboard())
    assert "ringbuf_full 2" in text
    assert "counter_map_full 0" in text
    assert "events received: 3" in text


def test_nonzero_drop_highlighted() -> None:
    console = Console(record=True, width=120, force_terminal=True, color_system="standard")
    console.print(render(make_dashboard(), now=T0))
    styled = console.export_text(styles=True)
    assert re.search(r"\x1b\[[0-9;]*31m[^\x1b]*ringbuf_full 2", styled)
    assert not re.search(r"\x1b\[[0-9;]*31m[^\x1b]*counter_map_full 0", styled)


def test_empty_dashboard_waits() -> None:
    text = rendered(Dashboard())
    assert "waiting for allocation failures" in text
    assert "Ctrl-C to stop" in text
    assert "0 failures" in text


def test_no_waiting_line_with_failures() -> None:
    assert "waiting for allocation failures" not in rendered(make_dashboard())


def crowded() -> Dashboard:
    d = make_dashboard()
    many = tuple(SyscallCount(1000 + i, f"proc{i}", f"/cg{i}", "mmap", "ENOMEM", 1)
                 for i in range(60))
    d.update(Snapshot(syscalls=d.snapshot.syscalls + many, kernel=d.snapshot.kernel,
                      drops=DROPS))
    d.add([Failure(T0 + 10 + i, "syscall", 1000 + i, 1000 + i, f"proc{i}", f"/cg{i}", i,
                   syscall="mmap", errno="ENOMEM") for i in range(60)])
    return d


def test_more_when_cut() -> None:
    text = rendered(crowded())
    assert re.search(r"\+\d+ more", text)
    assert "leaky" in text  # the largest process is kept
    shown = len(re.findall(r"\bproc\d+\b", text.split("Recent events")[0]))
    m = re.search(r"\+(\d+) more", text)  # the process table's, leftmost on its line
    assert m is not None
    assert 0 < shown < 60
    assert int(m.group(1)) == 62 - 2 - shown  # 62 processes, leaky and grower shown too


@pytest.mark.parametrize("height", [20, 30, 40, 60])
def test_fits_height(height: int) -> None:
    text = rendered(crowded(), height=height)
    assert len(text.rstrip("\n").split("\n")) <= height
    assert "events received" in text


def test_narrow_terminal_stacks() -> None:
    text = rendered(make_dashboard(), width=60, height=80)
    assert re.search(r"\b100\s+leaky\s+4\b", text)
    assert re.search(r"mmap\s+ENOMEM\s+3\b", text)
    assert all(len(line) <= 60 for line in text.split("\n"))


def test_plain_is_ascii_with_same_numbers() -> None:
    d = make_dashboard()
    text = render_plain(d, now=T0 + 65)
    assert "\x1b" not in text
    assert all(ord(c) < 128 for c in text)
    assert "failures: 5" in text
    assert "opportunistic (not failures): 50" in text
    assert re.search(r"\b100 \| leaky\s+\|\s+4 \|", text)
    assert re.search(r"/box\s+\|\s+4 \|", text)
    assert re.search(r"mmap\s+\| ENOMEM\s+\|\s+3 \|", text)
    assert re.search(r"\b8 \|\s+1 MiB \| GFP_KERNEL_ACCOUNT\|__GFP_NOWARN \|\s+1 \|", text)
    assert re.search(r"\b9 \|\s+2 MiB \|\s+50 \|", text)
    assert "ringbuf_full 2" in text
    assert "events received: 3" in text
    assert "up 1m05s" in text
    assert text.splitlines()[0].startswith("[")


def test_plain_is_deterministic() -> None:
    d = make_dashboard()
    assert render_plain(d, now=T0 + 5) == render_plain(d, now=T0 + 5)
    assert render_plain(crowded(), now=T0) == render_plain(crowded(), now=T0)


def test_plain_empty_and_non_ascii_input() -> None:
    d = Dashboard()
    assert "no allocation failures yet" in render_plain(d, now=T0)
    d.update(Snapshot(syscalls=(SyscallCount(1, "caf\u00e9", "/b\u00f6x", "mmap", "ENOMEM", 1),)))
    text = render_plain(d, now=T0)
    assert all(ord(c) < 128 for c in text)


def test_plain_cuts_long_tables() -> None:
    text = render_plain(crowded(), now=T0)
    assert re.search(r"^\+\d+ more$", text, re.M)


def test_summary_text() -> None:
    text = summary_text(make_dashboard())
    assert "5 allocation failures" in text
    assert "syscall 4, page_alloc 1" in text
    assert "opportunistic (not failures): 50 (page_alloc 50)" in text
    assert "leaky" in text and "grower" in text
    assert "brk" in text and "no errno" in text
    assert str(GFP) in text
    assert "ringbuf_full 2" in text
    assert all(ord(c) < 128 for c in text)
    assert "more" not in summary_text(crowded())  # the final summary lists everything
