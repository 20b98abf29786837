"""Pure cgroup v2 in the guest: memory.max, memory.high, memory.events, group kills, removal, nesting."""

from __future__ import annotations

import signal

import pytest

from tests import workloads as w
from tests.vm import guestkit as kit

pytestmark = pytest.mark.vm

MiB = 1 << 20

OOM_GROUP_HOG = """
sibling = os.fork()
if sibling == 0:
    time.sleep(120)  # an idle member of the same cgroup: oom.group kills it too
    os._exit(0)
report(sibling=sibling)
chunks = []
for _ in range(256):
    chunks.append(bytearray(1 << 20))
report(survived=True)
"""

HIGH_GROWER = """
chunks = []
for _ in range(int(os.environ["MT_MIB"])):
    chunks.append(bytearray(1 << 20))
report(done=True)
"""


def memcg_totals(watcher, path: str) -> dict[str, int]:
    """What memtrace reported of a cgroup's memory.events: increases summed per event."""
    out: dict[str, int] = {}
    for f in watcher.failures(kind="memcg", cgroup=path):
        out[f["detail"]["event"]] = out.get(f["detail"]["event"], 0) + f["detail"]["increase"]
    return out


def wait_memcg(watcher, path: str, want: dict[str, int], timeout: float = 15.0) -> dict[str, int]:
    """memtrace polls the counters once a second: wait until it reported `want` (or time out)."""
    watcher.wait(lambda _es: all(memcg_totals(watcher, path).get(k, 0) >= v
                                 for k, v in want.items()), timeout)
    return memcg_totals(watcher, path)


def test_memory_max_oom_kill_and_its_memory_events(watcher):
    comm = w.unique_comm("mt-v2max")
    with kit.group(("memory.max", str(48 * MiB)), ("memory.swap.max", "0")) as g:
        child = w.run_child(w.OOM_HOG, comm, cgroup_procs=g.procs)
        assert child.returncode == -signal.SIGKILL
        kills = watcher.wait_failures(lambda fs: len(fs) >= 1, timeout=30, pid=child.pid,
                                      kind="oom_kill")
        events = g.events()
        assert events["oom_kill"] == 1 and events["oom"] >= 1 and events["max"] >= 1, events
        want = {k: events[k] for k in ("max", "oom", "oom_kill")}
        reported = wait_memcg(watcher, g.path, want)
    assert len(kills) == 1
    k = kills[0]
    assert (k["comm"], k["cgroup"]) == (comm, g.path)
    assert k["detail"]["constraint"] == "CONSTRAINT_MEMCG"
    assert (k["cause"], k["confidence"]) == ("memcg_limit", "confirmed")
    assert k["evidence"]["limit"] == 48 * MiB
    # memory.events counted exactly: what memtrace reports is what the cgroup says
    assert {e: reported.get(e, 0) for e in want} == want, (reported, events)


def test_memory_high_throttling_is_reported(watcher):
    comm = w.unique_comm("mt-v2high")
    with kit.group(("memory.high", str(16 * MiB)), ("memory.swap.max", "0")) as g:
        child = w.run_child(HIGH_GROWER, comm, cgroup_procs=g.procs, timeout=120,
                            env={"MT_MIB": "12"})  # a few MiB over: each is throttled
        assert child.report.get("done") is True  # throttled, never killed: high is no limit
        events = g.events()
        assert events["high"] > 0 and events["max"] == 0 and events["oom_kill"] == 0, events
        reported = wait_memcg(watcher, g.path, {"high": events["high"]})
    assert reported.get("high") == events["high"], (reported, events)
    assert not reported.get("oom_kill")
    highs = [f for f in watcher.failures(kind="memcg", cgroup=g.path)
             if f["detail"]["event"] == "high"]
    assert highs and all(f["cause"] == "memcg_limit" for f in highs)


