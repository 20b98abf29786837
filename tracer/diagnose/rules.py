"""Why an allocation failed: small pure rules from a failure and its evidence to a finding,
tried for each syscall in the order its kernel path makes the checks (Linux 6.18, x86-64)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from ..host.state import CgroupState, HostState
from ..model.decode import format_bytes
from ..model.failures import Failure, KernelFailure
from .evidence import Evidence
from .growth import what_grew
from .requests import (
    COMMIT_SYSCALLS,
    GROWING_SYSCALLS,
    ONLY_RANGE_SYSCALLS,
    RANGE_SYSCALLS,
    SPLITTING_SYSCALLS,
    request_bytes,
)

CAUSES = ("rlimit_as", "rlimit_data", "rlimit_memlock", "overcommit", "max_map_count",
          "address_space", "memcg_limit", "fragmentation", "exhaustion", "bad_range",
          "too_large", "hugetlb", "kernel_allocation", "unknown")

INFERRED = "inferred"
CONFIRMED = "confirmed"  # the kernel said so itself (its own message at the decision)

KMALLOC_MAX_ORDER = 10  # PAGE_SIZE << MAX_PAGE_ORDER is the largest kmalloc (SLUB, x86-64)
MAX_PAGE_ORDER = 10

_VM_ENOUGH = re.compile(r"__vm_enough_memory: pid: (\d+), comm: (.*?), bytes: (\d+)")


@dataclass(frozen=True)
class Finding:
    cause: str
    explanation: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    confidence: str = INFERRED


Rule = Callable[[Failure, Evidence], Optional[Finding]]


def _text(value: Optional[object]) -> Optional[str]:
    """A model value (e.g. GFP flags) as the text evidence carries."""
    return None if value is None else str(value)


def _b(n: Optional[int]) -> str:
    return "unlimited" if n is None else format_bytes(n)


def _flags(f: Failure, key: str = "flags") -> set[str]:
    return set(str(f.args.get(key, "")).split("|"))


def _task_size(h: HostState) -> int:
    """The kernel's TASK_SIZE: x86-64 leaves the top page of the user half unmapped
    (TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE with 4-level paging); HostState.task_size is
    the span of the user half itself."""
    return h.task_size - h.page_size


def _page_align(n: int, page: int) -> int:
    return -(-n // page) * page


def _private_writable(f: Failure) -> bool:
    """Whether the memory the syscall adds is data for may_expand_vm's is_data_mapping():
    writable, not shared, not a stack (VM_GROWSDOWN)."""
    if f.syscall == "brk":
        return True
    prot = _flags(f, "prot")
    if f.syscall in ("mprotect", "pkey_mprotect"):
        return "PROT_WRITE" in prot and "PROT_GROWSDOWN" not in prot
    if f.syscall == "mmap":
        # MAP_STACK only sets VM_NOHUGEPAGE: a private writable thread stack counts as data;
        # MAP_GROWSDOWN sets VM_GROWSDOWN (VM_STACK), which does not.
        flags = _flags(f)
        return ("PROT_WRITE" in prot and bool({"MAP_PRIVATE", "MAP_DROPPABLE"} & flags)
                and "MAP_GROWSDOWN" not in flags)
    return f.syscall == "mremap"  # the region's own flags decide; a grown data region is data


# -- one rule per kernel check ---------------------------------------------------------------
# Each docstring names the kernel function and the check in it the rule mirrors. The
# sequences in CHECK_ORDER (below) put them in the order each syscall's path reaches them.

def _too_large(f: Failure, ev: Evidence) -> Finding:
    size = request_bytes(f)
    top = _task_size(ev.host)
    return Finding("too_large",
                   f"{f.syscall} asked for {_b(size)}, more than a process can map at all "
                   f"(TASK_SIZE {top:#x}: the {_b(ev.host.task_size)} user address space less "
                   "its top page): the kernel refuses such a length before it looks for room "
                   "or counts it against any limit or the commit; no setting makes this fit, "
                   "the size is wrong (an overflow or a bad length)",
                   {"request": size, "address_space": ev.host.task_size, "task_size": top})


def rule_length_wraps(f: Failure, ev: Evidence) -> Optional[Finding]:
    """do_mmap(): `len = PAGE_ALIGN(len); if (!len) return -ENOMEM;` -- a length within a
    page of 2^64 wraps to 0, refused before the map count is looked at."""
    if f.syscall != "mmap":
        return None
    if _page_align(request_bytes(f), ev.host.page_size) >= 1 << 64:
        return _too_large(f, ev)
    return None


def rule_too_large(f: Failure, ev: Evidence) -> Optional[Finding]:
    """__get_unmapped_area(): `if (len > TASK_SIZE) return -ENOMEM;` -- checked (after
    do_mmap's map count) before the search for a free range, before mlock_future_ok and
    may_expand_vm, so before any commit accounting: 128 TiB is too_large, never overcommit.
    mremap is not here: check_mremap_params() says EINVAL for a new length over TASK_SIZE."""
    if f.syscall != "mmap":
        return None
    if _page_align(request_bytes(f), ev.host.page_size) > _task_size(ev.host):
        return _too_large(f, ev)
    return None


def _map_count_finding(f: Failure, ev: Evidence, check: str) -> Finding:
    t = f.task
    assert t is not None
    return Finding("max_map_count",
                   f"the process has {t.map_count} mappings and vm.max_map_count is "
                   f"{ev.host.max_map_count} ({check}): raise it (sysctl vm.max_map_count) or "
                   "make fewer, larger mappings",
                   {"map_count": t.map_count, "max_map_count": ev.host.max_map_count})


def rule_max_map_count(f: Failure, ev: Evidence) -> Optional[Finding]:
    """The map-count checks: do_mmap() and do_brk_flags() refuse a new mapping once
    `mm->map_count > sysctl_max_map_count` (the first one at the limit still works);
    vms_gather_munmap_vmas() (munmap) refuses to split at `map_count >= max`; split_vma(),
    reached through vma_modify() from mprotect_fixup, mlock_fixup and madvise_update_vma,
    refuses at `map_count >= max`, and a range in the middle of a mapping splits twice.
    mremap has its own thresholds (rule_mremap_fixed_map_count, rule_mremap_move_map_count)."""
    t = f.task
    if t is None or f.syscall not in SPLITTING_SYSCALLS or f.syscall == "mremap":
        return None
    limit = ev.host.max_map_count
    if f.syscall in ("mmap", "brk", "shmat"):
        at_limit, check = t.map_count > limit, "a new mapping is refused past the limit"
    elif f.syscall == "munmap":
        at_limit, check = t.map_count >= limit, "unmapping the middle of a mapping splits it"
    else:
        at_limit, check = t.map_count >= limit - 1, "changing the middle of a mapping splits " \
            "it in three"
    return _map_count_finding(f, ev, check) if at_limit else None


def rule_mremap_fixed_map_count(f: Failure, ev: Evidence) -> Optional[Finding]:
    """check_mremap_params(): with MREMAP_FIXED both the old and the new range may split
    before the move, so `map_count + 2 >= sysctl_max_map_count - 3` -> -ENOMEM, checked
    before the mapping is even looked up."""
    t = f.task
    if t is None or f.syscall != "mremap" or "MREMAP_FIXED" not in _flags(f):
        return None
    if t.map_count + 2 >= ev.host.max_map_count - 3:
        return _map_count_finding(f, ev, "a fixed mremap needs room for four more")
    return None


def rule_mremap_move_map_count(f: Failure, ev: Evidence) -> Optional[Finding]:
    """prep_move_vma(), first thing in move_vma(): `map_count >= sysctl_max_map_count - 3`
    -> -ENOMEM (copying the mapping and unmapping the source may split three ways). Only
    a move gets here: MREMAP_MAYMOVE or MREMAP_FIXED."""
    t = f.task
    if t is None or f.syscall != "mremap" or not {"MREMAP_MAYMOVE", "MREMAP_FIXED"} & _flags(f):
        return None
    if t.map_count >= ev.host.max_map_count - 3:
        return _map_count_finding(f, ev, "moving a mapping needs room for three more")
    return None


def rule_address_space(f: Failure, ev: Evidence) -> Optional[Finding]:
    """vm_unmapped_area(), called by the arch get_unmapped_area from __get_unmapped_area()
    (do_mmap, shmat) or from mremap's vrm_set_new_addr(): no free range of the length was
    found (the mmap:vm_unmapped_area tracepoint returned -ENOMEM at the failure)."""
    t = f.task
    if t is not None and t.unmapped_area_failed:
        where = " in the 2 GiB MAP_32BIT window" if "MAP_32BIT" in _flags(f) else ""
        return Finding("address_space",
                       f"no free virtual address range of {_b(request_bytes(f))}{where} was "
                       "left (no limit was hit): the address space is full or too fragmented; "
                       "unmap what is unused, or use a 64-bit range",
                       {"request": request_bytes(f), "total_vm": t.total_vm,
                        "unmapped_area_failed": True})
    return None


def _past_top(f: Failure, ev: Evidence, start: int, length: int, what: str) -> Finding:
    top = _task_size(ev.host)
    return Finding("address_space",
                   f"{what} at {start:#x} for {_b(length)} would end at {start + length:#x}, "
                   f"past the top of the user address space ({top:#x}): __get_unmapped_area "
                   "refuses a fixed range that does not fit below TASK_SIZE; no limit was hit, "
                   "the address (or the length) is wrong",
                   {"addr": start, "request": length, "end": start + length, "task_size": top})


def rule_fixed_past_top(f: Failure, ev: Evidence) -> Optional[Finding]:
    """__get_unmapped_area(): for MAP_FIXED (and MAP_FIXED_NOREPLACE, which do_mmap turns
    into MAP_FIXED) the arch code returns the address as given, then
    `if (addr > TASK_SIZE - len) return -ENOMEM;` -- before any limit is looked at."""
    if f.syscall != "mmap" or not {"MAP_FIXED", "MAP_FIXED_NOREPLACE"} & _flags(f):
        return None
    length = _page_align(request_bytes(f), ev.host.page_size)
    start = int(f.args.get("addr", 0))
    if start > _task_size(ev.host) - length:
        return _past_top(f, ev, start, length, "mmap(MAP_FIXED)")
    return None


def rule_brk_past_top(f: Failure, ev: Evidence) -> Optional[Finding]:
    """check_brk_limits() in the brk syscall: get_unmapped_area(NULL, oldbrk, len, 0,
    MAP_FIXED) refuses a heap that would end past TASK_SIZE (then mlock_future_ok)."""
    if f.syscall != "brk" or not f.size:
        return None
    requested = int(f.detail.get("requested_break", f.args.get("brk", 0)))
    if requested > _task_size(ev.host):
        return _past_top(f, ev, requested - f.size, f.size, "brk")
    return None


def rule_mremap_in_place(f: Failure, ev: Evidence) -> Optional[Finding]:
    """expand_vma(): when vrm_can_expand_in_place() says the next range is in use,
    `if (!(vrm->flags & MREMAP_MAYMOVE)) return -ENOMEM;` -- after check_prep_vma()'s
    mlock and may_expand_vm limits."""
    if f.syscall == "mremap" and "MREMAP_MAYMOVE" not in _flags(f) and request_bytes(f) > 0:
        return Finding("address_space",
                       "mremap could not grow the mapping in place (the next range is in use) "
                       "and MREMAP_MAYMOVE was not given: allow it to move",
                       {"request": request_bytes(f), "flags": f.args.get("flags")})
    return None


def rule_hugetlb(f: Failure, ev: Evidence) -> Optional[Finding]:
    """hugetlb_reserve_pages(): the pool must hold the mapping's huge pages -- reached from
    hugetlbfs' mmap hook in __mmap_region() (after may_expand_vm; hugetlb is never commit
    accounted) for MAP_HUGETLB, and from hugetlb_file_setup() in newseg() for SHM_HUGETLB."""
    if not ({"MAP_HUGETLB", "SHM_HUGETLB"} & (_flags(f) | _flags(f, "shmflg"))):
        return None
    need = request_bytes(f)
    h = ev.host
    pages = -(-need // h.hugepage_size) if h.hugepage_size else 0
    free = h.hugepages_free - h.hugepages_rsvd
    if free >= pages:
        return None  # the pool had room: something else refused it
    return Finding("hugetlb",
                   f"the huge page pool cannot supply {pages} page(s) of "
                   f"{_b(h.hugepage_size)}: {free} free of {h.hugepages_total}; raise "
                   "vm.nr_hugepages (or the hugetlb cgroup limit)",
                   {"request": need, "pages_needed": pages, "hugepages_total": h.hugepages_total,
                    "hugepages_free": h.hugepages_free, "hugepages_reserved": h.hugepages_rsvd,
                    "hugepages_available": free})


def rule_rlimit_memlock(f: Failure, ev: Evidence) -> Optional[Finding]:
    """The RLIMIT_MEMLOCK checks: mlock_future_ok() (`locked_vm + len > RLIMIT_MEMLOCK`
    for a VM_LOCKED mapping, unless CAP_IPC_LOCK) -> -EAGAIN in do_mmap() (MAP_LOCKED, or
    mlockall(MCL_FUTURE)'s def_flags) and check_prep_vma() (mremap growing a locked
    mapping), and silently in check_brk_limits(); do_mlock() -> -ENOMEM before
    apply_vma_lock_flags() looks at the range; mlockall(MCL_CURRENT) -> -ENOMEM when
    `total_vm > RLIMIT_MEMLOCK`; shmctl(SHM_LOCK) through user_shm_lock()."""
    t = f.task
    if t is None or t.cap_ipc_lock or t.rlim_memlock is None:
        return None
    flags = _flags(f)
    if f.syscall in ("mmap", "mremap"):
        # do_mmap and check_prep_vma say EAGAIN for a locked mapping over the limit, and
        # have no other EAGAIN: the errno is the kernel's verdict (an ENOMEM is something
        # else). mmap's mapping is locked by MAP_LOCKED or mlockall(MCL_FUTURE); mremap's
        # may have been mlock()ed, which the task state does not show.
        locked = ("MAP_LOCKED" in flags or t.mlock_future) if f.syscall == "mmap" else True
        if f.errno != "EAGAIN" or not locked:
            return None
        need = t.locked_vm + request_bytes(f)
    else:
        if f.syscall == "mlockall" and "MCL_CURRENT" in flags:
            need = t.total_vm
        elif f.syscall in ("mlock", "mlock2", "shmctl") or (f.syscall == "brk" and t.mlock_future):
            need = t.locked_vm + request_bytes(f)
        else:
            return None
        if need <= t.rlim_memlock:
            return None
    return Finding("rlimit_memlock",
                   f"locking {_b(request_bytes(f) or need)} more would bring locked memory to "
                   f"{_b(need)}, over RLIMIT_MEMLOCK ({_b(t.rlim_memlock)}): raise it "
                   "(ulimit -l, LimitMEMLOCK=, /etc/security/limits.conf) or grant CAP_IPC_LOCK",
                   {"locked_vm": t.locked_vm, "request": request_bytes(f),
                    "rlimit_memlock": t.rlim_memlock, "errno": f.errno})


def _bad_range(f: Failure, ev: Evidence, past_top: bool = False) -> Finding:
    addr = int(f.args.get("addr", 0))
    length = request_bytes(f)
    if past_top:
        how = " (it runs past the top of the user address space)"
    elif ev.range_mapped is False:
        how = ""
    else:
        how = (" (the process was gone before its mappings could be read: inferred because "
               "no limit explains it)")
    return Finding("bad_range",
                   f"{f.syscall} was given a range ({addr:#x}, {_b(length)}) that is not fully "
                   f"mapped{how}; the kernel says ENOMEM for that: not a memory shortage, a bug "
                   "in the caller's address or length",
                   {"addr": addr, "length": length, "range_mapped": ev.range_mapped})


def rule_bad_range(f: Failure, ev: Evidence) -> Optional[Finding]:
    """The range walks: do_mprotect_pkey() (`end <= start`, no VMA at the start, a hole
    before the next VMA), apply_vma_lock_flags() (mlock/munlock), madvise_walk_vmas(),
    mincore (access_ok, vma_lookup) and msync all say -ENOMEM for a range that is not
    fully mapped -- known from the evidence, or from a range past TASK_SIZE (nothing is
    mapped there); mincore, msync and munlock have no other ENOMEM."""
    if f.syscall not in RANGE_SYSCALLS or f.errno != "ENOMEM":
        return None
    end = int(f.args.get("addr", 0)) + request_bytes(f)
    if end > _task_size(ev.host):
        return _bad_range(f, ev, past_top=True)
    if ev.range_mapped is False or (ev.range_mapped is None and f.syscall in ONLY_RANGE_SYSCALLS):
        return _bad_range(f, ev)
    return None


def rule_bad_range_by_elimination(f: Failure, ev: Evidence) -> Optional[Finding]:
    """do_mprotect_pkey(), apply_vma_lock_flags() and madvise_walk_vmas(): mprotect, mlock
    and madvise say ENOMEM for a hole, a map-count split or a limit; with the limits and the
    split ruled out and the mappings unreadable, the hole their range walk finds is what is
    left."""
    if f.syscall in RANGE_SYSCALLS and ev.range_mapped is None and f.errno == "ENOMEM":
        return _bad_range(f, ev)
    return None


def rule_rlimit_as(f: Failure, ev: Evidence) -> Optional[Finding]:
    """may_expand_vm(): `mm->total_vm + npages > rlimit(RLIMIT_AS)` -> -ENOMEM, its first
    check: in __mmap_region() (mmap, shmat), check_prep_vma() (mremap, after
    mlock_future_ok) and do_brk_flags() (brk)."""
    t = f.task
    if t is None or t.rlim_as is None or f.syscall not in GROWING_SYSCALLS:
        return None
    need = t.total_vm + request_bytes(f)
    if need > t.rlim_as:
        return Finding("rlimit_as",
                       f"the address space would grow from {_b(t.total_vm)} by "
                       f"{_b(request_bytes(f))} to {_b(need)}, over RLIMIT_AS "
                       f"({_b(t.rlim_as)}): raise it (ulimit -v, LimitAS=, prlimit --as)",
                       {"total_vm": t.total_vm, "request": request_bytes(f),
                        "rlimit_as": t.rlim_as})
    return None


def rule_rlimit_data(f: Failure, ev: Evidence) -> Optional[Finding]:
    """may_expand_vm(): for a data mapping (is_data_mapping: writable, not shared, not a
    stack) `mm->data_vm + npages > rlimit(RLIMIT_DATA)` -> -ENOMEM, right after the
    RLIMIT_AS check (__mmap_region, check_prep_vma for mremap, do_brk_flags). The brk
    syscall checks RLIMIT_DATA first of all (check_data_rlimit). mprotect_fixup() makes the
    check when a private mapping turns writable, and fails only if the mapping as it was
    would still fit (`!may_expand_vm(mm, newflags, n) && may_expand_vm(mm, oldflags, n)`),
    so never while total_vm + n is over RLIMIT_AS."""
    t = f.task
    if t is None or t.rlim_data is None or not _private_writable(f):
        return None
    request = request_bytes(f)
    if f.syscall in ("mprotect", "pkey_mprotect") and t.rlim_as is not None \
            and t.total_vm + request > t.rlim_as:
        return None
    need = t.data_vm + request
    if need > t.rlim_data:
        return Finding("rlimit_data",
                       f"private writable memory would grow from {_b(t.data_vm)} by "
                       f"{_b(request)} to {_b(need)}, over RLIMIT_DATA "
                       f"({_b(t.rlim_data)}): raise it (ulimit -d, LimitDATA=, prlimit --data)",
                       {"data_vm": t.data_vm, "request": request,
                        "rlimit_data": t.rlim_data})
    return None


def rule_brk_data_first(f: Failure, ev: Evidence) -> Optional[Finding]:
    """The brk syscall: check_data_rlimit() (the heap plus the data segment against
    RLIMIT_DATA) comes before check_brk_limits() and before do_brk_flags() asks
    may_expand_vm about RLIMIT_AS."""
    return rule_rlimit_data(f, ev) if f.syscall == "brk" else None


def _charges_commit(f: Failure, h: HostState) -> bool:
    """Whether the syscall's path reaches __vm_enough_memory for what it asked."""
    if f.syscall == "mmap":
        return _accounted_mapping(f, h)
    if f.syscall in ("mprotect", "pkey_mprotect"):
        # mprotect_fixup charges only a private mapping that turns writable
        return "PROT_WRITE" in _flags(f, "prot")
    return True


