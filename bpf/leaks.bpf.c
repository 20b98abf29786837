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
 * struct offsets (MT_OFF_*) come from BTF as -D flags, like memtrace.bpf.c's. */
#include "memtrace.h"
#include "task.bpf.h"

#define LK_MAP_ANONYMOUS 0x20 /* MAP_ANONYMOUS of include/uapi/asm-generic/mman-common.h */
/* madvise advice that gives pages back (include/uapi/asm-generic/mman-common.h) */
#define LK_MADV_DONTNEED 4
#define LK_MADV_FREE 8
#define LK_MADV_REMOVE 9

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


static __always_inline u64 task_memcg_id_current(void)
{
	return css_cgroup_id(task_memcg_css((void *)bpf_get_current_task()));
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

static __always_inline u64 reg(void *regs, u64 off)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), regs + off);
	return v;
}

static __always_inline void fill_event(struct lk_event *e, u32 kind)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = 0;
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
}

/* An event that will carry a stack copy: the whole record. */
static __always_inline struct lk_event *new_event(u32 kind)
{
	struct lk_event *e = events.ringbuf_reserve(sizeof(struct lk_event));
	if (!e) {
		count_drop(LK_DROP_RINGBUF);
		return 0;
	}
	fill_event(e, kind);
	return e;
}

/* An event without a stack: the record up to stack[] (about 150 bytes, not 8 KiB). */
static __always_inline struct lk_event *new_small_event(u32 kind)
{
	struct lk_event *e = events.ringbuf_reserve(__builtin_offsetof(struct lk_event, stack));
	if (!e) {
		count_drop(LK_DROP_RINGBUF);
		return 0;
	}
	fill_event(e, kind);
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
	u32 len = 0;
	MT_COPY_STACK_TOP(e->stack, LK_STACK_BYTES, sp, len);
	e->stack_len = len;
	if (!len)
		count_drop(LK_DROP_STACK_COPY);
}

/* ---- process lifecycle: follow forks, report exec and exit ---- */

#ifdef LK_MODE_GROWTH
/* Each process's break, to tell brk growth from shrinking. */
BPF_TABLE("lru_hash", u32, u64, brk_last, LK_MAX_PROCESSES);
/* The address span of each process's sampled growth: only releases that overlap it can
 * take back sampled bytes, so only those are reported (and exec/exit only for processes
 * that have one). Kernel-side only. */
struct lk_span {
	u64 lo;
	u64 hi;
};
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
/* Bytes left until the next sample, per CPU (0: not drawn yet). A sample point is a
 * Poisson process over the bytes whatever thread they belong to (the exponential
 * distribution has no memory), so one countdown per CPU serves every thread on it. */
BPF_PERCPU_ARRAY(countdown, u64, 1);

/* (32 - log2(u)) in fixed point with LK_LOG_FRACTION_BITS fractional bits, u >= 1:
 * the integer part from the highest set bit, the fraction by repeated squaring of the
 * mantissa (one bit per step). BPF has no floating point. */
static __always_inline u64 neg_log2_fixed(u32 u)
{
	/* Branch-free, so the verifier walks one path, not one per bit. */
	u32 x = u, e = 0, s;
	s = (x >= (1U << 16)) << 4; x >>= s; e += s;
	s = (x >= (1U << 8)) << 3; x >>= s; e += s;
	s = (x >= (1U << 4)) << 2; x >>= s; e += s;
	s = (x >= (1U << 2)) << 1; x >>= s; e += s;
	e += x >> 1;
	u64 m = ((u64)u) << (31 - e); /* the mantissa in [1, 2) with 31 fractional bits */
	u64 frac = 0;
#pragma unroll
	for (int i = 0; i < LK_LOG_FRACTION_BITS; i++) {
		m = (m * m) >> 31; /* m < 2^32: the square fits in 64 bits; now m < 2^33 */
		u64 bit = m >> 32;  /* 1 when the square reached 2 */
		m >>= bit;
		frac = (frac << 1) | bit;
	}
	return ((u64)32 << LK_LOG_FRACTION_BITS) - (((u64)e << LK_LOG_FRACTION_BITS) | frac);
}