def test_oom_group_kill_kills_the_whole_cgroup(watcher):
    comm = w.unique_comm("mt-v2grp")
    with kit.group(("memory.max", str(48 * MiB)), ("memory.swap.max", "0"),
                   ("memory.oom.group", "1")) as g:
        child = w.run_child(OOM_GROUP_HOG, comm, cgroup_procs=g.procs)
        assert child.returncode == -signal.SIGKILL
        sibling = child.report["sibling"]
        kills = watcher.wait_failures(lambda fs: {child.pid, sibling} <= {f["pid"] for f in fs},
                                      timeout=30, kind="oom_kill", cgroup=g.path)
        events = g.events()
        # seen on 6.1: oom_kill 3 for these 2 processes (the first victim counted again as a
        # group member), so memtrace must match the counter, not the number of processes
        assert events["oom_group_kill"] == 1 and events["oom_kill"] >= 2, events
        want = {"oom_group_kill": 1, "oom_kill": events["oom_kill"]}
        reported = wait_memcg(watcher, g.path, want)
    # each process marked as a victim exactly once: the one that grew and its idle sibling
    assert sorted(k["pid"] for k in kills) == sorted([child.pid, sibling])
    assert all(k["cause"] == "memcg_limit" for k in kills)
    assert {e: reported.get(e, 0) for e in want} == want, (reported, events)


def test_cgroup_removed_right_after_its_oom_kill_keeps_its_name(watcher):
    comm = w.unique_comm("mt-v2gone")
    with kit.group(("memory.max", str(32 * MiB)), ("memory.swap.max", "0")) as g:
        child = w.run_child(w.OOM_HOG, comm, cgroup_procs=g.procs)
        assert child.returncode == -signal.SIGKILL
        path = g.path
    assert not g.dir.exists()  # removed at once, before memtrace could look it up by id
    kills = watcher.wait_failures(lambda fs: len(fs) >= 1, timeout=30, pid=child.pid,
                                  kind="oom_kill")
    assert len(kills) == 1
    k = kills[0]
    assert (k["comm"], k["cgroup"]) == (comm, path)
    assert (k["cause"], k["detail"]["constraint"]) == ("memcg_limit", "CONSTRAINT_MEMCG")
    assert k["evidence"]["limit"] == 32 * MiB  # the limit it had, though it is gone now
    assert watcher.alive()


def test_nested_cgroups_name_the_victims_cgroup_and_the_ancestor_whose_limit_was_hit(watcher):
    comm = w.unique_comm("mt-v2nest")
    with kit.group(("memory.max", str(48 * MiB)), ("memory.swap.max", "0")) as parent:
        kit.enable_memory_for_children(parent)
        with kit.group(parent=parent, name="leaf") as leaf:
            child = w.run_child(w.OOM_HOG, comm, cgroup_procs=leaf.procs)
            assert child.returncode == -signal.SIGKILL
            kills = watcher.wait_failures(lambda fs: len(fs) >= 1, timeout=30, pid=child.pid,
                                          kind="oom_kill")
            parent_events = parent.events()
            reported = wait_memcg(watcher, parent.path, {"oom_kill": 1})
    assert len(kills) == 1
    k = kills[0]
    assert (k["comm"], k["cgroup"]) == (comm, leaf.path)
    assert (k["cause"], k["detail"]["constraint"]) == ("memcg_limit", "CONSTRAINT_MEMCG")
    # the leaf has no limit: the evidence must be the ancestor's, whose memory.max was hit
    assert k["evidence"]["limit"] == 48 * MiB, k["evidence"]
    assert parent_events["oom_kill"] == 1 and parent_events["max"] >= 1
    assert reported.get("oom_kill") == 1, reported


def test_burst_in_a_cgroup_is_counted_exactly(watcher):
    n = 200  # what one `memtrace watch` ring buffer holds between two polls, even under TCG
    comm = w.unique_comm("mt-v2burst")
    with kit.group(("memory.max", str(256 * MiB))) as g:
        child = w.run_child(w.MMAP_BURST, comm, cgroup_procs=g.procs,
                            env={"MT_BURST": str(n), "MT_LINGER": "0"})
        assert child.report["failed"] == n
        seen = watcher.wait_failures(lambda fs: len(fs) >= n, timeout=120, pid=child.pid)
    assert len(seen) == n
    assert {(f["syscall"], f["errno"], f["cgroup"]) for f in seen} == {
        ("mmap", "ENOMEM", g.path)}
