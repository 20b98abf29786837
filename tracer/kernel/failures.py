"""The live failure source: loads bpf/memtrace.bpf.c, attaches the probe plan, and turns what
the kernel reports (ring-buffer events, exact counters) into model values."""

from __future__ import annotations

import collections
import contextlib
import ctypes as ct
import dataclasses
import gc
import os
import re
import time
from typing import Any, Callable, Deque, Mapping, Optional

from .. import __version__
from ..errors import HostError
from ..host import state as host_state
from ..host import system as host
from ..host.cgroups import CgroupResolver
from ..host.kallsyms import KernelSymbols
from ..host.memcg import MemcgWatcher
from ..model import decode as decoders
from ..model.failures import (
    Failure,
    Filter,
    HostAtFailure,
    KernelCount,
    KernelFailure,
    MemcgCount,
    MemcgState,
    Ready,
    Snapshot,
    SyscallCount,
    TaskState,
)
from ..model.leaks import GROWTH, GrowingProcess, Growth, LeakProfile
from ..model.probes import ATTACHED, FAILED, STANDBY, UNAVAILABLE, ProbeStatus
from ..unwind.unwinder import ProcessUnwinders, Unwinder
from . import abi, depth, tracing
from .btf import load_vmlinux
from .build import BuildOptions, Layout, cflags, read_layout
from .cost import CostMeter
from .growth import GrowthDecoder, leak_event
from .loader import Loaded, RingReader, load
from .mappings import LearnedMaps, decode_path
from .probes import CORE_PROBES, PLAN, Candidate, choose, kprobe_check

Log = Callable[[str], None]

_OOM_CONSTRAINT = re.compile(r"^oom-kill:constraint=(\w+)")

# Events taken from the ring buffer per poll. libbpf keeps consuming while producers keep
# producing, so without a bound one poll of a storm never returns and every event it
# consumed waits in memory; with it, what user space cannot keep up with stays in the
# kernel, where the ring buffer drops it (counted) and the counters stay exact. About
# one and a half ring buffers' worth at the default size (128 pages, ~350 events).
MAX_BATCH = 512
# A final drain takes at most this many batches: the ring buffer's content, not a
# storm that is still going on.
MAX_DRAIN_BATCHES = 4
# Kernel messages kept to attach to the failure they explain (bounded: a storm prints many).
MAX_KERNEL_MESSAGES = 32
# Time memtrace spends reading growth events, per second: past it the ring buffer keeps the
# rest for later, and when it fills the kernel counts the samples' bytes without their stacks
# (lost_growth), so a host growing (or churning) memory at gigabytes a second costs memtrace
# at most this share of a CPU (each sample's stack is unwound: about 50 us), never its
# totals. An OOM kill reads everything there is first.
GROWTH_READ_BUDGET = 0.05
# First touches held per read before they are named (GrowthDecoder.batched): a read stops
# there, so naming them (the cost the budget is for) comes in bounded steps.
GROWTH_WAITING_PER_READ = 256
# Growth stacks an OOM kill names of the victim and of its memory cgroup's other processes
# (the processes and samples kept are LeakProfile's bounds).
GREW_STACKS = 3
# The growth panel's processes.
GROWING_SHOWN = 5
# Growth tracking's mean bytes between two samples: tcmalloc's always-on 2 MiB, not leaks'
# 512 KiB. A sample costs about 8 us in the kernel (most of it copying 8 KiB of user stack),
# so at 512 KiB the storm's 3.2 GB of first touches cost 1.5-2 points of its time (BPF
# run-time stats: mt_page_alloc +50-75 ns a run), at 2 MiB about 0.4; a 64 MiB cgroup's OOM
# victim still has some 30 samples (its bytes within about 20%).
GROWTH_SAMPLE_BYTES = 2 << 20
# Returned by the ring-buffer callback to end this poll (libbpf stops at a negative value;
# the event that returned it has been handled).
_STOP_POLL = -1


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


# A page_counter's max at or above this many pages is no limit (PAGE_COUNTER_MAX is
# LONG_MAX / PAGE_SIZE; cgroup files show it as "max" or 9223372036854771712).
_NO_LIMIT_PAGES = 1 << 50


def free_blocks(h: abi.HostEvidence, zone_names: Mapping[int, str], orders: int
                ) -> dict[str, tuple[int, ...]]:
    """The free blocks per order of each zone, named as /proc/buddyinfo names them."""
    out: dict[str, tuple[int, ...]] = {}
    orders = max(1, min(orders, abi.MT_BLOCK_ORDERS))
    for i in range(min(int(h.block_zones), abi.MT_BLOCK_ZONES)):
        node, zone = int(h.block_zone[i]) >> 4, int(h.block_zone[i]) & 0xF
        name = f"node {node} zone {zone_names.get(zone, f'#{zone}')}"
        out[name] = tuple(int(n) for n in h.blocks[i][:orders])
    return out


