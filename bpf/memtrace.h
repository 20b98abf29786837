/* memtrace.h: every struct and constant that crosses between the BPF programs and
 * user space, for both of them: bpf/memtrace.bpf.c (the failure tracer) and
 * bpf/leaks.bpf.c (the leak profiler). Fixed-width types and explicit padding only.
 *
 * tracer/kernel/abi.py mirrors each struct with ctypes and reads each constant from
 * this file (never a second copy of a number); tests/bpf/test_abi.py compares every
 * mirror with the layout in the BTF bcc compiled, tests/unit/test_abi.py the constants.
 * Constants that are plain literals can be read by that parser: keep them so.
 *
 * Sizes marked "#ifndef" are defaults: tracer/kernel/build.py may pass -D flags. */
#ifndef MEMTRACE_H
#define MEMTRACE_H

/* ============================ shared by both programs ============================ */

/* The user-space page size the byte counts assume (x86_64, arm64's default). */
#ifndef MT_PAGE_SIZE
#define MT_PAGE_SIZE 4096
#endif
#ifndef MT_PAGE_SHIFT
#define MT_PAGE_SHIFT 12
#endif

/* TASK_COMM_LEN of include/linux/sched.h: what bpf_get_current_comm() fills. */
#define MT_COMM_LEN 16

/* ================= failure tracer (bpf/memtrace.bpf.c, tracer/kernel/failures.py) ================= */

/* ---- sizing bounds ---- */

/* Ring buffer for per-event detail, in pages. 128 pages = 512 KiB carries about 350
 * records of struct mt_event (about 1.4 KiB each), fewer where a copy of the user stack
 * follows one (a few per call site per second); failures are rare, a burst that overflows
 * it loses detail, never totals (those live in the counter maps). */
#ifndef MT_RINGBUF_PAGES
#define MT_RINGBUF_PAGES 128
#endif

/* Exact failure counters, one entry per (process, cgroup, syscall, errno) and per
 * (process, cgroup, kind, order, gfp). A full map is counted as a drop. */
#ifndef MT_COUNTER_ENTRIES
#define MT_COUNTER_ENTRIES 16384
#endif

/* Kernel failures waiting for the syscall they happen in to return (one entry per
 * thread inside such a syscall; LRU, so a thread that dies mid-syscall is evicted). */
#ifndef MT_PENDING_ENTRIES
#define MT_PENDING_ENTRIES 4096
#endif

/* Stack traces: user and kernel, deduplicated by bcc's stack map. */
#ifndef MT_STACK_ENTRIES
#define MT_STACK_ENTRIES 4096
#endif

/* Bytes of user stack copied at a failure, for unwinding with the binaries' CFI in user
 * space (code without frame pointers); the leak profiler's 8 KiB. */
#ifndef MT_USTACK_BYTES
#define MT_USTACK_BYTES 8192
#endif

/* Stack copies per call site (process and frame-pointer stack) per second: a storm of
 * failures from one place costs a few copies a second, the rest are counted as skipped
 * (MT_DROP_STACK_COPY_RATE) and keep their frame-pointer stack. */
#ifndef MT_USTACK_PER_SECOND
#define MT_USTACK_PER_SECOND 4
#endif

/* Call sites whose copy budget is tracked (LRU: the least recent is forgotten). */
#ifndef MT_USTACK_SITES
#define MT_USTACK_SITES 4096
#endif

/* Growth tracking (MT_PROBE_GROWTH, bpf/growth.bpf.h): its own ring buffer of struct
 * lk_event (a sampled first touch with its stack copy is about 8 KiB; a release, exec or exit
 * about 150 bytes). 1024 pages = 4 MiB = about 500 samples, LK_SAMPLE_BYTES each on average:
 * memtrace reads it every tenth of a second. It is mapped into memtrace twice (the kernel's
 * wrap-around mapping) and counts in its RSS. A full ring buffer loses samples' stacks, never
 * their bytes (counted per process in `growth_lost`); a lost release is counted as a drop. */
#ifndef MT_GROWTH_RINGBUF_PAGES
#define MT_GROWTH_RINGBUF_PAGES 1024
#endif

/* How long a sampled page may stay unmapped and held before the next sample on its CPU
 * gives up on it (a huge page is zeroed, a charge near a cgroup's limit reclaims, before the
 * page is mapped; until then a sample point moves on to the next user allocation). */
