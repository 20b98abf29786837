/* leaks.bpf.c: live leak profiling (memtrace leaks) of chosen processes (-p, their
 * children followed) or of every process on the host (--all, LK_ALL; --cgroup narrows
 * it to one cgroup's tree, LK_CGROUP_ID).
 *
 * Two modes, chosen with -D:
 * - LK_MODE_GROWTH: the events that grow a process, sampled by bytes (a Poisson process
 *   over the bytes, LK_SAMPLE_BYTES on average between samples, so the cost follows the
 *   bytes, not the call rate): first-touch write faults (resident growth) and anonymous
 *   mmap, mremap and brk growth (mapped growth), each sampled event with a copy of the
 *   user stack for DWARF unwinding in user space; the releases (munmap, brk shrink,
 *   madvise DONTNEED/FREE/REMOVE, mremap moves) of the processes that have samples, so
 *   user space can subtract them. Nothing on the allocator's fast path.
 * - LK_MODE_MALLOC: uprobes on the allocator; outstanding allocations by stack key,
 *   aggregated here; one stack copy per new key (-p only).
 * Both follow forks of the traced processes and report exec and exit.
 *
 * Every struct and constant user space reads (events, keys, drop reasons, allocator
 * numbers) and every size bound is in memtrace.h's leak profiler section. Kernel
 * struct offsets (MT_OFF_*) come from BTF as -D flags, like memtrace.bpf.c's. The growth
 * sampler, the events and the stack copies are bpf/growth.bpf.h's, shared with the failure
 * tracer's growth tracking (memtrace.bpf.c, MT_PROBE_GROWTH). */
#include "memtrace.h"
#include "task.bpf.h"
#ifdef LK_MODE_GROWTH
#define GROWTH_SAMPLING 1
#define GROWTH_MAPPED 1 /* mapped growth too: memtrace leaks reports both */
#endif
#include "growth.bpf.h"

BPF_RINGBUF_OUTPUT(events, LK_RINGBUF_PAGES);
BPF_HASH(children, u32, u8, LK_MAX_PROCESSES); /* traced processes beyond the -p ones */
BPF_ARRAY(child_count, u64, 1);
BPF_PERCPU_ARRAY(drops, u64, LK_DROP_MAX);

static __always_inline void count_drop(u32 reason)
{
	u64 *v = drops.lookup(&reason);
	if (v)
		*v += 1;
}

/* --cgroup: is the current task in the chosen cgroup or below it? */
static __always_inline int in_chosen_cgroup(void)
{
#if LK_CGROUP_V2_LEVEL > 0
	return bpf_get_current_ancestor_cgroup_id(LK_CGROUP_V2_LEVEL) == LK_CGROUP_ID;
#elif defined(MT_HAVE_MEMCG) && defined(LK_OFF_CSS_PARENT)
	void *css = task_memcg_css((void *)bpf_get_current_task());
#pragma unroll
	for (int i = 0; i < LK_CGROUP_LEVELS; i++) {
		if (!css)
			return 0;
		if (css_cgroup_id(css) == LK_CGROUP_ID)
			return 1;
		css = read_ptr(css, LK_OFF_CSS_PARENT);
	}
	return 0;
#else
	return 0; /* user space refuses --cgroup without the offsets */
#endif
}

/* Is tgid traced? -p: one of the chosen processes or a child of theirs; --all: any
 * process but memtrace (the --cgroup check comes later, on sampled events only). */
static __always_inline int is_target(u32 tgid)
{
#if LK_ALL
	return tgid != LK_SELF_TGID && tgid != 0;
#else
	if (LK_PID0 && tgid == LK_PID0)
		return 1;
	if (LK_PID1 && tgid == LK_PID1)
		return 1;
	if (LK_PID2 && tgid == LK_PID2)
		return 1;
	if (LK_PID3 && tgid == LK_PID3)
		return 1;
	u32 zero = 0;
	u64 *n = child_count.lookup(&zero);
	if (!n || !*n)
		return 0;
	return children.lookup(&tgid) != 0;
#endif
}

