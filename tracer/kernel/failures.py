"""The live failure source: loads bpf/memtrace.bpf.c, attaches the probe plan, and turns what
the kernel reports (ring-buffer events, exact counters) into model values."""

from __future__ import annotations

import ctypes as ct
import re
import time
from typing import Any, Callable, Optional

from .. import __version__
from ..errors import HostError
from ..host import system as host
from ..host.cgroups import CgroupResolver
from ..host.memcg import MemcgWatcher
from ..model import decode as decoders
from ..model.failures import (
    Failure,
    Filter,
    KernelCount,
    KernelFailure,
    MemcgCount,
    Ready,
    Snapshot,
    SyscallCount,
    TaskState,
)
from ..model.probes import ATTACHED, FAILED, ProbeStatus
from ..unwind.unwinder import ProcessUnwinders
from . import abi
from .btf import load_vmlinux
from .build import BuildOptions, Layout, cflags, read_layout
from .loader import Loaded, load
from .probes import CORE_PROBES, PLAN, choose, kprobe_check

Log = Callable[[str], None]

_OOM_CONSTRAINT = re.compile(r"^oom-kill:constraint=(\w+)")


_TRACING_FRAME = re.compile(r"^(bpf_prog_\w+|bpf_trace_run\d+|__bpf_trace_\w+|__traceiter_\w+)$")


def strip_tracing_frames(frames: list[str]) -> tuple[str, ...]:
    """Drop the BPF and tracepoint plumbing at the top of a kernel stack."""
    i = 0
    while i < len(frames) and _TRACING_FRAME.match(frames[i]):
        i += 1
    return tuple(frames[i:])


_RLIM_INFINITY = 2**64 - 1
_VM_LOCKED = 0x2000  # include/linux/mm.h
_CAP_IPC_LOCK = 14  # include/uapi/linux/capability.h


def task_state(t: abi.TaskEvidence, unmapped_area_failed: bool, page_size: int = 4096
               ) -> TaskState:
    def limit(v: int) -> Optional[int]:
        return None if v == _RLIM_INFINITY or v >= 2**63 else int(v)

    return TaskState(
        total_vm=int(t.total_vm) * page_size, data_vm=int(t.data_vm) * page_size,
        locked_vm=int(t.locked_vm) * page_size, pinned_vm=int(t.pinned_vm) * page_size,
        map_count=int(t.map_count), rlim_as=limit(t.rlim_as), rlim_data=limit(t.rlim_data),
        rlim_memlock=limit(t.rlim_memlock),
        cap_ipc_lock=bool(int(t.cap_effective) >> _CAP_IPC_LOCK & 1),
        mlock_future=bool(int(t.def_flags) & _VM_LOCKED),
        unmapped_area_failed=unmapped_area_failed)