def rule_overcommit(f: Failure, ev: Evidence) -> Optional[Finding]:
    """__vm_enough_memory() through security_vm_enough_memory_mm(): after may_expand_vm in
    __mmap_region() for an accountable_mapping(), in do_brk_flags(), in mremap's
    vrm_calc_charge(), in mprotect_fixup() when a private mapping turns writable, for every
    VM_ACCOUNT mapping in dup_mmap() (fork) and in shmem_acct_size() (shmget, shared
    anonymous mmap). Mode 0 refuses one request larger than RAM + swap; mode 2 refuses
    once Committed_AS would pass CommitLimit; its rate-limited message confirms it."""
    if f.syscall not in COMMIT_SYSCALLS:
        return None
    h = ev.host
    request = request_bytes(f)
    msg = f.detail.get("kernel_message")
    if not msg and not _charges_commit(f, h):
        return None
    if f.syscall in ("fork", "vfork", "clone", "clone3") and f.task is not None:
        request = f.task.data_vm  # the child's private writable memory is committed again
    m = _VM_ENOUGH.search(msg) if msg else None
    base: dict[str, Any] = {"overcommit_memory": h.overcommit_memory, "commit_limit": h.commit_limit,
            "committed_as": h.committed_as, "request": request,
            "mem_total": h.mem_total, "swap_total": h.swap_total}
    if m:
        request = int(m.group(3))
        base.update(request=request, kernel_message=msg)
        return Finding("overcommit", _overcommit_text(h, request), base, CONFIRMED)
    if h.overcommit_memory == 2 and h.committed_as + request > h.commit_limit:
        return Finding("overcommit", _overcommit_text(h, request), base)
    if h.overcommit_memory == 0 and request > h.mem_total + h.swap_total:
        return Finding("overcommit", _overcommit_text(h, request), base)
    return None


