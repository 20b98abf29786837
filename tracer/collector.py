"""The live source: compiles and attaches the BPF programs with bcc, and turns what they report into model values.

This is the only module that imports bcc."""

from __future__ import annotations

import ctypes as ct
import os
import re
import time
from typing import Any, Callable, Optional

from . import __version__, abi, decoders, host
from .btf import load_vmlinux
from .cgroups import CgroupResolver
from .config import BuildOptions, Layout, cflags, read_layout
from .memcg import MemcgWatcher
from .model import (
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
from .probes import ATTACHED, CORE_PROBES, FAILED, PLAN, ProbeStatus, choose, kprobe_check
from .unwind import ProcessUnwinders

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


class _Loaded:
    """A compiled BPF object (bcc) that close() detaches and frees, once."""

    bpf: Any = None

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None


class LiveSource(_Loaded):
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
            raise host.HostError(
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
        flags = cflags(self.layout, options, abi.bpf_dir())
        try:
            from bcc import BPF  # the one bcc import
        except ImportError as e:
            raise host.HostError(
                "bcc's Python bindings are missing: install python3-bpfcc (sudo make setup)"
            ) from e
        src = str(abi.bpf_dir() / "memtrace.bpf.c")
        try:
            self.bpf = BPF(src_file=src.encode(), cflags=flags)
        except Exception as e:  # bcc raises bare Exception on compile/load errors
            raise host.HostError(f"could not compile or load memtrace's BPF programs: {e}") from e

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
            raise host.HostError(f"core probes did not attach ({why})")

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
            gfp=self.gfp.decode(kf.gfp) if has_gfp else None,
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
                gfp=self.gfp.decode(int(k.gfp)) if kind in ("page_alloc", "slab") else None,
                opportunistic=bool(k.opportunistic), count=int(v.value)))
        drops = {name: 0 for name in abi.DROP_NAMES.values()}
        for k, v in self.bpf[b"drops"].items():
            name = abi.DROP_NAMES.get(int(k.value))
            if name:
                drops[name] = int(sum(v))
        memcg = tuple(MemcgCount(c, ev, n) for c, ev, n in self.memcg.totals())
        return self.filter.snapshot(Snapshot(tuple(syscalls), tuple(kernel), memcg, drops))

# ======================================================================== leak profiling