/* bpf/growth.bpf.h's record and stack-copy helpers, on this program's ring buffer. */
static __always_inline struct lk_event *growth_reserve(u32 bytes)
{
	struct lk_event *e = events.ringbuf_reserve(bytes);
	if (!e)
		count_drop(LK_DROP_RINGBUF);
	return e;
}

static __always_inline void growth_stack_dropped(void)
{
	count_drop(LK_DROP_STACK_COPY);
}

/* ---- process lifecycle: follow forks, report exec and exit ---- */

#ifdef LK_MODE_GROWTH
/* Each process's break, to tell brk growth from shrinking. */
BPF_TABLE("lru_hash", u32, u64, brk_last, LK_MAX_PROCESSES);
/* The address span of each process's sampled growth (struct lk_span): exec/exit are
 * reported only for processes that have one. */
BPF_TABLE("lru_hash", u32, struct lk_span, sampled, LK_MAX_PROCESSES);
/* Sampled bytes whose event the full ring buffer refused, per process: key tgid << 1, | 1
 * for mapped growth (else resident). The detail is lost, the process's total is not. */
BPF_TABLE("lru_hash", u64, u64, lost, LK_MAX_PROCESSES);
#endif

/* Does this process have sampled growth user space must hear about (growth mode), or is
 * it a traced one (malloc mode)? */
static __always_inline int worth_reporting(u32 tgid)
{
#ifdef LK_MODE_GROWTH
	if (LK_ALL)
		return is_target(tgid) && sampled.lookup(&tgid) != 0;
#endif
	return is_target(tgid);
}

/* sched_process_fork(struct task_struct *parent, struct task_struct *child) */
int lk_fork(struct bpf_raw_tracepoint_args *ctx)
{
	if (LK_ALL)
		return 0; /* every process is traced already */
	u32 parent = 0, child = 0;
	bpf_probe_read_kernel(&parent, 4, (void *)ctx->args[0] + MT_OFF_TASK_TGID);
	bpf_probe_read_kernel(&child, 4, (void *)ctx->args[1] + MT_OFF_TASK_TGID);
	if (parent == child || !is_target(parent))
		return 0; /* a new thread, or not ours */
	u8 one = 1;
	if (children.update(&child, &one) == 0) {
		u32 zero = 0;
		u64 *n = child_count.lookup(&zero);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
	struct lk_event *e = new_small_event(LK_EV_FORK);
	if (!e)
		return 0;
	e->child_pid = child;
	events.ringbuf_submit(e, 0);
	return 0;
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
int lk_exec(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	int report = worth_reporting(tgid);
#ifdef LK_MODE_GROWTH
	/* a new image: a new heap, and nothing sampled in it yet */
	brk_last.delete(&tgid);
	sampled.delete(&tgid);
#endif
	if (!report)
		return 0;
	struct lk_event *e = new_small_event(LK_EV_EXEC);
	if (e)
		events.ringbuf_submit(e, 0);
	return 0;
}

/* sched_process_exit(struct task_struct *p, bool group_dead) */
int lk_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	if (tgid != (u32)pid_tgid)
		return 0; /* only the process's main thread ends it */
	int report = worth_reporting(tgid);
#ifdef LK_MODE_GROWTH
	brk_last.delete(&tgid);
	sampled.delete(&tgid);
	u64 lost_key = (u64)tgid << 1;
	lost.delete(&lost_key);
	lost_key |= 1;
	lost.delete(&lost_key);
#endif
	if (!report)
		return 0;
	struct lk_event *e = new_small_event(LK_EV_EXIT);
	if (e)
		events.ringbuf_submit(e, 0);
	return 0;
}

/* ======================================================================== */
#ifdef LK_MODE_GROWTH
/* Bytes left until the next sample, per CPU (0: not drawn yet). */
BPF_PERCPU_ARRAY(countdown, u64, 1);

/* bpf/growth.bpf.h's sampler state, in this program's maps. */
static __always_inline u64 *growth_countdown(void)
{
	u32 zero = 0;
	return countdown.lookup(&zero);
}

static __always_inline struct lk_span *growth_span(u32 tgid)
{
	return sampled.lookup(&tgid);
}

static __always_inline void growth_span_new(u32 tgid, struct lk_span *s)
{
	sampled.update(&tgid, s);
}

static __always_inline u64 *growth_break(u32 tgid)
{
	return brk_last.lookup(&tgid);
}

static __always_inline void growth_break_new(u32 tgid, u64 brk)
{
	brk_last.update(&tgid, &brk);
}

static __always_inline void growth_submit(struct lk_event *e)
{
	events.ringbuf_submit(e, 0);
}

static __always_inline void growth_lost(u64 key, u64 bytes)
{
	u64 *n = lost.lookup(&key);
	if (n)
		__sync_fetch_and_add(n, bytes);
	else
		lost.update(&key, &bytes);
}

/* --cgroup: only the chosen cgroup's tree (checked on sampled events only). */
static __always_inline int growth_wanted(void)
{
#if LK_CGROUP_ID
	return in_chosen_cgroup();
#else
	return 1;
#endif
}

/* sys_exit(struct pt_regs *regs, long ret): the syscalls that grow or shrink memory. */
int lk_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!LK_ALL && !is_target(tgid))
		return 0;
	void *regs = (void *)ctx->args[0];
	s64 nr = growth_reg(regs, MT_OFF_REGS_ORIG_AX);
	if (nr != MT_NR_MMAP && nr != MT_NR_MUNMAP && nr != MT_NR_MREMAP && nr != MT_NR_BRK &&
	    nr != MT_NR_MADVISE)
		return 0; /* the common case on a busy host: one register read */
	if (LK_ALL && !is_target(tgid))
		return 0;
	growth_syscall(regs, nr, ctx->args[1], tgid);
	return 0;
}