def rule_overcommit_confirmed(f: Failure, ev: Evidence) -> Optional[Finding]:
    """mremap's expand_vma_in_place(): vrm_calc_charge() -> __vm_enough_memory comes
    before the MREMAP_MAYMOVE check when the mapping can grow in place; only the kernel's
    own message tells that path from the one that could not grow in place."""
    return rule_overcommit(f, ev) if f.detail.get("kernel_message") else None


def _accounted_mapping(f: Failure, h: HostState) -> bool:
    """accountable_mapping() in __mmap_region(): private writable memory is charged to the
    commit, unless VM_NORESERVE (MAP_NORESERVE, which do_mmap honours only when
    overcommit is not strict, or MAP_DROPPABLE) or hugetlb (its own pool); shared anonymous
    memory is charged by shmem_zero_setup() -> shmem_acct_size()."""
    flags, prot = _flags(f), _flags(f, "prot")
    if "MAP_HUGETLB" in flags or "MAP_DROPPABLE" in flags:
        return False
    if "MAP_NORESERVE" in flags and h.overcommit_memory != 2:
        return False
    if "MAP_SHARED" in flags or "MAP_SHARED_VALIDATE" in flags:
        return "MAP_ANONYMOUS" in flags
    return "PROT_WRITE" in prot


def _overcommit_text(h: HostState, request: int) -> str:
    if h.overcommit_memory == 2:
        return (f"strict overcommit (vm.overcommit_memory=2): committing {_b(request)} more "
                f"would exceed CommitLimit {_b(h.commit_limit)} ({_b(h.committed_as)} already "
                "committed): raise vm.overcommit_ratio/overcommit_kbytes, add swap, or commit less")
    return (f"the kernel's overcommit heuristic refused {_b(request)}, more than RAM + swap "
            f"({_b(h.mem_total + h.swap_total)}): ask for less, or set vm.overcommit_memory=1 "
            "if sparse use of a huge mapping is intended")