class LeakSource(_Loaded):
    """`memtrace leaks`: the leak profiler's probes on chosen processes (bpf/leaks.bpf.c)."""

    def __init__(self, pids: list[int], mode: str, *, log: Optional[Log] = None,
                 fault_period: int = 64, sample: int = 1, min_size: int = 0,
                 max_size: Optional[int] = None, min_age: float = 0.0):
        from .leaks import LeakProfile

        self.pids = list(dict.fromkeys(pids))
        if len(self.pids) > 4:
            raise host.HostError("memtrace leaks follows at most 4 processes given with -p "
                                 "(their children are followed automatically)")
        self.mode = mode
        self.log = log or (lambda msg: None)
        self.fault_period = fault_period
        self.sample = sample
        self.min_size = min_size
        self.min_age = min_age
        self.max_size = max_size
        self.profile = LeakProfile(mode, self.pids)
        self.bpf: Any = None
        self.live: set[int] = set(self.pids)
        self.unwinders = ProcessUnwinders()
        self._key_frames: dict[tuple[int, int, int], tuple[str, ...]] = {}
        self._attached: dict[int, set[str]] = {}
        self._clock_offset = time.time() - time.monotonic()

    def start(self) -> list[str]:
        host.require_root("leak profiling")
        for pid in self.pids:
            if not os.path.exists(f"/proc/{pid}"):
                raise host.HostError(f"no such process: {pid}")
        host.prepare_headers(self.log)
        layout = read_layout(load_vmlinux())
        defines = dict(layout.defines)
        for name in ("mmap", "munmap", "mremap", "brk"):
            defines[f"MT_NR_{name.upper()}"] = decoders.syscall_number(name)
        for i in range(4):
            defines[f"LK_PID{i}"] = self.pids[i] if i < len(self.pids) else 0
        defines["LK_FAULT_PERIOD"] = self.fault_period
        defines["LK_SAMPLE"] = self.sample
        defines["LK_MIN_SIZE"] = self.min_size
        if self.max_size is not None:
            defines["LK_MAX_SIZE"] = self.max_size
        flags = [f"-I{abi.bpf_dir()}", "-Wno-macro-redefined"]
        flags += [f"-D{k}={v}" for k, v in sorted(defines.items())]
        flags.append("-DLK_MODE_GROWTH=1" if self.mode == "growth" else "-DLK_MODE_MALLOC=1")
        try:
            from bcc import BPF
        except ImportError as e:
            raise host.HostError("bcc's Python bindings are missing: install python3-bpfcc") from e
        try:
            self.bpf = BPF(src_file=str(abi.bpf_dir() / "leaks.bpf.c").encode(), cflags=flags)
        except Exception as e:
            raise host.HostError(f"could not compile or load the leak profiler: {e}") from e
        attached = []
        hooks = [("sched_process_fork", "lk_fork"), ("sched_process_exec", "lk_exec"),
                 ("sched_process_exit", "lk_exit")]
        if self.mode == "growth":
            hooks += [("sys_exit", "lk_sys_exit"), ("page_fault_user", "lk_page_fault")]
        for tp, fn in hooks:
            try:
                self.bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn.encode())
                attached.append(tp)
            except Exception as e:
                self.close()
                raise host.HostError(f"could not attach to {tp}: {e}") from e
        for pid in self.pids:
            self._unwinder(pid, refresh=True)
            if self.mode == "growth":
                self._seed_break(pid)
            else:
                attached += self._attach_allocator(pid)
        self.bpf[b"events"].open_ring_buffer(self._on_event)
        return attached

    # -- set-up helpers -------------------------------------------------------------------
    def _seed_break(self, pid: int) -> None:
        """The heap's current end, so the first brk after attaching counts its growth."""
        try:
            for line in open(f"/proc/{pid}/maps"):
                if line.rstrip().endswith("[heap]"):
                    end = int(line.split()[0].split("-")[1], 16)
                    self.bpf[b"brk_last"][ct.c_uint32(pid)] = ct.c_uint64(end)
        except OSError:
            pass

    def _allocator_modules(self, pid: int) -> list[str]:
        from .leaks import ALLOCATOR_LIBRARIES

        paths: list[str] = []
        try:
            for line in open(f"/proc/{pid}/maps"):
                parts = line.split()
                if len(parts) >= 6 and "x" in parts[1] and parts[5].startswith("/"):
                    path = parts[5]
                    base = os.path.basename(path)
                    if any(base.startswith(lib) for lib in ALLOCATOR_LIBRARIES) and path not in paths:
                        paths.append(path)
        except OSError:
            pass
        # An allocator that interposes (jemalloc, tcmalloc) takes the calls: probe it first.
        paths.sort(key=lambda p: 0 if "libc" not in os.path.basename(p) else 1)
        return paths

    def _attach_allocator(self, pid: int) -> list[str]:
        from .leaks import ALLOCATORS, FREE
        from .unwind import defined_functions, first_argument_probe_offset

        done = self._attached.setdefault(pid, set())
        out = []
        for path in self._allocator_modules(pid):
            real = f"/proc/{pid}/root{path}"
            target = real if os.path.exists(real) else path
            names = defined_functions(target, (*ALLOCATORS, FREE))
            seen_addresses: set[int] = set()
            for name in (*ALLOCATORS, FREE):
                addr = names.get(name)
                if addr is None or addr in seen_addresses or f"{path}:{name}" in done:
                    continue
                seen_addresses.add(addr)
                fn = "lk_free" if name == FREE else f"lk_{name}"
                # free only reads its argument: probe past a leading `test %rdi,%rdi`,
                # which the kernel would single-step on every call (a costly trap).
                off = first_argument_probe_offset(target, addr) if name == FREE else 0
                self.bpf.attach_uprobe(name=target.encode(), sym=name.encode(), sym_off=off,
                                       fn_name=fn.encode(), pid=pid)
                if name != FREE:
                    self.bpf.attach_uretprobe(name=target.encode(), sym=name.encode(),
                                              fn_name=b"lk_alloc_return", pid=pid)
                done.add(f"{path}:{name}")
                out.append(f"{os.path.basename(path)}:{name}")
            if any(n.startswith(os.path.basename(path)) for n in out) and "libc" not in path:
                break  # the interposing allocator is enough
        if not out and self.mode == "malloc":
            self.log(f"memtrace: warning: no allocator found in pid {pid}'s libraries")
        return out

    def _unwinder(self, pid: int, refresh: bool = False) -> Any:
        return self.unwinders.get(pid, refresh)

    # -- events ---------------------------------------------------------------------------
    def poll(self, timeout: float = 0.1) -> None:
        assert self.bpf is not None
        self.bpf.ring_buffer_poll(int(timeout * 1000))

    def drain(self) -> None:
        assert self.bpf is not None
        self.bpf.ring_buffer_consume()

    def _frames(self, e: Any) -> tuple[str, ...]:
        if not e.stack_len:
            return (f"0x{e.ip:x}",) if e.ip else ("[no stack]",)
        u = self._unwinder(e.pid)
        stack = ct.string_at(ct.addressof(e.stack), e.stack_len)
        rows = u.frames_with_source(e.ip, e.sp, e.bp, stack)
        if rows and "[unknown]" in rows[0][0]:
            u = self._unwinder(e.pid, refresh=True)  # a library loaded since we last looked
            rows = u.frames_with_source(e.ip, e.sp, e.bp, stack)
        frames = tuple(text for text, _ in rows)
        self.profile.sources.setdefault(frames, tuple(src for _, src in rows))
        return frames

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        e = ct.cast(data, ct.POINTER(abi.LeakEvent)).contents
        try:
            self._handle(e)
        except Exception as exc:
            self.log(f"memtrace: could not decode a leak event: {exc}")

    def _handle(self, e: Any) -> None:
        from .leaks import ALLOCATORS, AllocFailure

        p = self.profile
        kind = e.kind
        if kind == abi.LK_EV_FORK:
            child = int(e.child_pid)
            self.live.add(child)
            p.pids = sorted(set(p.pids) | {child})
            self._unwinder(child, refresh=True)
            if self.mode == "malloc":
                self._attach_allocator(child)
            return
        if kind == abi.LK_EV_EXEC:
            self._unwinder(int(e.pid), refresh=True)
            if self.mode == "malloc":
                self._attach_allocator(int(e.pid))
            return
        if kind == abi.LK_EV_EXIT:
            self.live.discard(int(e.pid))
            p.exited.add(int(e.pid))
            return
        pid = int(e.pid)
        if kind == abi.LK_EV_MMAP:
            p.grow(pid, int(e.addr), int(e.len), self._frames(e))
        elif kind == abi.LK_EV_MUNMAP or kind == abi.LK_EV_BRK_SHRINK:
            p.shrink(pid, int(e.addr), int(e.len))
        elif kind == abi.LK_EV_MREMAP:
            p.move(pid, int(e.old_addr), int(e.old_len), int(e.addr), int(e.len),
                   self._frames(e))
        elif kind == abi.LK_EV_BRK:
            p.grow(pid, int(e.addr), int(e.len), self._frames(e))
        elif kind == abi.LK_EV_FAULT:
            p.touched(pid, int(e.addr), self._frames(e), int(e.weight))
        elif kind == abi.LK_EV_STACK:
            key = (int(e.key.pid), int(e.key.stack_id), int(e.key.caller))
            self._key_frames.setdefault(key, self._frames(e))
        elif kind == abi.LK_EV_ALLOC_FAIL:
            key = (int(e.key.pid), int(e.key.stack_id), int(e.key.caller))
            fn = ALLOCATORS[e.fn] if e.fn < len(ALLOCATORS) else str(e.fn)
            p.failed(AllocFailure(self._clock_offset + e.ts_ns / 1e9, pid, fn, int(e.len),
                                  self._key_frames.get(key) or self._fp_frames(key)))

    def _fp_frames(self, key: tuple[int, int, int]) -> tuple[str, ...]:
        """Frames from the frame-pointer stack and the caller, when no copy was kept."""
        pid, stack_id, caller = key
        u = self._unwinder(pid)
        out = []
        addrs: list[int] = []
        if stack_id >= 0:
            try:
                addrs = list(self.bpf[b"stacks"].walk(stack_id))
            except KeyError:
                addrs = []
        if addrs:
            out.append(u.format(addrs[0], first=True))
        if caller:
            out.append(u.format(caller))
        out += [u.format(a) for a in addrs[1:]]
        return tuple(out) or ("[unknown]",)

    def refresh(self) -> None:
        """Malloc mode: outstanding bytes by stack, from the kernel's exact counters."""
        if self.mode != "malloc" or self.bpf is None:
            return
        p = self.profile
        p.reset_outstanding()
        if self.min_age > 0:
            # Only allocations older than --min-age: walk the outstanding ones (costs a
            # pass over the allocation map per interval, unlike the per-stack totals).
            cutoff = time.monotonic_ns() - int(self.min_age * 1e9)
            old: dict[tuple[int, int, int], list[int]] = {}
            for a in self.bpf[b"allocs"].values():
                if a.ts_ns <= cutoff:
                    key = (int(a.key.pid), int(a.key.stack_id), int(a.key.caller))
                    acc = old.setdefault(key, [0, 0])
                    acc[0] += int(a.size)
                    acc[1] += 1
            for key, (nbytes, count) in old.items():
                frames = self._key_frames.get(key) or self._fp_frames(key)
                p.set_outstanding(frames, nbytes, count)
        else:
            for k, v in self.bpf[b"stats"].items():
                key = (int(k.pid), int(k.stack_id), int(k.caller))
                frames = self._key_frames.get(key) or self._fp_frames(key)
                p.set_outstanding(frames, int(v.bytes), int(v.count))
        n = self.bpf[b"failures"][ct.c_int(0)].value
        p.failure_count = max(p.failure_count, int(n))

    def read_drops(self) -> None:
        if self.bpf is None:
            return
        names = abi.LEAK_DROP_NAMES
        for k, v in self.bpf[b"drops"].items():
            name = names.get(int(k.value))
            if name:
                self.profile.drops[name] = int(sum(v))
