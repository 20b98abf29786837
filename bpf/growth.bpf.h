/* growth.bpf.h: memory growth sampled by bytes, shared by bpf/leaks.bpf.c (`memtrace leaks`,
 * growth mode) and bpf/memtrace.bpf.c (MT_PROBE_GROWTH: what grew before an OOM kill, and what
 * grows now), so both send the same struct lk_event for the same growth.
 *
 * What it sees: first-touch write faults (resident growth), and with GROWTH_MAPPED anonymous
 * mmap, brk and mremap growth (mapped growth), sampled by bytes (a Poisson process over the
 * bytes, LK_SAMPLE_BYTES on average between samples: the cost follows the bytes, not the call
 * rate), each sampled event with a copy of the user stack for unwinding in user space; and the
 * releases (munmap, brk shrinking, madvise DONTNEED/FREE/REMOVE, mremap moves) that touch a
 * process's sampled addresses, so user space can take them back.
 *
 * bcc rewrites map calls (countdown.lookup()) in the main source file alone, so every map
 * access stays there: this header declares what it needs as prototypes, and the including
 * program defines them (after its maps). The lk_event helpers (fill_event, new_event,
 * new_small_event, snapshot) need growth_reserve and growth_stack_dropped; with
 * GROWTH_SAMPLING 1 the sampler and the hooks (growth_syscall, growth_fault) need the rest,
 * and GROWTH_MAPPED says whether mapped growth is sampled too (leaks) or not (the failure
 * tracer, which asks only what became resident). Constants (MT_NR_*, MT_OFF_REGS_*, LK_*)
 * and struct lk_span come from memtrace.h and the build's -D flags; it follows task.bpf.h. */
#ifndef MEMTRACE_GROWTH_BPF_H
#define MEMTRACE_GROWTH_BPF_H

/* A ring buffer record of `bytes`, or 0 (the including program counts it as a drop). */
static __always_inline struct lk_event *growth_reserve(u32 bytes);
/* Not even 256 bytes of user stack could be copied. */
static __always_inline void growth_stack_dropped(void);

static __always_inline u64 growth_reg(void *regs, u64 off)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), regs + off);
	return v;
}

static __always_inline u64 growth_pages(u64 len)
{
	return (len + MT_PAGE_SIZE - 1) & ~((u64)MT_PAGE_SIZE - 1);
}

/* ---- events ---- */

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
	struct lk_event *e = growth_reserve(sizeof(struct lk_event));
	if (e)
		fill_event(e, kind);
	return e;
}

/* An event without a stack: the record up to stack[] (about 150 bytes, not 8 KiB). */
static __always_inline struct lk_event *new_small_event(u32 kind)
{
	struct lk_event *e = growth_reserve(__builtin_offsetof(struct lk_event, stack));
	if (e)
		fill_event(e, kind);
	return e;
}

/* The registers and the top of the user stack, for unwinding in user space. The
 * copy shrinks until it fits below the top of the stack mapping. */
static __always_inline void snapshot(struct lk_event *e, void *regs)
{
	e->ip = growth_reg(regs, MT_OFF_REGS_IP);
	e->sp = growth_reg(regs, MT_OFF_REGS_SP);
	e->bp = growth_reg(regs, MT_OFF_REGS_BP);
	void *sp = (void *)e->sp;
	u32 len = 0;
	MT_COPY_STACK_TOP(e->stack, LK_STACK_BYTES, sp, len);
	e->stack_len = len;
	if (!len)
		growth_stack_dropped();
}

#if GROWTH_SAMPLING
/* This CPU's bytes left to the next sample point (0: not drawn yet). */
static __always_inline u64 *growth_countdown(void);
/* The span of the process's sampled addresses, or 0; its first one. */
static __always_inline struct lk_span *growth_span(u32 tgid);
static __always_inline void growth_span_new(u32 tgid, struct lk_span *s);
/* The process's break at its last brk, or 0; its first one. */
static __always_inline u64 *growth_break(u32 tgid);
static __always_inline void growth_break_new(u32 tgid, u64 brk);
static __always_inline void growth_submit(struct lk_event *e);
/* Sampled bytes whose record the full ring buffer refused, by key (see sampled_event). */
static __always_inline void growth_lost(u64 key, u64 bytes);
/* Whether the current task's samples are wanted (a cgroup filter). */
static __always_inline int growth_wanted(void);

