"""Global OOM in the guest: the article's example 3 fills the machine until the OOM killer acts."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests import workloads as w
from tests.vm import guestkit as kit

pytestmark = pytest.mark.vm


def test_global_oom_kill_is_exhaustion_and_memtrace_survives_it(watcher, tmp_path):
    comm = w.unique_comm("mt-exhaust")
    program = kit.build(tmp_path, "exhaust", comm)
    zones = kit.watermarks()
    mem_total = kit.meminfo()["MemTotal"]
    kills_before = {k["pid"] for k in watcher.failures(kind="oom_kill")}
    hog = subprocess.Popen([str(program)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        out, err = hog.communicate(timeout=300)
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()
    # No swap, no cgroup limit: the kernel's only way out is the OOM killer, and it picks the hog.
    assert hog.returncode == -signal.SIGKILL, (hog.returncode, err)
    mine = watcher.wait_failures(lambda fs: len(fs) >= 1, timeout=60, pid=hog.pid,
                                 kind="oom_kill")
    assert watcher.alive(), watcher.stderr[-20:]  # memtrace survived the global OOM...
    victims = {k["pid"] for k in watcher.failures(kind="oom_kill")} - kills_before
    assert victims == {hog.pid}  # ...was not its victim, and the hog was the only one
    assert len(mine) == 1, mine
    kill = mine[0]
    assert kill["comm"] == comm and kill["cgroup"] == "/"
    assert kill["detail"]["constraint"] == "CONSTRAINT_NONE"
    assert kill["detail"]["rss_bytes"] > mem_total // 2
    assert (kill["cause"], kill["confidence"]) == ("exhaustion", "confirmed"), kill
    # memtrace keeps counting after the kill: a burst of exactly n failures, every one seen.
    n = 200
    burst = w.run_child(w.MMAP_BURST, w.unique_comm("mt-after-oom"),
                        env={"MT_BURST": str(n), "MT_LINGER": "0"})
    assert burst.report["failed"] == n
    seen = watcher.wait_failures(lambda fs: len(fs) >= n, timeout=60, pid=burst.pid)
    assert [(f["syscall"], f["errno"]) for f in seen] == [("mmap", "ENOMEM")] * n
    assert watcher.alive()

    # Evidence from the moment of the kill, as the kernel saw it: free memory below the high
    # watermarks (the OOM killer runs only when even that last try failed; ZONE_DMA is held
    # back from these allocations by its reserve), and the watermarks themselves. Read
    # afterwards, free memory is most of the machine again.
    ev = kill["evidence"]
    min_pages = sum(z["min"] for z in zones.values())
    high_bytes = sum(z["high"] for z in zones.values()) * 4096
    dma_bytes = sum(z["managed"] for name, z in zones.items() if name.endswith("zone DMA")) * 4096
    assert "mem_free" in ev and "min_watermark_pages" in ev, ev
    # (the min watermarks as the kernel used them: a watermark boost raises them for a while)
    assert min_pages <= ev["min_watermark_pages"] <= sum(z["high"] for z in zones.values())
    assert ev["mem_free"] <= high_bytes + dma_bytes, (ev["mem_free"], high_bytes, dma_bytes)