#ifndef MT_GROWTH_WAIT_NS
#define MT_GROWTH_WAIT_NS 50000000ULL
#endif

/* Steps of the walk down an anon_vma's tree of mappings that finds where a sampled page is
 * mapped (more: the page is placed where it would be had its mapping never moved). */
#define MT_GROWTH_TREE_STEPS 8

/* Kernel failures remembered per thread and attached to its failing syscall. A
 * power of two: the BPF code bounds its index with & (MT_MAX_LINKED - 1). */
#define MT_MAX_LINKED 4

/* A kernel failure older than this when its syscall fails is not linked to it. */
#ifndef MT_LINK_WINDOW_NS
#define MT_LINK_WINDOW_NS 10000000000ULL
#endif

/* A syscall return value at or above this may be a break address (brk's silent
 * failure check); below it (mmap_min_addr's usual 64 KiB) it cannot. */
#ifndef MT_MIN_BRK_ADDR
#define MT_MIN_BRK_ADDR 0x10000
#endif

/* Slab cache name kept with a failure (kmem_cache names are short: "kmalloc-4k"). */
#define MT_NAME_LEN 32
/* Kernel console line captured for evidence: the OOM constraint line fits. A power
 * of two: the BPF code bounds the copy's length with & (MT_MSG_LEN - 1). */
#define MT_MSG_LEN 256

/* ---- event kinds (mt_event.kind, mt_kfail.kind, mt_kfail_key.kind) ---- */
#define MT_KIND_SYSCALL 1
#define MT_KIND_PAGE_ALLOC 2
#define MT_KIND_SLAB 3
#define MT_KIND_VMALLOC 4
#define MT_KIND_PERCPU 5
#define MT_KIND_OOM_KILL 6
#define MT_KIND_MEMCG 7    /* produced in user space from cgroup counters */
#define MT_KIND_KMSG 8     /* a kernel console line that is evidence (OOM constraint, overcommit) */
#define MT_KIND_UNMAPPED_AREA 9 /* the search for a free virtual range failed: evidence only */
#define MT_KIND_DECISION 10 /* a kernel decision point said no (kretprobe): evidence only */
#define MT_KIND_CGROUP 11   /* a cgroup was made or renamed: its kernfs id and path (not a failure) */
#define MT_KIND_EXEC 12     /* a process exec'd: its executable, where it and its interpreter are */
#define MT_KIND_MAP 13      /* a file was mapped executable (a library): where, and its path */
#define MT_KIND_FORK 14     /* a process forked: the child starts with the parent's mappings */

/* Kernel decision points (kf.order of a MT_KIND_DECISION record). */
#define MT_DECISION_OVERCOMMIT 1 /* __vm_enough_memory refused */
#define MT_DECISION_VM_LIMIT 2   /* may_expand_vm refused: RLIMIT_AS or RLIMIT_DATA */
#define MT_DECISION_MEMCG 3      /* try_charge_memcg failed: the cgroup limit */
#define MT_DECISION_MEMLOCK 4    /* mlock_future_ok refused: RLIMIT_MEMLOCK */

/* ---- event flags (mt_event.flags, mt_kfail.flags) ---- */
#define MT_F_OPPORTUNISTIC 0x1  /* gfp allows failure with a fallback (__GFP_NOWARN/__GFP_NORETRY) */
#define MT_F_BRK 0x2            /* brk returned the old break: failure without an errno */
#define MT_F_IN_SYSCALL 0x4     /* kernel failure happened inside a syscall (nr, ip, sp known) */
#define MT_F_KTHREAD 0x8        /* kernel failure in a kernel thread */
#define MT_F_SLAB_CACHE 0x10    /* slab failure from kmem_cache_alloc (name is the cache) */
#define MT_F_TRUNCATED 0x20     /* msg[] was too short for the whole text (a cgroup path) */

