/* memtrace.h: every event, key and value shared between the BPF programs and
 * user space (mirrored field by field in tracer/abi.py; a root test compares the
 * two against what bcc compiled). Fixed-width types only. */
#ifndef MEMTRACE_H
#define MEMTRACE_H

/* ---- sizing bounds: each can be overridden with -D by tracer/config.py ---- */

/* Ring buffer for per-event detail, in pages. 64 pages = 256 KiB carries about
 * 700 events of MT_EVENT_SIZE; failures are rare, and a burst that overflows it
 * loses detail, never totals (those live in the counter maps). */
#ifndef MT_RINGBUF_PAGES
#define MT_RINGBUF_PAGES 64
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

/* Kernel failures remembered per thread and attached to its failing syscall. */
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

#ifndef MT_PAGE_SIZE
#define MT_PAGE_SIZE 4096
#endif

#define MT_COMM_LEN 16
#define MT_NAME_LEN 32   /* slab cache name; kernel console line prefix */
#define MT_MSG_LEN 256   /* kernel console line captured for evidence (power of two) */

/* ---- event kinds ---- */
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

/* Kernel decision points (kf.order of a MT_KIND_DECISION record). */
#define MT_DECISION_OVERCOMMIT 1 /* __vm_enough_memory refused */
#define MT_DECISION_VM_LIMIT 2   /* may_expand_vm refused: RLIMIT_AS or RLIMIT_DATA */
#define MT_DECISION_MEMCG 3      /* try_charge_memcg failed: the cgroup limit */
#define MT_DECISION_MEMLOCK 4    /* mlock_future_ok refused: RLIMIT_MEMLOCK */

/* ---- event flags ---- */
#define MT_F_OPPORTUNISTIC 0x1  /* gfp allows failure with a fallback (__GFP_NOWARN/__GFP_NORETRY) */
#define MT_F_BRK 0x2            /* brk returned the old break: failure without an errno */
#define MT_F_IN_SYSCALL 0x4     /* kernel failure happened inside a syscall (nr, ip, sp known) */
#define MT_F_KTHREAD 0x8        /* kernel failure in a kernel thread */
#define MT_F_SLAB_CACHE 0x10    /* slab failure from kmem_cache_alloc (name is the cache) */

/* ---- drop reasons (index into the drops per-CPU array) ---- */
#define MT_DROP_RINGBUF 0        /* ring buffer full: an event's detail was lost */
#define MT_DROP_COUNTER_FULL 1   /* counter map full: a count was lost */
#define MT_DROP_PENDING_FULL 2   /* a thread had more than MT_MAX_LINKED kernel failures in one syscall */
#define MT_DROP_USER_STACK 3     /* user stack could not be captured */
#define MT_DROP_KERNEL_STACK 4   /* kernel stack could not be captured */
#define MT_DROP_MAX 5

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
	__u32 order;
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

/* Everything user space learns about one failure. */
struct mt_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns() */
	__u64 cgroup_id;        /* cgroup v2 id of the task (bpf_get_current_cgroup_id) */
	__u64 memcg_id;         /* kernfs id of the task's memory cgroup (v1 or v2), 0 if unknown */
	__u32 pid;              /* tgid */
	__u32 tid;
	__u32 kind;
	__u32 flags;
	__s64 syscall_nr;       /* -1 when not a syscall event */
	__s64 ret;              /* the syscall's return value */
	__u64 args[6];          /* the syscall's arguments, from its saved user registers */
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
	struct mt_kfail kf;     /* the kernel failure itself (kernel-side kinds) */
	struct mt_kfail linked[MT_MAX_LINKED];
	char msg[MT_MSG_LEN];   /* kernel console line (MT_KIND_KMSG) */
};

/* Exact syscall failure counts. */
struct mt_syscall_key {
	__u64 memcg_id;
	__u32 pid;
	__s32 syscall_nr;
	__u32 err;              /* positive errno; 0 for brk's silent failure */
	__u32 pad;
	char comm[MT_COMM_LEN];
};

