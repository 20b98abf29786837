"""The leak profiler's source (`memtrace leaks`): loads bpf/leaks.bpf.c for chosen processes
and their children, attaches allocator uprobes in malloc mode, and feeds a LeakProfile."""

from __future__ import annotations

import ctypes as ct
import os
import time
from typing import Any, Callable, Optional

from ..errors import HostError
from ..host import system as host
from ..model.leaks import ALLOCATOR_LIBRARIES, ALLOCATORS, FREE, AllocFailure, LeakProfile
from ..unwind.elf import defined_functions, first_argument_probe_offset
from ..unwind.unwinder import ProcessUnwinders
from . import abi
from .btf import load_vmlinux
from .build import leak_cflags, read_layout
from .loader import Loaded, load

Log = Callable[[str], None]


class LeakSource(Loaded):
    """`memtrace leaks`: the leak profiler's probes on chosen processes (bpf/leaks.bpf.c)."""

    def __init__(self, pids: list[int], mode: str, *, log: Optional[Log] = None,
                 fault_period: int = 64, sample: int = 1, min_size: int = 0,
                 max_size: Optional[int] = None, min_age: float = 0.0):
        self.pids = list(dict.fromkeys(pids))
        if len(self.pids) > 4:
            raise HostError("memtrace leaks follows at most 4 processes given with -p "
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
                raise HostError(f"no such process: {pid}")
        host.prepare_headers(self.log)
        flags = leak_cflags(read_layout(load_vmlinux()), self.pids, self.mode,
                            fault_period=self.fault_period, sample=self.sample,
                            min_size=self.min_size, max_size=self.max_size)
        self.bpf = load("leaks.bpf.c", flags, "the leak profiler")
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
                raise HostError(f"could not attach to {tp}: {e}") from e
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