/* An exponentially distributed number of bytes with mean LK_SAMPLE_BYTES:
 * -ln(U) * mean = (32 - log2(u)) * ln 2 * mean for u uniform in [1, 2^32). */
static __always_inline u64 next_gap(void)
{
	u32 u = bpf_get_prandom_u32();
	if (!u)
		u = 1;
	u64 t = ((u64)LK_SAMPLE_BYTES * neg_log2_fixed(u)) >> LK_LOG_FRACTION_BITS;
	u64 gap = (t * LK_LN2_Q16) >> 16;
	return gap ? gap : 1;
}

/* Count n bytes against this CPU's countdown. Returns 0 when no sample point falls in
 * them, else the bytes the event stands for: LK_SAMPLE_BYTES for its first sample point
 * and, exactly, its bytes after that point (unbiased for exponential gaps; one sample
 * per event however large it is). */
static __always_inline u64 sample_bytes(u64 n)
{
	u32 zero = 0;
	u64 *left = countdown.lookup(&zero);
	if (!left || !n)
		return 0;
	u64 l = *left;
	if (!l)
		l = next_gap(); /* this CPU's first event */
	if (n < l) {
		*left = l - n;
		return 0;
	}
	*left = next_gap();
	return LK_SAMPLE_BYTES + (n - l);
}

/* After the sampler chose an event: is it ours (--cgroup), and remember its span. */
static __always_inline int accept_sample(u32 tgid, u64 lo, u64 hi)
{
#if LK_CGROUP_ID
	if (!in_chosen_cgroup())
		return 0;
#endif
	struct lk_span *s = sampled.lookup(&tgid);
	if (s) {
		if (lo < s->lo)
			s->lo = lo;
		if (hi > s->hi)
			s->hi = hi;
	} else {
		struct lk_span fresh = {lo, hi};
		sampled.update(&tgid, &fresh);
	}
	return 1;
}

/* A release of [lo, hi): worth reporting only if it overlaps the process's samples. */
static __always_inline int overlaps_samples(u32 tgid, u64 lo, u64 hi)
{
	struct lk_span *s = sampled.lookup(&tgid);
	return s && lo < s->hi && hi > s->lo;
}

static __always_inline struct lk_event *sampled_event(u32 kind, u64 weight)
{
	struct lk_event *e = new_event(kind);
	if (!e) {
		u64 key = ((bpf_get_current_pid_tgid() >> 32) << 1) | (kind != LK_EV_FAULT);
		u64 *n = lost.lookup(&key);
		if (n) {
			__sync_fetch_and_add(n, weight);
		} else {
			lost.update(&key, &weight);
		}
		return 0;
	}
	e->weight = weight;
	e->cgroup_id = task_memcg_id_current();
	return e;
}

static __always_inline void release(u32 kind, u32 tgid, u64 addr, u64 len)
{
	if (!overlaps_samples(tgid, addr, addr + len))
		return;
	struct lk_event *e = new_small_event(kind);
	if (!e)
		return;
	e->addr = addr;
	e->len = len;
	events.ringbuf_submit(e, 0);
}

