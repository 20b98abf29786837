"""One build for every BPF program: the running kernel's BTF and the user's options turned into
bcc's -D flags (bpf/memtrace.bpf.c and bpf/leaks.bpf.c share the layout and the header)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from ..model import decode as decoders
from . import abi
from .btf import Btf, BtfError

# pt_regs members the BPF side reads (the syscall's saved user registers).
_REGS = {"ORIG_AX": "orig_ax", "AX": "ax", "BP": "bp", "IP": "ip", "SP": "sp", "DI": "di", "SI": "si", "DX": "dx",
         "R10": "r10", "R8": "r8", "R9": "r9"}

# Syscalls the BPF side names (x86_64 numbers, from the decoder's table).
_SYSCALLS = ("mmap", "munmap", "mprotect", "mremap", "madvise", "mlock", "mlock2", "mlockall",
             "shmat", "brk")


@dataclass(frozen=True)
class Layout:
    """Struct offsets and constants of the running kernel, all from BTF."""

    defines: Mapping[str, int]
    features: frozenset[str]  # MT_HAVE_* the kernel supports
    gfp_bits: Mapping[str, int]
    notes: tuple[str, ...] = ()


def _kallsyms_has(name: str) -> bool:
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                if line.rstrip().endswith(" " + name):
                    return True
    except OSError:
        pass
    return False


def read_layout(btf: Btf, have_task_pt_regs: Optional[bool] = None) -> Layout:
    d: dict[str, int] = {}
    features: set[str] = set()
    notes: list[str] = []

    for macro, member in _REGS.items():
        d[f"MT_OFF_REGS_{macro}"] = btf.member_offset("pt_regs", member)
    for member in ("flags", "pid", "tgid", "comm", "mm", "cgroups"):
        d[f"MT_OFF_TASK_{member.upper()}"] = btf.member_offset("task_struct", member)
    for member in ("total_vm", "data_vm", "locked_vm", "pinned_vm", "def_flags", "map_count"):
        d[f"MT_OFF_MM_{member.upper()}"] = btf.member_offset("mm_struct", member)
    d["MT_OFF_TASK_SIGNAL"] = btf.member_offset("task_struct", "signal")
    d["MT_OFF_SIGNAL_RLIM"] = btf.member_offset("signal_struct", "rlim")
    d["MT_SIZEOF_RLIMIT"] = btf.sizeof("rlimit")
    d["MT_OFF_RLIMIT_CUR"] = btf.member_offset("rlimit", "rlim_cur")
    d["MT_OFF_TASK_CRED"] = btf.member_offset("task_struct", "cred")
    d["MT_OFF_CRED_CAP_EFFECTIVE"] = btf.member_offset("cred", "cap_effective")
    d["MT_OFF_VM_UNMAPPED_AREA_INFO_LENGTH"] = btf.member_offset("vm_unmapped_area_info",
                                                                 "length")
    # resource numbers of include/uapi/asm-generic/resource.h (x86, arm64, most arches)
    d["MT_RLIMIT_DATA"], d["MT_RLIMIT_MEMLOCK"], d["MT_RLIMIT_AS"] = 2, 8, 9
    d["MT_OFF_KMEM_CACHE_NAME"] = btf.member_offset("kmem_cache", "name")
    d["MT_OFF_KMEM_CACHE_OBJECT_SIZE"] = btf.member_offset("kmem_cache", "object_size")

    try:
        memcg = btf.enum_value("memory_cgrp_id")
        d["MT_OFF_CSS_SET_SUBSYS_MEMCG"] = btf.member_offset("css_set", f"subsys[{memcg}]")
        d["MT_OFF_CSS_CGROUP"] = btf.member_offset("cgroup_subsys_state", "cgroup")
        d["MT_OFF_CGROUP_KN"] = btf.member_offset("cgroup", "kn")
        d["MT_OFF_KERNFS_NODE_ID"] = btf.member_offset("kernfs_node", "id")
        features.add("MT_HAVE_MEMCG")
    except BtfError as e:
        notes.append(f"memory cgroups: {e}")

    try:
        d["MT_OFF_MM_RSS_STAT"] = btf.member_offset("mm_struct", "rss_stat")
        d["MT_SIZEOF_PERCPU_COUNTER"] = btf.sizeof("percpu_counter")
        d["MT_OFF_PERCPU_COUNTER_COUNT"] = btf.member_offset("percpu_counter", "count")
        for item in ("MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES"):
            d[f"MT_{item}"] = btf.enum_value(item)
        features.add("MT_HAVE_RSS_STAT")
    except BtfError as e:
        notes.append(f"OOM victim RSS: {e}")
        for item in ("MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES"):
            d[f"MT_{item}"] = 0

    if have_task_pt_regs is None:
        have_task_pt_regs = _kallsyms_has("bpf_task_pt_regs") and _kallsyms_has(
            "bpf_get_current_task_btf")
    if have_task_pt_regs:
        features.add("MT_HAVE_TASK_PT_REGS")
    else:
        notes.append("no bpf_task_pt_regs helper: kernel failures are linked to syscalls by "
                     "thread and time only")

    gfp_bits = btf.enumerators("___GFP_")
    return Layout(d, frozenset(features), gfp_bits, tuple(notes))


@dataclass(frozen=True)
class BuildOptions:
    """Sizes and switches for one compile; defaults live in bpf/memtrace.h."""

    families: frozenset[str]
    ringbuf_pages: Optional[int] = None
    counter_entries: Optional[int] = None
    stack_entries: Optional[int] = None
    extra: Mapping[str, int] = field(default_factory=dict)


def _flags(defines: Mapping[str, int], switches: Sequence[str]) -> list[str]:
    flags = [f"-I{abi.bpf_dir()}", "-Wno-macro-redefined", "-Wno-unused-function"]
    flags += [f"-D{name}={value}" for name, value in sorted(defines.items())]
    flags += [f"-D{name}=1" for name in switches]
    return flags


def _syscall_numbers(names: Sequence[str]) -> dict[str, int]:
    return {f"MT_NR_{name.upper()}": decoders.syscall_number(name) for name in names}


def cflags(layout: Layout, options: BuildOptions) -> list[str]:
    """Flags for bpf/memtrace.bpf.c: the failure tracer."""
    defines = dict(layout.defines)
    defines.update(_syscall_numbers(_SYSCALLS))
    gfp = decoders.GfpDecoder(layout.gfp_bits) if layout.gfp_bits else decoders.GfpDecoder.default()
    defines["MT_GFP_OPPORTUNISTIC_MASK"] = gfp.mask("__GFP_NOWARN") | gfp.mask("__GFP_NORETRY")
    if options.ringbuf_pages:
        defines["MT_RINGBUF_PAGES"] = options.ringbuf_pages
    if options.counter_entries:
        defines["MT_COUNTER_ENTRIES"] = options.counter_entries
    if options.stack_entries:
        defines["MT_STACK_ENTRIES"] = options.stack_entries
    defines.update(options.extra)
    switches = sorted(layout.features) + [f"MT_PROBE_{f}" for f in sorted(options.families)]
    return _flags(defines, switches)


def leak_cflags(layout: Layout, pids: Sequence[int], mode: str, *, fault_period: int,
                sample: int, min_size: int, max_size: Optional[int]) -> list[str]:
    """Flags for bpf/leaks.bpf.c: the leak profiler of up to 4 processes."""
    defines = dict(layout.defines)
    defines.update(_syscall_numbers(("mmap", "munmap", "mremap", "brk")))
    for i in range(4):
        defines[f"LK_PID{i}"] = pids[i] if i < len(pids) else 0
    defines["LK_FAULT_PERIOD"] = fault_period
    defines["LK_SAMPLE"] = sample
    defines["LK_MIN_SIZE"] = min_size
    if max_size is not None:
        defines["LK_MAX_SIZE"] = max_size
    return _flags(defines, ["LK_MODE_GROWTH" if mode == "growth" else "LK_MODE_MALLOC"])
