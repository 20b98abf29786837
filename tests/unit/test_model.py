"""Aggregation over exact counters and filters."""

from __future__ import annotations

import pytest

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, SNAPSHOT
from tracer.model.failures import Filter, MemcgCount, Snapshot
from tracer.model.totals import (
    failures_by_cgroup,
    failures_by_kind,
    failures_by_process,
    failures_by_syscall,
    opportunistic_by_kind,
    page_alloc_by_order,
    summary_counts,
    total_failures,
)

pytestmark = pytest.mark.unit


def test_opportunistic_attempts_are_not_failures():
    assert total_failures(SNAPSHOT) == 3 + 1 + 1 + 1 + 1
    assert opportunistic_by_kind(SNAPSHOT) == {"page_alloc": 50}
    assert failures_by_kind(SNAPSHOT)["page_alloc"] == 1
    assert failures_by_kind(SNAPSHOT)["oom_kill"] == 1


def test_by_process_cgroup_syscall():
    assert failures_by_process(SNAPSHOT) == [(100, "leaky", 4), (200, "piper", 2),
                                             (400, "victim", 1)]
    assert failures_by_cgroup(SNAPSHOT) == [("/box", 5), ("/tight", 2)]
    assert failures_by_syscall(SNAPSHOT) == [("mmap", "ENOMEM", 3), ("brk", "no errno", 1),
                                             ("fcntl", "ENOMEM", 1)]


def test_page_alloc_by_order():
    assert page_alloc_by_order(SNAPSHOT) == [(8, "GFP_KERNEL_ACCOUNT|__GFP_NOWARN", 1)]
    assert page_alloc_by_order(SNAPSHOT, opportunistic=True) == [(9, "GFP_TRANSHUGE_LIGHT", 50)]
    assert len(page_alloc_by_order(SNAPSHOT, opportunistic=None)) == 2


def test_memcg_hits_are_counted_apart_from_failures():
    s = Snapshot(memcg=(MemcgCount("/tight", "max", 18),))
    assert total_failures(s) == 0
    assert failures_by_kind(s)["memcg"] == 18
    assert summary_counts(s)["memcg_events"] == {"/tight": {"max": 18}}


@pytest.mark.parametrize("filt, pids", [
    (Filter(), {100, 200, 300, 400}),
    (Filter(pids=frozenset({200})), {200}),
    (Filter(comm="leaky"), {100}),
    (Filter(cgroup="/box"), {100, 400}),
    (Filter(cgroup="/"), {100, 200, 300, 400}),
    (Filter(cgroup="/bo"), set()),  # a prefix of a name is not a parent
    (Filter(pids=frozenset({100}), comm="piper"), set()),
])
def test_filters(filt, pids):
    s = filt.snapshot(SNAPSHOT)
    assert {c.pid for c in s.syscalls} | {k.pid for k in s.kernel} == pids
    assert s.drops == SNAPSHOT.drops


def test_filter_children_of_cgroup():
    assert Filter(cgroup="/box").matches(1, "x", "/box/inner")
    assert not Filter(cgroup="/box").matches(1, "x", "/boxer")
    assert not Filter(cgroup="/box").matches(1, "x", None)


def test_filter_failures():
    assert Filter(pids=frozenset({100})).failure(MMAP_FAIL)
    assert not Filter(pids=frozenset({100})).failure(FCNTL_FAIL)


def test_summary_counts_shape():
    c = summary_counts(SNAPSHOT)
    assert c["total"] == 7
    assert c["by_syscall"] == {"mmap": {"ENOMEM": 3}, "brk": {"no errno": 1},
                               "fcntl": {"ENOMEM": 1}}
    assert c["by_process"]["100"] == {"comm": "leaky", "failures": 4}
    assert c["page_alloc_by_order"] == {"8": {"GFP_KERNEL_ACCOUNT|__GFP_NOWARN": 1}}
    assert c["opportunistic_page_alloc_by_order"] == {"9": 50}
