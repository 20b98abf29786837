"""ctypes mirror of bpf/memtrace.h: the one place Python knows the BPF structs' layout."""

from __future__ import annotations

import ctypes as ct
import re
from pathlib import Path


def bpf_dir() -> Path:
    """The BPF C sources: inside the wheel (tracer/bpf) or beside the package (a checkout)."""
    package = Path(__file__).resolve().parent.parent  # tracer/
    for candidate in (package / "bpf", package.parent / "bpf"):
        if (candidate / "memtrace.h").is_file():
            return candidate
    raise FileNotFoundError("memtrace's BPF sources (bpf/memtrace.h) are missing from the install")


def _header_constants() -> dict[str, int]:
    """Plain integer #defines of memtrace.h, so constants are written once (in C)."""
    out: dict[str, int] = {}
    text = (bpf_dir() / "memtrace.h").read_text()
    for m in re.finditer(r"^#define\s+((?:MT|LK)_\w+)\s+(0x[0-9a-fA-F]+|\d+)(?:ULL|UL|U)?\b", text, re.M):
        out[m.group(1)] = int(m.group(2), 0)
    return out


# Every MT_*/LK_* constant of the header by name (the header's defaults, before -D flags).
C = _header_constants()

# ---- failure tracer (bpf/memtrace.bpf.c) ----------------------------------------------------

MT_MAX_LINKED = C["MT_MAX_LINKED"]
MT_COMM_LEN = C["MT_COMM_LEN"]
MT_NAME_LEN = C["MT_NAME_LEN"]
MT_MSG_LEN = C["MT_MSG_LEN"]
MT_BLOCK_ZONES = C["MT_BLOCK_ZONES"]
MT_BLOCK_ORDERS = C["MT_BLOCK_ORDERS"]

KIND_NAMES = {
    C["MT_KIND_SYSCALL"]: "syscall",
    C["MT_KIND_PAGE_ALLOC"]: "page_alloc",
    C["MT_KIND_SLAB"]: "slab",
    C["MT_KIND_VMALLOC"]: "vmalloc",
    C["MT_KIND_PERCPU"]: "percpu",
    C["MT_KIND_OOM_KILL"]: "oom_kill",
    C["MT_KIND_MEMCG"]: "memcg",
    C["MT_KIND_KMSG"]: "kmsg",
    C["MT_KIND_UNMAPPED_AREA"]: "unmapped_area",
    C["MT_KIND_DECISION"]: "decision",
    C["MT_KIND_CGROUP"]: "cgroup",
    C["MT_KIND_EXEC"]: "exec",
    C["MT_KIND_MAP"]: "map",
    C["MT_KIND_FORK"]: "fork",
}

DECISION_NAMES = {
    C["MT_DECISION_OVERCOMMIT"]: "overcommit",
    C["MT_DECISION_VM_LIMIT"]: "vm_limit",
    C["MT_DECISION_MEMCG"]: "memcg_limit",
    C["MT_DECISION_MEMLOCK"]: "rlimit_memlock",
}

# The event flags user space reads (the header has more, set and read in the kernel).
F_OPPORTUNISTIC = C["MT_F_OPPORTUNISTIC"]
F_BRK = C["MT_F_BRK"]
F_TRUNCATED = C["MT_F_TRUNCATED"]

DROP_NAMES = {
    C["MT_DROP_RINGBUF"]: "ringbuf_full",
    C["MT_DROP_COUNTER_FULL"]: "counter_map_full",
    C["MT_DROP_PENDING_FULL"]: "linked_overflow",
    C["MT_DROP_USER_STACK"]: "user_stack",
    C["MT_DROP_KERNEL_STACK"]: "kernel_stack",
    C["MT_DROP_STACK_COPY_RATE"]: "stack_copy_skipped",
    C["MT_DROP_STACK_COPY"]: "stack_copy",
    C["MT_DROP_GROWTH_RINGBUF"]: "growth_ringbuf_full",
    C["MT_DROP_GROWTH_STACK_COPY"]: "growth_stack_copy",
}


class KFail(ct.Structure):
    """struct mt_kfail"""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("size", ct.c_uint64),
        ("user_ip", ct.c_uint64),
        ("user_sp", ct.c_uint64),
        ("syscall_nr", ct.c_int64),
        ("kind", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("order", ct.c_uint32),
        ("gfp", ct.c_uint32),
        ("migratetype", ct.c_int32),
        ("kernel_stack_id", ct.c_int32),
        ("name", ct.c_char * MT_NAME_LEN),
    ]