/* ---- drop reasons (index into the failure tracer's drops per-CPU array) ---- */
#define MT_DROP_RINGBUF 0        /* ring buffer full: an event's detail was lost */
#define MT_DROP_COUNTER_FULL 1   /* counter map full: a count was lost */
#define MT_DROP_PENDING_FULL 2   /* a thread had more than MT_MAX_LINKED kernel failures in one syscall */
#define MT_DROP_USER_STACK 3     /* user stack could not be captured */
#define MT_DROP_KERNEL_STACK 4   /* kernel stack could not be captured */
#define MT_DROP_STACK_COPY_RATE 5 /* a user stack copy was skipped: its call site's budget was spent */
#define MT_DROP_STACK_COPY 6     /* not even 256 bytes of user stack could be copied */
#define MT_DROP_GROWTH_RINGBUF 7 /* growth ring buffer full: a sample's stack (not its bytes) or a release lost */
#define MT_DROP_GROWTH_STACK_COPY 8 /* a growth sample's user stack could not be copied */
#define MT_DROP_MAX 9

/* One kernel-side allocation failure (page, slab, vmalloc, percpu). Streamed on its
 * own when it is not opportunistic, and kept per thread so the syscall it happens
 * in can carry it. */
struct mt_kfail {
	__u64 ts_ns;
	__u64 size;          /* bytes asked for */
	__u64 user_ip;       /* the thread's user registers at the failure: */
	__u64 user_sp;       /*   they identify the syscall it happened in */
	__s64 syscall_nr;    /* orig_ax: the syscall in progress, -1 if none */
	__u32 kind;
	__u32 flags;
	__u32 order;         /* page order; the MT_DECISION_* of a MT_KIND_DECISION */
	__u32 gfp;
	__s32 migratetype;
	__s32 kernel_stack_id;
	char name[MT_NAME_LEN]; /* slab cache name */
};

/* The failing task's memory and limits at the moment of a syscall failure, so the
 * diagnosis does not depend on /proc after the process may have gone. Pages for
 * *_vm, bytes for rlimits (RLIM_INFINITY = ~0). */
struct mt_task_evidence {
	__u64 total_vm;
	__u64 data_vm;
	__u64 locked_vm;
	__u64 pinned_vm;
	__u64 def_flags;        /* VM_LOCKED here after mlockall(MCL_FUTURE) */
	__u64 rlim_as;
	__u64 rlim_data;
	__u64 rlim_memlock;
	__u64 cap_effective;    /* capability bits (CAP_IPC_LOCK lifts RLIMIT_MEMLOCK) */
	__s32 map_count;
	__u32 valid;            /* 1 when the task had an mm and the reads succeeded */
};

/* Levels of memory cgroups walked up from the task's own to find the limit nearest to
 * being hit (a parent's limit stops a child's charge as well). */
#define MT_MEMCG_LEVELS 8

/* The task's memory cgroup at the moment of the event, read in the kernel (the cgroup
 * may be gone by the time user space looks). Pages, from the `memory` page_counter (v1's
 * limit_in_bytes and v2's memory.max both live there). */
struct mt_memcg_evidence {
	__u64 usage;         /* pages charged to the task's own memory cgroup */
	__u64 max;           /* its limit in pages (PAGE_COUNTER_MAX: none) */
	__u64 limit_usage;   /* the cgroup, itself or an ancestor, with the least headroom: */
	__u64 limit_max;     /*   its usage and limit in pages, */
	__u64 limit_id;      /*   and its kernfs id */
	__u32 limit_level;   /* how many levels above the task's cgroup that one is (0: itself) */
	__u32 valid;         /* 1 when the reads succeeded */
};

/* Memory nodes and zones walked for the host's free memory and watermarks (the build
 * passes the running kernel's numbers; these bound them). */
#define MT_MAX_NODES 4
#define MT_MAX_ZONES 8
/* Zones (with pages) whose free blocks per order are kept, and the orders kept for each
 * (the build passes the running kernel's NR_PAGE_ORDERS, 11 on x86-64). */
#define MT_BLOCK_ZONES 8
#define MT_BLOCK_ORDERS 16
/* VMAs a range check follows, and levels of the VMA tree (maple tree) it descends: a
 * range over more mappings, or a tree deeper than this, is left unchecked. */
#define MT_RANGE_VMAS 8
#define MT_TREE_LEVELS 6