/* page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code) */
int lk_page_fault(struct bpf_raw_tracepoint_args *ctx)
{
	if (!(ctx->args[2] & 2))
		return 0; /* a read fault (the common case ends here, before the target check) */
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (is_target(tgid))
		growth_fault(ctx, tgid);
	return 0;
}
#endif /* LK_MODE_GROWTH */

/* ======================================================================== */
#ifdef LK_MODE_MALLOC
BPF_STACK_TRACE(stacks, LK_MAX_STACKS);
BPF_HASH(allocs, u64, struct lk_alloc, LK_MAX_ALLOCS);
BPF_HASH(stats, struct lk_key, struct lk_stats, LK_MAX_STACKS);
BPF_HASH(inflight, u32, struct lk_entry, LK_MAX_INFLIGHT); /* per thread, between entry and return */
BPF_ARRAY(failures, u64, 1);

static __always_inline void forget(u64 ptr);

static __always_inline int enter(struct pt_regs *ctx, u32 fn, u64 size, u64 old_ptr, u64 memptr)
{
	if (size < LK_MIN_SIZE || size > LK_MAX_SIZE) {
		if (old_ptr)
			forget(old_ptr); /* realloc to a size we do not track still frees the old block */
		return 0;
	}
#if LK_SAMPLE > 1
	if (bpf_get_prandom_u32() % LK_SAMPLE)
		return 0;
#endif
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct lk_entry en = {};
	en.size = size;
	en.old_ptr = old_ptr;
	en.memptr = memptr;
	en.fn = fn;
	en.key.pid = pid_tgid >> 32;
	en.key.stack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
	if (en.key.stack_id < 0)
		count_drop(LK_DROP_STACK_ID);
	bpf_probe_read_user(&en.key.caller, 8, (void *)growth_reg(ctx, MT_OFF_REGS_SP));
	inflight.update(&tid, &en);
	if (!stats.lookup(&en.key)) {
		/* A stack not seen yet: one copy of it, for DWARF unwinding in user space. */
		struct lk_event *e = new_event(LK_EV_STACK);
		if (e) {
			e->key = en.key;
			e->fn = fn;
			e->len = size;
			snapshot(e, ctx);
			events.ringbuf_submit(e, 0);
		}
	}
	return 0;
}

static __always_inline void forget(u64 ptr)
{
	struct lk_alloc *a = allocs.lookup(&ptr);
	if (!a)
		return;
	struct lk_stats *st = stats.lookup(&a->key);
	if (st) {
		__sync_fetch_and_add(&st->bytes, -a->size);
		__sync_fetch_and_add(&st->count, -1);
	}
	allocs.delete(&ptr);
}

