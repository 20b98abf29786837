"""Which memory cgroups MemcgWatcher polls (limited ones, watched ones and their ancestors),
over fake v1 and v2 hierarchies, and how a memory.high event is explained."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import pytest

from tracer.diagnose.evidence import Evidence
from tracer.diagnose.rules import diagnose
from tracer.host.cgroups import CgroupResolver, Hierarchy
from tracer.host.memcg import MemcgWatcher, has_own_limit
from tracer.host.state import CgroupState, HostState
from tracer.model.failures import Failure

pytestmark = pytest.mark.unit

MiB = 1 << 20
V1_UNLIMITED = "9223372036854771712"  # what v1 memory.limit_in_bytes shows with no limit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- fake hierarchies ---------------------------------------------------------------------------

def v2_group(mount: Path, path: str, memory_max: str = "max", memory_high: str = "max",
             **events: int) -> Path:
    d = mount / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.max").write_text(memory_max + "\n")
    (d / "memory.high").write_text(memory_high + "\n")
    set_v2_events(d, **events)
    return d


def set_v2_events(d: Path, **events: int) -> None:
    counts = {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0, "oom_group_kill": 0}
    counts.update(events)
    (d / "memory.events").write_text("".join(f"{k} {v}\n" for k, v in counts.items()))


def v1_group(mount: Path, path: str, limit: str = V1_UNLIMITED, failcnt: int = 0) -> Path:
    d = mount / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.limit_in_bytes").write_text(limit + "\n")
    (d / "memory.failcnt").write_text(f"{failcnt}\n")
    (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    return d


def watcher(mount: Path, version: int, clock: Optional[Clock] = None,
            rescan_interval: float = 2.0, max_polled: int = 4096) -> MemcgWatcher:
    mount.mkdir(exist_ok=True)
    resolver = CgroupResolver([Hierarchy(mount, version, True)])
    return MemcgWatcher(resolver, rescan_interval, max_polled, clock or Clock())


def polled(w: MemcgWatcher) -> set[str]:
    return set(w._polled)


# -- which cgroups are polled -------------------------------------------------------------------

def test_a_limited_cgroup_never_watched_reports_its_high_events(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    d = v2_group(mount, "/job", memory_high=str(16 * MiB))
    w = watcher(mount, 2)
    assert polled(w) == {"/job"}  # found at construction: nothing called watch()
    set_v2_events(d, high=40)
    assert w.poll() == [("/job", "high", 40, 40)]
    set_v2_events(d, high=45)
    assert w.poll() == [("/job", "high", 5, 45)]
    assert w.totals() == [("/job", "high", 45)]


def test_events_before_start_are_not_reported(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    d = v2_group(mount, "/job", memory_max=str(64 * MiB), oom=2, oom_kill=2)
    w = watcher(mount, 2)
    assert w.poll() == []
    set_v2_events(d, oom=3, oom_kill=3)
    assert sorted(w.poll()) == [("/job", "oom", 1, 1), ("/job", "oom_kill", 1, 1)]


def test_an_unlimited_cgroup_is_polled_only_once_watched(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    d = v2_group(mount, "/free", oom_kill=1)
    clock = Clock()
    w = watcher(mount, 2, clock)
    set_v2_events(d, oom_kill=4)
    clock.now += 10
    assert w.poll() == [] and polled(w) == set()  # a rescan does not pick it up either
    w.watch("/free")
    assert w.poll() == [("/free", "oom_kill", 3, 3)]  # counted since start, not since watch


def test_watching_a_leaf_polls_its_ancestors(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    v2_group(mount, "/parent")
    v2_group(mount, "/parent/mid")
    leaf = v2_group(mount, "/parent/mid/leaf")
    w = watcher(mount, 2)
    assert polled(w) == set()
    # the parent is limited between two rescans, and its child without a limit is killed
    (mount / "parent" / "memory.max").write_text(f"{48 * MiB}\n")
    set_v2_events(mount / "parent", max=9, oom=1, oom_kill=1)
    set_v2_events(mount / "parent" / "mid", oom_kill=1)
    set_v2_events(leaf, oom_kill=1)
    w.watch("/parent/mid/leaf")
    assert polled(w) == {"/parent", "/parent/mid", "/parent/mid/leaf"}
    assert sorted(w.poll()) == [
        ("/parent", "max", 9, 9), ("/parent", "oom", 1, 1), ("/parent", "oom_kill", 1, 1),
        ("/parent/mid", "oom_kill", 1, 1), ("/parent/mid/leaf", "oom_kill", 1, 1)]


def test_watch_refuses_paths_that_leave_the_hierarchy(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    v2_group(tmp_path, "/outside", oom_kill=5)
    w = watcher(mount, 2)
    for hostile in ("/../outside", "/a/../../outside", "//outside", "/./x", "/"):
        w.watch(hostile)
    w.watch(None)
    w.watch("/no-such-cgroup")
    assert polled(w) == set() and w.poll() == []


def test_a_limited_cgroup_made_after_start_reports_every_event_since_it_was_made(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    clock = Clock()
    w = watcher(mount, 2, clock, rescan_interval=2.0)
    late = v2_group(mount, "/late", memory_max=str(32 * MiB), max=7, oom=1)
    clock.now += 1
    assert w.poll() == []  # the next rescan is not due yet
    clock.now += 1
    assert sorted(w.poll()) == [("/late", "max", 7, 7), ("/late", "oom", 1, 1)]
    set_v2_events(late, max=8, oom=1)
    assert w.poll() == [("/late", "max", 1, 8)]


def test_a_subtree_without_the_memory_controller_is_not_walked(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    (mount / "nomem").mkdir()  # no memory.* files: the controller is off here
    v2_group(mount, "/nomem/odd", memory_max=str(MiB))
    v2_group(mount, "/on", memory_high=str(MiB))
    assert has_own_limit(str(mount / "nomem"), 2) is None
    assert polled(watcher(mount, 2)) == {"/on"}


def test_v1_limit_in_bytes_makes_a_cgroup_polled(tmp_path):
    mount = tmp_path / "memory"
    mount.mkdir()
    (mount / "memory.limit_in_bytes").write_text(V1_UNLIMITED + "\n")  # the root: never polled
    tight = v1_group(mount, "/tight", limit=str(16 * MiB), failcnt=3)
    v1_group(mount, "/loose")
    v1_group(mount, "/loose/inner", limit=str(1 << 30))
    w = watcher(mount, 1)
    assert polled(w) == {"/tight", "/loose/inner"}
    (tight / "memory.failcnt").write_text("10\n")
    (tight / "memory.oom_control").write_text("oom_kill_disable 1\nunder_oom 1\noom_kill 0\n")
    assert sorted(w.poll()) == [("/tight", "failcnt", 7, 7), ("/tight", "under_oom", 1, 1)]
    assert w.totals() == [("/tight", "failcnt", 7)]


def test_a_cgroup_removed_between_polls_is_dropped_and_its_totals_kept(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    clock = Clock()
    d = v2_group(mount, "/job", memory_max=str(16 * MiB))
    w = watcher(mount, 2, clock)
    set_v2_events(d, max=3)
    assert w.poll() == [("/job", "max", 3, 3)]
    set_v2_events(d, max=5)  # lost: removed before the next poll
    shutil.rmtree(d)
    assert w.poll() == []
    assert polled(w) == set() and w.totals() == [("/job", "max", 3)]
    w.rescan()  # no error either when the walk finds it gone
    # made again under the same path: counts from zero, added to what the old one counted
    v2_group(mount, "/job", memory_max=str(16 * MiB), max=2)
    clock.now += 10
    assert w.poll() == [("/job", "max", 2, 5)]
    assert w.totals() == [("/job", "max", 5)]


def test_a_cgroup_removed_and_made_again_between_polls_counts_from_zero(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    d = v2_group(mount, "/job", memory_max=str(16 * MiB))
    w = watcher(mount, 2)
    set_v2_events(d, max=10)
    assert w.poll() == [("/job", "max", 10, 10)]
    shutil.rmtree(d)
    v2_group(mount, "/job", memory_max=str(16 * MiB), max=4)
    assert w.poll() == [("/job", "max", 4, 14)]  # counters went down: a new cgroup


def test_the_cap_counts_what_was_left_out(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    v2_group(mount, "/c")  # no limit of its own
    for name in ("/a", "/b", "/c/deep", "/d"):
        v2_group(mount, name, memory_high=str(MiB))
    v2_group(mount, "/watched")
    clock = Clock()
    w = watcher(mount, 2, clock, max_polled=2)
    assert polled(w) == {"/a", "/b"}  # nearest the root first
    assert w.left_out == 2
    w.watch("/watched")  # no room: counted at once
    assert w.left_out == 3 and "/watched" not in polled(w)
    shutil.rmtree(mount / "a")
    clock.now += 10
    w.poll()  # /a is dropped; watched cgroups come first to take its place
    assert polled(w) == {"/b", "/watched"}
    assert w.left_out == 2  # /c/deep and /d


def test_rescans_are_spaced_by_the_interval(tmp_path):
    mount = tmp_path / "unified"
    mount.mkdir()
    clock = Clock()
    w = watcher(mount, 2, clock, rescan_interval=5.0)
    assert w.rescans == 1  # at construction
    for _ in range(4):
        clock.now += 1
        w.poll()
    assert w.rescans == 1
    clock.now += 1
    w.poll()
    assert w.rescans == 2


def test_no_memory_hierarchy_polls_nothing():
    w = MemcgWatcher(CgroupResolver([]))
    w.watch("/x")
    w.rescan()
    assert w.poll() == [] and w.totals() == [] and w.left_out == 0


# -- how the events are explained ---------------------------------------------------------------

def _event(event: str) -> Failure:
    return Failure(time=0.0, kind="memcg", pid=0, tid=0, comm="", cgroup="/job", cgroup_id=0,
                   detail={"event": event, "increase": 3, "total": 9})


def test_a_high_event_is_explained_as_throttling():
    ev = Evidence(HostState(), CgroupState("/job", 2, 20 * MiB, 64 * MiB))
    high = diagnose(_event("high"), ev)
    assert high.cause == "memcg_limit"
    assert "memory.high" in high.explanation and "throttled" in high.explanation
    assert "not a failure by itself" in high.explanation
    assert "hit its memory limit" not in high.explanation
    assert high.evidence["event"] == "high" and high.evidence["increase"] == 3
    hit = diagnose(_event("max"), ev)
    assert hit.cause == "memcg_limit" and "hit its memory limit (max +3)" in hit.explanation
    assert "throttled" not in hit.explanation