/* ---- what a struct mt_host_evidence holds (its flags) ---- */
#define MT_HOST_ZONES 0x1        /* free pages and watermarks (OOM kills, page failures) */
#define MT_HOST_HUGETLB 0x2      /* the default huge page pool */
#define MT_HOST_RANGE_CHECKED 0x4 /* the range syscall's [addr, addr+len) was checked... */
#define MT_HOST_RANGE_MAPPED 0x8 /*   ...and every page of it was mapped */

/* The third argument of memtrace's own fcntl(fd, F_GETFD, ...) that mt_discover answers
 * ("memtrace" in ASCII): no other program makes that call. */
#define MT_DISCOVER_MAGIC 0x6d656d7472616365

/* Slots of the `sys_tails` (the first two: mt_sys_exit's) and `tails` program arrays:
 * programs the probes tail-call (user space fills them), to keep the verifier's work per
 * program small and the common paths short. */
#define MT_TAIL_RANGE_CHECK 0    /* a range syscall's failure: was its range mapped? */
#define MT_TAIL_GROWTH_SYSCALL 1 /* growth's work at a memory syscall's exit */
#define MT_TAIL_GROWTH_PAGE 2    /* growth's sample (or a waiting one) at a user page */
#define MT_TAILS 3

/* Slots of the `globals` array: kernel pointers found once at start. */
#define MT_GLOBAL_HSTATE 0       /* the default huge page size's struct hstate */
#define MT_GLOBAL_MAX 1

/* Memory state that changes from one millisecond to the next, read in the kernel at the
 * failure. Pages; each group only when its flag is set. */
struct mt_host_evidence {
	__u64 free;            /* NR_FREE_PAGES of every zone */
	__u64 wmark_min;       /* the zones' watermarks, summed (boost included in low/high) */
	__u64 wmark_low;
	__u64 wmark_high;
	__u64 reserve;         /* totalreserve_pages: per zone, its largest lowmem_reserve + high */
	__u64 file;            /* active + inactive file pages of every node */
	__u64 reclaimable;     /* reclaimable slab and other kernel memory of every node */
	__u64 managed;         /* pages the page allocator manages */
	__u64 huge_total;      /* the default huge page pool: pages, */
	__u64 huge_free;       /*   free ones, */
	__u64 huge_reserved;   /*   reserved for mappings not yet faulted in, */
	__u64 huge_surplus;    /*   and surplus (overcommitted) ones */
	__u32 huge_order;      /* its page order (9: 2 MiB) */
	__u32 flags;           /* MT_HOST_* */
	/* MT_HOST_ZONES: the free blocks of each populated zone, per order (zone i is
	 * block_zone[i] = node << 4 | zone index, for i < block_zones), as /proc/buddyinfo
	 * shows them, read at the failure: after it, freed memory merges into big blocks again */
	__u32 block_zones;
	__u8 block_zone[MT_BLOCK_ZONES];
	__u32 blocks[MT_BLOCK_ZONES][MT_BLOCK_ORDERS];
	__u32 blocks_pad;
};

/* Everything user space learns about one failure: the `events` ring buffer's record. */
struct mt_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns() */
	__u64 cgroup_id;        /* cgroup v2 id of the task (bpf_get_current_cgroup_id) */
	__u64 memcg_id;         /* kernfs id of the task's memory cgroup (v1 or v2), 0 if unknown;
	                         * MT_KIND_CGROUP: the new cgroup's kernfs id */
	__u32 pid;              /* tgid */
	__u32 tid;
	__u32 kind;
	__u32 flags;
	__s64 syscall_nr;       /* -1 when not a syscall event */
	__s64 ret;              /* the syscall's return value */
	__u64 args[6];          /* the syscall's arguments, from its saved user registers;
	                         * MT_KIND_CGROUP: args[0] the hierarchy id (0 = cgroup v2) */
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	__u32 n_linked;         /* kernel failures inside this syscall, in linked[] */
	__u32 oom_uid;
	__u32 actor_tid;        /* the thread that was running (for an OOM kill: the killer) */
	__u32 pad;
	__u64 oom_total_vm;     /* pages */
	__u64 oom_rss;          /* pages: anon + file + shmem */
	char comm[MT_COMM_LEN];
	struct mt_task_evidence task; /* syscall failures */
	struct mt_memcg_evidence memcg; /* the memory cgroup of the task (OOM: the victim) */
	struct mt_host_evidence host; /* what changes fast: OOM kills, page and range failures */
	__u64 ustack_ip;        /* user registers at the failure, for unwinding the copy of the */
	__u64 ustack_sp;        /*   user stack that follows the event in its ring buffer record */
	__u64 ustack_bp;        /*   (struct mt_event_full); MT_KIND_EXEC/MAP/FORK: see below */
	__u32 ustack_len;       /* bytes of it (0: none; the frame-pointer stack is still there) */
	__u32 ustack_pad;
	struct mt_kfail kf;     /* the kernel failure itself (kernel-side kinds) */
	struct mt_kfail linked[MT_MAX_LINKED];
	char msg[MT_MSG_LEN];   /* kernel console line (MT_KIND_KMSG); cgroup path relative to
	                         * its hierarchy's root (MT_KIND_CGROUP) */
};

