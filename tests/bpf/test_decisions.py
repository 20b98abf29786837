"""The kprobe path (kernel decision points): built and verified here, attached where kprobes exist.

This kernel has no kprobes, so these tests prove the programs compile and pass the
verifier, and that the plan reports them unavailable with the reason; the confirmation
logic itself is unit-tested in tests/unit/test_decisions.py."""

from __future__ import annotations

import os

import pytest

from tracer.host import system as host
from tracer.kernel import abi
from tracer.kernel.btf import load_vmlinux
from tracer.kernel.build import BuildOptions, cflags, read_layout
from tracer.kernel.probes import PLAN, choose, kprobe_check

pytestmark = pytest.mark.bpf

DECISION_FUNCTIONS = [c.fn for p in PLAN if p.family == "DECISIONS" for c in p.candidates]


def test_decision_programs_pass_the_verifier():
    from bcc import BPF

    host.prepare_headers()
    flags = cflags(read_layout(load_vmlinux()),
                   BuildOptions(families=frozenset({"SYSCALLS", "KMEM", "DECISIONS"})))
    b = BPF(src_file=str(abi.bpf_dir() / "memtrace.bpf.c").encode(), cflags=flags)
    try:
        assert len(DECISION_FUNCTIONS) == 4
        for fn in DECISION_FUNCTIONS:
            assert b.load_func(fn.encode(), BPF.KPROBE).fd >= 0
    finally:
        b.cleanup()


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
