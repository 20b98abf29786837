"""The syscall hook's two attachments on the real kernel: a BTF-typed tracepoint (tp_btf,
loaded by memtrace itself: bcc 0.26 cannot) where the kernel takes it, a raw tracepoint
where it does not (MEMTRACE_TP_BTF=0 stands in for such a kernel) or where the verifier
refuses the program. Either way every failure is counted and growth's syscall work runs."""

from __future__ import annotations

import errno
import sys

import pytest

from tests import workloads as w
from tests.bpf.conftest import Recorder
from tests.bpf.test_growth import moved_mapping_is_given_back
from tracer.kernel import tracing
from tracer.kernel.btf import load_vmlinux
from tracer.kernel.cost import fdinfo
from tracer.kernel.failures import LiveSource
from tracer.model.failures import Filter
from tracer.model.totals import failures_by_syscall

pytestmark = pytest.mark.bpf

BPF_PROG_TYPE_TRACING, BPF_PROG_TYPE_RAW_TRACEPOINT = 26, 17


def _via(src: LiveSource) -> str:
    return {p.name: p for p in src.statuses}["syscall_exit"].via or ""


def _prog_type(src: LiveSource, name: bytes) -> int:
    return int(fdinfo(int(src.bpf.funcs[name].fd))["prog_type"])


def _burst_is_counted(src: LiveSource, n: int = 500) -> None:
    comm = w.unique_comm("mt-sysexit")
    child = w.run_child(w.MMAP_BURST, comm, env={"MT_BURST": str(n), "MT_LINGER": "0"},
                        while_running=lambda: src.poll(0.05))
    assert child.report["failed"] == n
    src.poll(0.2)
    snap = Filter(pids=frozenset({child.pid})).snapshot(src.snapshot())
    assert failures_by_syscall(snap) == [("mmap", "ENOMEM", n)]


def test_the_syscall_hook_is_a_btf_tracepoint_where_the_kernel_takes_one(live):
    btf = load_vmlinux()
    assert tracing.checker(btf.tracepoint_type_id)("sys_exit") is None  # 6.18 here, 6.1 in the VM
    src = live.src
    assert _via(src) == "tp_btf"
    assert _prog_type(src, b"mt_sys_exit") == BPF_PROG_TYPE_TRACING
    # what it tail-calls has its type (the moved-mapping test runs through it)
    assert _prog_type(src, b"mt_growth_syscall_tail") == BPF_PROG_TYPE_TRACING
    assert _prog_type(src, b"mt_growth_page_tail") == BPF_PROG_TYPE_RAW_TRACEPOINT
    _burst_is_counted(src)


def _probe_reads(src: LiveSource) -> int:
    """How many bpf_probe_read_kernel calls (helper 113) mt_sys_exit makes, on all paths."""
    insns = src.bpf.dump_func(b"mt_sys_exit")
    return sum(1 for i in range(0, len(insns), 8)
               if insns[i] == 0x85 and int.from_bytes(insns[i + 4:i + 8], "little") == 113)


def test_a_program_the_verifier_refuses_says_why_in_one_line():
    """sys_exit has two arguments: a program reading a third one is refused, and the error
    carries the verifier's last line, not a log of thousands."""
    tid = load_vmlinux().tracepoint_type_id("sys_exit")
    assert tid is not None
    third_argument = bytes([0x79, 0x10, 16, 0, 0, 0, 0, 0,  # r0 = *(u64 *)(r1 + 16)
                            0x95, 0, 0, 0, 0, 0, 0, 0])      # exit
    with pytest.raises(OSError) as refused:
        tracing.load(third_argument, "mt_bad", tid)
    message = refused.value.strerror
    assert message.startswith("mt_bad did not load as tp_btf (Permission denied): "), message
    assert message.endswith("invalid bpf_context access off=16 size=8"), message  # the reason
    assert "\n" not in message and len(message) < 400, message


def test_a_refused_tp_btf_program_falls_back_to_the_raw_tracepoint(monkeypatch):
    """The verifier refusing mt_sys_exit as tp_btf (an older kernel's checks) costs a
    recompile, not the tracer: it runs on the raw tracepoint and says why in its notes."""
    real = tracing.load

    def refuse_sys_exit(insns: bytes, name: str, btf_id: int) -> int:
        if name == "mt_sys_exit":
            raise OSError(errno.EACCES, "mt_sys_exit did not load as tp_btf (refused here)")
        return real(insns, name, btf_id)

    monkeypatch.setattr(tracing, "load", refuse_sys_exit)
    src = LiveSource(Filter(), log=lambda m: print(m, file=sys.stderr), growth=False)
    ready = src.start()
    try:
        assert _via(src) == "raw_tp"
        assert _prog_type(src, b"mt_sys_exit") == BPF_PROG_TYPE_RAW_TRACEPOINT
        assert any("sys_exit as a raw tracepoint: mt_sys_exit did not load as tp_btf" in n
                   for n in ready.notes), ready.notes
        _burst_is_counted(src)
    finally:
        src.close()


def test_the_raw_tracepoint_path_counts_and_tracks_growth(monkeypatch, live):
    """MEMTRACE_TP_BTF=0, as on a kernel without tp_btf: exact counts, and growth's work at
    mremap and munmap (tail-called raw tracepoint programs) still follows the memory."""
    monkeypatch.setenv(tracing.ENV, "0")
    src = LiveSource(Filter(), log=lambda m: print(m, file=sys.stderr))
    ready = src.start()
    try:
        assert _via(src) == "raw_tp"
        # the same program as the module's tp_btf one but for the syscall number, read here
        # with a helper call where the typed registers give it with a load
        assert _probe_reads(src) > _probe_reads(live.src)
        assert _prog_type(src, b"mt_growth_syscall_tail") == BPF_PROG_TYPE_RAW_TRACEPOINT
        assert any("tp_btf turned off (MEMTRACE_TP_BTF=0)" in n for n in ready.notes)
        _burst_is_counted(src)
        moved_mapping_is_given_back(Recorder(src))
    finally:
        src.close()
        live.pump(0.5)  # the module's tracer saw it all too: empty its ring buffers
