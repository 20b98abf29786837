"""In the guest (Debian's stock kernel, kprobes, cgroup v2, its own headers): what memtrace attaches."""

from __future__ import annotations

import subprocess

import pytest

from tests.vm.conftest import memtrace_command

pytestmark = pytest.mark.vm

DECISIONS = ("decision_overcommit", "decision_vm_limit", "decision_memcg", "decision_memlock")


def test_doctor_shows_matching_headers_and_kretprobes():
    run = subprocess.run([memtrace_command(), "doctor"], capture_output=True, text=True,
                         timeout=900, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    print(run.stdout)
    assert run.returncode == 0, run.stderr
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 3 and cells[0]:
            rows[cells[0]] = (cells[1], cells[2])
    assert rows["kernel headers"][0] == "yes"  # Debian's own linux-headers-<ver>, not generic
    assert "core probes attach: yes" in run.stdout
    for name in DECISIONS:
        status, detail = rows[f"probe {name}"]
        assert (status, detail.split(":")[0]) == ("attached", "kretprobe"), (name, status, detail)


def test_watch_attaches_every_probe_this_kernel_has(watcher):
    ready = watcher.ready()
    probes = {p["name"]: p for p in ready["probes"]}
    for name in DECISIONS:
        assert (probes[name]["status"], probes[name]["via"]) == ("attached", "kretprobe"), \
            probes[name]
    for name in ("syscall_exit", "page_alloc", "oom_kill", "kernel_messages", "memcg_events"):
        assert probes[name]["status"] == "attached", probes[name]
    # Debian's 6.1 has BTF-typed tracepoints: the syscall hook reads the syscall number
    # with a load, not a helper call (kernel/tracing.py)
    assert probes["syscall_exit"]["via"] == "tp_btf", probes["syscall_exit"]
    # the slab hooks are adaptive: loaded, attached once something fails (kernel/depth.py)
    for name in ("kmalloc", "kmem_cache_alloc"):
        assert (probes[name]["status"], probes[name]["via"]) == ("standby", "raw_tp"), \
            probes[name]