/* MT_KIND_EXEC: args[0] the executable's start_code, args[1] the interpreter's load
 * address (AT_BASE, 0 for a static executable); msg the executable's path.
 * MT_KIND_MAP: args[0] start, args[1] length, args[2] file offset; msg the file's path.
 * MT_KIND_FORK: args[0] the child's pid.
 * Paths in msg are their components, innermost first, each NUL-terminated (an empty one
 * ends them); relative to the root of the process's mount namespace; MT_F_TRUNCATED when
 * they did not fit. */

/* A ring buffer record with a copy of the user stack: the event, then ustack_len bytes
 * (records without one end after the event). */
struct mt_event_full {
	struct mt_event e;
	__u8 stack[MT_USTACK_BYTES];
};

/* Growth tracking's state on one CPU: the value of `growth_cpu` (kernel-side only; mirrored
 * so its layout is checked like the rest). The page allocator's program samples by bytes;
 * the page of a sample is not mapped yet when it is allocated, so the sample waits here
 * until a later user page allocation on this CPU finds it mapped (or freed, or given to
 * something else than anonymous memory), and reads where it went. */
struct mt_growth_cpu {
	__u64 left;      /* bytes to the next sample point (0: not drawn yet) */
	__u64 page;      /* the waiting sample's struct page (0: none waits) */
	__u64 mm;        /* the mm_struct of the process it was taken in */
};

/* Exact syscall failure counts: the key of `syscall_counts` (value: __u64 count). */
struct mt_syscall_key {
	__u64 memcg_id;
	__u32 pid;
	__s32 syscall_nr;
	__u32 err;              /* positive errno; 0 for brk's silent failure */
	__u32 pad;
	char comm[MT_COMM_LEN];
};

/* Exact kernel-side failure counts: the key of `kfail_counts` (value: __u64 count). */
struct mt_kfail_key {
	__u64 memcg_id;
	__u32 pid;
	__u32 gfp;
	__u16 kind;
	__u16 order;
	__u16 opportunistic;
	__u16 pad;
	char comm[MT_COMM_LEN];
};

/* Per-thread kernel failures awaiting their syscall's return: the value of
 * `pending` (kernel-side only; mirrored so its layout is checked like the rest). */
struct mt_pending {
	__u32 n;
	__u32 pad;
	struct mt_kfail kf[MT_MAX_LINKED];
	struct mt_host_evidence host; /* read at the first page failure inside the syscall */
};

/* ================== leak profiler (bpf/leaks.bpf.c, tracer/kernel/leaks.py) ================== */

/* ---- what to trace: -D flags from tracer/kernel/build.py leak_cflags ---- */

/* The processes given with -p (0: unused slot); their children are followed. */
#ifndef LK_PID0
#define LK_PID0 0
#endif
#ifndef LK_PID1
#define LK_PID1 0
#endif
#ifndef LK_PID2
#define LK_PID2 0
#endif
#ifndef LK_PID3
#define LK_PID3 0
#endif

/* 1: every process on the host (memtrace leaks --all), new ones included, except
 * memtrace itself (LK_SELF_TGID); the -p slots are then unused. */
#ifndef LK_ALL
#define LK_ALL 0
#endif
#ifndef LK_SELF_TGID
#define LK_SELF_TGID 0
#endif