#define GROWTH_MAP_ANONYMOUS 0x20 /* MAP_ANONYMOUS of include/uapi/asm-generic/mman-common.h */
/* madvise advice that gives pages back (include/uapi/asm-generic/mman-common.h) */
#define GROWTH_MADV_DONTNEED 4
#define GROWTH_MADV_FREE 8
#define GROWTH_MADV_REMOVE 9

/* ---- the byte sampler ---- */

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

/* Count n bytes against a CPU's countdown (`left`). Returns 0 when no sample point falls in
 * them, else the bytes the event stands for: LK_SAMPLE_BYTES for its first sample point
 * and, exactly, its bytes after that point (unbiased for exponential gaps; one sample
 * per event however large it is). A sample point is a Poisson process over the bytes
 * whatever thread they belong to (the exponential distribution has no memory), so one
 * countdown per CPU serves every thread on it. */
static __always_inline u64 sample_bytes_at(u64 *left, u64 n)
{
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

static __always_inline u64 sample_bytes(u64 n)
{
	return sample_bytes_at(growth_countdown(), n);
}

/* ---- the span of each process's samples ---- */

/* After the sampler chose an event: is it wanted, and remember its span. */
static __always_inline int accept_sample(u32 tgid, u64 lo, u64 hi)
{
	if (!growth_wanted())
		return 0;
	struct lk_span *s = growth_span(tgid);
	if (s) {
		if (lo < s->lo)
			s->lo = lo;
		if (hi > s->hi)
			s->hi = hi;
	} else {
		struct lk_span fresh = {lo, hi};
		growth_span_new(tgid, &fresh);
	}
	return 1;
}

/* A release of [lo, hi): worth reporting only if it overlaps the process's samples. */
static __always_inline int overlaps_samples(u32 tgid, u64 lo, u64 hi)
{
	struct lk_span *s = growth_span(tgid);
	return s && lo < s->hi && hi > s->lo;
}

/* A sampled event's record, or 0 when the ring buffer is full: its bytes are then added to
 * the process's lost total (key tgid << 1, | 1 for mapped growth), so the detail is lost,
 * never the process's growth. */
static __always_inline struct lk_event *sampled_event(u32 kind, u64 weight)
{
	struct lk_event *e = new_event(kind);
	if (!e) {
		growth_lost(((bpf_get_current_pid_tgid() >> 32) << 1) | (kind != LK_EV_FAULT), weight);
		return 0;
	}
	e->weight = weight;
	e->cgroup_id = css_cgroup_id(task_memcg_css((void *)bpf_get_current_task()));
	return e;
}

/* A release of [addr, addr+len) that overlaps the process's samples: reported, and the span
 * narrowed when the release covers one of its ends (a process that maps, touches and unmaps
 * the same range over and over then reports one release per sample, not one per munmap).
 * `unmapped`: the range is gone; otherwise (madvise) its mapping stays, and so do samples of
 * its mapped growth, so the span is narrowed only when mapped growth is not sampled. */
static __always_inline void release(u32 kind, u32 tgid, u64 addr, u64 len, int unmapped)
{
	struct lk_span *s = growth_span(tgid);
	u64 end = addr + len;
	if (!s || addr >= s->hi || end <= s->lo)
		return;
	if (unmapped || !GROWTH_MAPPED) {
		if (addr <= s->lo && end >= s->hi) {
			s->lo = ~0ULL; /* nothing sampled is left: empty */
			s->hi = 0;
		} else if (addr <= s->lo) {
			s->lo = end;
		} else if (end >= s->hi) {
			s->hi = addr;
		}
	}
	struct lk_event *e = new_small_event(kind);
	if (!e)
		return;
	e->addr = addr;
	e->len = len;
	growth_submit(e);
}

/* ---- the hooks ---- */

/* A system call of tgid returned ret (nr from its saved registers): the calls that grow or
 * shrink memory. */
static __always_inline void growth_syscall(void *regs, s64 nr, long ret, u32 tgid)
{
	struct lk_event *e;
	if (nr == MT_NR_MUNMAP) {
		if (ret == 0)
			release(LK_EV_MUNMAP, tgid, growth_reg(regs, MT_OFF_REGS_DI),
				growth_pages(growth_reg(regs, MT_OFF_REGS_SI)), 1);
	} else if (nr == MT_NR_MADVISE) {
		u64 advice = growth_reg(regs, MT_OFF_REGS_DX);
		if (ret == 0 && (advice == GROWTH_MADV_DONTNEED || advice == GROWTH_MADV_FREE ||
				 advice == GROWTH_MADV_REMOVE))
			release(LK_EV_MADVISE, tgid, growth_reg(regs, MT_OFF_REGS_DI),
				growth_pages(growth_reg(regs, MT_OFF_REGS_SI)), 0);
	} else if (nr == MT_NR_MMAP) {
#if GROWTH_MAPPED
		if ((u64)ret >= (u64)-4095 ||
		    !(growth_reg(regs, MT_OFF_REGS_R10) & GROWTH_MAP_ANONYMOUS))
			return;
		u64 len = growth_pages(growth_reg(regs, MT_OFF_REGS_SI));
		u64 w = sample_bytes(len);
		if (!w || !accept_sample(tgid, ret, ret + len))
			return;
		e = sampled_event(LK_EV_MMAP, w);
		if (!e)
			return;
		e->addr = ret;
		e->len = len;
		snapshot(e, regs);
		growth_submit(e);
#endif
	} else if (nr == MT_NR_MREMAP) {
		if ((u64)ret >= (u64)-4095)
			return;
		u64 old_addr = growth_reg(regs, MT_OFF_REGS_DI);
		u64 old_len = growth_pages(growth_reg(regs, MT_OFF_REGS_SI));
		u64 len = growth_pages(growth_reg(regs, MT_OFF_REGS_DX));
		u64 w = 0;
#if GROWTH_MAPPED
		w = len > old_len ? sample_bytes(len - old_len) : 0;
#endif
		if (w && accept_sample(tgid, ret, ret + len)) {
			e = sampled_event(LK_EV_MREMAP, w);
			if (!e)
				return;
			snapshot(e, regs);
		} else if (overlaps_samples(tgid, old_addr, old_addr + old_len)) {
			e = new_small_event(LK_EV_MREMAP); /* a move or shrink of sampled bytes */
			if (!e)
				return;
			struct lk_span *s = growth_span(tgid);
			if (s) { /* the moved samples now live at the new address */
				if ((u64)ret < s->lo)
					s->lo = ret;
				if ((u64)ret + len > s->hi)
					s->hi = ret + len;
			}
		} else {
			return;
		}
		e->old_addr = old_addr;
		e->old_len = old_len;
		e->addr = ret;
		e->len = len;
		growth_submit(e);
	} else if (nr == MT_NR_BRK) {
		u64 now = (u64)ret;
		u64 *last = growth_break(tgid);
		if (!last) {
			growth_break_new(tgid, now); /* the first brk seen: the baseline */
			return;
		}
		u64 before = *last;
		if (now == before)
			return;
		*last = now;
		if (now < before) {
			release(LK_EV_BRK_SHRINK, tgid, now, before - now, 1);
			return;
		}
#if GROWTH_MAPPED
		u64 w = sample_bytes(now - before);
		if (!w || !accept_sample(tgid, before, now))
			return;
		e = sampled_event(LK_EV_BRK, w);
		if (!e)
			return;
		e->addr = before;
		e->len = now - before;
		snapshot(e, regs);
		growth_submit(e);
#endif
	}
}

/* page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code) of
 * tgid: a write fault is a page first touched (or copied on write), resident growth, one page
 * into the byte sampler. A read fault maps the zero page or page cache: no new memory. */
static __always_inline void growth_fault(struct bpf_raw_tracepoint_args *ctx, u32 tgid)
{
	if (!(ctx->args[2] & 2))
		return;
	u64 w = sample_bytes(MT_PAGE_SIZE);
	u64 addr = ctx->args[0] & ~((u64)MT_PAGE_SIZE - 1);
	if (!w || !accept_sample(tgid, addr, addr + MT_PAGE_SIZE))
		return;
	struct lk_event *e = sampled_event(LK_EV_FAULT, w);
	if (!e)
		return;
	e->addr = addr;
	e->len = MT_PAGE_SIZE;
	snapshot(e, (void *)ctx->args[1]);
	growth_submit(e);
}

#endif /* GROWTH_SAMPLING */

#endif /* MEMTRACE_GROWTH_BPF_H */
