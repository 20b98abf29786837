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
                "errno", "size", "order", "gfp", "cause", "user_stack", "kernel_stack"}


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
