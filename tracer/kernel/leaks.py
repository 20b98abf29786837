"""The leak profiler's source (`memtrace leaks`): loads bpf/leaks.bpf.c for chosen processes
and their children, or for every process on the host (growth mode), attaches allocator
uprobes in malloc mode, and feeds a LeakProfile."""

from __future__ import annotations

import ctypes as ct
import os
import time
from typing import Any, Callable, Optional

from ..errors import HostError, UsageError
from ..host import system as host
from ..host.cgroups import CgroupResolver
from ..model.leaks import (
    ALLOCATOR_LIBRARIES,
    ALLOCATORS,
    DEFAULT_SAMPLE_BYTES,
    FREE,
    GREW_WINDOW,
    GROWTH,
    RATE_WINDOW,
    AllocFailure,
    LeakProfile,
)
from ..unwind.elf import defined_functions, first_argument_probe_offset
from ..unwind.unwinder import ProcessUnwinders
from . import abi
from .btf import BtfError, load_vmlinux
from .build import CgroupFilter, leak_cflags, read_layout
from .growth import GrowthDecoder, leak_event
from .loader import Loaded, load

Log = Callable[[str], None]


class LeakSource(Loaded):
    """`memtrace leaks`: the leak profiler's probes on chosen processes or on every process
    (bpf/leaks.bpf.c)."""

    def __init__(self, pids: list[int], mode: str, *, log: Optional[Log] = None,
                 sample_bytes: int = DEFAULT_SAMPLE_BYTES, sample: int = 1, min_size: int = 0,
                 max_size: Optional[int] = None, min_age: float = 0.0,
                 all_processes: bool = False, cgroup: Optional[str] = None,
                 rate_window: float = RATE_WINDOW, grew_window: float = GREW_WINDOW,
                 cgroups: Optional[CgroupResolver] = None):
        self.pids = list(dict.fromkeys(pids))
        if all_processes and self.pids:
            raise UsageError("--all traces every process: give it without -p")
        if cgroup is not None and not all_processes:
            raise UsageError("--cgroup narrows --all: give --all with it")
        if all_processes and mode != GROWTH:
            raise UsageError("--all works in growth mode only (malloc mode probes each "
                             "process's allocator)")
        if not all_processes and not self.pids:
            raise UsageError("give the processes to profile with -p PID, or --all")
        if len(self.pids) > 4:
            raise UsageError("memtrace leaks follows at most 4 processes given with -p "
                             "(their children are followed automatically)")
        if not 1 <= sample_bytes <= abi.LK_MAX_SAMPLE_BYTES:
            raise UsageError(f"--sample-bytes must be between 1 and "
                             f"{abi.LK_MAX_SAMPLE_BYTES}")
        self.mode = mode
        self.log = log or (lambda msg: None)
        self.sample_bytes = sample_bytes
        self.sample = sample
        self.min_size = min_size
        self.min_age = min_age
        self.max_size = max_size
        self.all_processes = all_processes
        self.cgroup = cgroup
        self._cgroups = cgroups
        self.profile = LeakProfile(mode, self.pids, all_processes=all_processes,
                                   cgroup=cgroup,
                                   sample_bytes=sample_bytes if mode == GROWTH else None,
                                   rate_window=rate_window, grew_window=grew_window)
        self.bpf: Any = None
        self.live: set[int] = set(self.pids)
        self.unwinders = ProcessUnwinders()
        self.growth = GrowthDecoder(self.profile, self._unwinder, self._cgroup_name)
        self._key_frames: dict[tuple[int, int, int], tuple[str, ...]] = {}
        self._attached: dict[int, set[str]] = {}

    def done(self) -> bool:
        """Every traced process has exited (never, with --all)."""
        return not self.all_processes and not self.live

    def _cgroup_filter(self, btf: Any) -> Optional[CgroupFilter]:
        if self.cgroup is None:
            return None
        resolver = self._resolver()
        try:
            hierarchy, rel = resolver.resolve_user_path(self.cgroup)
        except LookupError as e:
            raise UsageError(str(e)) from e
        directory = hierarchy.mount / rel.lstrip("/")
        cgroup_id = os.stat(directory).st_ino  # the kernfs id is the directory's inode
        self.profile.cgroup = rel
        if hierarchy.memory:
            try:
                parent = btf.member_offset("cgroup_subsys_state", "parent")
            except BtfError as e:
                raise HostError(f"--cgroup: this kernel's BTF lacks what the cgroup "
                                f"check needs: {e}") from e
            return CgroupFilter(cgroup_id, 0, parent)
        if hierarchy.version != 2:
            raise UsageError(f"--cgroup {self.cgroup}: not a memory cgroup nor a cgroup v2 one")
        level = len([part for part in rel.split("/") if part])
        if level == 0:
            return None  # the root of the v2 hierarchy holds every task
        return CgroupFilter(cgroup_id, level, None)

    def _resolver(self) -> CgroupResolver:
        if self._cgroups is None:
            self._cgroups = CgroupResolver()
        return self._cgroups

    def start(self) -> list[str]:
        host.require_root("leak profiling")
        for pid in self.pids:
            if not os.path.exists(f"/proc/{pid}"):
                raise HostError(f"no such process: {pid}")
        host.prepare_headers(self.log)
        btf = load_vmlinux()
        layout = read_layout(btf)
        cgroup = self._cgroup_filter(btf)
        if cgroup is not None and cgroup.v2_level == 0 and "MT_HAVE_MEMCG" not in layout.features:
            raise HostError("--cgroup: this kernel's BTF does not describe memory cgroups")
        flags = leak_cflags(layout, self.pids, self.mode,
                            sample_bytes=self.sample_bytes if self.mode == GROWTH else None,
                            sample=self.sample, min_size=self.min_size, max_size=self.max_size,
                            all_processes=self.all_processes, self_tgid=os.getpid(),
                            cgroup=cgroup)
        self.bpf = load("leaks.bpf.c", flags, "the leak profiler")
        self.profile.started = time.time()
        attached = []
        hooks = [("sched_process_fork", "lk_fork"), ("sched_process_exec", "lk_exec"),
                 ("sched_process_exit", "lk_exit")]
        if self.mode == GROWTH:
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
            if self.mode == GROWTH:
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

    def _on_event(self, _ctx: Any, data: Any, size: int) -> None:
        e = leak_event(data, size)
        if e is None:
            self.profile.drops["short_event"] = self.profile.drops.get("short_event", 0) + 1
            return
        try:
            self._handle(e)
        except Exception as exc:
            self.log(f"memtrace: could not decode a leak event: {exc}")

    def _cgroup_name(self, cgroup_id: int) -> Optional[str]:
        return self._resolver().path(cgroup_id, memory=True) if cgroup_id else None

    def _handle(self, e: Any) -> None:
        kind = e.kind
        pid = int(e.pid)
        if kind == abi.LK_EV_FORK:
            child = int(e.child_pid)
            self.live.add(child)
            self.profile.pids = sorted(set(self.profile.pids) | {child})
            self._unwinder(child, refresh=True)
            if self.mode == "malloc":
                self._attach_allocator(child)
            return
        if kind == abi.LK_EV_EXIT:
            self.live.discard(pid)
        if self.growth.handle(e):  # growth, exec and exit
            if kind == abi.LK_EV_EXEC and self.mode == "malloc":
                self._attach_allocator(pid)
            return
        t = self.growth.time(e)
        if kind == abi.LK_EV_STACK:
            key = (int(e.key.pid), int(e.key.stack_id), int(e.key.caller))
            self.profile.process(key[0], t, comm=abi.cstr(e.comm))
            self._key_frames.setdefault(key, self.growth.frames(e))
        elif kind == abi.LK_EV_ALLOC_FAIL:
            key = (int(e.key.pid), int(e.key.stack_id), int(e.key.caller))
            fn = ALLOCATORS[e.fn] if e.fn < len(ALLOCATORS) else str(e.fn)
            self.profile.failed(AllocFailure(t, pid, fn, int(e.len),
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
        """Growth mode: sampled bytes whose events were lost; malloc mode: outstanding bytes
        by stack, from the kernel's exact counters."""
        if self.bpf is None:
            return
        if self.mode == GROWTH:
            self._read_lost()
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
                p.set_outstanding(frames, nbytes, count, key[0])
        else:
            for k, v in self.bpf[b"stats"].items():
                key = (int(k.pid), int(k.stack_id), int(k.caller))
                frames = self._key_frames.get(key) or self._fp_frames(key)
                p.set_outstanding(frames, int(v.bytes), int(v.count), key[0])
        n = self.bpf[b"failures"][ct.c_int(0)].value
        p.failure_count = max(p.failure_count, int(n))

    def _read_lost(self) -> None:
        self.growth.read_lost((int(k.value), int(v.value)) for k, v in self.bpf[b"lost"].items())

    def read_drops(self) -> None:
        if self.bpf is None:
            return
        names = abi.LEAK_DROP_NAMES
        for k, v in self.bpf[b"drops"].items():
            name = names.get(int(k.value))
            if name:
                self.profile.drops[name] = int(sum(v))