/* sys_exit(struct pt_regs *regs, long ret): the syscalls that grow or shrink memory. */
int lk_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!LK_ALL && !is_target(tgid))
		return 0;
	void *regs = (void *)ctx->args[0];
	s64 nr = reg(regs, MT_OFF_REGS_ORIG_AX);
	if (nr != MT_NR_MMAP && nr != MT_NR_MUNMAP && nr != MT_NR_MREMAP && nr != MT_NR_BRK &&
	    nr != MT_NR_MADVISE)
		return 0; /* the common case on a busy host: one register read */
	if (LK_ALL && !is_target(tgid))
		return 0;
	long ret = ctx->args[1];
	struct lk_event *e;
	if (nr == MT_NR_MMAP) {
		if ((u64)ret >= (u64)-4095 || !(reg(regs, MT_OFF_REGS_R10) & LK_MAP_ANONYMOUS))
			return 0;
		u64 len = (reg(regs, MT_OFF_REGS_SI) + 4095) & ~4095ULL;
		u64 w = sample_bytes(len);
		if (!w || !accept_sample(tgid, ret, ret + len))
			return 0;
		e = sampled_event(LK_EV_MMAP, w);
		if (!e)
			return 0;
		e->addr = ret;
		e->len = len;
		snapshot(e, regs);
		events.ringbuf_submit(e, 0);
	} else if (nr == MT_NR_MUNMAP) {
		if (ret == 0)
			release(LK_EV_MUNMAP, tgid, reg(regs, MT_OFF_REGS_DI),
				(reg(regs, MT_OFF_REGS_SI) + 4095) & ~4095ULL);
	} else if (nr == MT_NR_MADVISE) {
		u64 advice = reg(regs, MT_OFF_REGS_DX);
		if (ret == 0 && (advice == LK_MADV_DONTNEED || advice == LK_MADV_FREE ||
				 advice == LK_MADV_REMOVE))
			release(LK_EV_MADVISE, tgid, reg(regs, MT_OFF_REGS_DI),
				(reg(regs, MT_OFF_REGS_SI) + 4095) & ~4095ULL);
	} else if (nr == MT_NR_MREMAP) {
		if ((u64)ret >= (u64)-4095)
			return 0;
		u64 old_addr = reg(regs, MT_OFF_REGS_DI);
		u64 old_len = (reg(regs, MT_OFF_REGS_SI) + 4095) & ~4095ULL;
		u64 len = (reg(regs, MT_OFF_REGS_DX) + 4095) & ~4095ULL;
		u64 w = len > old_len ? sample_bytes(len - old_len) : 0;
		if (w && accept_sample(tgid, ret, ret + len)) {
			e = sampled_event(LK_EV_MREMAP, w);
			if (!e)
				return 0;
			snapshot(e, regs);
		} else if (overlaps_samples(tgid, old_addr, old_addr + old_len)) {
			e = new_small_event(LK_EV_MREMAP); /* a move or shrink of sampled bytes */
			if (!e)
				return 0;
			struct lk_span *s = sampled.lookup(&tgid);
			if (s) { /* the moved samples now live at the new address */
				if ((u64)ret < s->lo)
					s->lo = ret;
				if ((u64)ret + len > s->hi)
					s->hi = ret + len;
			}
		} else {
			return 0;
		}
		e->old_addr = old_addr;
		e->old_len = old_len;
		e->addr = ret;
		e->len = len;
		events.ringbuf_submit(e, 0);
	} else if (nr == MT_NR_BRK) {
		u64 now = (u64)ret;
		u64 *last = brk_last.lookup(&tgid);
		if (!last) {
			brk_last.update(&tgid, &now); /* the first brk seen: the baseline */
			return 0;
		}
		u64 before = *last;
		if (now == before)
			return 0;
		*last = now;
		if (now < before) {
			release(LK_EV_BRK_SHRINK, tgid, now, before - now);
			return 0;
		}
		u64 w = sample_bytes(now - before);
		if (!w || !accept_sample(tgid, before, now))
			return 0;
		e = sampled_event(LK_EV_BRK, w);
		if (!e)
			return 0;
		e->addr = before;
		e->len = now - before;
		snapshot(e, regs);
		events.ringbuf_submit(e, 0);
	}
	return 0;
}

/* page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code):
 * a write fault is a page first touched (or copied on write): resident growth, one page
 * into the byte sampler. */
int lk_page_fault(struct bpf_raw_tracepoint_args *ctx)
{
	if (!(ctx->args[2] & 2))
		return 0; /* a read fault maps the zero page or page cache: no new memory */
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!is_target(tgid))
		return 0;
	u64 w = sample_bytes(MT_PAGE_SIZE);
	u64 addr = ctx->args[0] & ~((u64)MT_PAGE_SIZE - 1);
	if (!w || !accept_sample(tgid, addr, addr + MT_PAGE_SIZE))
		return 0;
	struct lk_event *e = sampled_event(LK_EV_FAULT, w);
	if (!e)
		return 0;
	e->addr = addr;
	e->len = MT_PAGE_SIZE;
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