/* --all --cgroup: only tasks in this cgroup or below it (0: no filter). With
 * LK_CGROUP_V2_LEVEL 0 the id is a memory cgroup's kernfs id (v1 or v2), compared with
 * the task's memory cgroup and up to LK_CGROUP_LEVELS of its ancestors; above 0, it is a
 * cgroup v2 id at that depth of the v2 hierarchy (a v2 cgroup without the memory
 * controller), compared with bpf_get_current_ancestor_cgroup_id(). */
#ifndef LK_CGROUP_ID
#define LK_CGROUP_ID 0
#endif
#ifndef LK_CGROUP_V2_LEVEL
#define LK_CGROUP_V2_LEVEL 0
#endif
#define LK_CGROUP_LEVELS 8

/* Malloc mode tracks only allocations with LK_MIN_SIZE <= size <= LK_MAX_SIZE. */
#ifndef LK_MIN_SIZE
#define LK_MIN_SIZE 0
#endif
#ifndef LK_MAX_SIZE
#define LK_MAX_SIZE 0xffffffffffffffffULL
#endif

/* Growth mode samples by bytes (a Poisson process over the bytes mapped and first
 * touched, as jemalloc and tcmalloc sample allocations): each CPU counts down an
 * exponentially distributed number of bytes with this mean, and the event whose bytes
 * reach zero is sampled, standing for LK_SAMPLE_BYTES plus its bytes past the sample
 * point (an unbiased estimate; tracer/model/leaks.py's PoissonSampler is the reference).
 * 1 samples (nearly) every event. At most 1 GiB: the draw's fixed-point product fits. */
#ifndef LK_SAMPLE_BYTES
#define LK_SAMPLE_BYTES 524288
#endif
#define LK_MAX_SAMPLE_BYTES 1073741824
/* Fractional bits of the fixed-point -log2 in the exponential draw, and ln 2 in that
 * fixed point (0.693147 * 65536). */
#define LK_LOG_FRACTION_BITS 16
#define LK_LN2_Q16 45426

/* Malloc mode tracks one allocation in LK_SAMPLE (1 = every one: exact). */
#ifndef LK_SAMPLE
#define LK_SAMPLE 1
#endif

/* ---- sizing bounds ---- */

/* Bytes of user stack copied at an event, for DWARF unwinding in user space (as
 * perf --call-graph dwarf does). 8 KiB holds the frames of most call chains. */
#ifndef LK_STACK_BYTES
#define LK_STACK_BYTES 8192
#endif

/* Ring buffer for leak events (a sampled event carries its stack copy: struct lk_event
 * is 8 KiB and more; releases, exec and exit carry only the part before the stack):
 * 1024 pages = 4 MiB = ~500 sampled events. */
#ifndef LK_RINGBUF_PAGES
#define LK_RINGBUF_PAGES 1024
#endif

/* Outstanding allocations tracked in malloc mode; a full map is counted as a drop. */
#ifndef LK_MAX_ALLOCS
#define LK_MAX_ALLOCS 262144
#endif

/* Distinct allocation stacks in malloc mode. */
#ifndef LK_MAX_STACKS
#define LK_MAX_STACKS 16384
#endif

/* Traced processes: the -p ones and every process they fork (one entry each in the
 * children map; a tree larger than this is followed in part). Also the size of the LRU
 * maps of growth mode (each process's break, the span of its sampled addresses): with
 * --all, a host with more processes growing at once loses the least recent ones' (a
 * break is learnt again at the next brk, a release outside the known span is missed). */
#ifndef LK_MAX_PROCESSES
#define LK_MAX_PROCESSES 4096
#endif

/* Threads inside an allocator call at one moment (between uprobe and uretprobe). */
#ifndef LK_MAX_INFLIGHT
#define LK_MAX_INFLIGHT 16384
#endif

/* ---- event kinds (lk_event.kind) ---- */
#define LK_EV_MMAP 1        /* sampled anonymous mapping: grows the mapped (virtual) size */
#define LK_EV_MUNMAP 2      /* range unmapped: shrinks */
#define LK_EV_MREMAP 3      /* mapping moved or resized */
#define LK_EV_BRK 4         /* sampled heap growth (brk) */
#define LK_EV_BRK_SHRINK 5  /* heap shrank */
#define LK_EV_FAULT 6       /* sampled first touch of memory (a write fault): resident growth */
#define LK_EV_STACK 7       /* malloc mode: first allocation from a new stack key */
#define LK_EV_ALLOC_FAIL 8  /* an allocator returned NULL */
#define LK_EV_FORK 9        /* a traced process forked: child_pid is traced too */
#define LK_EV_EXEC 10       /* a traced process exec'd */
#define LK_EV_EXIT 11       /* a traced process exited */
#define LK_EV_MADVISE 12    /* MADV_DONTNEED/FREE/REMOVE: pages released, mapping kept */