def kernel_finding(k: KernelFailure, cgroup: Optional[CgroupState], h: HostState,
                   inside: str) -> Optional[Finding]:
    """Why a kernel-side allocation failed, from its own numbers and the host's."""
    size = k.size or 0
    if k.kind == "slab" and size > (h.page_size << KMALLOC_MAX_ORDER):
        return Finding("too_large",
                       f"{inside}a kmalloc of {_b(size)}, above the largest possible "
                       f"({_b(h.page_size << KMALLOC_MAX_ORDER)}): the request itself is too big",
                       {"request": size, "kmalloc_max": h.page_size << KMALLOC_MAX_ORDER})
    if k.kind == "vmalloc" and h.mem_total and size > h.mem_total:
        return Finding("too_large", f"{inside}a vmalloc of {_b(size)}, larger than RAM "
                       f"({_b(h.mem_total)})", {"request": size, "mem_total": h.mem_total})
    if k.kind == "page_alloc" and (k.order or 0) > MAX_PAGE_ORDER:
        return Finding("too_large", f"{inside}an order-{k.order} page allocation, above the "
                       f"largest order {MAX_PAGE_ORDER}", {"order": k.order})
    accounted = (k.gfp is not None and k.gfp.accounted) or k.kind == "vmalloc"
    if accounted and cgroup is not None and cgroup.limit is not None and cgroup.usage is not None:
        if cgroup.usage + size > cgroup.limit or cgroup.usage >= 0.9 * cgroup.limit:
            return Finding("memcg_limit",
                           f"{inside}a {_b(size)} {k.kind} allocation charged to cgroup "
                           f"{cgroup.path}, which uses {_b(cgroup.usage)} of its "
                           f"{_b(cgroup.limit)} limit: raise memory."
                           f"{'max' if cgroup.version == 2 else 'limit_in_bytes'} of "
                           f"{cgroup.path} or use less in it",
                           {"cgroup": cgroup.path, "usage": cgroup.usage, "limit": cgroup.limit,
                            "request": size, "gfp": _text(k.gfp), "order": k.order})
    # ZONE_DMA's few big blocks are held back (lowmem_reserve) from ordinary allocations.
    zones = {z: b for z, b in h.free_blocks.items() if not z.endswith("zone DMA")}
    if k.kind == "page_alloc" and (k.order or 0) > 0 and zones:
        order = k.order or 0
        free_pages = sum(n << o for blocks in zones.values() for o, n in enumerate(blocks))
        big_enough = sum(n for blocks in zones.values() for o, n in enumerate(blocks)
                         if o >= order)
        if big_enough == 0 and free_pages >= (1 << order):
            return Finding("fragmentation",
                           f"{inside}an order-{order} ({_b(h.page_size << order)}) page "
                           f"allocation found no free block that large although "
                           f"{_b(free_pages * h.page_size)} is free in smaller blocks: memory "
                           "is fragmented (vm.compact_memory, vm.min_free_kbytes, fewer "
                           "high-order allocations)",
                           {"order": order, "free_pages": free_pages,
                            "free_blocks": {z: list(b) for z, b in zones.items()}})
    if (k.order or 0) == 0 and h.min_watermark:
        free = h.mem_free // h.page_size
        low = sum(h.min_watermark.values())
        if free <= low:
            return Finding("exhaustion",
                           f"{inside}an order-0 allocation failed with {_b(h.mem_free)} free, "
                           f"below the min watermarks ({_b(low * h.page_size)}): the machine "
                           "is out of memory",
                           {"mem_free": h.mem_free, "min_watermark_pages": low,
                            "mem_total": h.mem_total})
    return None


