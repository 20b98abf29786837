"""The leak model: address-range ledger, attribution by stack, rates, JSON and the view."""

from __future__ import annotations

import pytest
from rich.console import Console

from tracer.model.leaks import GROWTH, MALLOC, AllocFailure, LeakProfile, RangeLedger
from tracer.views.leaks import render, sparkline, summary

pytestmark = pytest.mark.unit

A = ("leak_here (app)", "main (app)")
B = ("churn (app)", "main (app)")
C = ("remap_it (app)", "main (app)")


def test_ledger_partial_unmaps_split_ranges():
    led = RangeLedger()
    led.add(0x1000, 0x4000, A)
    assert led.remove(0x2000, 0x1000) == [(A, 0x1000)]  # a hole in the middle
    assert led.total() == 0x3000
    assert led.owner_of(0x1000, 0x5000) == [(A, 0x1000), (A, 0x2000)]
    assert led.remove(0x0, 0x10000) == [(A, 0x1000), (A, 0x2000)]
    assert led.total() == 0


def test_ledger_map_fixed_replaces_the_old_owner():
    led = RangeLedger()
    led.add(0x1000, 0x2000, A)
    led.add(0x2000, 0x2000, B)
    assert led.owner_of(0x1000, 0x3000) == [(A, 0x1000), (B, 0x2000)]


def test_growth_attribution_and_unmapping():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x10000, 1 << 20, A)
    p.grow(7, 0x200000, 1 << 20, B)
    p.shrink(7, 0x200000, 1 << 20)
    assert [(s.frames, s.bytes) for s in p.top()] == [(A, 1 << 20)]
    assert p.total_bytes() == 1 << 20


def test_mremap_keeps_old_owner_and_charges_growth_to_the_caller():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x10000, 0x4000, A)
    p.move(7, 0x10000, 0x4000, 0x900000, 0x10000, C)
    got = {s.frames: s.bytes for s in p.top()}
    assert got == {A: 0x4000, C: 0xC000}


def test_touches_inside_tracked_growth_are_not_counted_twice():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x10000, 0x10000, A)
    p.touched(7, 0x12345, B, 4096 * 64)  # inside A's heap extension
    p.touched(7, 0x900000, B, 4096 * 64)  # memory reserved before tracing
    assert {s.frames: s.bytes for s in p.top()} == {A: 0x10000, B: 4096 * 64}


def test_rates_and_trend():
    p = LeakProfile(MALLOC, [7])
    p.set_outstanding(A, 1000, 1)
    p.tick(100.0)
    p.reset_outstanding()
    p.set_outstanding(A, 3000, 3)
    p.tick(102.0)
    s = p.top()[0]
    assert s.bytes_per_second == pytest.approx(1000.0)
    assert list(s.history) == [1000, 3000]
    assert p.growing(5)[0].frames == A


def test_json_intervals_and_failures():
    p = LeakProfile(MALLOC, [7, 3])
    p.set_outstanding(A, 2048, 2)
    p.set_outstanding(B, 0, 0)
    p.failed(AllocFailure(1_790_000_000.0, 7, "malloc", 1 << 46, ("ask (app)",)))
    obj = p.to_json(1_790_000_000.0, final=True)
    assert obj["type"] == "leaks" and obj["mode"] == "malloc" and obj["pids"] == [3, 7]
    assert obj["stacks"] == [{"bytes": 2048, "count": 2, "bytes_per_second": 0.0,
                              "frames": list(A), "trend": []}]
    assert obj["failures"] == 1 and obj["final"] is True
    assert p.failures[0].to_json()["type"] == "alloc_failure"


@pytest.mark.parametrize("values, expected", [
    ([], ""), ([5, 5], "▄▄"), ([0, 7], "▁█"), ([0, 1, 2, 3, 4, 5, 6, 7], "▁▂▃▄▅▆▇█")])
def test_sparkline(values, expected):
    assert sparkline(values) == expected


def test_live_view_and_summary():
    p = LeakProfile(GROWTH, [7])
    p.grow(7, 0x10000, 5 << 20, A)
    p.tick(1.0)
    c = Console(record=True, width=140)
    c.print(render(p, 140, 10, {7}, 3.0))
    text = c.export_text()
    assert "Top stacks by outstanding bytes" in text and "leak_here (app)" in text
    assert "5 MiB" in text
    assert "leak_here (app)" in summary(p, 5)