static __always_inline int leave(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct lk_entry *en = inflight.lookup(&tid);
	if (!en)
		return 0;
	u64 ptr = growth_reg(ctx, MT_OFF_REGS_AX);
	if (en->fn == LK_FN_POSIX_MEMALIGN) {
		/* returns 0 or an errno; the block is in *memptr */
		if (ptr != 0) {
			ptr = 0;
		} else {
			bpf_probe_read_user(&ptr, sizeof(ptr), (void *)en->memptr);
		}
	}
	if (ptr == 0) {
		if (!en->size && en->old_ptr)
			forget(en->old_ptr); /* realloc(p, 0) frees p */
		if (en->size) {
			u32 zero = 0;
			u64 *n = failures.lookup(&zero);
			if (n)
				__sync_fetch_and_add(n, 1);
			struct lk_event *e = new_event(LK_EV_ALLOC_FAIL);
			if (e) {
				e->key = en->key;
				e->fn = en->fn;
				e->len = en->size;
				events.ringbuf_submit(e, 0);
			}
		}
		inflight.delete(&tid);
		return 0; /* a failure, never a leak; realloc's old block stays valid */
	}
	if (en->old_ptr)
		forget(en->old_ptr);
	struct lk_alloc a = {};
	a.size = en->size;
	a.ts_ns = bpf_ktime_get_ns();
	a.key = en->key;
	if (allocs.update(&ptr, &a) != 0) {
		count_drop(LK_DROP_ALLOCS_FULL);
		inflight.delete(&tid);
		return 0;
	}
	struct lk_stats *st = stats.lookup(&a.key);
	if (!st) {
		struct lk_stats zero = {};
		if (stats.update(&a.key, &zero) != 0) {
			count_drop(LK_DROP_STACKS_FULL);
			allocs.delete(&ptr);
			inflight.delete(&tid);
			return 0;
		}
		st = stats.lookup(&a.key);
		if (!st) {
			inflight.delete(&tid);
			return 0;
		}
	}
	__sync_fetch_and_add(&st->bytes, a.size);
	__sync_fetch_and_add(&st->count, 1);
	__sync_fetch_and_add(&st->total, 1);
	inflight.delete(&tid);
	return 0;
}

int lk_malloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_MALLOC, growth_reg(ctx, MT_OFF_REGS_DI), 0, 0);
}

int lk_calloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_CALLOC, growth_reg(ctx, MT_OFF_REGS_DI) * growth_reg(ctx, MT_OFF_REGS_SI), 0, 0);
}

int lk_realloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_REALLOC, growth_reg(ctx, MT_OFF_REGS_SI), growth_reg(ctx, MT_OFF_REGS_DI), 0);
}

int lk_reallocarray(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_REALLOCARRAY, growth_reg(ctx, MT_OFF_REGS_SI) * growth_reg(ctx, MT_OFF_REGS_DX),
		     growth_reg(ctx, MT_OFF_REGS_DI), 0);
}

int lk_posix_memalign(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_POSIX_MEMALIGN, growth_reg(ctx, MT_OFF_REGS_DX), 0,
		     growth_reg(ctx, MT_OFF_REGS_DI));
}

int lk_aligned_alloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_ALIGNED_ALLOC, growth_reg(ctx, MT_OFF_REGS_SI), 0, 0);
}

int lk_memalign(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_MEMALIGN, growth_reg(ctx, MT_OFF_REGS_SI), 0, 0);
}

int lk_valloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_VALLOC, growth_reg(ctx, MT_OFF_REGS_DI), 0, 0);
}

int lk_pvalloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_PVALLOC, growth_reg(ctx, MT_OFF_REGS_DI), 0, 0);
}

int lk_alloc_return(struct pt_regs *ctx)
{
	return leave(ctx);
}

int lk_free(struct pt_regs *ctx)
{
	u64 ptr = growth_reg(ctx, MT_OFF_REGS_DI);
	if (ptr)
		forget(ptr);
	return 0;
}
#endif /* LK_MODE_MALLOC */
