"""The probe plan: each logical probe, its candidate attachments in order, and how each is detected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..model.probes import UNAVAILABLE, ProbeStatus


@dataclass(frozen=True)
class Candidate:
    via: str  # "tp_btf" (BTF-typed tracepoint), "raw_tp" (raw tracepoint), "kretprobe"
    # (kernel decision points), "poll"
    target: str  # tracepoint name, or what is polled
    fn: str = ""  # BPF function name
    params: Sequence[str] = ()  # expected raw-tracepoint parameter kinds: "*" pointer, "n" number


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    family: str  # -DMT_PROBE_<family> compiles its section of bpf/memtrace.bpf.c
    core: bool  # memtrace is useless without it
    what: str
    candidates: Sequence[Candidate]
    adaptive: bool = False  # costly on hot paths: attached only while armed (kernel/depth.py)


PLAN: tuple[ProbeSpec, ...] = (
    ProbeSpec("syscall_exit", "SYSCALLS", True,
              "every syscall returning ENOMEM, memory syscalls' EAGAIN, brk's silent failure",
              [Candidate("tp_btf", "sys_exit", "mt_sys_exit", ("*", "n")),
               Candidate("raw_tp", "sys_exit", "mt_sys_exit", ("*", "n"))]),
    ProbeSpec("page_alloc", "KMEM", True, "page allocator failures (mm_page_alloc, NULL page)",
              [Candidate("raw_tp", "mm_page_alloc", "mt_page_alloc", ("*", "n", "n", "n"))]),
    ProbeSpec("kmalloc", "KMEM", False, "kmalloc returning NULL",
              [Candidate("raw_tp", "kmalloc", "mt_kmalloc", ("n", "*", "n", "n", "n", "n"))],
              adaptive=True),
    ProbeSpec("kmem_cache_alloc", "KMEM", False, "kmem_cache_alloc returning NULL",
              [Candidate("raw_tp", "kmem_cache_alloc", "mt_kmem_cache_alloc",
                         ("n", "*", "*", "n", "n"))], adaptive=True),
    ProbeSpec("vmalloc", "KMEM", False, "vmalloc area allocation failures",
              [Candidate("raw_tp", "alloc_vmap_area", "mt_alloc_vmap_area",
                         ("n", "n", "n", "n", "n", "n"))]),
    ProbeSpec("percpu", "KMEM", False, "percpu allocation failures",
              [Candidate("raw_tp", "percpu_alloc_percpu_fail", "mt_percpu_fail",
                         ("n", "n", "n", "n"))]),
    ProbeSpec("unmapped_area", "KMEM", False,
              "failed searches for a free virtual range (evidence for address-space causes)",
              [Candidate("raw_tp", "vm_unmapped_area", "mt_vm_unmapped_area", ("n", "*"))]),
    ProbeSpec("oom_kill", "OOM", False, "OOM kills (victim, size, memory cgroup)",
              [Candidate("raw_tp", "mark_victim", "mt_mark_victim", ("*", "n"))]),
    ProbeSpec("kernel_messages", "KMSG", False,
              "the kernel's OOM constraint and overcommit refusal lines (printk:console)",
              [Candidate("raw_tp", "console", "mt_console", ("*", "n"))]),
    ProbeSpec("decision_overcommit", "DECISIONS", False,
              "the kernel's overcommit verdict (__vm_enough_memory): confirms `overcommit`",
              [Candidate("kretprobe", "__vm_enough_memory", "mt_ret_vm_enough_memory")]),
    ProbeSpec("decision_vm_limit", "DECISIONS", False,
              "the kernel's RLIMIT_AS/RLIMIT_DATA verdict (may_expand_vm): confirms rlimits",
              [Candidate("kretprobe", "may_expand_vm", "mt_ret_may_expand_vm")]),
    ProbeSpec("decision_memcg", "DECISIONS", False,
              "the memory cgroup charge verdict (try_charge_memcg): confirms `memcg_limit`",
              [Candidate("kretprobe", "try_charge_memcg", "mt_ret_try_charge_memcg")]),
    ProbeSpec("decision_memlock", "DECISIONS", False,
              "the RLIMIT_MEMLOCK verdict for new locked mappings (mlock_future_ok; "
              "mlock_future_check before Linux 6.3)",
              [Candidate("kretprobe", "mlock_future_ok", "mt_ret_mlock_future_ok"),
               Candidate("kretprobe", "mlock_future_check", "mt_ret_mlock_future_check")]),
    ProbeSpec("cgroup_mkdir", "CGROUPS", False,
              "every new cgroup's id and path, so cgroups removed right after a failure are "
              "still named",
              [Candidate("raw_tp", "cgroup_mkdir", "mt_cgroup_mkdir", ("*", "*"))]),
    ProbeSpec("cgroup_rename", "CGROUPS", False, "renamed cgroups' new paths (cgroup v1)",
              [Candidate("raw_tp", "cgroup_rename", "mt_cgroup_rename", ("*", "*"))]),
    ProbeSpec("process_exec", "PROCESSES", False,
              "where each new program's code is, so stacks are named after it exits",
              [Candidate("raw_tp", "sched_process_exec", "mt_exec", ("*", "n", "*"))]),
    ProbeSpec("process_fork", "PROCESSES", False,
              "forked processes start with their parent's code mappings",
              [Candidate("raw_tp", "sched_process_fork", "mt_fork", ("*", "*"))]),
    ProbeSpec("growth", "GROWTH", False,
              "every process's anonymous memory growth, sampled by bytes with its stacks, for "
              "what an OOM kill's victim grew and what grows now (rides on page_alloc, "
              "syscall_exit and process_exec; this probe sees processes end)",
              [Candidate("raw_tp", "sched_process_exit", "mt_growth_exit", ("*", "n"))]),
    ProbeSpec("memcg_events", "", False,
              "memory cgroup limit hits (memory.events, memory.failcnt, memory.oom_control)",
              [Candidate("poll", "cgroup memory counters")]),
)

CORE_PROBES = tuple(p.name for p in PLAN if p.core)


def _param_kind(ctype: str) -> str:
    return "*" if ctype.rstrip().endswith("*") else "n"


def check_raw_tp(cand: Candidate, actual: Optional[Sequence[str]]) -> Optional[str]:
    """None when the running kernel's tracepoint matches what the BPF code reads, else why not."""
    if actual is None:
        return f"the kernel has no {cand.target} tracepoint (no btf_trace_{cand.target} in BTF)"
    kinds = tuple(_param_kind(t) for t in actual)
    if kinds != tuple(cand.params):
        return (f"{cand.target} arguments are ({', '.join(actual)}) on this kernel, "
                "not what memtrace reads")
    return None