class LiveSource(Loaded):
    """Failures as the running kernel reports them."""

    def __init__(self, filt: Optional[Filter] = None, log: Optional[Log] = None,
                 options: Optional[BuildOptions] = None, symbolize: bool = True):
        self.filter = filt or Filter()
        self.log = log or (lambda msg: None)
        self.options = options
        self.symbolize = symbolize
        self.bpf: Any = None
        self.layout: Optional[Layout] = None
        self.statuses: list[ProbeStatus] = []
        self._out: list[Failure] = []
        self._kmsg: list[tuple[float, int, str]] = []
        self._last_memcg_poll = 0.0
        self._clock_offset = time.time() - time.monotonic()
        self.user_symbols = ProcessUnwinders()

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> Ready:
        host.require_root("tracing")
        host.ensure_tracefs(self.log)
        host.prepare_headers(self.log)
        if not host.btf_available():
            raise HostError(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): memtrace needs it to read "
                "struct layouts (CONFIG_DEBUG_INFO_BTF=y)")
        btf = load_vmlinux()
        self.layout = read_layout(btf)
        self.gfp = (decoders.GfpDecoder(self.layout.gfp_bits) if self.layout.gfp_bits
                    else decoders.GfpDecoder.default())
        chosen, unavailable = choose(btf.tracepoint_params, kprobe_ok=kprobe_check())
        families = frozenset(spec.family for spec in PLAN if spec.name in chosen and spec.family)
        options = self.options or BuildOptions(families=families)
        if not options.families:
            options = BuildOptions(families=families, ringbuf_pages=options.ringbuf_pages,
                                   counter_entries=options.counter_entries,
                                   stack_entries=options.stack_entries, extra=options.extra)
        flags = cflags(self.layout, options)
        self.bpf = load("memtrace.bpf.c", flags, "memtrace's BPF programs")

        statuses: dict[str, ProbeStatus] = dict(unavailable)
        for spec in PLAN:
            cand = chosen.get(spec.name)
            if cand is None:
                continue
            if cand.via == "poll":
                statuses[spec.name] = ProbeStatus(spec.name, ATTACHED, "poll", cand.target)
                continue
            try:
                if cand.via == "kretprobe":
                    self.bpf.attach_kretprobe(event=cand.target.encode(), fn_name=cand.fn.encode())
                else:
                    self.bpf.attach_raw_tracepoint(tp=cand.target.encode(),
                                                   fn_name=cand.fn.encode())
                statuses[spec.name] = ProbeStatus(spec.name, ATTACHED, cand.via, cand.target)
            except Exception as e:
                statuses[spec.name] = ProbeStatus(spec.name, FAILED, cand.via, str(e).splitlines()[0])
        self.statuses = [statuses[s.name] for s in PLAN if s.name in statuses]
        missing = [n for n in CORE_PROBES if statuses.get(n, None) is None
                   or statuses[n].status != ATTACHED]
        if missing:
            why = "; ".join(f"{n}: {statuses[n].reason}" for n in missing if n in statuses)
            self.close()
            raise HostError(f"core probes did not attach ({why})")

        self.resolver = CgroupResolver()
        self.memcg = MemcgWatcher(self.resolver)
        if self.filter.cgroup is not None:
            self.memcg.watch(self.filter.cgroup)
        self.bpf[b"events"].open_ring_buffer(self._on_event)
        return Ready(__version__, host.kernel_release(), tuple(self.statuses), self.layout.notes)

    # -- events ---------------------------------------------------------------------------
    def poll(self, timeout: float = 0.1) -> list[Failure]:
        assert self.bpf is not None
        self.bpf.ring_buffer_poll(int(timeout * 1000))
        now = time.monotonic()
        if now - self._last_memcg_poll >= 1.0:
            self._last_memcg_poll = now
            self._poll_memcg()
            self._recount_armed()
        out, self._out = self._out, []
        return out

    def _recount_armed(self) -> None:
        """Reset the kernel's count of threads with pending kernel failures to the truth.

        The count is only decremented when an entry is deleted; entries the LRU map evicts
        would leave it above zero for good, and every syscall exit would then pay for a
        lookup. Rarely off by one in a race, which only delays clearing a stale entry."""
        n = sum(1 for _ in self.bpf[b"pending"].keys())
        armed = self.bpf[b"armed"]
        if armed[ct.c_int(0)].value != n:
            armed[ct.c_int(0)] = ct.c_uint64(n)

    def drain(self) -> list[Failure]:
        """Everything already in the ring buffer, without waiting."""
        assert self.bpf is not None
        self.bpf.ring_buffer_consume()
        self._poll_memcg()
        out, self._out = self._out, []
        return out

    def _poll_memcg(self) -> None:
        for path, event, increase, total in self.memcg.poll():
            if self.filter.cgroup is not None and not self.filter.matches(0, "", path) \
                    or self.filter.pids or self.filter.comm is not None:
                continue
            self._out.append(Failure(
                time=time.time(), kind="memcg", pid=0, tid=0, comm="", cgroup=path,
                cgroup_id=0, detail={"event": event, "increase": increase, "total": total},
                ts_ns=time.monotonic_ns()))

    def _on_event(self, _ctx, data, _size) -> None:
        e = ct.cast(data, ct.POINTER(abi.Event)).contents
        try:
            self._out.extend(self._convert(e))
        except Exception as exc:  # never let one odd event kill the tracer
            self.log(f"memtrace: could not decode an event: {exc}")

    def _wall(self, ts_ns: int) -> float:
        return self._clock_offset + ts_ns / 1e9

    def _cgroup(self, memcg_id: int) -> Optional[str]:
        return self.resolver.path(memcg_id, memory=True)

    def _kstack(self, stack_id: int) -> tuple[str, ...]:
        if stack_id < 0 or not self.symbolize or self.bpf is None:
            return ()
        out: list[str] = []
        try:
            for addr in self.bpf[b"stacks"].walk(stack_id):
                out.append(self.bpf.ksym(addr, show_offset=False).decode("utf-8", "replace"))
        except KeyError:
            return ()
        return strip_tracing_frames(out)

    def _ustack(self, stack_id: int, pid: int) -> tuple[str, ...]:
        if stack_id < 0 or not self.symbolize or self.bpf is None:
            return ()
        try:
            addrs = list(self.bpf[b"stacks"].walk(stack_id))
        except KeyError:
            return ()
        return tuple(self.user_symbols.symbolize(pid, addrs))

    def _kernel_failure(self, kf: abi.KFail) -> KernelFailure:
        kind = abi.KIND_NAMES.get(kf.kind, str(kf.kind))
        has_gfp = kind in ("page_alloc", "slab")
        return KernelFailure(
            kind=kind,
            size=int(kf.size) if kf.size else None,
            order=int(kf.order) if kind in ("page_alloc", "decision") else None,
            gfp=self.gfp.value(kf.gfp) if has_gfp else None,
            opportunistic=bool(kf.flags & abi.F_OPPORTUNISTIC),
            cache=abi.cstr(kf.name) or None,
            kernel_stack=self._kstack(kf.kernel_stack_id),
            ts_ns=int(kf.ts_ns),
        )

    def _convert(self, e: abi.Event) -> list[Failure]:
        kind = abi.KIND_NAMES.get(e.kind, str(e.kind))
        comm = abi.cstr(e.comm)
        if kind == "kmsg":
            self._kmsg.append((time.monotonic(), int(e.actor_tid), abi.cstr(e.msg)))
            self._kmsg = self._kmsg[-32:]
            return []
        if kind in ("unmapped_area", "decision"):
            return []  # evidence only; it arrives inside the syscall event
        cgroup = self._cgroup(e.memcg_id)
        if not self.filter.matches(e.pid, comm, cgroup):
            return []
        if cgroup:
            self.memcg.watch(cgroup)
        common: dict[str, Any] = dict(time=self._wall(e.ts_ns), pid=int(e.pid), tid=int(e.tid), comm=comm,
                      cgroup=cgroup, cgroup_id=int(e.memcg_id), ts_ns=int(e.ts_ns))
        if kind == "syscall":
            return self._syscall_failures(e, common)
        if kind == "oom_kill":
            detail = {"total_vm_bytes": int(e.oom_total_vm) * 4096,
                      "rss_bytes": int(e.oom_rss) * 4096, "uid": int(e.oom_uid)}
            detail.update(self._oom_constraint(int(e.actor_tid)))
            return [Failure(kind=kind, kernel_stack=self._kstack(e.kernel_stack_id),
                            detail=detail, **common)]
        kf = self._kernel_failure(e.kf)
        return [Failure(
            kind=kind, size=kf.size, order=kf.order, gfp=kf.gfp, opportunistic=kf.opportunistic,
            user_stack=self._ustack(e.user_stack_id, e.pid), kernel_stack=kf.kernel_stack,
            detail={"cache": kf.cache} if kf.cache else {}, **common)]

    def _syscall_failures(self, e: abi.Event, common: dict[str, Any]) -> list[Failure]:
        name = decoders.syscall_name(int(e.syscall_nr))
        args = [int(a) for a in e.args]
        brk = bool(e.flags & abi.F_BRK)
        err = None if brk else decoders.errno_name(int(e.ret))
        size = decoders.size_from_syscall(name, args)
        detail: dict = {}
        if brk:
            detail = {"requested_break": args[0], "returned_break": int(e.ret) & (2**64 - 1)}
            size = max(args[0] - detail["returned_break"], 0) or None
        everything = [self._kernel_failure(e.linked[i])
                      for i in range(min(e.n_linked, abi.MT_MAX_LINKED))]
        unmapped_area_failed = any(k.kind == "unmapped_area" for k in everything)
        decisions = sorted({abi.DECISION_NAMES.get(k.order or 0, "?") for k in everything
                            if k.kind == "decision"})
        linked = tuple(k for k in everything if k.kind not in ("unmapped_area", "decision"))
        task = task_state(e.task, unmapped_area_failed) if e.task.valid else None
        if decisions:
            detail["kernel_decisions"] = decisions
        message = self._kernel_message(int(e.tid), "__vm_enough_memory")
        if message:
            detail["kernel_message"] = message
        kstack = linked[0].kernel_stack if linked else self._kstack(e.kernel_stack_id)
        ustack = self._ustack(e.user_stack_id, e.pid)
        out = []
        # Opportunistic kernel failures were held back in the kernel; now that the
        # syscall they happened in has failed, they are failures too.
        for k in linked:
            if k.opportunistic:
                out.append(Failure(kind=k.kind, syscall=name, errno=err, size=k.size, order=k.order,
                                   gfp=k.gfp, opportunistic=True, user_stack=ustack,
                                   kernel_stack=k.kernel_stack,
                                   detail={"cache": k.cache} if k.cache else {},
                                   **{**common, "ts_ns": k.ts_ns or common["ts_ns"]}))
        primary = linked[0] if linked else None
        out.append(Failure(
            kind="syscall", syscall=name, errno=err, size=size,
            order=primary.order if primary else None, gfp=primary.gfp if primary else None,
            user_stack=ustack, kernel_stack=kstack,
            args=decoders.describe_syscall_args(name, args), linked=linked, detail=detail,
            task=task, **common))
        return out

    def _kernel_message(self, tid: int, prefix: str, max_age: float = 2.0) -> Optional[str]:
        """The kernel's own line about this thread's failure, printed inside the syscall."""
        now = time.monotonic()
        for i in range(len(self._kmsg) - 1, -1, -1):
            seen, actor, line = self._kmsg[i]
            if now - seen > max_age:
                break
            if actor == tid and line.startswith(prefix):
                del self._kmsg[i]
                return line
        return None

    def _oom_constraint(self, killer_tid: int) -> dict:
        """The constraint of the OOM report the killing thread printed just before."""
        now = time.monotonic()
        for seen, tid, line in reversed(self._kmsg):
            if now - seen > 5:
                break
            m = _OOM_CONSTRAINT.match(line)
            if m and tid == killer_tid:
                return {"constraint": m.group(1)}
        return {}

    # -- exact totals -----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        assert self.bpf is not None
        syscalls = []
        for k, v in self.bpf[b"syscall_counts"].items():
            syscalls.append(SyscallCount(
                pid=int(k.pid), comm=abi.cstr(k.comm), cgroup=self._cgroup(k.memcg_id),
                syscall=decoders.syscall_name(int(k.syscall_nr)),
                errno=decoders.errno_name(int(k.err)) if k.err else None, count=int(v.value)))
        kernel = []
        for k, v in self.bpf[b"kfail_counts"].items():
            if not v.value:
                continue  # an opportunistic attempt that turned into a failure
            kind = abi.KIND_NAMES.get(int(k.kind), str(k.kind))
            kernel.append(KernelCount(
                pid=int(k.pid), comm=abi.cstr(k.comm), cgroup=self._cgroup(k.memcg_id), kind=kind,
                order=int(k.order) if kind == "page_alloc" else None,
                gfp=self.gfp.value(int(k.gfp)) if kind in ("page_alloc", "slab") else None,
                opportunistic=bool(k.opportunistic), count=int(v.value)))
        drops = {name: 0 for name in abi.DROP_NAMES.values()}
        for k, v in self.bpf[b"drops"].items():
            name = abi.DROP_NAMES.get(int(k.value))
            if name:
                drops[name] = int(sum(v))
        memcg = tuple(MemcgCount(c, ev, n) for c, ev, n in self.memcg.totals())
        return self.filter.snapshot(Snapshot(tuple(syscalls), tuple(kernel), memcg, drops))