class TaskEvidence(ct.Structure):
    """struct mt_task_evidence"""

    _fields_ = [
        ("total_vm", ct.c_uint64),
        ("data_vm", ct.c_uint64),
        ("locked_vm", ct.c_uint64),
        ("pinned_vm", ct.c_uint64),
        ("def_flags", ct.c_uint64),
        ("rlim_as", ct.c_uint64),
        ("rlim_data", ct.c_uint64),
        ("rlim_memlock", ct.c_uint64),
        ("cap_effective", ct.c_uint64),
        ("map_count", ct.c_int32),
        ("valid", ct.c_uint32),
    ]


class MemcgEvidence(ct.Structure):
    """struct mt_memcg_evidence"""

    _fields_ = [
        ("usage", ct.c_uint64),
        ("max", ct.c_uint64),
        ("limit_usage", ct.c_uint64),
        ("limit_max", ct.c_uint64),
        ("limit_id", ct.c_uint64),
        ("limit_level", ct.c_uint32),
        ("valid", ct.c_uint32),
    ]


class HostEvidence(ct.Structure):
    """struct mt_host_evidence"""

    _fields_ = [
        ("free", ct.c_uint64),
        ("wmark_min", ct.c_uint64),
        ("wmark_low", ct.c_uint64),
        ("wmark_high", ct.c_uint64),
        ("reserve", ct.c_uint64),
        ("file", ct.c_uint64),
        ("reclaimable", ct.c_uint64),
        ("managed", ct.c_uint64),
        ("huge_total", ct.c_uint64),
        ("huge_free", ct.c_uint64),
        ("huge_reserved", ct.c_uint64),
        ("huge_surplus", ct.c_uint64),
        ("huge_order", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("block_zones", ct.c_uint32),
        ("block_zone", ct.c_uint8 * MT_BLOCK_ZONES),
        ("blocks", (ct.c_uint32 * MT_BLOCK_ORDERS) * MT_BLOCK_ZONES),
        ("blocks_pad", ct.c_uint32),
    ]


HOST_ZONES = C["MT_HOST_ZONES"]
HOST_HUGETLB = C["MT_HOST_HUGETLB"]
HOST_RANGE_CHECKED = C["MT_HOST_RANGE_CHECKED"]
HOST_RANGE_MAPPED = C["MT_HOST_RANGE_MAPPED"]
DISCOVER_MAGIC = C["MT_DISCOVER_MAGIC"]


class Event(ct.Structure):
    """struct mt_event"""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("memcg_id", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("kind", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("syscall_nr", ct.c_int64),
        ("ret", ct.c_int64),
        ("args", ct.c_uint64 * 6),
        ("user_stack_id", ct.c_int32),
        ("kernel_stack_id", ct.c_int32),
        ("n_linked", ct.c_uint32),
        ("oom_uid", ct.c_uint32),
        ("actor_tid", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("oom_total_vm", ct.c_uint64),
        ("oom_rss", ct.c_uint64),
        ("comm", ct.c_char * MT_COMM_LEN),
        ("task", TaskEvidence),
        ("memcg", MemcgEvidence),
        ("host", HostEvidence),
        ("ustack_ip", ct.c_uint64),
        ("ustack_sp", ct.c_uint64),
        ("ustack_bp", ct.c_uint64),
        ("ustack_len", ct.c_uint32),
        ("ustack_pad", ct.c_uint32),
        ("kf", KFail),
        ("linked", KFail * MT_MAX_LINKED),
        ("msg", ct.c_char * MT_MSG_LEN),
    ]


MT_USTACK_BYTES = C["MT_USTACK_BYTES"]


class EventFull(ct.Structure):
    """struct mt_event_full: an event and the copy of the user stack that may follow it"""

    _fields_ = [("e", Event), ("stack", ct.c_uint8 * MT_USTACK_BYTES)]


class SyscallKey(ct.Structure):
    """struct mt_syscall_key"""

    _fields_ = [
        ("memcg_id", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("syscall_nr", ct.c_int32),
        ("err", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("comm", ct.c_char * MT_COMM_LEN),
    ]


class KFailKey(ct.Structure):
    """struct mt_kfail_key"""

    _fields_ = [
        ("memcg_id", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("gfp", ct.c_uint32),
        ("kind", ct.c_uint16),
        ("order", ct.c_uint16),
        ("opportunistic", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("comm", ct.c_char * MT_COMM_LEN),
    ]


class Pending(ct.Structure):
    """struct mt_pending (kernel-side only: mirrored so its layout is checked too)"""

    _fields_ = [("n", ct.c_uint32), ("pad", ct.c_uint32), ("kf", KFail * MT_MAX_LINKED),
                ("host", HostEvidence)]


class GrowthCpu(ct.Structure):
    """struct mt_growth_cpu (kernel-side only: mirrored so its layout is checked too)"""

    _fields_ = [("left", ct.c_uint64), ("page", ct.c_uint64), ("mm", ct.c_uint64)]


def cstr(raw: bytes) -> str:
    """A NUL-terminated char array as text (hostile bytes are replaced, never raised on)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---- leak profiler (bpf/leaks.bpf.c) --------------------------------------------------------

LK_STACK_BYTES = C["LK_STACK_BYTES"]
LK_EV_MMAP = C["LK_EV_MMAP"]
LK_EV_MUNMAP = C["LK_EV_MUNMAP"]
LK_EV_MREMAP = C["LK_EV_MREMAP"]
LK_EV_BRK = C["LK_EV_BRK"]
LK_EV_BRK_SHRINK = C["LK_EV_BRK_SHRINK"]
LK_EV_FAULT = C["LK_EV_FAULT"]
LK_EV_STACK = C["LK_EV_STACK"]
LK_EV_ALLOC_FAIL = C["LK_EV_ALLOC_FAIL"]
LK_EV_FORK = C["LK_EV_FORK"]
LK_EV_EXEC = C["LK_EV_EXEC"]
LK_EV_EXIT = C["LK_EV_EXIT"]
LK_EV_MADVISE = C["LK_EV_MADVISE"]
LK_SAMPLE_BYTES = C["LK_SAMPLE_BYTES"]
LK_MAX_SAMPLE_BYTES = C["LK_MAX_SAMPLE_BYTES"]
LK_LOG_FRACTION_BITS = C["LK_LOG_FRACTION_BITS"]
LK_LN2_Q16 = C["LK_LN2_Q16"]

LEAK_DROP_NAMES = {
    C["LK_DROP_RINGBUF"]: "ringbuf_full",
    C["LK_DROP_ALLOCS_FULL"]: "allocation_map_full",
    C["LK_DROP_STACKS_FULL"]: "stack_map_full",
    C["LK_DROP_STACK_ID"]: "stack_id",
    C["LK_DROP_STACK_COPY"]: "stack_copy",
}


class LeakKey(ct.Structure):
    """struct lk_key"""

    _fields_ = [("stack_id", ct.c_int32), ("pid", ct.c_uint32), ("caller", ct.c_uint64)]


class LeakStats(ct.Structure):
    """struct lk_stats"""

    _fields_ = [("bytes", ct.c_uint64), ("count", ct.c_uint64), ("total", ct.c_uint64)]


class LeakAlloc(ct.Structure):
    """struct lk_alloc"""

    _fields_ = [("size", ct.c_uint64), ("ts_ns", ct.c_uint64), ("key", LeakKey)]


class LeakEntry(ct.Structure):
    """struct lk_entry (kernel-side only: mirrored so its layout is checked too)"""

    _fields_ = [
        ("size", ct.c_uint64),
        ("old_ptr", ct.c_uint64),
        ("memptr", ct.c_uint64),
        ("key", LeakKey),
        ("fn", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class LeakEvent(ct.Structure):
    """struct lk_event"""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("kind", ct.c_uint32),
        ("stack_len", ct.c_uint32),
        ("addr", ct.c_uint64),
        ("len", ct.c_uint64),
        ("old_addr", ct.c_uint64),
        ("old_len", ct.c_uint64),
        ("weight", ct.c_uint64),
        ("ip", ct.c_uint64),
        ("sp", ct.c_uint64),
        ("bp", ct.c_uint64),
        ("key", LeakKey),
        ("child_pid", ct.c_uint32),
        ("fn", ct.c_uint32),
        ("comm", ct.c_char * MT_COMM_LEN),
        ("stack", ct.c_uint8 * LK_STACK_BYTES),
    ]


class LeakSpan(ct.Structure):
    """struct lk_span (kernel-side only: mirrored so its layout is checked too)"""

    _fields_ = [("lo", ct.c_uint64), ("hi", ct.c_uint64)]


# Every struct of memtrace.h by its C name: tests/unit/test_abi.py checks that none is
# missing, tests/bpf/test_abi.py that each matches the layout in the BTF bcc compiled.
MIRRORED: dict[str, type[ct.Structure]] = {
    "mt_kfail": KFail,
    "mt_task_evidence": TaskEvidence,
    "mt_memcg_evidence": MemcgEvidence,
    "mt_host_evidence": HostEvidence,
    "mt_event": Event,
    "mt_event_full": EventFull,
    "mt_syscall_key": SyscallKey,
    "mt_kfail_key": KFailKey,
    "mt_pending": Pending,
    "mt_growth_cpu": GrowthCpu,
    "lk_key": LeakKey,
    "lk_stats": LeakStats,
    "lk_alloc": LeakAlloc,
    "lk_entry": LeakEntry,
    "lk_event": LeakEvent,
    "lk_span": LeakSpan,
}