def rule_linked_kernel_failure(f: Failure, ev: Evidence) -> Optional[Finding]:
    """The allocations each path makes once its checks have passed -- vm_area_alloc() and
    the maple-tree preallocation in __mmap_region()/do_brk_flags(), vm_area_dup() in
    split_vma(), copy_vma() and the page tables in move_vma(), a kmalloc/vmalloc/page
    allocation inside any other syscall -- failed inside this syscall (kernel_finding says
    why: too large, the memory cgroup's limit, fragmentation, exhaustion)."""
    if not f.linked:
        return None
    for k in f.linked:
        found = kernel_finding(k, ev.cgroup, ev.host, f"inside {f.syscall}(), ")
        if found:
            return dataclasses.replace(found, evidence={**found.evidence, "syscall": f.syscall})
    k = f.linked[0]
    what = f"order-{k.order} page" if k.kind == "page_alloc" else k.kind
    return Finding("kernel_allocation",
                   f"{f.syscall}() failed because a kernel {what} allocation inside it failed "
                   f"({k.gfp or 'no GFP flags'}), with no cgroup limit, fragmentation or "
                   "shortage in evidence",
                   {"kind": k.kind, "order": k.order, "gfp": _text(k.gfp), "size": k.size,
                    "opportunistic": k.opportunistic})


