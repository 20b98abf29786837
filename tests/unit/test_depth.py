"""Adaptive depth: when the slab hooks are armed, what marks memory tight, and how a page
failure the slab allocator made is recognised while they are not."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tracer.cli import main
from tracer.host.state import (
    memory_tight,
    parse_pressure_some_avg10,
    parse_zoneinfo_watermark,
)
from tracer.kernel import depth
from tracer.kernel.probes import PLAN
from tracer.model.decode import SlabVia, slab_via_page

pytestmark = pytest.mark.unit


def test_a_trigger_arms_until_a_quiet_period_passes():
    a = depth.Arming(depth.ADAPTIVE, quiet=60)
    assert not a.armed and a.tick(0.0) is None
    change = a.trigger(10.0, "mmap() ENOMEM in pid 7 (x)")
    assert change == depth.Change(True, "mmap() ENOMEM in pid 7 (x)") and a.armed
    assert a.trigger(50.0, "again") is None  # already armed: only the deadline moves
    assert a.tick(100.0) is None  # 50 s after the last trigger: still armed
    off = a.tick(110.0)
    assert off is not None and off.armed is False and "60 s without" in off.reason
    assert not a.armed and a.reason == off.reason
    again = a.trigger(200.0, "tight")
    assert again is not None and again.armed and a.reason == "tight"


def test_always_never_changes_and_a_failed_attach_is_undone():
    a = depth.Arming(depth.ALWAYS)
    assert a.armed and a.trigger(1.0, "x") is None and a.tick(1e9) is None
    b = depth.Arming(depth.ADAPTIVE, quiet=5)
    b.trigger(1.0, "x")
    b.undo(2.0)
    assert not b.armed and b.trigger(3.0, "y") is not None  # the next trigger tries again
    with pytest.raises(ValueError):
        depth.Arming("sometimes")


def test_only_the_slab_hooks_are_adaptive():
    assert {s.name for s in PLAN if s.adaptive} == {"kmalloc", "kmem_cache_alloc"}


@pytest.mark.parametrize("stack, want", [
    # 6.18: a kmalloc too large for a slab goes to the page allocator
    (("__alloc_frozen_pages_noprof", "alloc_pages_mpol", "___kmalloc_large_node",
      "__kmalloc_large_node_noprof", "__kmalloc_noprof", "pipe_resize_ring", "pipe_fcntl"),
     SlabVia("kmalloc (page-backed)", "kmalloc", "pipe_resize_ring")),
    # 6.1: a new slab for a cache
    (("__alloc_pages", "allocate_slab", "new_slab", "___slab_alloc", "__slab_alloc.constprop.0",
      "kmem_cache_alloc_lru", "__d_alloc", "d_alloc"),
     SlabVia("new slab", "kmem_cache_alloc", "__d_alloc")),
    (("__alloc_pages", "kmalloc_large", "__kmalloc_node", "kvmalloc_node", "seq_read_iter"),
     SlabVia("kmalloc (page-backed)", "kmalloc", "kvmalloc_node")),
    (("__alloc_pages", "alloc_pages_mpol", "pipe_resize_ring"), None),  # a plain page failure
    (("__alloc_pages", "__kmalloc_noprof"), SlabVia("kmalloc (page-backed)", "kmalloc", None)),
    ((), None),
])
def test_a_page_failure_made_by_the_slab_allocator(stack, want):
    assert slab_via_page(stack) == want


def test_pressure_and_watermarks_are_parsed():
    psi = "some avg10=2.50 avg60=0.10 avg300=0.00 total=1\nfull avg10=9.00 avg60=0 avg300=0 total=1\n"
    assert parse_pressure_some_avg10(psi) == 2.5
    assert parse_pressure_some_avg10("") is None
    assert parse_pressure_some_avg10("some avg10=x") is None
    zoneinfo = ("Node 0, zone DMA\n  pages free 100\n        min      10\n        low      13\n"
                "Node 0, zone Normal\n  pages free 9\n        min      100\n        low      125\n")
    assert parse_zoneinfo_watermark(zoneinfo, "low") == 138
    assert parse_zoneinfo_watermark(zoneinfo, "min") == 110


def _proc(tmp_path, avg10: str, available_kib: int) -> str:
    (tmp_path / "pressure").mkdir(exist_ok=True)
    (tmp_path / "pressure" / "memory").write_text(
        f"some avg10={avg10} avg60=0.00 avg300=0.00 total=0\n")
    (tmp_path / "meminfo").write_text(f"MemTotal: 1000000 kB\nMemAvailable: {available_kib} kB\n")
    (tmp_path / "zoneinfo").write_text("Node 0, zone Normal\n        low      1000\n")
    return str(tmp_path)


def test_memory_is_tight_on_pressure_or_near_the_low_watermarks(tmp_path):
    assert memory_tight(_proc(tmp_path, "0.00", 900000)) is None
    stalled = memory_tight(_proc(tmp_path, "3.25", 900000))
    assert stalled is not None and "stalled 3.25%" in stalled
    # 4 low watermarks = 4000 pages = 15.6 MiB: 10 MiB available is within them
    near = memory_tight(_proc(tmp_path, "0.00", 10 * 1024))
    assert near is not None and "10 MiB available" in near
    assert memory_tight(_proc(tmp_path, "0.00", 10 * 1024), low_watermark_pages=100) is None


def test_slab_hooks_option_is_checked():
    r = CliRunner().invoke(main, ["watch", "--slab-hooks", "sometimes"])
    assert r.exit_code == 2 and "sometimes" in r.output and "Traceback" not in r.output
