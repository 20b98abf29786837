/* leaks.bpf.c: live leak profiling of chosen processes (memtrace leaks).
 *
 * Two modes, chosen with -D:
 * - LK_MODE_GROWTH: the events that grow a process (anonymous mmap, mremap, brk,
 *   sampled first-touch faults) with a copy of the user stack for DWARF unwinding in
 *   user space; nothing on the allocator's fast path.
 * - LK_MODE_MALLOC: uprobes on the allocator; outstanding allocations by stack key,
 *   aggregated here; one stack copy per new key.
 * Both follow forks of the traced processes and report exec and exit.
 *
 * Every struct and constant user space reads (events, keys, drop reasons, allocator
 * numbers) and every size bound is in memtrace.h's leak profiler section. Kernel
 * struct offsets (MT_OFF_*) come from BTF as -D flags, like memtrace.bpf.c's. */
#include "memtrace.h"

#define LK_MAP_ANONYMOUS 0x20 /* MAP_ANONYMOUS of include/uapi/asm-generic/mman-common.h */

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

static __always_inline int is_target(u32 tgid)
{
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
}

static __always_inline u64 reg(void *regs, u64 off)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), regs + off);
	return v;
}

static __always_inline struct lk_event *new_event(u32 kind)
{
	struct lk_event *e = events.ringbuf_reserve(sizeof(struct lk_event));
	if (!e) {
		count_drop(LK_DROP_RINGBUF);
		return 0;
	}
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->kind = kind;
	e->stack_len = 0;
	e->addr = e->len = e->old_addr = e->old_len = e->weight = 0;
	e->ip = e->sp = e->bp = 0;
	e->key.stack_id = -1;
	e->key.pid = 0;
	e->key.caller = 0;
	e->child_pid = 0;
	e->fn = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return e;
}

/* The registers and the top of the user stack, for unwinding in user space. The
 * copy shrinks until it fits below the top of the stack mapping. */
static __always_inline void snapshot(struct lk_event *e, void *regs)
{
	e->ip = reg(regs, MT_OFF_REGS_IP);
	e->sp = reg(regs, MT_OFF_REGS_SP);
	e->bp = reg(regs, MT_OFF_REGS_BP);
	void *sp = (void *)e->sp;
	if (bpf_probe_read_user(e->stack, LK_STACK_BYTES, sp) == 0)
		e->stack_len = LK_STACK_BYTES;
	else if (bpf_probe_read_user(e->stack, LK_STACK_BYTES / 2, sp) == 0)
		e->stack_len = LK_STACK_BYTES / 2;
	else if (bpf_probe_read_user(e->stack, LK_STACK_BYTES / 4, sp) == 0)
		e->stack_len = LK_STACK_BYTES / 4;
	else if (bpf_probe_read_user(e->stack, LK_STACK_BYTES / 8, sp) == 0)
		e->stack_len = LK_STACK_BYTES / 8;
	else if (bpf_probe_read_user(e->stack, 256, sp) == 0)
		e->stack_len = 256;
	else
		count_drop(LK_DROP_STACK_COPY);
}

/* ---- process lifecycle: follow forks, report exec and exit ---- */

/* sched_process_fork(struct task_struct *parent, struct task_struct *child) */
int lk_fork(struct bpf_raw_tracepoint_args *ctx)
{
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
	struct lk_event *e = new_event(LK_EV_FORK);
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
	if (!is_target(tgid))
		return 0;
	struct lk_event *e = new_event(LK_EV_EXEC);
	if (e)
		events.ringbuf_submit(e, 0);
	return 0;
}

/* sched_process_exit(struct task_struct *p, bool group_dead) */
int lk_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	if (tgid != (u32)pid_tgid || !is_target(tgid))
		return 0; /* only the process's main thread ends it */
	struct lk_event *e = new_event(LK_EV_EXIT);
	if (e)
		events.ringbuf_submit(e, 0);
	return 0;
}

/* ======================================================================== */
#ifdef LK_MODE_GROWTH
BPF_HASH(brk_last, u32, u64, LK_MAX_PROCESSES); /* each traced process's break */
BPF_PERCPU_ARRAY(fault_tick, u64, 1);