def rule_brk_next_mapping(f: Failure, ev: Evidence) -> Optional[Finding]:
    """The brk syscall, after check_brk_limits(): the new break must stay a guard gap
    below the next mapping (`newbrk + PAGE_SIZE > vm_start_gap(next)` -> the old break).
    Nothing captured shows the neighbour, so this is what is left once the limits (read at
    the failure), the map count, the commit and the kernel allocations are ruled out."""
    if f.syscall != "brk" or f.task is None or not f.size:
        return None
    return Finding("address_space",
                   f"the heap could not grow by {_b(f.size)}: no limit, map count, commit or "
                   "kernel allocation explains it, which leaves the brk syscall's own check "
                   "that the new break stays clear of the next mapping (inferred); malloc "
                   "falls back to mmap, so this alone is harmless unless mmap fails too",
                   {"request": f.size, "requested_break": f.detail.get("requested_break"),
                    "returned_break": f.detail.get("returned_break")})


# -- the order of the checks, per syscall ----------------------------------------------------
# The first rule that matches wins, so each sequence is the order in which that syscall's
# kernel path (6.18) makes the checks. Rules with no evidence to go on (by elimination) come
# last whatever their place in the kernel.

_MMAP = (
    rule_length_wraps,  # do_mmap: PAGE_ALIGN(len) wraps
    rule_max_map_count,  # do_mmap: map_count > sysctl_max_map_count
    rule_too_large,  # __get_unmapped_area: len > TASK_SIZE
    rule_fixed_past_top,  # __get_unmapped_area: MAP_FIXED addr > TASK_SIZE - len
    rule_address_space,  # arch get_unmapped_area -> vm_unmapped_area found no room
    rule_rlimit_memlock,  # do_mmap: mlock_future_ok -> EAGAIN
    rule_rlimit_as,  # __mmap_region: may_expand_vm, RLIMIT_AS
    rule_rlimit_data,  # __mmap_region: may_expand_vm, RLIMIT_DATA
    rule_overcommit,  # __mmap_region: accountable_mapping -> __vm_enough_memory
    rule_hugetlb,  # hugetlbfs mmap -> hugetlb_reserve_pages
    rule_linked_kernel_failure,  # vm_area_alloc, maple tree, shmem_zero_setup
)
_MREMAP = (
    rule_mremap_fixed_map_count,  # check_mremap_params
    rule_rlimit_memlock,  # check_prep_vma: mlock_future_ok -> EAGAIN
    rule_rlimit_as,  # check_prep_vma: may_expand_vm
    rule_rlimit_data,
    rule_overcommit_confirmed,  # expand_vma_in_place: vrm_calc_charge
    rule_mremap_in_place,  # expand_vma: no MREMAP_MAYMOVE
    rule_address_space,  # vrm_set_new_addr: get_unmapped_area
    rule_mremap_move_map_count,  # prep_move_vma
    rule_overcommit,  # move_vma: vrm_calc_charge
    rule_linked_kernel_failure,  # copy_vma, move_page_tables
)
_BRK = (
    rule_brk_data_first,  # check_data_rlimit
    rule_brk_past_top,  # check_brk_limits: get_unmapped_area(MAP_FIXED)
    rule_rlimit_memlock,  # check_brk_limits: mlock_future_ok
    rule_rlimit_as,  # do_brk_flags: may_expand_vm
    rule_max_map_count,  # do_brk_flags: map_count > sysctl_max_map_count
    rule_overcommit,  # do_brk_flags: security_vm_enough_memory_mm
    rule_linked_kernel_failure,
    rule_brk_next_mapping,  # (before do_brk_flags in the kernel; by elimination here)
)
_MPROTECT = (
    rule_bad_range,  # do_mprotect_pkey: the range walk
    rule_rlimit_data,  # mprotect_fixup: may_expand_vm when the area turns into data
    rule_overcommit,  # mprotect_fixup: security_vm_enough_memory_mm
    rule_max_map_count,  # vma_modify_flags -> split_vma
    rule_linked_kernel_failure,
    rule_bad_range_by_elimination,
)
_MLOCK = (
    rule_rlimit_memlock,  # do_mlock: locked > RLIMIT_MEMLOCK, before the range is looked at
    rule_bad_range,  # apply_vma_lock_flags: the range walk
    rule_max_map_count,  # mlock_fixup -> vma_modify_flags -> split_vma
    rule_linked_kernel_failure,  # and __mm_populate (its ENOMEM becomes EAGAIN)
    rule_bad_range_by_elimination,
)
_RANGE_THEN_SPLIT = (  # munlock, madvise: the range walk, then splits
    rule_bad_range, rule_max_map_count, rule_linked_kernel_failure,
    rule_bad_range_by_elimination,
)
_FORK = (rule_overcommit, rule_linked_kernel_failure)  # dup_mmap: VM_ACCOUNT mappings

