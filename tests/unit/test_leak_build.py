"""leak_cflags: what `memtrace leaks` compiles bpf/leaks.bpf.c with, for -p, --all and
--cgroup (the live behaviour of each is in tests/bpf/test_leaks.py)."""

from __future__ import annotations

import pytest

from tracer.kernel.build import CgroupFilter, Layout, leak_cflags

pytestmark = pytest.mark.unit

LAYOUT = Layout({"MT_OFF_TASK_TGID": 1234}, frozenset({"MT_HAVE_MEMCG"}), {})


def defines(flags: list[str]) -> dict[str, str]:
    return dict(f[2:].split("=", 1) for f in flags if f.startswith("-D"))


def test_pids_fill_the_slots():
    d = defines(leak_cflags(LAYOUT, [7, 9], "growth", sample_bytes=65536))
    assert (d["LK_PID0"], d["LK_PID1"], d["LK_PID2"], d["LK_PID3"]) == ("7", "9", "0", "0")
    assert d["LK_SAMPLE_BYTES"] == "65536" and d["LK_MODE_GROWTH"] == "1"
    assert "LK_ALL" not in d and "LK_CGROUP_ID" not in d
    assert d["MT_HAVE_MEMCG"] == "1" and "MT_NR_MADVISE" in d


def test_all_processes_leaves_memtrace_out_and_grows_the_ring_buffer():
    d = defines(leak_cflags(LAYOUT, [7], "growth", all_processes=True, self_tgid=4242))
    assert (d["LK_ALL"], d["LK_SELF_TGID"], d["LK_PID0"]) == ("1", "4242", "0")
    assert int(d["LK_RINGBUF_PAGES"]) > 1024
    assert "LK_SAMPLE_BYTES" not in d  # the header's default


@pytest.mark.parametrize("cgroup, expected", [
    (CgroupFilter(77, 0, 16), {"LK_CGROUP_ID": "77", "LK_CGROUP_V2_LEVEL": "0",
                               "LK_OFF_CSS_PARENT": "16"}),
    (CgroupFilter(78, 2, None), {"LK_CGROUP_ID": "78", "LK_CGROUP_V2_LEVEL": "2"}),
])
def test_a_cgroup_filter(cgroup, expected):
    d = defines(leak_cflags(LAYOUT, [], "growth", all_processes=True, cgroup=cgroup))
    assert {k: d[k] for k in expected} == expected
    assert ("LK_OFF_CSS_PARENT" in d) == ("LK_OFF_CSS_PARENT" in expected)


def test_malloc_mode():
    d = defines(leak_cflags(LAYOUT, [7], "malloc", sample=16, min_size=8, max_size=4096))
    assert (d["LK_MODE_MALLOC"], d["LK_SAMPLE"], d["LK_MIN_SIZE"], d["LK_MAX_SIZE"]) == \
        ("1", "16", "8", "4096")