/* ---- drop reasons (index into the leak profiler's drops per-CPU array) ---- */
#define LK_DROP_RINGBUF 0      /* ring buffer full: an event (and its stack) was lost */
#define LK_DROP_ALLOCS_FULL 1  /* allocs map full: an allocation is not tracked */
#define LK_DROP_STACKS_FULL 2  /* stats map full: a new stack key is not counted */
#define LK_DROP_STACK_ID 3     /* frame-pointer stack id could not be taken */
#define LK_DROP_STACK_COPY 4   /* not even 256 bytes of user stack could be copied */
#define LK_DROP_MAX 5

/* ---- allocator functions (lk_entry.fn, lk_event.fn): the index of each in
 * ALLOCATORS of tracer/model/leaks.py (tests/unit/test_abi.py checks the order) ---- */
#define LK_FN_MALLOC 0
#define LK_FN_CALLOC 1
#define LK_FN_REALLOC 2
#define LK_FN_REALLOCARRAY 3
#define LK_FN_POSIX_MEMALIGN 4
#define LK_FN_ALIGNED_ALLOC 5
#define LK_FN_MEMALIGN 6
#define LK_FN_VALLOC 7
#define LK_FN_PVALLOC 8

/* Malloc mode's stack key: the frame-pointer stack id plus the return address at
 * the allocator's entry (the direct caller, which a frame-pointer walk from inside
 * malloc misses, and which tells call sites apart when frame pointers are absent).
 * The key of `stats`. */
struct lk_key {
	__s32 stack_id;
	__u32 pid;
	__u64 caller;
};

/* Outstanding memory of one stack key: the value of `stats`. */
struct lk_stats {
	__u64 bytes;    /* outstanding */
	__u64 count;    /* outstanding allocations */
	__u64 total;    /* allocations ever made from this key */
};

/* One outstanding allocation: the value of `allocs` (key: its address), read by
 * user space for --min-age. */
struct lk_alloc {
	__u64 size;
	__u64 ts_ns;
	struct lk_key key;
};

/* An allocator call in progress (between its uprobe and uretprobe): the value of
 * `inflight` (kernel-side only; mirrored so its layout is checked like the rest). */
struct lk_entry {
	__u64 size;
	__u64 old_ptr;   /* realloc's block */
	__u64 memptr;    /* posix_memalign's out-parameter */
	struct lk_key key;
	__u32 fn;        /* LK_FN_* */
	__u32 pad;
};

/* One leak-profiler event: the `events` ring buffer's record. Events without a stack
 * (releases, exec, exit, fork) are reserved without stack[]: the record ends there. */
struct lk_event {
	__u64 ts_ns;
	__u64 cgroup_id;   /* kernfs id of the task's memory cgroup (growth mode), 0 if unknown */
	__u32 pid;
	__u32 tid;
	__u32 kind;        /* LK_EV_* */
	__u32 stack_len;   /* valid bytes in stack[] */
	__u64 addr;
	__u64 len;
	__u64 old_addr;
	__u64 old_len;
	__u64 weight;      /* bytes this event stands for (sampled: the estimate) */
	__u64 ip;          /* user registers at the event */
	__u64 sp;
	__u64 bp;
	struct lk_key key;
	__u32 child_pid;
	__u32 fn;          /* LK_FN_* */
	char comm[MT_COMM_LEN];
	__u8 stack[LK_STACK_BYTES];
};

/* The address span of a process's sampled growth still outstanding: the value of growth
 * mode's `sampled` map (kernel-side only; mirrored so its layout is checked like the rest).
 * Only releases that overlap it can take back sampled bytes, so only those are reported.
 * Empty (lo > hi) once releases took back all of it: the entry stays, so the process's exit
 * is still reported. A release racing with another thread's sample can leave that one out. */
struct lk_span {
	__u64 lo;
	__u64 hi;
};

#endif /* MEMTRACE_H */