CHECK_ORDER: Mapping[str, Sequence[Rule]] = {
    "mmap": _MMAP,
    # do_shmat -> do_mmap of the segment, shared: never data, never commit accounted
    "shmat": (rule_max_map_count, rule_address_space, rule_rlimit_memlock, rule_rlimit_as,
              rule_linked_kernel_failure),
    "mremap": _MREMAP,
    "brk": _BRK,
    "mprotect": _MPROTECT,
    "pkey_mprotect": _MPROTECT,
    "mlock": _MLOCK,
    "mlock2": _MLOCK,
    "munlock": _RANGE_THEN_SPLIT,
    "madvise": _RANGE_THEN_SPLIT,
    "process_madvise": _RANGE_THEN_SPLIT,
    # mlockall: the limit; apply_mlockall_flags ignores what fails after it
    "mlockall": (rule_rlimit_memlock, rule_linked_kernel_failure),
    "mincore": (rule_bad_range, rule_linked_kernel_failure, rule_bad_range_by_elimination),
    "msync": (rule_bad_range, rule_linked_kernel_failure, rule_bad_range_by_elimination),
    "munmap": (rule_max_map_count, rule_linked_kernel_failure),  # vms_gather_munmap_vmas
    # newseg: hugetlb_file_setup reserves the pool, or shmem_kernel_file_setup charges it
    "shmget": (rule_hugetlb, rule_overcommit, rule_linked_kernel_failure),
    "shmctl": (rule_rlimit_memlock, rule_linked_kernel_failure),  # SHM_LOCK: user_shm_lock
    "fork": _FORK, "vfork": _FORK, "clone": _FORK, "clone3": _FORK,
}
# Any other syscall: a search for a free range (a driver's mmap hook), or an allocation
# inside it.
DEFAULT_CHECKS: Sequence[Rule] = (rule_address_space, rule_linked_kernel_failure)


def checks_for(syscall: Optional[str]) -> Sequence[Rule]:
    """The rules for one syscall, in the order its kernel path makes the checks."""
    return CHECK_ORDER.get(syscall or "", DEFAULT_CHECKS)


def _unknown(f: Failure, ev: Evidence) -> Finding:
    t = f.task
    facts: dict[str, Any] = {"syscall": f.syscall, "errno": f.errno}
    if t is not None:
        facts.update(total_vm=t.total_vm, data_vm=t.data_vm, map_count=t.map_count,
                     rlimit_as=t.rlim_as, rlimit_data=t.rlim_data)
    return Finding("unknown",
                   f"no rule explains this {f.syscall or f.kind} failure: no limit was near, "
                   "no kernel allocation failed inside it and the kernel gave no reason "
                   "(see evidence)", facts)


# What each kernel decision point (kretprobe, where the host has kprobes) confirms.
DECISION_CONFIRMS = {"overcommit": {"overcommit"}, "vm_limit": {"rlimit_as", "rlimit_data"},
                     "memcg_limit": {"memcg_limit"}, "rlimit_memlock": {"rlimit_memlock"}}


def confirm(f: Failure, found: Finding) -> Finding:
    """A cause the kernel's own decision point agrees with is confirmed, not inferred."""
    decisions = f.detail.get("kernel_decisions") or ()
    for d in decisions:
        if found.cause in DECISION_CONFIRMS.get(d, ()):
            return dataclasses.replace(found, confidence=CONFIRMED,
                                       evidence={**found.evidence, "kernel_decision": d})
    return found


