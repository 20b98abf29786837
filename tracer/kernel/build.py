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
             "shmat", "brk", "pkey_mprotect", "munlock", "msync", "mincore", "shmget", "fcntl")

# Memory nodes the zone walk covers at most (memtrace.h's MT_MAX_NODES).
_MAX_NODES = 4


def _possible_nodes(path: str = "/sys/devices/system/node/possible") -> int:
    """nr_node_ids: one more than the highest possible NUMA node ("0-3", "0,2"); 1 if unknown."""
    try:
        with open(path) as f:
            text = f.read().strip()
        highest = max(int(part.split("-")[-1]) for part in text.split(",") if part)
        return highest + 1
    except (OSError, ValueError):
        return 1


@dataclass(frozen=True)
class Layout:
    """Struct offsets and constants of the running kernel, all from BTF."""

    defines: Mapping[str, int]
    features: frozenset[str]  # MT_HAVE_* the kernel supports
    gfp_bits: Mapping[str, int]
    notes: tuple[str, ...] = ()
    zone_names: Mapping[int, str] = field(default_factory=dict)  # zone index -> buddyinfo name


# enum zone_type's enumerators as /proc/buddyinfo and /proc/zoneinfo name them (zone_names[]
# in mm/page_alloc.c); which exist depends on the kernel's configuration.
_ZONE_NAMES = {"ZONE_DMA": "DMA", "ZONE_DMA32": "DMA32", "ZONE_NORMAL": "Normal",
               "ZONE_HIGHMEM": "HighMem", "ZONE_MOVABLE": "Movable", "ZONE_DEVICE": "Device"}


def _kallsyms_has(name: str) -> bool:
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                if line.rstrip().endswith(" " + name):
                    return True
    except OSError:
        pass
    return False


# The functions that inline __do_kmalloc_node(): for a kmalloc above the largest slab it
# calls __kmalloc_large_node_noprof(), which traces the failure itself, and then traces it
# again for its own caller. A failure whose call site lies in one of them is that inner
# trace, and the next identical one on the thread is its twin (bpf/memtrace.bpf.c).
_KMALLOC_INLINERS = ("__kmalloc_noprof", "__kmalloc_node_noprof",
                     "__kmalloc_node_track_caller_noprof", "__kvmalloc_node_noprof")
_MAX_KMALLOC_RANGES = 6


