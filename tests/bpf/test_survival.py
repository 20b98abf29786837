"""The live source under a storm of real failures, and what it asks of the kernel's memory:
bounded reads of the ring buffer with exact counts, and maps allocated when they are made."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import storm
from tests import workloads as w
from tracer.kernel import abi
from tracer.kernel.failures import MAX_BATCH

pytestmark = pytest.mark.bpf

BPF_F_NO_PREALLOC = 1  # include/uapi/linux/bpf.h
BPF_MAP_TYPE_RINGBUF = 27
# Map types whose entries the kernel would allocate on update without preallocation: the
# hash maps (written on failure paths: counters, pending failures, stacks).
HASH_TYPES = {1, 5, 9, 10}  # hash, percpu_hash, lru_hash, lru_percpu_hash


def _own_maps() -> list[dict[str, int]]:
    """fdinfo of every BPF map this process holds (the live fixture's, here)."""
    maps = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf-map":
                continue
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        maps.append({k: int(fields[k].strip(), 0) for k in
                     ("map_type", "map_flags", "max_entries", "key_size", "value_size")
                     if k in fields})
    return maps


def test_maps_are_preallocated_so_counting_needs_no_memory(live):
    """A failure is counted while the machine is out of memory: a map that allocated its
    entries on update (BPF_F_NO_PREALLOC) would then lose it. Every map is made whole when
    memtrace starts; the ring buffers (failures', growth's) have their fixed sizes."""
    maps = _own_maps()
    assert len(maps) >= 8, maps  # counters, pending, stacks, drops, ... and the ring buffer
    assert [m for m in maps if m["map_flags"] & BPF_F_NO_PREALLOC] == []
    assert sum(1 for m in maps if m["map_type"] in HASH_TYPES) >= 3
    rings = [m for m in maps if m["map_type"] == BPF_MAP_TYPE_RINGBUF]
    page = os.sysconf("SC_PAGE_SIZE")
    assert sorted(r["max_entries"] for r in rings) == sorted(
        [abi.C["MT_RINGBUF_PAGES"] * page, abi.C["MT_GROWTH_RINGBUF_PAGES"] * page])


def test_a_storm_is_read_in_bounded_batches_and_counted_exactly(live, tmp_path):
    """Two threads fail mmap as fast as they can: every poll returns at most MAX_BATCH
    failures and comes back while the storm goes on (before, one poll read on for the
    whole storm and kept every event in memory), and the kernel's count is exact."""
    binary = storm.build(tmp_path)
    # A first small storm warms the symbolisers (kernel symbols, the storm's ELF files), so
    # the polls below measure reading, not a one-off start-up.
    storm.finish(storm.start(binary, 1, 1, w.unique_comm("mt-warm")), timeout=30)
    live.pump(3.0)
    comm = w.unique_comm("mt-bstorm")
    proc = storm.start(binary, 2, 3, comm)
    sizes: list[int] = []
    try:
        while proc.poll() is None:
            sizes.append(len(live.src.poll(0.1)))
        result = storm.finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.2)
    live.src.drain()
    assert result.other == 0 and result.enomem > 20_000, result
    assert 0 < max(sizes) <= MAX_BATCH, sizes
    assert len(sizes) >= 3, sizes  # polls came back while the storm went on
    counted = sum(c.count for c in live.src.snapshot().syscalls
                  if c.pid == result.pid and c.syscall == "mmap" and c.errno == "ENOMEM")
    assert counted == result.enomem
