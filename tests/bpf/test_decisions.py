"""The kprobe path (kernel decision points): built and verified here, attached where kprobes exist.

This kernel has no kprobes, so these tests prove the programs compile and pass the
verifier, and that the plan reports them unavailable with the reason; the confirmation
logic itself is unit-tested in tests/unit/test_decisions.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tracer.host import system as host
from tracer.kernel import abi
from tracer.kernel.btf import load_vmlinux
from tracer.kernel.build import BuildOptions, cflags, read_layout
from tracer.kernel.probes import PLAN, choose, kprobe_check

pytestmark = pytest.mark.bpf

DECISION_FUNCTIONS = [c.fn for p in PLAN if p.family == "DECISIONS" for c in p.candidates]
BPF_PROG_TYPE_KPROBE = "2"  # include/uapi/linux/bpf.h: kprobes and kretprobes


def _prog_fdinfo(fd: int) -> dict[str, str]:
    """The kernel's own description of a loaded program (type, id, tag, ...)."""
    lines = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    return dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines))


def test_decision_programs_pass_the_verifier():
    from bcc import BPF

    host.prepare_headers()
    flags = cflags(read_layout(load_vmlinux()),
                   BuildOptions(families=frozenset({"SYSCALLS", "KMEM", "DECISIONS"})))
    b = BPF(src_file=str(abi.bpf_dir() / "memtrace.bpf.c").encode(), cflags=flags)
    try:
        assert len(DECISION_FUNCTIONS) == 5  # mlock: one program for each kernel's name
        loaded = {fn: _prog_fdinfo(b.load_func(fn.encode(), BPF.KPROBE).fd)
                  for fn in DECISION_FUNCTIONS}
    finally:
        b.cleanup()
    for fn, info in loaded.items():
        assert info["prog_type"] == BPF_PROG_TYPE_KPROBE, fn
        assert int(info["prog_id"]) > 0, fn
        assert re.fullmatch(r"[0-9a-f]{16}", info["prog_tag"]), fn
        if "verified_insns" in info:  # reported since Linux 5.16
            assert int(info["verified_insns"]) > 0, fn
    # Five programs, each its own code: the tag is a hash of the instructions.
    assert len({info["prog_tag"] for info in loaded.values()}) == 5


def test_plan_reports_decision_probes_by_kprobe_support():
    btf = load_vmlinux()
    _chosen, statuses = choose(btf.tracepoint_params, kprobe_ok=kprobe_check())
    decision = [p.name for p in PLAN if p.family == "DECISIONS"]
    if os.path.isdir("/sys/bus/event_source/devices/kprobe"):
        assert not set(decision) & set(statuses)
    else:
        for name in decision:
            assert statuses[name].status == "unavailable"
            assert "no kprobes" in statuses[name].reason
