"""Fragmentation in the guest: free memory in small blocks only, then an order-10 allocation fails."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest

from tests import workloads as w
from tests.vm import guestkit as kit

pytestmark = pytest.mark.vm

ORDER = 10  # a 256 MiB pipe's ring: 65536 slots of 40 bytes, a 2.5 MiB kcalloc


def test_order_10_failure_with_free_small_blocks_is_fragmentation(watcher, tmp_path):
    comm = w.unique_comm("mt-frag")
    program = kit.build(tmp_path, "fragment", comm)
    with w.sysctl("vm.compact_unevictable_allowed", "0"), \
            w.sysctl("fs.pipe-max-size", str(256 << 20)):
        run = subprocess.run([str(program), "96"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    child = json.loads(run.stdout)
    # The recipe held: the pipe could not grow, and at that moment no free block of order 9
    # or more existed outside ZONE_DMA while hundreds of MiB were free in smaller ones.
    assert (child["fcntl"], child["errno"]) == (-1, errno.ENOMEM), child
    moment = {z: b for z, b in kit.parse_buddyinfo(child["buddyinfo"]).items()
              if not z.endswith("zone DMA")}
    assert all(sum(blocks[ORDER - 1:]) == 0 for blocks in moment.values()), moment
    free_pages = sum(n << o for blocks in moment.values() for o, n in enumerate(blocks))
    assert free_pages * 4096 > 128 << 20, moment

    calls = watcher.wait_failures(lambda fs: any(f["syscall"] == "fcntl" for f in fs),
                                  timeout=60, pid=child["pid"], kind="syscall")
    fcntls = [f for f in calls if f["syscall"] == "fcntl"]
    assert len(fcntls) == 1, calls
    f = fcntls[0]
    assert (f["errno"], f["comm"], f["args"]["cmd"]) == ("ENOMEM", comm, "F_SETPIPE_SZ")
    pages = [k for k in f["linked"] if k["kind"] == "page_alloc"]
    assert [k["order"] for k in pages] == [ORDER], f["linked"]
    assert (f["cause"], f["evidence"].get("order")) == ("fragmentation", ORDER), \
        (f["cause"], f["explanation"], f["evidence"])
    # The free blocks per order are those of the moment (the child read them right after its
    # failure and exited: read later, memory is whole again and has order-10 blocks).
    ev = f["evidence"]
    blocks = {z: b for z, b in ev["free_blocks"].items() if not z.endswith("zone DMA")}
    assert set(blocks) == set(moment)
    assert all(sum(b[ORDER - 1:]) == 0 for b in blocks.values()), blocks
    assert abs(ev["free_pages"] - free_pages) <= free_pages // 10, (ev["free_pages"], free_pages)
