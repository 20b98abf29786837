"""The JSON-lines contract of `memtrace watch --json`, and reading it back."""

from __future__ import annotations

import json

import pytest

from tests.unit.fixtures import FCNTL_FAIL, MMAP_FAIL, READY, SNAPSHOT
from tracer.errors import ReplayError
from tracer.recording import format as jsonout
from tracer.recording.reader import read_recording

pytestmark = pytest.mark.unit

FAILURE_KEYS = {"type", "time", "kind", "pid", "tid", "comm", "cgroup", "cgroup_id", "syscall",
                "errno", "size", "order", "gfp", "cause", "user_stack", "kernel_stack", "memcg",
                "host", "user_sources"}


def test_ready():
    obj = json.loads(jsonout.dumps(jsonout.ready_obj(READY)))
    assert obj["type"] == "ready" and obj["version"] == "0.1.0" and obj["kernel"] == "6.18.0-test"
    assert obj["probes"][0] == {"name": "syscall_exit", "status": "attached", "via": "raw_tp",
                                "reason": "sys_exit"}
    assert obj["probes"][2]["status"] == "unavailable" and obj["probes"][2]["via"] is None


def test_failure_has_every_contract_key():
    obj = json.loads(jsonout.dumps(jsonout.failure_obj(MMAP_FAIL)))
    assert FAILURE_KEYS <= set(obj)
    assert obj["time"] == "2026-09-21T14:13:20.000000Z"
    assert (obj["kind"], obj["syscall"], obj["errno"], obj["size"]) == (
        "syscall", "mmap", "ENOMEM", 1 << 40)
    assert obj["cause"] is None and obj["order"] is None
    assert obj["user_stack"] == ["mmap [libc.so.6]", "main [leaky]"]


def test_linked_kernel_failure():
    obj = jsonout.failure_obj(FCNTL_FAIL)
    assert obj["linked"] == [{"kind": "page_alloc", "size": 1 << 20, "order": 8,
                              "gfp": "GFP_KERNEL_ACCOUNT|__GFP_NOWARN", "opportunistic": True,
                              "cache": None,
                              "kernel_stack": ["__alloc_pages_noprof", "pipe_resize_ring"]}]


def test_summary():
    obj = json.loads(jsonout.dumps(jsonout.summary_obj(SNAPSHOT)))
    assert obj["type"] == "summary"
    assert obj["counts"]["total"] == 7
    assert obj["dropped"] == {"ringbuf_full": 2, "counter_map_full": 0}


def test_round_trip_through_a_recording():
    lines = [jsonout.dumps(jsonout.ready_obj(READY)),
             jsonout.dumps(jsonout.failure_obj(MMAP_FAIL)),
             jsonout.dumps(jsonout.failure_obj(FCNTL_FAIL)),
             jsonout.dumps(jsonout.summary_obj(SNAPSHOT))]
    ready, failures = read_recording(lines)
    assert ready == READY
    assert failures[0] == MMAP_FAIL
    assert failures[1].linked == FCNTL_FAIL.linked
    assert failures[1].time == FCNTL_FAIL.time


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 1: not JSON"),
    ('{"no": "type"}', "line 1: not a memtrace record"),
    ('{"type": "bogus"}', "line 1: unknown record type 'bogus'"),
    ('{"type": "failure"}', "line 1: malformed failure record"),
])
def test_bad_recordings_name_the_line(line, message):
    with pytest.raises(ReplayError, match=message):
        read_recording([line])


def test_memcg_at_the_failure_round_trips():
    import dataclasses

    from tracer.model.failures import MemcgState

    m = MemcgState(usage=500 << 10, limit=None, nearest_cgroup="/jobs", nearest_usage=510 << 10,
                   nearest_limit=512 << 10, nearest_levels_up=1)
    f = dataclasses.replace(FCNTL_FAIL, memcg=m)
    obj = json.loads(jsonout.dumps(jsonout.failure_obj(f)))
    assert obj["memcg"] == {"usage": 500 << 10, "limit": None, "nearest_cgroup": "/jobs",
                            "nearest_usage": 510 << 10, "nearest_limit": 512 << 10,
                            "nearest_levels_up": 1}
    _ready, failures = read_recording([jsonout.dumps(jsonout.ready_obj(READY)),
                                       jsonout.dumps(obj)])
    assert failures[0].memcg == m
    assert json.loads(jsonout.dumps(jsonout.failure_obj(FCNTL_FAIL)))["memcg"] is None


@pytest.mark.parametrize("memcg", ["512", {"limit": 1}, {"usage": "a", "nearest_usage": 1}])
def test_a_malformed_memcg_is_one_line_error(memcg):
    obj = jsonout.failure_obj(FCNTL_FAIL)
    obj["memcg"] = memcg
    with pytest.raises(ReplayError, match="malformed failure record"):
        read_recording([jsonout.dumps(jsonout.ready_obj(READY)), jsonout.dumps(obj)])


def test_host_at_the_failure_round_trips():
    import dataclasses

    from tracer.model.failures import HostAtFailure

    h = HostAtFailure(free=64 << 20, available=80 << 20, min_watermark=32 << 20,
                      low_watermark=40 << 20, high_watermark=48 << 20, managed=1 << 30,
                      range_mapped=False,
                      free_blocks={"node 0 zone DMA32": (5, 4, 0), "node 0 zone Normal": (1,)})
    f = dataclasses.replace(MMAP_FAIL, host=h)
    obj = json.loads(jsonout.dumps(jsonout.failure_obj(f)))
    assert obj["host"] == {"free": 64 << 20, "available": 80 << 20, "min_watermark": 32 << 20,
                           "low_watermark": 40 << 20, "high_watermark": 48 << 20,
                           "managed": 1 << 30, "range_mapped": False,
                           "free_blocks": {"node 0 zone DMA32": [5, 4, 0],
                                           "node 0 zone Normal": [1]}}
    _ready, failures = read_recording([jsonout.dumps(jsonout.ready_obj(READY)),
                                       jsonout.dumps(obj)])
    assert failures[0].host == h
    assert json.loads(jsonout.dumps(jsonout.failure_obj(MMAP_FAIL)))["host"] is None


@pytest.mark.parametrize("host", [[], {"free": "x"}, {"range_mapped": 1},
                                  {"free_blocks": []}, {"free_blocks": {"z": [1, -2]}},
                                  {"free_blocks": {"z": "12"}}, {"free_blocks": {"z": [True]}},
                                  {"free_blocks": {f"z{i}": [1] for i in range(100)}}])
def test_a_malformed_host_is_one_line_error(host):
    obj = jsonout.failure_obj(MMAP_FAIL)
    obj["host"] = host
    with pytest.raises(ReplayError, match="malformed failure record"):
        read_recording([jsonout.dumps(jsonout.ready_obj(READY)), jsonout.dumps(obj)])


def test_user_sources_round_trip():
    import dataclasses

    f = dataclasses.replace(MMAP_FAIL, user_sources=(None, "leaky.c:12"))
    obj = json.loads(jsonout.dumps(jsonout.failure_obj(f)))
    assert obj["user_sources"] == [None, "leaky.c:12"]
    _ready, failures = read_recording([jsonout.dumps(jsonout.ready_obj(READY)),
                                       jsonout.dumps(obj)])
    assert failures[0].user_sources == (None, "leaky.c:12")
    obj["user_sources"] = [1]
    with pytest.raises(ReplayError, match="user_sources"):
        read_recording([jsonout.dumps(jsonout.ready_obj(READY)), jsonout.dumps(obj)])