def diagnose_syscall(f: Failure, ev: Evidence) -> Finding:
    for rule in checks_for(f.syscall):
        found = rule(f, ev)
        if found is not None:
            return confirm(f, found)
    return _unknown(f, ev)


def _memcg_setting(cg: Optional[CgroupState]) -> str:
    if cg is None:
        return "memory.max (v2) or memory.limit_in_bytes (v1)"
    return "memory.max" if cg.version == 2 else "memory.limit_in_bytes"


def diagnose_oom(f: Failure, ev: Evidence) -> Finding:
    """Why the kernel killed, then what grew before it (`grew`) as the explanation's end."""
    finding = _oom_cause(f, ev)
    grew = what_grew(f.grew, f.pid)
    if not grew:
        return finding
    return dataclasses.replace(finding, explanation=f"{finding.explanation}. What grew "
                               f"before the kill: {grew}")


def _oom_cause(f: Failure, ev: Evidence) -> Finding:
    constraint = f.detail.get("constraint")
    cg = ev.cgroup
    facts: dict[str, Any] = {"constraint": constraint, "victim_rss": f.detail.get("rss_bytes"),
                             "cgroup": f.cgroup}
    if cg is not None:
        facts.update(usage=cg.usage, limit=cg.limit)
    if constraint == "CONSTRAINT_MEMCG" or (
            constraint is None and cg is not None and cg.limit is not None
            and cg.usage is not None and cg.usage >= 0.9 * cg.limit):
        limit = f" ({_b(cg.limit)})" if cg is not None else ""
        return Finding("memcg_limit",
                       f"pid {f.pid} ({f.comm}) was OOM-killed because cgroup {f.cgroup} reached "
                       f"its memory limit{limit}: raise its {_memcg_setting(cg)} or use less",
                       facts, CONFIRMED if constraint else INFERRED)
    if constraint == "CONSTRAINT_NONE":
        h = ev.host
        min_pages = sum(h.min_watermark.values())
        return Finding("exhaustion",
                       f"the whole machine ran out of memory ({_b(h.mem_free)} free against "
                       f"min watermarks of {_b(min_pages * h.page_size)}, "
                       f"{_b(h.mem_available)} available of {_b(h.mem_total)}) and the kernel "
                       f"killed pid {f.pid} ({f.comm}): add memory or swap, or find what grew",
                       {**facts, "mem_free": h.mem_free, "min_watermark_pages": min_pages,
                        "mem_available": h.mem_available, "mem_total": h.mem_total,
                        "captured": f.host is not None and f.host.free is not None},
                       CONFIRMED)
    return Finding("unknown", f"OOM kill with constraint {constraint or 'unknown'}: no rule "
                   "matches (e.g. a cpuset or mempolicy constraint)", facts)


def diagnose(f: Failure, ev: Evidence) -> Finding:
    if f.kind == "syscall":
        return diagnose_syscall(f, ev)
    if f.kind == "oom_kill":
        return diagnose_oom(f, ev)
    if f.kind == "memcg":
        cg = ev.cgroup
        if f.detail.get("event") == "high":  # v2 memory.high: a throttle, not a limit hit
            return Finding("memcg_limit",
                           f"cgroup {f.cgroup} exceeded its memory.high "
                           f"(high +{f.detail.get('increase')}): the kernel throttled and "
                           "reclaimed the cgroup's allocations; not a failure by itself"
                           + (f" ({_b(cg.usage)} used, memory.max {_b(cg.limit)})" if cg else "")
                           + "; raise its memory.high if this is expected load",
                           {"cgroup": f.cgroup, "event": "high",
                            "increase": f.detail.get("increase"),
                            "usage": cg.usage if cg else None, "limit": cg.limit if cg else None})
        return Finding("memcg_limit",
                       f"cgroup {f.cgroup} hit its memory limit ({f.detail.get('event')} "
                       f"+{f.detail.get('increase')})"
                       + (f": {_b(cg.usage)} used of {_b(cg.limit)}" if cg else "")
                       + f"; raise its {_memcg_setting(cg)} if this is expected load",
                       {"cgroup": f.cgroup, "event": f.detail.get("event"),
                        "increase": f.detail.get("increase"),
                        "usage": cg.usage if cg else None, "limit": cg.limit if cg else None})
    k = KernelFailure(f.kind, f.size, f.order, f.gfp, f.opportunistic)
    inside = f"inside {f.syscall}(), " if f.syscall else ""
    found = kernel_finding(k, ev.cgroup, ev.host, inside)
    if found is not None:
        return found
    if f.syscall:
        return Finding("kernel_allocation",
                       f"a kernel {f.kind} allocation inside {f.syscall}() failed with no cgroup "
                       "limit, fragmentation or shortage in evidence",
                       {"kind": f.kind, "order": f.order, "gfp": _text(f.gfp), "size": f.size})
    return Finding("unknown",
                   f"a kernel {f.kind} allocation failed outside any failing syscall, with no "
                   "cgroup limit, fragmentation or shortage in evidence",
                   {"kind": f.kind, "order": f.order, "gfp": _text(f.gfp), "size": f.size})


def apply(f: Failure, finding: Finding) -> Failure:
    return dataclasses.replace(f, cause=finding.cause, explanation=finding.explanation,
                               evidence=dict(finding.evidence), confidence=finding.confidence)