def host_at_failure(h: abi.HostEvidence, page_size: int = 4096,
                    zone_names: Optional[Mapping[int, str]] = None, orders: int = 11
                    ) -> Optional[HostAtFailure]:
    """The fast-changing memory state the kernel side read at the failure, in bytes; MemAvailable
    computed from it as si_mem_available() does."""
    flags = int(h.flags)
    if not flags:
        return None
    zones: dict[str, Any] = {}
    if flags & abi.HOST_ZONES:
        low = int(h.wmark_low)
        pagecache = int(h.file)
        pagecache -= min(pagecache // 2, low)
        reclaimable = int(h.reclaimable)
        reclaimable -= min(reclaimable // 2, low)
        available = max(int(h.free) - int(h.reserve) + pagecache + reclaimable, 0)
        zones = dict(free=int(h.free) * page_size, available=available * page_size,
                     min_watermark=int(h.wmark_min) * page_size, low_watermark=low * page_size,
                     high_watermark=int(h.wmark_high) * page_size,
                     managed=int(h.managed) * page_size,
                     free_blocks=free_blocks(h, zone_names or {}, orders))
    huge: dict[str, Any] = {}
    if flags & abi.HOST_HUGETLB and int(h.huge_order) < 40:
        huge = dict(hugepages_total=int(h.huge_total), hugepages_free=int(h.huge_free),
                    hugepages_reserved=int(h.huge_reserved),
                    hugepages_surplus=int(h.huge_surplus),
                    hugepage_size=page_size << int(h.huge_order))
    mapped = bool(flags & abi.HOST_RANGE_MAPPED) if flags & abi.HOST_RANGE_CHECKED else None
    return HostAtFailure(**zones, **huge, range_mapped=mapped)


def memcg_state(m: abi.MemcgEvidence, cgroup: Optional[str], nearest: Optional[str],
                page_size: int = 4096) -> MemcgState:
    """The memory cgroup's charge at the failure, as the kernel side read it (pages) in bytes."""
    def limit(pages: int) -> Optional[int]:
        return None if pages >= _NO_LIMIT_PAGES else int(pages) * page_size

    return MemcgState(
        usage=int(m.usage) * page_size, limit=limit(int(m.max)),
        nearest_cgroup=nearest, nearest_usage=int(m.limit_usage) * page_size,
        nearest_limit=limit(int(m.limit_max)), nearest_levels_up=int(m.limit_level))


# Processes whose page-backed slab failures are counted one by one (the rest together).
MAX_SLAB_VIA_KEYS = 4096

# Unwinders kept for processes known only from what the kernel reported (they have exited).
MAX_LEARNED_UNWINDERS = 64


def _in_other_mount_namespace(pid: int) -> bool:
    """Whether a live process sees another filesystem root than memtrace (a container): its
    paths as the kernel reported them are inside that root. False once it has exited."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/root/"), os.stat("/")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def stack_copy(data: Any, size: int, e: abi.Event) -> bytes:
    """The copy of the user stack that follows an event in its ring buffer record (struct
    mt_event_full), bounded by the record's real size; b"" when there is none."""
    have = int(size) - ct.sizeof(abi.Event)
    n = min(int(e.ustack_len), have, abi.MT_USTACK_BYTES)
    if n <= 0:
        return b""
    base = ct.cast(data, ct.c_void_p).value
    return b"" if base is None else ct.string_at(base + ct.sizeof(abi.Event), n)


_STANDBY_REASON = ("attached after a failure or while memory is tight, detached when quiet "
                   "(--slab-hooks always: all the time)")


def _trigger_reason(f: Failure) -> str:
    if f.kind == "memcg":
        return f"cgroup {f.cgroup} hit its limit ({f.detail.get('event')})"
    what = f"{f.syscall}() {f.errno or 'failure'}" if f.kind == "syscall" else f"a {f.kind} failure"
    return f"{what} in pid {f.pid} ({f.comm})"


class LiveSource(Loaded):
    """Failures as the running kernel reports them."""

    def __init__(self, filt: Optional[Filter] = None, log: Optional[Log] = None,
                 options: Optional[BuildOptions] = None, symbolize: bool = True,
                 oom_score_adj: Optional[int] = None, probe_cost: bool = False,
                 slab_hooks: str = depth.ADAPTIVE, arm_quiet: float = depth.DEFAULT_QUIET,
                 growth: bool = True, growth_sample_bytes: int = GROWTH_SAMPLE_BYTES):
        self.filter = filt or Filter()
        self.arming = depth.Arming(slab_hooks, arm_quiet)
        self._standby: dict[str, Candidate] = {}  # adaptive probes: attached while armed
        self._low_watermark_pages: Optional[int] = None
        self._last_depth_check = 0.0
        self._watermarks_read = 0.0
        # page failures that were slab allocations, seen while the slab hooks were detached
        self._slab_via_page: collections.Counter[tuple[int, str, Optional[str], int]] = \
            collections.Counter()
        # Always-on growth tracking (MT_PROBE_GROWTH): what an OOM kill's victim grew, what
        # grows now. Off: its probes are not compiled in, `grew` and `growing` stay empty.
        self.growth = growth
        self.growth_sample_bytes = growth_sample_bytes
        self.growth_profile: Optional[LeakProfile] = None
        self._growth_decoder: Optional[GrowthDecoder] = None
        self._growth_capped = False  # the last read stopped at GROWTH_WAITING_PER_READ
        self._growth_ring: Optional[RingReader] = None
        # the current second of reading growth, the time spent in it, and when to stop now
        self._growth_second = 0.0
        self._growth_spent = 0.0
        self._growth_until: Optional[float] = None
        self._growth_errors = 0
        self._other_namespace: collections.OrderedDict[int, bool] = collections.OrderedDict()
        self.oom_score_adj = oom_score_adj  # lowered at start (None: left as it is)
        self.log = log or (lambda msg: None)
        self.options = options
        self.symbolize = symbolize
        self.probe_cost = probe_cost  # hold BPF run-time stats on while it runs (kernel/cost.py)
        self.cost: Optional[CostMeter] = None
        self.bpf: Any = None
        self.layout: Optional[Layout] = None
        self.statuses: list[ProbeStatus] = []
        self._out: list[Failure] = []
        self._kmsg: Deque[tuple[float, int, str]] = collections.deque(maxlen=MAX_KERNEL_MESSAGES)
        self._out_of_memory = False  # a MemoryError in the ring-buffer callback, raised by poll
        self._decode_errors = 0
        self._last_memcg_poll = 0.0
        self._sys_exit_via = ""  # "tp_btf" or "raw_tp", once compiled
        self._sys_exit_btf_id = 0  # btf_trace_sys_exit's type id (tp_btf's attach target)
        self._clock_offset = time.time() - time.monotonic()
        self.user_symbols = ProcessUnwinders()
        self.learned = LearnedMaps()
        self.families: frozenset[str] = frozenset()  # the probe families compiled in
        self._learned_unwinders: collections.OrderedDict[int, tuple[int, Unwinder]] = \
            collections.OrderedDict()
        # Not bcc's ksym(): its table of every kernel symbol costs ~20 MiB, this one ~7.
        self.kernel_symbols = KernelSymbols()

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> Ready:
        host.require_root("tracing")
        if self.oom_score_adj is not None:  # before compiling, memtrace's largest allocation
            host.lower_oom_score(self.oom_score_adj, self.log)
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
        tp_btf_ok = tracing.checker(btf.tracepoint_type_id)
        chosen, unavailable = choose(btf.tracepoint_params, kprobe_ok=kprobe_check(),
                                     tp_btf_ok=tp_btf_ok)
        self._sys_exit_btf_id = btf.tracepoint_type_id("sys_exit") or 0
        families = frozenset(spec.family for spec in PLAN if spec.name in chosen and spec.family)
        options = self.options or BuildOptions(families=families)
        if not options.families:
            options = BuildOptions(families=families, ringbuf_pages=options.ringbuf_pages,
                                   counter_entries=options.counter_entries,
                                   stack_entries=options.stack_entries, extra=options.extra)
        why_no_growth = self._why_no_growth(options.families)
        if why_no_growth:
            options = dataclasses.replace(options, families=options.families - {"GROWTH"})
        self.families = options.families
        flags = cflags(self.layout, options, self_tgid=os.getpid())
        if "GROWTH" in self.families:
            flags.append(f"-DLK_SAMPLE_BYTES={self.growth_sample_bytes}")
        sys_exit = chosen.get("syscall_exit")
        if sys_exit is not None and sys_exit.via == "raw_tp" and "SYSCALLS" in self.families:
            why = tp_btf_ok(sys_exit.target)
            if why:
                self._note(f"sys_exit as a raw tracepoint (a helper call per syscall to read "
                           f"its number): {why}")
        if sys_exit is not None and sys_exit.via == "tp_btf":
            self.bpf = load("memtrace.bpf.c", flags + ["-DMT_SYS_EXIT_BTF"],
                            "memtrace's BPF programs")
            try:  # the verifier's word on it as tp_btf, before anything is attached
                tracing.load_fd(self.bpf, sys_exit.fn, self._sys_exit_btf_id)
            except OSError as e:
                self._note(f"sys_exit as a raw tracepoint: {e.strerror or e}")
                self.close()
                sys_exit = chosen["syscall_exit"] = next(
                    c for spec in PLAN if spec.name == "syscall_exit"
                    for c in spec.candidates if c.via == "raw_tp")
        if self.bpf is None:
            self.bpf = load("memtrace.bpf.c", flags, "memtrace's BPF programs")
        self._sys_exit_via = sys_exit.via if sys_exit is not None else ""
        self._discover()
        growth_failed = self._load_tail_calls()

        statuses: dict[str, ProbeStatus] = dict(unavailable)
        for spec in PLAN:
            cand = chosen.get(spec.name)
            if cand is None:
                continue
            if spec.family == "GROWTH" and why_no_growth:
                statuses[spec.name] = ProbeStatus(spec.name, UNAVAILABLE, None, why_no_growth)
                continue
            if spec.family == "GROWTH" and growth_failed:
                statuses[spec.name] = ProbeStatus(spec.name, FAILED, cand.via, growth_failed)
                continue
            if cand.via == "poll":
                statuses[spec.name] = ProbeStatus(spec.name, ATTACHED, "poll", cand.target)
                continue
            if spec.adaptive and not self.arming.armed:
                self._standby[spec.name] = cand
                statuses[spec.name] = ProbeStatus(spec.name, STANDBY, cand.via, _STANDBY_REASON)
                continue
            try:
                if cand.via == "kretprobe":
                    self.bpf.attach_kretprobe(event=cand.target.encode(), fn_name=cand.fn.encode())
                elif cand.via == "tp_btf":
                    tracing.load_and_attach(self.bpf, cand.fn, cand.target,
                                            self._sys_exit_btf_id)
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
        if "GROWTH" in self.families and not growth_failed:
            self._start_growth()
        self.cost = CostMeter(self.bpf, self.statuses, enable=self.probe_cost)
        host.release_free_heap()  # what the compiler freed: RSS is memtrace's budget in a storm
        return Ready(__version__, host.kernel_release(), tuple(self.statuses), self.layout.notes)

    def _why_no_growth(self, families: frozenset[str]) -> str:
        """Why growth tracking is not compiled in ("" when it is)."""
        assert self.layout is not None
        if not self.growth:
            return "growth tracking turned off (--no-growth)"
        if "GROWTH" not in families:
            return "growth tracking not in this build's probe families"
        if "MT_HAVE_GROWTH" not in self.layout.features:
            return ("this kernel's BTF or helpers lack what growth tracking reads "
                    "(see the notes)")
        if not self.gfp.mask("__GFP_HARDWALL") or not self.gfp.mask("__GFP_MOVABLE"):
            return ("this kernel names no __GFP_HARDWALL or __GFP_MOVABLE: user pages cannot "
                    "be told apart")
        missing = {"SYSCALLS", "KMEM"} - families
        if missing:
            return f"growth tracking rides on the {', '.join(sorted(missing))} probes"
        return ""

    def _start_growth(self) -> None:
        """The profile growth is kept in (every process, bounded), and its ring buffer."""
        self.growth_profile = LeakProfile(GROWTH, (), all_processes=True,
                                          sample_bytes=self.growth_sample_bytes,
                                          started=time.time())
        self._growth_decoder = GrowthDecoder(self.growth_profile, self._growth_unwinder,
                                             self._cgroup, self._clock_offset,
                                             with_sources=False, batched=True)
        self._growth_decoder.on_error = self._growth_error
        self._growth_ring = RingReader(self.bpf, "growth_events", self._on_growth_event)

    def _load_tail_calls(self) -> str:
        """The programs the probes tail-call (the range check's VMA walk; growth's work at a
        memory syscall's exit and at a sample). Returns why growth's could not load ("" when
        they did, or growth is not compiled in)."""
        assert self.layout is not None
        tails, sys_tails = self.bpf[b"tails"], self.bpf[b"sys_tails"]

        def load_sys_tail(name: str) -> int:
            """A program mt_sys_exit tail-calls: the same kind of program as it."""
            if self._sys_exit_via == "tp_btf":
                return tracing.load_fd(self.bpf, name, self._sys_exit_btf_id)
            return int(self.bpf.load_func(name.encode(), self.bpf.RAW_TRACEPOINT).fd)

        if "MT_HAVE_MAPLE" in self.layout.features and "SYSCALLS" in self.families:
            try:
                fd = load_sys_tail("mt_range_tail")
                sys_tails[ct.c_int(abi.C["MT_TAIL_RANGE_CHECK"])] = ct.c_int(fd)
            except Exception as e:  # the range is then read from /proc afterwards, as before
                self._note("whether a range was mapped at the failure: "
                           f"{str(e).splitlines()[0]}")
        if "GROWTH" not in self.families:
            return ""
        try:
            fd = load_sys_tail("mt_growth_syscall_tail")
            sys_tails[ct.c_int(abi.C["MT_TAIL_GROWTH_SYSCALL"])] = ct.c_int(fd)
            fn = self.bpf.load_func(b"mt_growth_page_tail", self.bpf.RAW_TRACEPOINT)
            tails[ct.c_int(abi.C["MT_TAIL_GROWTH_PAGE"])] = ct.c_int(fn.fd)
        except Exception as e:  # failures are still traced; growth is not
            for table, slot in ((sys_tails, "MT_TAIL_GROWTH_SYSCALL"),
                                (tails, "MT_TAIL_GROWTH_PAGE")):
                try:
                    del table[ct.c_int(abi.C[slot])]
                except KeyError:
                    pass
            return f"growth tracking's programs did not load: {str(e).splitlines()[0]}"
        return ""

    def _note(self, note: str) -> None:
        """A line for doctor and the ready line's notes: what this host cannot have."""
        assert self.layout is not None
        self.layout = dataclasses.replace(self.layout, notes=self.layout.notes + (note,))

    def _discover(self) -> None:
        """Hand the kernel side the pointers it cannot find by name (this kernel's symbol
        table has no data symbols): the default huge page pool's struct hstate, through a
        hugetlbfs memfd memtrace holds for a moment (bpf/memtrace.bpf.c's mt_discover)."""
        assert self.layout is not None
        if "MT_HAVE_HUGETLB" not in self.layout.features:
            return
        try:
            fd = os.memfd_create("memtrace-hstate", os.MFD_HUGETLB | os.MFD_CLOEXEC)
        except (OSError, AttributeError) as e:
            self.layout = dataclasses.replace(self.layout, notes=self.layout.notes + (
                f"huge page pool at the failure: no hugetlbfs memfd ({e})",))
            return
        try:
            self.bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"mt_discover")
            try:
                libc = ct.CDLL(None, use_errno=True)
                libc.fcntl(fd, 1, ct.c_uint64(abi.DISCOVER_MAGIC))  # F_GETFD, the marker
            finally:
                self.bpf.detach_raw_tracepoint(tp=b"sys_enter")
        except Exception as e:  # no hugetlb capture; failures are still traced
            self.layout = dataclasses.replace(self.layout, notes=self.layout.notes + (
                f"huge page pool at the failure: {str(e).splitlines()[0]}",))
        finally:
            os.close(fd)

    # -- events ---------------------------------------------------------------------------
    def poll(self, timeout: float = 0.1) -> list[Failure]:
        """Up to MAX_BATCH failures from the ring buffer (waiting up to `timeout` for the
        first), plus memory cgroup events once a second. MemoryError when memtrace itself
        ran out of memory while converting them (what it had converted is kept)."""
        assert self.bpf is not None
        self.bpf.ring_buffer_poll(int(timeout * 1000))
        self._raise_if_out_of_memory()
        self._read_growth(budgeted=True)
        busy = bool(self._out)
        now = time.monotonic()
        if now - self._last_memcg_poll >= 1.0:
            self._last_memcg_poll = now
            self._poll_memcg()
            self._recount_armed()
            busy = True
        self._adapt_depth(now)
        if busy:
            # What converting a batch freed goes back to the system (~0.3 ms): glibc would
            # keep it, and reuse of the heap the BPF compiler left makes RSS grow back.
            host.release_free_heap()
        out, self._out = self._out, []
        return out

    # -- adaptive depth (kernel/depth.py) -----------------------------------------------------
    def _adapt_depth(self, now: float) -> None:
        """Attach the standby probes when something failed or memory is tight; detach them
        after a quiet period. Failures come from the batch about to be handed out."""
        if not self._standby:
            return
        # A cgroup at its limit reclaims (v2 max/high, v1 failcnt) all day on a busy
        # container host: only its OOM events arm, with every real failure.
        failures = [f for f in self._out if f.kind != "memcg" or f.detail.get("event") in
                    ("oom", "oom_kill", "oom_group_kill", "under_oom")]
        # the reason named: the syscall that failed, rather than the kernel failure inside it
        failed = min(failures, key=lambda f: f.kind != "syscall", default=None)
        if failed is not None:
            self._apply_depth(now, self.arming.trigger(now, _trigger_reason(failed)))
        if now - self._last_depth_check >= 1.0:
            self._last_depth_check = now
            if self._low_watermark_pages is None or now - self._watermarks_read >= 60.0:
                self._low_watermark_pages = host_state.low_watermark_pages()
                self._watermarks_read = now
            tight = host_state.memory_tight(low_watermark_pages=self._low_watermark_pages)
            if tight:
                self._apply_depth(now, self.arming.trigger(now, tight))
            self._apply_depth(now, self.arming.tick(now))

    def _apply_depth(self, now: float, change: Optional[depth.Change]) -> None:
        if change is None:
            return
        statuses = {s.name: s for s in self.statuses}
        done: list[Candidate] = []
        for name, cand in self._standby.items():
            try:
                if change.armed:
                    self.bpf.attach_raw_tracepoint(tp=cand.target.encode(), fn_name=cand.fn.encode())
                    statuses[name] = ProbeStatus(name, ATTACHED, cand.via,
                                                 f"armed: {change.reason}")
                else:
                    self.bpf.detach_raw_tracepoint(tp=cand.target.encode())
                    statuses[name] = ProbeStatus(name, STANDBY, cand.via, _STANDBY_REASON)
                done.append(cand)
            except Exception as e:  # the cheap hooks go on; the next trigger tries again
                self.log(f"memtrace: slab hooks could not be "
                         f"{'attached' if change.armed else 'detached'}: {str(e).splitlines()[0]}")
                if change.armed:  # all or none: what did attach goes again
                    for c in done:
                        with contextlib.suppress(Exception):
                            self.bpf.detach_raw_tracepoint(tp=c.target.encode())
                    self.arming.undo(now)
                return
        self.statuses = [statuses.get(s.name, s) for s in self.statuses]
        self.log(f"memtrace: slab hooks {'attached' if change.armed else 'detached'}: "
                 f"{change.reason}")

    def _raise_if_out_of_memory(self) -> None:
        if self._out_of_memory:
            self._out_of_memory = False
            raise MemoryError("memtrace ran out of memory converting ring-buffer events")

    def shed_memory(self) -> None:
        """Drop everything held in memory that can be rebuilt (after a MemoryError): the
        events not yet handed out, the kernel messages and the symbolisers' caches (the
        kernel's symbol table; ELF symbols, CFI and line tables). The exact counters live
        in BPF maps and are not touched."""
        self._out = []
        self._kmsg.clear()
        if self._growth_decoder is not None:
            self._growth_decoder.drop_waiting()
            self._growth_decoder.forget_all_names()
        self.user_symbols.forget()
        self._learned_unwinders.clear()
        self.kernel_symbols.forget()
        gc.collect()
        host.release_free_heap()

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
        """What is already in the ring buffer, without waiting (at most MAX_DRAIN_BATCHES
        batches: if a storm still fills it, the rest is only counted)."""
        assert self.bpf is not None
        out: list[Failure] = []
        self._read_growth()
        for _ in range(MAX_DRAIN_BATCHES):
            self.bpf.ring_buffer_consume()
            self._raise_if_out_of_memory()
            batch, self._out = self._out, []
            out += batch
            if len(batch) < MAX_BATCH:
                break
        self._poll_memcg()
        out += self._out
        self._out = []
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

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> int:
        """The ring buffer's callback (from C: nothing may escape it): converts one event,
        and ends the poll once a batch is full or memory ran out."""
        e = ct.cast(data, ct.POINTER(abi.Event)).contents
        try:
            self._out.extend(self._convert(e, stack_copy(data, _size, e)))
        except MemoryError:
            self._out_of_memory = True
            return _STOP_POLL
        except Exception as exc:  # never let one odd event kill the tracer
            self._decode_errors += 1
            if self._decode_errors <= 3:  # a storm of odd events must not flood stderr
                self.log(f"memtrace: could not decode an event: {exc}"
                         + ("" if self._decode_errors < 3 else " (further ones not shown)"))
        return _STOP_POLL if len(self._out) >= MAX_BATCH else 0

    def _wall(self, ts_ns: int) -> float:
        return self._clock_offset + ts_ns / 1e9

    def _host_at_failure(self, h: abi.HostEvidence) -> Optional[HostAtFailure]:
        layout = self.layout
        if layout is None:
            return host_at_failure(h)
        return host_at_failure(h, zone_names=layout.zone_names,
                               orders=layout.defines.get("MT_NR_ORDERS", 11))

    def _cgroup(self, memcg_id: int) -> Optional[str]:
        return self.resolver.path(memcg_id, memory=True)

    def _memcg_state(self, m: abi.MemcgEvidence, cgroup: Optional[str]) -> Optional[MemcgState]:
        if not m.valid:
            return None
        nearest = cgroup if m.limit_level == 0 else self._cgroup(int(m.limit_id))
        return memcg_state(m, cgroup, nearest)

    def _kstack(self, stack_id: int) -> tuple[str, ...]:
        if stack_id < 0 or not self.symbolize or self.bpf is None:
            return ()
        out: list[str] = []
        try:
            for addr in self.bpf[b"stacks"].walk(stack_id):
                out.append(self.kernel_symbols.name(addr) or "[unknown]")
        except KeyError:
            return ()
        return strip_tracing_frames(out)

    def _learned_unwinder(self, pid: int) -> Unwinder:
        """An unwinder of pid's code as the kernel reported it (exec, mmap, fork): what names
        the frames of a process that has exited."""
        generation = self.learned.generation(pid)
        hit = self._learned_unwinders.get(pid)
        if hit is None or hit[0] != generation:
            hit = (generation, Unwinder(self.learned.maps(pid)))
            self._learned_unwinders[pid] = hit
            while len(self._learned_unwinders) > MAX_LEARNED_UNWINDERS:
                self._learned_unwinders.popitem(last=False)
        self._learned_unwinders.move_to_end(pid)
        return hit[1]

    def _frames(self, u: Unwinder, e: abi.Event, stack: bytes) -> list[tuple[str, Optional[str]]]:
        if stack:
            return u.frames_with_source(int(e.ustack_ip), int(e.ustack_sp), int(e.ustack_bp),
                                        stack)
        try:
            addrs = list(self.bpf[b"stacks"].walk(e.user_stack_id))
        except KeyError:
            return []
        rows = []
        for i, addr in enumerate(addrs):
            name, module, source = u.symbolize(addr, first=(i == 0))
            rows.append((f"{name} ({module})", source))
        return rows

    def _user_stack(self, e: abi.Event, stack: bytes
                    ) -> tuple[tuple[str, ...], tuple[Optional[str], ...]]:
        """The failing thread's user stack ("function (module)", innermost first) and file:line
        per frame: unwound with the binaries' CFI from the copy of its stack the kernel side
        made at the failure (through code without frame pointers), else the frame-pointer
        walk. Named from where the kernel reported the process's code to be (exec, mmap,
        fork: LearnedMaps), else from its /proc/PID/maps (processes older than memtrace, and
        processes in another mount namespace, whose paths are inside their own root)."""
        if not self.symbolize or self.bpf is None or (not stack and e.user_stack_id < 0):
            return (), ()
        pid = int(e.pid)
        if self.learned.knows(pid) and not _in_other_mount_namespace(pid):
            # what the kernel reported is complete as of the failure, and does not depend
            # on reading /proc/PID/maps in time (or while the process is being torn down)
            rows = self._frames(self._learned_unwinder(pid), e, stack)
        else:
            rows = self._frames(self.user_symbols.get(pid), e, stack)
            if rows and "[unknown]" in rows[0][0]:  # code mapped since the maps were read
                rows = self._frames(self.user_symbols.get(pid, refresh=True), e, stack)
        return tuple(text for text, _ in rows), tuple(source for _, source in rows)

    def _learn_process(self, kind: str, e: abi.Event) -> None:
        """Where a process's code is, as the kernel reported it (exec, mmap, fork)."""
        pid = int(e.pid)
        if kind == "fork":
            self.learned.forked(pid, int(e.args[0]))
            return
        if e.flags & abi.F_TRUNCATED:
            return  # a path that did not fit: /proc/PID/maps is what is left
        # the raw bytes: reading a c_char array field stops at its first NUL
        path = decode_path(ct.string_at(ct.addressof(e) + abi.Event.msg.offset, abi.MT_MSG_LEN))
        if path is None:
            return
        if kind == "exec":
            self.learned.exec(pid, path, int(e.args[0]), int(e.args[1]))
        else:
            self.learned.mapped(pid, int(e.args[0]), int(e.args[1]), int(e.args[2]), path)

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

    def _convert(self, e: abi.Event, stack: bytes = b"") -> list[Failure]:
        kind = abi.KIND_NAMES.get(e.kind, str(e.kind))
        if kind in ("exec", "map", "fork"):
            self._learn_process(kind, e)
            return []
        comm = abi.cstr(e.comm)
        if kind == "kmsg":
            self._kmsg.append((time.monotonic(), int(e.actor_tid), abi.cstr(e.msg)))
            return []
        if kind in ("unmapped_area", "decision"):
            return []  # evidence only; it arrives inside the syscall event
        if kind == "cgroup":  # a cgroup was made or renamed: learn its name before it goes
            if not e.flags & abi.F_TRUNCATED:
                self.resolver.learn(int(e.args[0]), int(e.memcg_id), abi.cstr(e.msg))
            return []
        cgroup = self._cgroup(e.memcg_id)
        if not self.filter.matches(e.pid, comm, cgroup):
            return []
        if cgroup:
            self.memcg.watch(cgroup)
        common: dict[str, Any] = dict(time=self._wall(e.ts_ns), pid=int(e.pid), tid=int(e.tid), comm=comm,
                      cgroup=cgroup, cgroup_id=int(e.memcg_id), ts_ns=int(e.ts_ns),
                      memcg=self._memcg_state(e.memcg, cgroup), host=self._host_at_failure(e.host))
        if kind == "syscall":
            return self._syscall_failures(e, common, stack)
        if kind == "oom_kill":
            detail = {"total_vm_bytes": int(e.oom_total_vm) * 4096,
                      "rss_bytes": int(e.oom_rss) * 4096, "uid": int(e.oom_uid)}
            constraint = self._oom_constraint(int(e.actor_tid))
            detail.update(constraint)
            grew = self._grew_at_kill(common["pid"], common["time"], constraint.get("constraint"),
                                      common["memcg"], cgroup)
            return [Failure(kind=kind, kernel_stack=self._kstack(e.kernel_stack_id),
                            detail=detail, grew=grew, **common)]
        kf = self._kernel_failure(e.kf)
        ustack, usources = self._user_stack(e, stack)
        return [Failure(
            kind=kind, size=kf.size, order=kf.order, gfp=kf.gfp, opportunistic=kf.opportunistic,
            user_stack=ustack, user_sources=usources, kernel_stack=kf.kernel_stack,
            detail=self._kernel_detail(kf, common), **common)]

    def _syscall_failures(self, e: abi.Event, common: dict[str, Any], stack: bytes = b""
                          ) -> list[Failure]:
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
        ustack, usources = self._user_stack(e, stack)
        out = []
        # Opportunistic kernel failures were held back in the kernel; now that the
        # syscall they happened in has failed, they are failures too.
        for k in linked:
            if k.opportunistic:
                out.append(Failure(kind=k.kind, syscall=name, errno=err, size=k.size, order=k.order,
                                   gfp=k.gfp, opportunistic=True, user_stack=ustack,
                                   user_sources=usources, kernel_stack=k.kernel_stack,
                                   detail=self._kernel_detail(k, common),
                                   **{**common, "ts_ns": k.ts_ns or common["ts_ns"]}))
        primary = linked[0] if linked else None
        out.append(Failure(
            kind="syscall", syscall=name, errno=err, size=size,
            order=primary.order if primary else None, gfp=primary.gfp if primary else None,
            user_stack=ustack, user_sources=usources, kernel_stack=kstack,
            args=decoders.describe_syscall_args(name, args), linked=linked, detail=detail,
            task=task, **common))
        return out

    def _kernel_detail(self, k: KernelFailure, common: dict[str, Any]) -> dict[str, Any]:
        """A kernel failure's detail: its slab cache, or, for a page failure the slab
        allocator made (its kernel stack shows it), which allocator and for whom. While the
        slab hooks are detached, that page failure is the slab failure: counted as one."""
        if k.cache:
            return {"cache": k.cache}
        if k.kind != "page_alloc":
            return {}
        via = decoders.slab_via_page(k.kernel_stack)
        if via is None:
            return {}
        if self._standby and not self.arming.armed:
            key = (int(common["pid"]), str(common["comm"]), common["cgroup"],
                   k.gfp.mask if k.gfp is not None else 0)
            if key not in self._slab_via_page and len(self._slab_via_page) >= MAX_SLAB_VIA_KEYS:
                key = (0, "(others)", None, key[3])  # bounded: the rest counted together
            self._slab_via_page[key] += 1
        return {"slab": via.to_json()}

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

    def close(self) -> None:
        if self.cost is not None:  # first: its fds are the programs' and the stats' own
            self.cost.close()
            self.cost = None
        if self._growth_ring is not None:  # before the maps it reads go
            self._growth_ring.close()
            self._growth_ring = None
        super().close()

    # -- growth -----------------------------------------------------------------------------
    def _on_growth_event(self, data: Any, size: int) -> int:
        """The growth ring buffer's callback (from C: nothing may escape it)."""
        decoder = self._growth_decoder
        if decoder is None:
            return 0
        try:
            e = leak_event(data, size)
            if e is not None:
                decoder.handle(e)
        except MemoryError:
            self._out_of_memory = True
            return _STOP_POLL
        except Exception as exc:  # never let one odd event kill the tracer
            self._growth_error(exc)
        if decoder.waiting >= GROWTH_WAITING_PER_READ:
            self._growth_capped = True
            return _STOP_POLL  # name these first: their unwinding is what the budget is for
        until = self._growth_until
        return _STOP_POLL if until is not None and time.monotonic() >= until else 0

    def _read_growth(self, budgeted: bool = False) -> None:
        """Growth events waiting in their ring buffer: all there are, or (`budgeted`) what
        this second's GROWTH_READ_BUDGET leaves time for."""
        if self._growth_ring is None:
            return
        start = time.monotonic()
        if budgeted:
            if start - self._growth_second >= 1.0:
                self._growth_second, self._growth_spent = start, 0.0
            left = GROWTH_READ_BUDGET - self._growth_spent
            if left <= 0:
                return
            self._growth_until = start + left
        try:
            while True:
                self._growth_capped = False
                self._growth_ring.read()
                self._flush_growth()
                until = self._growth_until
                if (not self._growth_capped or self._out_of_memory
                        or (until is not None and time.monotonic() >= until)):
                    break  # the ring is empty, or the time is up
        finally:
            self._growth_until = None
            self._growth_spent += time.monotonic() - start
        self._raise_if_out_of_memory()

    def _growth_error(self, exc: Exception) -> None:
        """One growth event that could not be decoded: counted, the first three said."""
        self._growth_errors += 1
        if self._growth_errors <= 3:
            self.log(f"memtrace: could not decode a growth event: {exc}"
                     + ("" if self._growth_errors < 3 else " (further ones not shown)"))

    def _flush_growth(self) -> None:
        """Name the touches that were not released within the read that brought them (a
        released one never is: see GrowthDecoder.batched); errors as in _on_growth_event."""
        decoder = self._growth_decoder
        if decoder is None:
            return
        try:
            decoder.flush()
        except MemoryError:
            decoder.drop_waiting()
            self._out_of_memory = True

    def _read_lost_growth(self) -> None:
        """Sampled bytes whose events the full growth ring buffer refused, from the kernel."""
        if self._growth_decoder is None or self.bpf is None:
            return
        self._growth_decoder.read_lost(
            (int(k.value), int(v.value)) for k, v in self.bpf[b"lost_growth"].items())

    def _growth_unwinder(self, pid: int, refresh: bool) -> Unwinder:
        """The unwinder of pid's code for its growth samples: as the kernel reported it (exec,
        mmap, fork: what names a process that has exited, an OOM kill's victim), else its
        /proc/PID/maps, as failures are named (_user_stack)."""
        if self.learned.knows(pid) and not self._in_other_namespace(pid):
            return self._learned_unwinder(pid)
        return self.user_symbols.get(pid, refresh)

    def _in_other_namespace(self, pid: int) -> bool:
        """_in_other_mount_namespace, remembered per process (asked for every sample)."""
        seen = self._other_namespace.get(pid)
        if seen is None:
            seen = self._other_namespace[pid] = _in_other_mount_namespace(pid)
            while len(self._other_namespace) > MAX_LEARNED_UNWINDERS * 16:
                self._other_namespace.popitem(last=False)
        return seen

    def _grew_at_kill(self, victim: int, when: float, constraint: Optional[str],
                      memcg: Optional[MemcgState], cgroup: Optional[str]) -> tuple[Growth, ...]:
        """What grew before an OOM kill: the victim's top growth stacks over the grew window
        and, for a memory cgroup's OOM, those of the cgroup's other processes. Everything the
        growth ring buffer holds is read first: the victim's last samples are in it."""
        profile = self.growth_profile
        if profile is None:
            return ()
        self._read_growth()
        self._read_lost_growth()
        grew = profile.grew(victim, when, top=GREW_STACKS)
        limited = memcg.nearest_cgroup if memcg is not None and memcg.nearest_cgroup else cgroup
        if constraint == "CONSTRAINT_MEMCG" and limited:
            grew += profile.grew_in_cgroup(limited, when, top=GREW_STACKS, exclude=(victim,))
        return tuple(grew)

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
        for (pid, comm, cgroup, gfp), n in self._slab_via_page.items():
            kernel.append(KernelCount(pid=pid, comm=comm, cgroup=cgroup, kind="slab",
                                      order=None, gfp=self.gfp.value(gfp),
                                      opportunistic=False, count=n))
        drops = {name: 0 for name in abi.DROP_NAMES.values()}
        for k, v in self.bpf[b"drops"].items():
            name = abi.DROP_NAMES.get(int(k.value))
            if name:
                drops[name] = int(sum(v))
        if self.memcg.left_out:  # limited cgroups beyond what one poll reads
            drops["memcg_not_polled"] = self.memcg.left_out
        if self._growth_errors:  # growth samples whose stack could not be named
            drops["growth_events_undecoded"] = self._growth_errors
        memcg = tuple(MemcgCount(c, ev, n) for c, ev, n in self.memcg.totals())
        cost = self.cost.read() if self.cost is not None else None
        growing: tuple[GrowingProcess, ...] = ()
        if self.growth_profile is not None:
            self._read_lost_growth()
            now = time.time()
            self.growth_profile.tick(now)
            growing = tuple(self.growth_profile.growing_processes(now, GROWING_SHOWN))
        return self.filter.snapshot(Snapshot(tuple(syscalls), tuple(kernel), memcg, drops, cost,
                                             probes=tuple(self.statuses), growing=growing))
