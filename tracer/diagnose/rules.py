"""Why an allocation failed: small pure rules from a failure and its evidence to a finding."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from ..host.state import CgroupState, HostState
from ..model.decode import format_bytes
from ..model.failures import Failure, KernelFailure
from .evidence import Evidence
from .requests import (
    COMMIT_SYSCALLS,
    GROWING_SYSCALLS,
    MLOCK_SYSCALLS,
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


def _private_writable(f: Failure) -> bool:
    if f.syscall == "brk":
        return True
    prot = _flags(f, "prot")
    if f.syscall in ("mprotect", "pkey_mprotect"):
        return "PROT_WRITE" in prot
    if f.syscall == "mmap":
        # MAP_STACK only sets VM_NOHUGEPAGE: a private writable stack counts as data
        return "PROT_WRITE" in prot and "MAP_PRIVATE" in _flags(f)
    return f.syscall == "mremap"


# -- rules for syscall failures, in the order the kernel checks -----------------------------

def rule_too_large(f: Failure, ev: Evidence) -> Optional[Finding]:
    if f.syscall not in ("mmap", "mremap"):
        return None
    size = request_bytes(f) if f.syscall == "mmap" else int(f.args.get("new_size", 0))
    if size > ev.host.task_size:
        return Finding("too_large",
                       f"{f.syscall} asked for {_b(size)}, more than the whole "
                       f"{_b(ev.host.task_size)} user address space: no setting makes this fit; "
                       "the size is wrong (an overflow or a bad length)",
                       {"request": size, "address_space": ev.host.task_size})
    return None


def rule_max_map_count(f: Failure, ev: Evidence) -> Optional[Finding]:
    t = f.task
    if t is None or f.syscall not in SPLITTING_SYSCALLS:
        return None
    # A new mapping is refused only past the limit (the first one at it still works);
    # splitting one mapping in the middle needs two more entries.
    at_limit = (t.map_count > ev.host.max_map_count if f.syscall in ("mmap", "brk", "shmat")
                else t.map_count >= ev.host.max_map_count - 1)
    if at_limit:
        return Finding("max_map_count",
                       f"the process has {t.map_count} mappings and vm.max_map_count is "
                       f"{ev.host.max_map_count}: raise it (sysctl vm.max_map_count) or make "
                       "fewer, larger mappings",
                       {"map_count": t.map_count, "max_map_count": ev.host.max_map_count})
    return None


def rule_address_space(f: Failure, ev: Evidence) -> Optional[Finding]:
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


def rule_mremap_in_place(f: Failure, ev: Evidence) -> Optional[Finding]:
    """Checked after the limits: mremap tests RLIMIT_AS and the mlock limit first."""
    if f.syscall == "mremap" and "MREMAP_MAYMOVE" not in _flags(f) and request_bytes(f) > 0:
        return Finding("address_space",
                       "mremap could not grow the mapping in place (the next range is in use) "
                       "and MREMAP_MAYMOVE was not given: allow it to move",
                       {"request": request_bytes(f), "flags": f.args.get("flags")})
    return None


def rule_hugetlb(f: Failure, ev: Evidence) -> Optional[Finding]:
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
    t = f.task
    if t is None or t.cap_ipc_lock or t.rlim_memlock is None:
        return None
    locked_mapping = f.syscall == "mmap" and ("MAP_LOCKED" in _flags(f) or t.mlock_future)
    growing_locked = f.syscall in ("mremap", "brk") and t.mlock_future
    if f.syscall == "mlockall":
        need = t.total_vm if "MCL_CURRENT" in _flags(f) else 0
        if "MCL_FUTURE" in _flags(f) and not need:
            return None
    elif f.syscall in MLOCK_SYSCALLS or locked_mapping or growing_locked:
        need = t.locked_vm + request_bytes(f)
    else:
        return None
    # mlock over the limit says ENOMEM (its EAGAIN means faulting the pages in failed);
    # a locked mapping over it says EAGAIN, which is the kernel's verdict itself.
    if need <= t.rlim_memlock and not (f.errno == "EAGAIN" and (locked_mapping or growing_locked)):
        return None
    return Finding("rlimit_memlock",
                   f"locking {_b(request_bytes(f) or need)} more would bring locked memory to "
                   f"{_b(need)}, over RLIMIT_MEMLOCK ({_b(t.rlim_memlock)}): raise it "
                   "(ulimit -l, LimitMEMLOCK=, /etc/security/limits.conf) or grant CAP_IPC_LOCK",
                   {"locked_vm": t.locked_vm, "request": request_bytes(f),
                    "rlimit_memlock": t.rlim_memlock, "errno": f.errno})


def _bad_range(f: Failure, ev: Evidence) -> Finding:
    addr = int(f.args.get("addr", 0))
    length = request_bytes(f)
    how = "" if ev.range_mapped is False else " (the process was gone before its mappings " \
        "could be read: inferred because no limit explains it)"
    return Finding("bad_range",
                   f"{f.syscall} was given a range ({addr:#x}, {_b(length)}) that is not fully "
                   f"mapped{how}; the kernel says ENOMEM for that: not a memory shortage, a bug "
                   "in the caller's address or length",
                   {"addr": addr, "length": length, "range_mapped": ev.range_mapped})


def rule_bad_range(f: Failure, ev: Evidence) -> Optional[Finding]:
    if f.syscall not in RANGE_SYSCALLS or f.errno != "ENOMEM":
        return None
    if ev.range_mapped is False or (ev.range_mapped is None and f.syscall in ONLY_RANGE_SYSCALLS):
        return _bad_range(f, ev)
    return None


def rule_bad_range_by_elimination(f: Failure, ev: Evidence) -> Optional[Finding]:
    """mprotect/madvise/mlock say ENOMEM for a hole, a map-count split or a limit; with the
    limits ruled out and the mappings unreadable, the hole is what is left."""
    if f.syscall in RANGE_SYSCALLS and ev.range_mapped is None and f.errno == "ENOMEM":
        return _bad_range(f, ev)
    return None


def rule_rlimit_as(f: Failure, ev: Evidence) -> Optional[Finding]:
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
    t = f.task
    if t is None or t.rlim_data is None or not _private_writable(f):
        return None
    need = t.data_vm + request_bytes(f)
    if need > t.rlim_data:
        return Finding("rlimit_data",
                       f"private writable memory would grow from {_b(t.data_vm)} by "
                       f"{_b(request_bytes(f))} to {_b(need)}, over RLIMIT_DATA "
                       f"({_b(t.rlim_data)}): raise it (ulimit -d, LimitDATA=, prlimit --data)",
                       {"data_vm": t.data_vm, "request": request_bytes(f),
                        "rlimit_data": t.rlim_data})
    return None


def rule_overcommit(f: Failure, ev: Evidence) -> Optional[Finding]:
    if f.syscall not in COMMIT_SYSCALLS:
        return None
    h = ev.host
    request = request_bytes(f)
    msg = f.detail.get("kernel_message")
    if f.syscall == "mmap" and not msg and not _accounted_mapping(f):
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


def _accounted_mapping(f: Failure) -> bool:
    """Whether an mmap is charged to the commit: private writable or shared anonymous
    memory, unless MAP_NORESERVE (or hugetlb, which has its own pool)."""
    flags, prot = _flags(f), _flags(f, "prot")
    if "MAP_NORESERVE" in flags or "MAP_HUGETLB" in flags:
        return False
    if "MAP_SHARED" in flags:
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


def rule_brk_data_first(f: Failure, ev: Evidence) -> Optional[Finding]:
    """brk checks RLIMIT_DATA before it asks may_expand_vm about RLIMIT_AS."""
    return rule_rlimit_data(f, ev) if f.syscall == "brk" else None


SYSCALL_RULES: Sequence[Rule] = (
    rule_too_large, rule_max_map_count, rule_address_space, rule_rlimit_memlock,
    rule_bad_range, rule_brk_data_first, rule_rlimit_as, rule_rlimit_data, rule_mremap_in_place,
    rule_hugetlb, rule_overcommit, rule_linked_kernel_failure, rule_bad_range_by_elimination,
)


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
    for rule in SYSCALL_RULES:
        found = rule(f, ev)
        if found is not None:
            return confirm(f, found)
    return _unknown(f, ev)


def _memcg_setting(cg: Optional[CgroupState]) -> str:
    if cg is None:
        return "memory.max (v2) or memory.limit_in_bytes (v1)"
    return "memory.max" if cg.version == 2 else "memory.limit_in_bytes"


def diagnose_oom(f: Failure, ev: Evidence) -> Finding:
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
        return Finding("exhaustion",
                       f"the whole machine ran out of memory ({_b(ev.host.mem_available)} "
                       f"available of {_b(ev.host.mem_total)}) and the kernel killed pid "
                       f"{f.pid} ({f.comm}): add memory or swap, or find what grew",
                       {**facts, "mem_available": ev.host.mem_available,
                        "mem_total": ev.host.mem_total}, CONFIRMED)
    return Finding("unknown", f"OOM kill with constraint {constraint or 'unknown'}: no rule "
                   "matches (e.g. a cpuset or mempolicy constraint)", facts)


def diagnose(f: Failure, ev: Evidence) -> Finding:
    if f.kind == "syscall":
        return diagnose_syscall(f, ev)
    if f.kind == "oom_kill":
        return diagnose_oom(f, ev)
    if f.kind == "memcg":
        cg = ev.cgroup
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