def kprobe_check(kallsyms: str = "/proc/kallsyms",
                 pmu: str = "/sys/bus/event_source/devices/kprobe") -> Callable[[str], Optional[str]]:
    """A checker saying why a kretprobe on a function cannot attach here (None: it can)."""
    import os

    have_kprobes = os.path.isdir(pmu)
    names: set[str] = set()
    if have_kprobes:
        try:
            with open(kallsyms) as f:
                names = {line.split()[2] for line in f if len(line.split()) >= 3}
        except OSError:
            pass

    def check(function: str) -> Optional[str]:
        if not have_kprobes:
            return "this kernel has no kprobes (CONFIG_KPROBES off); the cause stays inferred"
        if function not in names:
            return f"no {function} in this kernel"
        return None

    return check


def choose(btf_params, selected: Optional[set[str]] = None,
           kprobe_ok: Optional[Callable[[str], Optional[str]]] = None,
           tp_btf_ok: Optional[Callable[[str], Optional[str]]] = None):
    """Pick a candidate per probe. btf_params(name) -> list of C type names or None;
    kprobe_ok(function) -> None when a kretprobe can attach there, else why not;
    tp_btf_ok(tracepoint) -> None when a tp_btf program can run there, else why not.

    Returns (chosen {probe name: Candidate}, statuses for the ones that cannot attach)."""
    chosen: dict[str, Candidate] = {}
    statuses: dict[str, ProbeStatus] = {}
    for spec in PLAN:
        if selected is not None and spec.name not in selected:
            continue
        reasons = []
        for cand in spec.candidates:
            if cand.via == "poll":
                chosen[spec.name] = cand
                break
            if cand.via == "kretprobe":
                why = kprobe_ok(cand.target) if kprobe_ok else "kprobes not checked"
                if why is None:
                    chosen[spec.name] = cand
                    break
                reasons.append(why)
            if cand.via == "tp_btf":
                why = check_raw_tp(cand, btf_params(cand.target))
                if why is None:
                    why = tp_btf_ok(cand.target) if tp_btf_ok else "tp_btf not checked"
                if why is None:
                    chosen[spec.name] = cand
                    break
                reasons.append(why)
            if cand.via == "raw_tp":
                why = check_raw_tp(cand, btf_params(cand.target))
                if why is None:
                    chosen[spec.name] = cand
                    break
                reasons.append(why)
        else:
            statuses[spec.name] = ProbeStatus(spec.name, UNAVAILABLE, None, "; ".join(reasons))
    return chosen, statuses