/* Exact kernel-side failure counts. */
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

/* Per-thread kernel failures awaiting their syscall's return. */
struct mt_pending {
	__u32 n;
	__u32 pad;
	struct mt_kfail kf[MT_MAX_LINKED];
};

/* ======================= leak profiling (bpf/leaks.bpf.c) ======================= */

/* Bytes of user stack copied at an event, for DWARF unwinding in user space (as
 * perf --call-graph dwarf does). 8 KiB holds the frames of most call chains. */
#ifndef LK_STACK_BYTES
#define LK_STACK_BYTES 8192
#endif

/* Ring buffer for leak events (each carries a stack copy): 4 MiB = ~500 events. */
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

/* Growth mode samples one user write fault in LK_FAULT_PERIOD. */
#ifndef LK_FAULT_PERIOD
#define LK_FAULT_PERIOD 64
#endif

/* Malloc mode tracks one allocation in LK_SAMPLE (1 = every one: exact). */
#ifndef LK_SAMPLE
#define LK_SAMPLE 1
#endif

#define LK_EV_MMAP 1        /* anonymous mapping created: grows the process */
#define LK_EV_MUNMAP 2      /* range unmapped: shrinks */
#define LK_EV_MREMAP 3      /* mapping moved or resized */
#define LK_EV_BRK 4         /* heap grew (len > 0) */
#define LK_EV_BRK_SHRINK 5  /* heap shrank */
#define LK_EV_FAULT 6       /* sampled first touch of memory (weight = period x page) */
#define LK_EV_STACK 7       /* malloc mode: first allocation from a new stack key */
#define LK_EV_ALLOC_FAIL 8  /* an allocator returned NULL */
#define LK_EV_FORK 9        /* a traced process forked: child_pid is traced too */
#define LK_EV_EXEC 10       /* a traced process exec'd */
#define LK_EV_EXIT 11       /* a traced process exited */

#define LK_DROP_RINGBUF 0
#define LK_DROP_ALLOCS_FULL 1
#define LK_DROP_STACKS_FULL 2
#define LK_DROP_STACK_ID 3
#define LK_DROP_STACK_COPY 4
#define LK_DROP_MAX 5

/* Malloc mode's stack key: the frame-pointer stack id plus the return address at
 * the allocator's entry (the direct caller, which a frame-pointer walk from inside
 * malloc misses, and which tells call sites apart when frame pointers are absent). */
struct lk_key {
	__s32 stack_id;
	__u32 pid;
	__u64 caller;
};

struct lk_stats {
	__u64 bytes;    /* outstanding */
	__u64 count;    /* outstanding allocations */
	__u64 total;    /* allocations ever made from this key */
};

struct lk_alloc {
	__u64 size;
	__u64 ts_ns;
	struct lk_key key;
};

/* An allocator call in progress (between its uprobe and uretprobe). */
struct lk_entry {
	__u64 size;
	__u64 old_ptr;   /* realloc's block */
	__u64 memptr;    /* posix_memalign's out-parameter */
	struct lk_key key;
	__u32 fn;        /* which allocator function (user space's numbering) */
	__u32 pad;
};

struct lk_event {
	__u64 ts_ns;
	__u32 pid;
	__u32 tid;
	__u32 kind;
	__u32 stack_len;   /* valid bytes in stack[] */
	__u64 addr;
	__u64 len;
	__u64 old_addr;
	__u64 old_len;
	__u64 weight;      /* bytes this event stands for */
	__u64 ip;          /* user registers at the event */
	__u64 sp;
	__u64 bp;
	struct lk_key key;
	__u32 child_pid;
	__u32 fn;
	char comm[MT_COMM_LEN];
	__u8 stack[LK_STACK_BYTES];
};

#endif /* MEMTRACE_H */