def kmalloc_ranges(kallsyms: str = "/proc/kallsyms") -> list[tuple[int, int]]:
    """[start, end) of each function in _KMALLOC_INLINERS: from its address to the next
    text symbol's. Empty when the addresses are hidden (kptr_restrict) or unreadable."""
    symbols: list[tuple[int, str]] = []
    try:
        with open(kallsyms) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW":
                    symbols.append((int(parts[0], 16), parts[2]))
    except (OSError, ValueError):
        return []
    symbols.sort()
    out = []
    for i, (addr, name) in enumerate(symbols):
        if name in _KMALLOC_INLINERS and addr:
            following = [a for a, _ in symbols[i + 1:i + 64] if a > addr]
            if following:
                out.append((addr, following[0]))
    return out[:_MAX_KMALLOC_RANGES]


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
        d["MT_OFF_CGROUP_ROOT"] = btf.member_offset("cgroup", "root")
        d["MT_OFF_CGROUP_ROOT_HIERARCHY_ID"] = btf.member_offset("cgroup_root", "hierarchy_id")
        features.add("MT_HAVE_MEMCG")
    except BtfError as e:
        notes.append(f"memory cgroups: {e}")

    try:
        d["MT_OFF_MEMCG_CSS"] = btf.member_offset("mem_cgroup", "css")
        d["MT_OFF_MEMCG_MEMORY"] = btf.member_offset("mem_cgroup", "memory")
        d["MT_OFF_PAGE_COUNTER_USAGE"] = btf.member_offset("page_counter", "usage")
        d["MT_OFF_PAGE_COUNTER_MAX"] = btf.member_offset("page_counter", "max")
        d["MT_OFF_PAGE_COUNTER_PARENT"] = btf.member_offset("page_counter", "parent")
        if "MT_HAVE_MEMCG" in features:
            features.add("MT_HAVE_MEMCG_COUNTERS")
    except BtfError as e:
        notes.append(f"memory cgroup usage at the failure: {e}")

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

    try:
        d["MT_OFF_MEMCG_NODEINFO"] = btf.member_offset("mem_cgroup", "nodeinfo")
        d["MT_OFF_MEMCG_PER_NODE_LRUVEC"] = btf.member_offset("mem_cgroup_per_node", "lruvec")
        d["MT_OFF_LRUVEC_PGDAT"] = btf.member_offset("lruvec", "pgdat")
        d["MT_OFF_PGDAT_NODE_ZONES"] = btf.member_offset("pglist_data", "node_zones")
        d["MT_OFF_PGDAT_VM_STAT"] = btf.member_offset("pglist_data", "vm_stat")
        d["MT_SIZEOF_ZONE"] = btf.sizeof("zone")
        d["MT_OFF_ZONE_MANAGED_PAGES"] = btf.member_offset("zone", "managed_pages")
        d["MT_OFF_ZONE_WATERMARK"] = btf.member_offset("zone", "_watermark")
        d["MT_OFF_ZONE_WATERMARK_BOOST"] = btf.member_offset("zone", "watermark_boost")
        d["MT_OFF_ZONE_LOWMEM_RESERVE"] = btf.member_offset("zone", "lowmem_reserve")
        d["MT_OFF_ZONE_VM_STAT"] = btf.member_offset("zone", "vm_stat")
        d["MT_OFF_ZONE_FREE_AREA"] = btf.member_offset("zone", "free_area")
        d["MT_SIZEOF_FREE_AREA"] = btf.sizeof("free_area")
        d["MT_OFF_FREE_AREA_NR_FREE"] = btf.member_offset("free_area", "nr_free")
        d["MT_NR_ORDERS"] = btf.member_size("zone", "free_area") // btf.sizeof("free_area")
        for item in ("NR_FREE_PAGES", "NR_INACTIVE_FILE", "NR_ACTIVE_FILE",
                     "NR_SLAB_RECLAIMABLE_B", "NR_KERNEL_MISC_RECLAIMABLE", "WMARK_MIN",
                     "WMARK_LOW", "WMARK_HIGH"):
            d[f"MT_{item}"] = btf.enum_value(item)
        d["MT_NR_ZONES"] = min(btf.enum_value("__MAX_NR_ZONES"), 8)
        d["MT_NR_NODES"] = min(_possible_nodes(), _MAX_NODES)
        if _possible_nodes() > _MAX_NODES:
            notes.append(f"free memory at OOM kills covers the first {_MAX_NODES} NUMA nodes")
        features.add("MT_HAVE_ZONES")
    except BtfError as e:
        notes.append(f"free memory and watermarks at the failure: {e}")

    try:
        d["MT_OFF_TASK_FILES"] = btf.member_offset("task_struct", "files")
        d["MT_OFF_FILES_STRUCT_FDT"] = btf.member_offset("files_struct", "fdt")
        d["MT_OFF_FDTABLE_FD"] = btf.member_offset("fdtable", "fd")
        d["MT_OFF_FDTABLE_MAX_FDS"] = btf.member_offset("fdtable", "max_fds")
        d["MT_OFF_FILE_F_PATH"] = btf.member_offset("file", "f_path")
        d["MT_OFF_PATH_DENTRY"] = btf.member_offset("path", "dentry")
        d["MT_OFF_PATH_MNT"] = btf.member_offset("path", "mnt")
        d["MT_OFF_MOUNT_MNT"] = btf.member_offset("mount", "mnt")
        d["MT_OFF_MOUNT_MNT_PARENT"] = btf.member_offset("mount", "mnt_parent")
        d["MT_OFF_MOUNT_MNT_MOUNTPOINT"] = btf.member_offset("mount", "mnt_mountpoint")
        d["MT_OFF_VFSMOUNT_MNT_ROOT"] = btf.member_offset("vfsmount", "mnt_root")
        d["MT_OFF_DENTRY_D_PARENT"] = btf.member_offset("dentry", "d_parent")
        d["MT_OFF_DENTRY_D_NAME"] = btf.member_offset("dentry", "d_name")
        d["MT_OFF_QSTR_NAME"] = btf.member_offset("qstr", "name")
        d["MT_OFF_MM_EXE_FILE"] = btf.member_offset("mm_struct", "exe_file")
        d["MT_OFF_MM_START_CODE"] = btf.member_offset("mm_struct", "start_code")
        d["MT_OFF_MM_SAVED_AUXV"] = btf.member_offset("mm_struct", "saved_auxv")
        d["MT_AUXV_WORDS"] = min(btf.member_size("mm_struct", "saved_auxv") // 8, 64)
        features.add("MT_HAVE_FILE_PATHS")
    except BtfError as e:
        notes.append(f"naming the frames of processes that have exited: {e}")

    try:
        d["MT_OFF_TASK_FILES"] = btf.member_offset("task_struct", "files")
        d["MT_OFF_FILES_STRUCT_FDT"] = btf.member_offset("files_struct", "fdt")
        d["MT_OFF_FDTABLE_FD"] = btf.member_offset("fdtable", "fd")
        d["MT_OFF_FILE_F_INODE"] = btf.member_offset("file", "f_inode")
        d["MT_OFF_INODE_I_SB"] = btf.member_offset("inode", "i_sb")
        d["MT_OFF_SUPER_BLOCK_S_MAGIC"] = btf.member_offset("super_block", "s_magic")
        d["MT_OFF_SUPER_BLOCK_S_FS_INFO"] = btf.member_offset("super_block", "s_fs_info")
        d["MT_OFF_HUGETLBFS_SB_INFO_HSTATE"] = btf.member_offset("hugetlbfs_sb_info", "hstate")
        for member in ("nr_huge_pages", "free_huge_pages", "resv_huge_pages",
                       "surplus_huge_pages", "order"):
            d[f"MT_OFF_HSTATE_{member.upper()}"] = btf.member_offset("hstate", member)
        features.add("MT_HAVE_HUGETLB")
    except BtfError as e:
        notes.append(f"huge page pool at the failure: {e}")

    try:
        d["MT_OFF_MM_MT"] = btf.member_offset("mm_struct", "mm_mt")
        d["MT_OFF_MAPLE_TREE_ROOT"] = btf.member_offset("maple_tree", "ma_root")
        d["MT_OFF_MAPLE_RANGE64_PIVOT"] = btf.member_offset("maple_range_64", "pivot")
        d["MT_OFF_MAPLE_RANGE64_SLOT"] = btf.member_offset("maple_range_64", "slot")
        d["MT_OFF_MAPLE_ARANGE64_PIVOT"] = btf.member_offset("maple_arange_64", "pivot")
        d["MT_OFF_MAPLE_ARANGE64_SLOT"] = btf.member_offset("maple_arange_64", "slot")
        d["MT_MAPLE_RANGE64_PIVOTS"] = btf.member_size("maple_range_64", "pivot") // 8
        d["MT_MAPLE_ARANGE64_PIVOTS"] = btf.member_size("maple_arange_64", "pivot") // 8
        for kind in ("maple_leaf_64", "maple_range_64", "maple_arange_64"):
            d[f"MT_{kind.upper()}"] = btf.enum_value(kind)
        d["MT_OFF_VMA_VM_START"] = btf.member_offset("vm_area_struct", "vm_start")
        d["MT_OFF_VMA_VM_END"] = btf.member_offset("vm_area_struct", "vm_end")
        if d["MT_MAPLE_RANGE64_PIVOTS"] <= 15 and d["MT_MAPLE_ARANGE64_PIVOTS"] <= 15:
            features.add("MT_HAVE_MAPLE")
    except BtfError as e:
        notes.append(f"whether a range was mapped at the failure: {e}")

    try:
        # growth tracking: where a sampled page is mapped, read from the page (its folio) and
        # its anon_vma's interval tree of mappings (bpf/memtrace.bpf.c, MT_PROBE_GROWTH)
        d["MT_OFF_FOLIO_MAPPING"] = btf.member_offset("folio", "mapping")
        d["MT_OFF_FOLIO_INDEX"] = btf.member_offset("folio", "index")
        d["MT_OFF_FOLIO_REFCOUNT"] = btf.member_offset("folio", "_refcount")
        d["MT_OFF_ANON_VMA_RB_NODE"] = (btf.member_offset("anon_vma", "rb_root")
                                        + btf.member_offset("rb_root_cached", "rb_root")
                                        + btf.member_offset("rb_root", "rb_node"))
        d["MT_OFF_AVC_VMA"] = btf.member_offset("anon_vma_chain", "vma")
        d["MT_OFF_AVC_RB"] = btf.member_offset("anon_vma_chain", "rb")
        d["MT_OFF_RB_LEFT"] = btf.member_offset("rb_node", "rb_left")
        d["MT_OFF_RB_RIGHT"] = btf.member_offset("rb_node", "rb_right")
        d["MT_OFF_VMA_VM_START"] = btf.member_offset("vm_area_struct", "vm_start")
        d["MT_OFF_VMA_VM_END"] = btf.member_offset("vm_area_struct", "vm_end")
        d["MT_OFF_VMA_VM_PGOFF"] = btf.member_offset("vm_area_struct", "vm_pgoff")
        d["MT_OFF_VMA_VM_MM"] = btf.member_offset("vm_area_struct", "vm_mm")
        growth_offsets = True
    except BtfError as e:
        growth_offsets = False
        notes.append(f"growth tracking (what an OOM kill's victim grew): {e}")

    if have_task_pt_regs is None:
        have_task_pt_regs = _kallsyms_has("bpf_task_pt_regs") and _kallsyms_has(
            "bpf_get_current_task_btf")
    if have_task_pt_regs:
        features.add("MT_HAVE_TASK_PT_REGS")
        if growth_offsets:
            features.add("MT_HAVE_GROWTH")
    else:
        notes.append("no bpf_task_pt_regs helper: kernel failures are linked to syscalls by "
                     "thread and time only, and growth is not tracked")

    ranges = kmalloc_ranges()
    for i, (lo, hi) in enumerate(ranges):
        d[f"MT_KMALLOC_LO{i}"], d[f"MT_KMALLOC_HI{i}"] = lo, hi
    if not ranges:
        notes.append("kmalloc failures above the largest slab may be counted twice "
                     "(the allocator's addresses are hidden)")

    gfp_bits = btf.enumerators("___GFP_")
    zones = {v: _ZONE_NAMES[k] for k, v in btf.enumerators("ZONE_").items() if k in _ZONE_NAMES}
    return Layout(d, frozenset(features), gfp_bits, tuple(notes), zones)


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


def cflags(layout: Layout, options: BuildOptions, self_tgid: Optional[int] = None) -> list[str]:
    """Flags for bpf/memtrace.bpf.c: the failure tracer. `self_tgid`, memtrace's own process,
    compiles in mt_discover (kernel pointers found through memtrace's own files at start)."""
    defines = dict(layout.defines)
    if self_tgid is not None:
        defines["MT_SELF_TGID"] = self_tgid
    defines.update(_syscall_numbers(_SYSCALLS))
    gfp = decoders.GfpDecoder(layout.gfp_bits) if layout.gfp_bits else decoders.GfpDecoder.default()
    defines["MT_GFP_OPPORTUNISTIC_MASK"] = gfp.mask("__GFP_NOWARN") | gfp.mask("__GFP_NORETRY")
    # user pages (GFP_HIGHUSER_MOVABLE, transparent huge pages): growth tracking's sampler
    defines["MT_GFP_USER_MOVABLE"] = gfp.mask("__GFP_HARDWALL") | gfp.mask("__GFP_MOVABLE")
    if options.ringbuf_pages:
        defines["MT_RINGBUF_PAGES"] = options.ringbuf_pages
    if options.counter_entries:
        defines["MT_COUNTER_ENTRIES"] = options.counter_entries
    if options.stack_entries:
        defines["MT_STACK_ENTRIES"] = options.stack_entries
    defines.update(options.extra)
    switches = sorted(layout.features) + [f"MT_PROBE_{f}" for f in sorted(options.families)]
    return _flags(defines, switches)


@dataclass(frozen=True)
class CgroupFilter:
    """`leaks --all --cgroup`: the cgroup whose tree is traced. A memory cgroup (v1, or v2 with
    the memory controller) is matched by its kernfs id against the task's memory cgroup and
    its ancestors (`css_parent_offset`: cgroup_subsys_state.parent, from BTF); a v2 cgroup
    without the memory controller by its id at `v2_level` of the v2 hierarchy."""

    cgroup_id: int
    v2_level: int = 0  # 0: a memory cgroup, matched through the memory css chain
    css_parent_offset: Optional[int] = None


def leak_cflags(layout: Layout, pids: Sequence[int], mode: str, *,
                sample_bytes: Optional[int] = None, sample: int = 1, min_size: int = 0,
                max_size: Optional[int] = None, all_processes: bool = False,
                self_tgid: Optional[int] = None, cgroup: Optional[CgroupFilter] = None
                ) -> list[str]:
    """Flags for bpf/leaks.bpf.c: the leak profiler of up to 4 processes, or of every
    process on the host (`all_processes`, growth mode only, optionally under `cgroup`)."""
    defines = dict(layout.defines)
    defines.update(_syscall_numbers(("mmap", "munmap", "mremap", "brk", "madvise")))
    for i in range(4):
        defines[f"LK_PID{i}"] = pids[i] if i < len(pids) and not all_processes else 0
    if all_processes:
        defines["LK_ALL"] = 1
        defines["LK_SELF_TGID"] = self_tgid or 0
        # a host's samples come in bursts (a build, a batch job): 16 MiB, ~2,000 of them
        defines["LK_RINGBUF_PAGES"] = 4096
    if cgroup is not None:
        defines["LK_CGROUP_ID"] = cgroup.cgroup_id
        defines["LK_CGROUP_V2_LEVEL"] = cgroup.v2_level
        if cgroup.css_parent_offset is not None:
            defines["LK_OFF_CSS_PARENT"] = cgroup.css_parent_offset
    if sample_bytes is not None:
        defines["LK_SAMPLE_BYTES"] = sample_bytes
    defines["LK_SAMPLE"] = sample
    defines["LK_MIN_SIZE"] = min_size
    if max_size is not None:
        defines["LK_MAX_SIZE"] = max_size
    switches = ["LK_MODE_GROWTH" if mode == "growth" else "LK_MODE_MALLOC"]
    if "MT_HAVE_MEMCG" in layout.features:
        switches.append("MT_HAVE_MEMCG")  # the task's memory cgroup on sampled events
    return _flags(defines, switches)