/* sys_exit(struct pt_regs *regs, long ret): the syscalls that grow or shrink memory. */
int lk_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_target(tgid))
		return 0;
	void *regs = (void *)ctx->args[0];
	long ret = ctx->args[1];
	s64 nr = reg(regs, MT_OFF_REGS_ORIG_AX);
	struct lk_event *e;
	if (nr == MT_NR_MMAP) {
		if ((u64)ret >= (u64)-4095 || !(reg(regs, MT_OFF_REGS_R10) & LK_MAP_ANONYMOUS))
			return 0;
		e = new_event(LK_EV_MMAP);
		if (!e)
			return 0;
		e->addr = ret;
		e->len = (reg(regs, MT_OFF_REGS_SI) + 4095) & ~4095ULL;
		e->weight = e->len;
		snapshot(e, regs);
		events.ringbuf_submit(e, 0);
	} else if (nr == MT_NR_MUNMAP) {
		if (ret != 0)
			return 0;
		e = new_event(LK_EV_MUNMAP);
		if (!e)
			return 0;
		e->addr = reg(regs, MT_OFF_REGS_DI);
		e->len = (reg(regs, MT_OFF_REGS_SI) + 4095) & ~4095ULL;
		events.ringbuf_submit(e, 0);
	} else if (nr == MT_NR_MREMAP) {
		if ((u64)ret >= (u64)-4095)
			return 0;
		e = new_event(LK_EV_MREMAP);
		if (!e)
			return 0;
		e->old_addr = reg(regs, MT_OFF_REGS_DI);
		e->old_len = (reg(regs, MT_OFF_REGS_SI) + 4095) & ~4095ULL;
		e->addr = ret;
		e->len = (reg(regs, MT_OFF_REGS_DX) + 4095) & ~4095ULL;
		e->weight = e->len > e->old_len ? e->len - e->old_len : 0;
		snapshot(e, regs);
		events.ringbuf_submit(e, 0);
	} else if (nr == MT_NR_BRK) {
		u64 now = (u64)ret;
		u64 *last = brk_last.lookup(&tgid);
		if (!last) {
			brk_last.update(&tgid, &now);
			return 0;
		}
		u64 before = *last;
		if (now == before)
			return 0;
		*last = now;
		e = new_event(now > before ? LK_EV_BRK : LK_EV_BRK_SHRINK);
		if (!e)
			return 0;
		e->addr = now > before ? before : now;
		e->len = now > before ? now - before : before - now;
		e->weight = now > before ? e->len : 0;
		if (now > before)
			snapshot(e, regs);
		events.ringbuf_submit(e, 0);
	}
	return 0;
}

/* page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code):
 * one write fault in LK_FAULT_PERIOD, standing for that many pages first touched. */
int lk_page_fault(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_target(tgid) || !(ctx->args[2] & 2))
		return 0;
	u32 zero = 0;
	u64 *tick = fault_tick.lookup(&zero);
	if (!tick)
		return 0;
	*tick += 1;
	if (*tick % LK_FAULT_PERIOD)
		return 0;
	struct lk_event *e = new_event(LK_EV_FAULT);
	if (!e)
		return 0;
	e->addr = ctx->args[0];
	e->len = MT_PAGE_SIZE;
	e->weight = (u64)LK_FAULT_PERIOD * MT_PAGE_SIZE;
	snapshot(e, (void *)ctx->args[1]);
	events.ringbuf_submit(e, 0);
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
	bpf_probe_read_user(&en.key.caller, 8, (void *)reg(ctx, MT_OFF_REGS_SP));
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
	u64 ptr = reg(ctx, MT_OFF_REGS_AX);
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
	return enter(ctx, LK_FN_MALLOC, reg(ctx, MT_OFF_REGS_DI), 0, 0);
}

int lk_calloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_CALLOC, reg(ctx, MT_OFF_REGS_DI) * reg(ctx, MT_OFF_REGS_SI), 0, 0);
}

int lk_realloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_REALLOC, reg(ctx, MT_OFF_REGS_SI), reg(ctx, MT_OFF_REGS_DI), 0);
}

int lk_reallocarray(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_REALLOCARRAY, reg(ctx, MT_OFF_REGS_SI) * reg(ctx, MT_OFF_REGS_DX),
		     reg(ctx, MT_OFF_REGS_DI), 0);
}

int lk_posix_memalign(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_POSIX_MEMALIGN, reg(ctx, MT_OFF_REGS_DX), 0,
		     reg(ctx, MT_OFF_REGS_DI));
}

int lk_aligned_alloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_ALIGNED_ALLOC, reg(ctx, MT_OFF_REGS_SI), 0, 0);
}

int lk_memalign(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_MEMALIGN, reg(ctx, MT_OFF_REGS_SI), 0, 0);
}

int lk_valloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_VALLOC, reg(ctx, MT_OFF_REGS_DI), 0, 0);
}

int lk_pvalloc(struct pt_regs *ctx)
{
	return enter(ctx, LK_FN_PVALLOC, reg(ctx, MT_OFF_REGS_DI), 0, 0);
}

int lk_alloc_return(struct pt_regs *ctx)
{
	return leave(ctx);
}

int lk_free(struct pt_regs *ctx)
{
	u64 ptr = reg(ctx, MT_OFF_REGS_DI);
	if (ptr)
		forget(ptr);
	return 0;
}
#endif /* LK_MODE_MALLOC */
