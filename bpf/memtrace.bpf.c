/* memtrace.bpf.c: the failure tracer's BPF programs (`memtrace`), one section per
 * probe family, each compiled in when the probe plan (tracer/kernel/probes.py)
 * chose one of its probes, with -D MT_PROBE_<family>:
 *   MT_PROBE_SYSCALLS  failing syscalls (sys_exit)
 *   MT_PROBE_KMEM      kernel-side allocation failures (page, slab, vmalloc, percpu)
 *   MT_PROBE_OOM       OOM kills (mark_victim)
 *   MT_PROBE_KMSG      the kernel's console lines that are evidence (console)
 *   MT_PROBE_DECISIONS the kernel's decision points (kretprobes; needs MT_PROBE_KMEM)
 * The leak profiler is the other program, bpf/leaks.bpf.c.
 *
 * One file, not one per family: bcc rewrites map calls (events.ringbuf_reserve(),
 * syscall_counts.lookup()) and loads programs only in the main source file, so
 * families in #included files compile into indirect calls the verifier rejects. One
 * compile also lets the families share the ring buffer, counters and stack map.
 *
 * Every struct and constant user space reads is in memtrace.h. Kernel struct
 * layouts never come from headers: every offset below (MT_OFF_*) is taken from the
 * running kernel's BTF by tracer/kernel/build.py and passed as a -D flag. */
#include "memtrace.h"

/* ======================================================================== */
/* Shared by every family: kernel constants, maps, and the helpers that fill an
 * event, count a drop and read the task's memory cgroup and limits. */

#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EAGAIN
#define EAGAIN 11
#endif
#define MT_PF_KTHREAD 0x00200000 /* include/linux/sched.h: stable since 2.6 */

BPF_RINGBUF_OUTPUT(events, MT_RINGBUF_PAGES);
BPF_HASH(syscall_counts, struct mt_syscall_key, u64, MT_COUNTER_ENTRIES);
BPF_HASH(kfail_counts, struct mt_kfail_key, u64, MT_COUNTER_ENTRIES);
BPF_TABLE("lru_hash", u32, struct mt_pending, pending, MT_PENDING_ENTRIES);
BPF_STACK_TRACE(stacks, MT_STACK_ENTRIES);
BPF_PERCPU_ARRAY(drops, u64, MT_DROP_MAX);
/* Number of threads with kernel failures pending. While it is zero, a syscall
 * exit costs one array read; otherwise exits clear their thread's stale entry. */
BPF_ARRAY(armed, u64, 1);
BPF_PERCPU_ARRAY(scratch_pending, struct mt_pending, 1);
/* Never written: a block of zeroes to clear a reserved event with one helper call
 * (an inline memset of a whole event is too large for the compiler to unroll). */
BPF_ARRAY(zeroes, struct mt_event, 1);

static __always_inline void count_drop(u32 reason)
{
	u64 *v = drops.lookup(&reason);
	if (v)
		*v += 1;
}

static __always_inline void *read_ptr(void *base, u64 off)
{
	void *p = 0;
	bpf_probe_read_kernel(&p, sizeof(p), base + off);
	return p;
}

/* kernfs id of the task's memory cgroup: task->cgroups->subsys[memory]->cgroup->kn->id.
 * The same chain names the v1 memory cgroup on a hybrid host and the v2 cgroup on a
 * unified one. */
static __always_inline u64 task_memcg_id(void *task)
{
#ifdef MT_HAVE_MEMCG
	void *cset = read_ptr(task, MT_OFF_TASK_CGROUPS);
	if (!cset)
		return 0;
	void *css = read_ptr(cset, MT_OFF_CSS_SET_SUBSYS_MEMCG);
	if (!css)
		return 0;
	void *cgrp = read_ptr(css, MT_OFF_CSS_CGROUP);
	if (!cgrp)
		return 0;
	void *kn = read_ptr(cgrp, MT_OFF_CGROUP_KN);
	if (!kn)
		return 0;
	u64 id = 0;
	bpf_probe_read_kernel(&id, sizeof(id), kn + MT_OFF_KERNFS_NODE_ID);
	return id;
#else
	return 0;
#endif
}

static __always_inline void count_syscall(struct mt_syscall_key *key)
{
	u64 *v = syscall_counts.lookup(key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	u64 one = 1;
	if (syscall_counts.update(key, &one) != 0)
		count_drop(MT_DROP_COUNTER_FULL);
}

static __always_inline void count_kfail(struct mt_kfail_key *key)
{
	u64 *v = kfail_counts.lookup(key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	u64 one = 1;
	if (kfail_counts.update(key, &one) != 0)
		count_drop(MT_DROP_COUNTER_FULL);
}

static __always_inline int zero_event(struct mt_event *e)
{
	u32 zero = 0;
	struct mt_event *z = zeroes.lookup(&zero);
	if (!z)
		return -1;
	return bpf_probe_read_kernel(e, sizeof(*e), z);
}

/* Fill the fields every event has. */
static __always_inline void event_header(struct mt_event *e, void *task, u32 kind)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->memcg_id = task_memcg_id(task);
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->actor_tid = (u32)pid_tgid;
	e->kind = kind;
	e->syscall_nr = -1;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

/* The current task's memory and limits (offsets from BTF); only on failure paths. */
static __always_inline void task_evidence(void *task, struct mt_task_evidence *ev)
{
	void *mm = read_ptr(task, MT_OFF_TASK_MM);
	if (!mm)
		return;
	bpf_probe_read_kernel(&ev->total_vm, 8, mm + MT_OFF_MM_TOTAL_VM);
	bpf_probe_read_kernel(&ev->data_vm, 8, mm + MT_OFF_MM_DATA_VM);
	bpf_probe_read_kernel(&ev->locked_vm, 8, mm + MT_OFF_MM_LOCKED_VM);
	bpf_probe_read_kernel(&ev->pinned_vm, 8, mm + MT_OFF_MM_PINNED_VM);
	bpf_probe_read_kernel(&ev->def_flags, 8, mm + MT_OFF_MM_DEF_FLAGS);
	bpf_probe_read_kernel(&ev->map_count, 4, mm + MT_OFF_MM_MAP_COUNT);
	void *signal = read_ptr(task, MT_OFF_TASK_SIGNAL);
	if (signal) {
		bpf_probe_read_kernel(&ev->rlim_as, 8, signal + MT_OFF_SIGNAL_RLIM +
				      MT_RLIMIT_AS * MT_SIZEOF_RLIMIT + MT_OFF_RLIMIT_CUR);
		bpf_probe_read_kernel(&ev->rlim_data, 8, signal + MT_OFF_SIGNAL_RLIM +
				      MT_RLIMIT_DATA * MT_SIZEOF_RLIMIT + MT_OFF_RLIMIT_CUR);
		bpf_probe_read_kernel(&ev->rlim_memlock, 8, signal + MT_OFF_SIGNAL_RLIM +
				      MT_RLIMIT_MEMLOCK * MT_SIZEOF_RLIMIT + MT_OFF_RLIMIT_CUR);
	}
	void *cred = read_ptr(task, MT_OFF_TASK_CRED);
	if (cred)
		bpf_probe_read_kernel(&ev->cap_effective, 8, cred + MT_OFF_CRED_CAP_EFFECTIVE);
	ev->valid = 1;
}

static __always_inline s32 user_stack(void *ctx)
{
	int id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
	if (id < 0)
		count_drop(MT_DROP_USER_STACK);
	return id;
}

static __always_inline s32 kernel_stack(void *ctx)
{
	int id = stacks.get_stackid(ctx, 0);
	if (id < 0)
		count_drop(MT_DROP_KERNEL_STACK);
	return id;
}

/* ======================================================================== */
#ifdef MT_PROBE_SYSCALLS
/* Failing syscalls: every syscall that fails with ENOMEM (and the memory syscalls'
 * EAGAIN), brk's silent failure, and the kernel failures that happened inside them.
 *
 * One raw tracepoint on sys_exit. The common path reads the return value and one
 * array slot and returns; the syscall number and arguments are read from the saved
 * user registers (pt_regs, offsets from BTF) only when the call failed, so no
 * sys_enter hook is needed at all. */

/* Memory syscalls whose EAGAIN means a memory limit (MAP_LOCKED over
 * RLIMIT_MEMLOCK, madvise splitting at the map limit, ...). Numbers (MT_NR_*) come
 * in as -D flags from tracer/kernel/build.py. */
static __always_inline int is_memory_eagain_syscall(s64 nr)
{
	return nr == MT_NR_MMAP || nr == MT_NR_MPROTECT || nr == MT_NR_MREMAP ||
	       nr == MT_NR_MADVISE || nr == MT_NR_MLOCK || nr == MT_NR_MLOCK2 ||
	       nr == MT_NR_MLOCKALL || nr == MT_NR_SHMAT;
}

static __always_inline void clear_pending(u32 tid)
{
	if (pending.delete(&tid) == 0) {
		u32 zero = 0;
		u64 *a = armed.lookup(&zero);
		if (a && *a > 0)
			__sync_fetch_and_add(a, -1);
	}
}

/* Returns 1 when the syscall failed and an event was handled. */
static __always_inline int syscall_failed(struct bpf_raw_tracepoint_args *ctx, long ret)
{
	void *regs = (void *)ctx->args[0];
	s64 nr = -1;
	bpf_probe_read_kernel(&nr, sizeof(nr), regs + MT_OFF_REGS_ORIG_AX);

	u32 flags = 0;
	u32 err = 0;
	if (ret == -ENOMEM) {
		err = ENOMEM;
	} else if (ret == -EAGAIN) {
		if (!is_memory_eagain_syscall(nr))
			return 0;
		err = EAGAIN;
	} else {
		/* ret is an address: brk failed if it did not move to the requested break. */
		if (nr != MT_NR_BRK)
			return 0;
		u64 want = 0;
		bpf_probe_read_kernel(&want, sizeof(want), regs + MT_OFF_REGS_DI);
		if (want == 0 || want == (u64)ret)
			return 0;
		flags |= MT_F_BRK;
	}

	void *task = (void *)bpf_get_current_task();
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;

	struct mt_syscall_key key = {};
	key.memcg_id = task_memcg_id(task);
	key.pid = pid_tgid >> 32;
	key.syscall_nr = (s32)nr;
	key.err = err;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	count_syscall(&key);

	/* Which of the thread's pending kernel failures happened inside this call:
	 * same syscall, same call site, same user stack, recent. */
	struct mt_pending *p = pending.lookup(&tid);
	u32 matched = 0;
	u64 now = bpf_ktime_get_ns();
	if (p) {
		u64 ip = 0, sp = 0;
		bpf_probe_read_kernel(&ip, sizeof(ip), regs + MT_OFF_REGS_IP);
		bpf_probe_read_kernel(&sp, sizeof(sp), regs + MT_OFF_REGS_SP);
#pragma unroll
		for (int i = 0; i < MT_MAX_LINKED; i++) {
			if (i >= p->n)
				break;
			struct mt_kfail *kf = &p->kf[i];
			if (kf->syscall_nr != nr || kf->user_ip != ip || kf->user_sp != sp)
				continue;
			if (now - kf->ts_ns > MT_LINK_WINDOW_NS)
				continue;
			matched |= 1 << i;
			if (kf->flags & MT_F_OPPORTUNISTIC) {
				/* Its fallback did not save the call: from now on a failure. */
				struct mt_kfail_key kk = {};
				kk.memcg_id = key.memcg_id;
				kk.pid = key.pid;
				kk.gfp = kf->gfp;
				kk.kind = kf->kind;
				kk.order = kf->order;
				kk.opportunistic = 1;
				__builtin_memcpy(kk.comm, key.comm, sizeof(kk.comm));
				u64 *v = kfail_counts.lookup(&kk);
				if (v && *v)
					__sync_fetch_and_add(v, -1);
				kk.opportunistic = 0;
				count_kfail(&kk);
			}
		}
	}

	struct mt_event *e = events.ringbuf_reserve(sizeof(struct mt_event));
	if (!e) {
		count_drop(MT_DROP_RINGBUF);
		goto out;
	}
	if (zero_event(e) != 0) {
		events.ringbuf_discard(e, 0);
		count_drop(MT_DROP_RINGBUF);
		goto out;
	}
	event_header(e, task, MT_KIND_SYSCALL);
	e->flags = flags;
	e->syscall_nr = nr;
	e->ret = ret;
	bpf_probe_read_kernel(&e->args[0], 8, regs + MT_OFF_REGS_DI);
	bpf_probe_read_kernel(&e->args[1], 8, regs + MT_OFF_REGS_SI);
	bpf_probe_read_kernel(&e->args[2], 8, regs + MT_OFF_REGS_DX);
	bpf_probe_read_kernel(&e->args[3], 8, regs + MT_OFF_REGS_R10);
	bpf_probe_read_kernel(&e->args[4], 8, regs + MT_OFF_REGS_R8);
	bpf_probe_read_kernel(&e->args[5], 8, regs + MT_OFF_REGS_R9);
	e->user_stack_id = user_stack(ctx);
	e->kernel_stack_id = kernel_stack(ctx);
	task_evidence(task, &e->task);
	if (p) {
		u32 n = 0;
#pragma unroll
		for (int i = 0; i < MT_MAX_LINKED; i++) {
			if (!(matched & (1 << i)))
				continue;
			__builtin_memcpy(&e->linked[n & (MT_MAX_LINKED - 1)], &p->kf[i], sizeof(struct mt_kfail));
			n++;
		}
		e->n_linked = n;
	}
	events.ringbuf_submit(e, 0);
out:
	if (p)
		clear_pending(tid);
	return 1;
}

int mt_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	long ret = ctx->args[1];
	/* Anything below MT_MIN_BRK_ADDR cannot be a break address. */
	if (ret == -ENOMEM || ret == -EAGAIN || ret >= MT_MIN_BRK_ADDR) {
		if (syscall_failed(ctx, ret))
			return 0;
	}
	u32 zero = 0;
	u64 *a = armed.lookup(&zero);
	if (a && *a) {
		u32 tid = (u32)bpf_get_current_pid_tgid();
		clear_pending(tid);
	}
	return 0;
}
#endif /* MT_PROBE_SYSCALLS */

/* ======================================================================== */
#ifdef MT_PROBE_KMEM
/* Kernel-side allocation failures: the page allocator (mm_page_alloc with a NULL
 * page), slab (kmalloc / kmem_cache_alloc returning NULL), vmalloc
 * (alloc_vmap_area failed) and percpu (percpu_alloc_percpu_fail), plus failed
 * searches for a free virtual range (vm_unmapped_area) as evidence.
 *
 * Raw tracepoints; their argument positions are checked against the running
 * kernel's BTF (btf_trace_<name>) by the probe plan before this is compiled. The
 * hot ones return on the first comparison when the allocation succeeded.
 * kernel_failure() is also what MT_PROBE_DECISIONS records a refusal with. */

/* Record one kernel failure: count it exactly, remember it for the syscall it
 * happens in, and stream it unless it is an opportunistic attempt with a fallback. */
static __always_inline void kernel_failure(void *ctx, u32 kind, u64 size, u32 order, u32 gfp,
					   s32 migratetype, const void *cache_name)
{
	void *task = (void *)bpf_get_current_task();
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	u32 flags = 0;
	if (gfp & MT_GFP_OPPORTUNISTIC_MASK)
		flags |= MT_F_OPPORTUNISTIC;
	u32 task_flags = 0;
	bpf_probe_read_kernel(&task_flags, sizeof(task_flags), task + MT_OFF_TASK_FLAGS);
	if (task_flags & MT_PF_KTHREAD)
		flags |= MT_F_KTHREAD;
	if (cache_name)
		flags |= MT_F_SLAB_CACHE;

	u64 memcg_id = task_memcg_id(task);
	int evidence_only = kind == MT_KIND_UNMAPPED_AREA || kind == MT_KIND_DECISION;
	struct mt_kfail_key key = {};
	key.memcg_id = memcg_id;
	key.pid = pid_tgid >> 32;
	key.gfp = gfp;
	key.kind = kind;
	key.order = order;
	key.opportunistic = (flags & MT_F_OPPORTUNISTIC) ? 1 : 0;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	if (!evidence_only)
		count_kfail(&key);

	u32 zero = 0;
	struct mt_pending *scratch = scratch_pending.lookup(&zero);
	if (!scratch)
		return;
	struct mt_kfail *kf = &scratch->kf[0];
	kf->ts_ns = bpf_ktime_get_ns();
	kf->size = size;
	kf->user_ip = 0;
	kf->user_sp = 0;
	kf->syscall_nr = -1;
	kf->kind = kind;
	kf->order = order;
	kf->gfp = gfp;
	kf->migratetype = migratetype;
	kf->kernel_stack_id = evidence_only ? -1 : kernel_stack(ctx);
	__builtin_memset(kf->name, 0, sizeof(kf->name));
	if (cache_name)
		bpf_probe_read_kernel_str(kf->name, sizeof(kf->name), cache_name);

#ifdef MT_HAVE_TASK_PT_REGS
	if (!(flags & MT_F_KTHREAD)) {
		/* The thread's saved user registers: orig_ax is the syscall in progress
		 * (-1 in a page fault), ip/sp identify the call site. */
		void *regs = (void *)bpf_task_pt_regs((struct task_struct *)bpf_get_current_task_btf());
		s64 nr = -1;
		bpf_probe_read_kernel(&nr, sizeof(nr), regs + MT_OFF_REGS_ORIG_AX);
		if (nr >= 0) {
			flags |= MT_F_IN_SYSCALL;
			kf->syscall_nr = nr;
			bpf_probe_read_kernel(&kf->user_ip, sizeof(u64), regs + MT_OFF_REGS_IP);
			bpf_probe_read_kernel(&kf->user_sp, sizeof(u64), regs + MT_OFF_REGS_SP);
		}
	}
#endif
	kf->flags = flags;

	if (flags & MT_F_IN_SYSCALL) {
		struct mt_pending *p = pending.lookup(&tid);
		if (!p) {
			scratch->n = 0;
			/* Insert with n = 0, then append below (kf[0] of scratch is ours). */
			if (pending.update(&tid, scratch) == 0) {
				u64 *a = armed.lookup(&zero);
				if (a)
					__sync_fetch_and_add(a, 1);
			}
			p = pending.lookup(&tid);
		}
		if (p) {
			u32 n = p->n;
			if (n < MT_MAX_LINKED) {
				__builtin_memcpy(&p->kf[n & (MT_MAX_LINKED - 1)], kf, sizeof(*kf));
				p->n = n + 1;
			} else {
				count_drop(MT_DROP_PENDING_FULL);
			}
		}
	}

	if ((flags & MT_F_OPPORTUNISTIC) || evidence_only)
		return; /* counted; streamed only if its syscall then fails */

	struct mt_event *e = events.ringbuf_reserve(sizeof(struct mt_event));
	if (!e) {
		count_drop(MT_DROP_RINGBUF);
		return;
	}
	if (zero_event(e) != 0) {
		events.ringbuf_discard(e, 0);
		count_drop(MT_DROP_RINGBUF);
		return;
	}
	event_header(e, task, kind);
	e->flags = flags;
	e->kernel_stack_id = kf->kernel_stack_id;
	e->user_stack_id = (flags & MT_F_KTHREAD) ? -1 : user_stack(ctx);
	__builtin_memcpy(&e->kf, kf, sizeof(*kf));
	events.ringbuf_submit(e, 0);
}

/* mm_page_alloc(struct page *page, unsigned int order, gfp_t gfp, int migratetype) */
int mt_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[0])
		return 0;
	u32 order = (u32)ctx->args[1];
	kernel_failure(ctx, MT_KIND_PAGE_ALLOC, (u64)MT_PAGE_SIZE << (order & 31), order,
		       (u32)ctx->args[2], (s32)ctx->args[3], 0);
	return 0;
}

/* kmalloc(unsigned long call_site, const void *ptr, size_t bytes_req,
 *         size_t bytes_alloc, gfp_t gfp, int node) */
int mt_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1])
		return 0;
	kernel_failure(ctx, MT_KIND_SLAB, ctx->args[2], 0, (u32)ctx->args[4], -1, 0);
	return 0;
}

/* kmem_cache_alloc(unsigned long call_site, const void *ptr, struct kmem_cache *s,
 *                  gfp_t gfp, int node) */
int mt_kmem_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1])
		return 0;
	void *s = (void *)ctx->args[2];
	u32 object_size = 0;
	const char *name = 0;
	if (s) {
		bpf_probe_read_kernel(&object_size, sizeof(object_size), s + MT_OFF_KMEM_CACHE_OBJECT_SIZE);
		bpf_probe_read_kernel(&name, sizeof(name), s + MT_OFF_KMEM_CACHE_NAME);
	}
	kernel_failure(ctx, MT_KIND_SLAB, object_size, 0, (u32)ctx->args[3], -1, name);
	return 0;
}

/* alloc_vmap_area(unsigned long addr, unsigned long size, unsigned long align,
 *                 unsigned long vstart, unsigned long vend, int failed) */
int mt_alloc_vmap_area(struct bpf_raw_tracepoint_args *ctx)
{
	if (!(int)ctx->args[5])
		return 0;
	kernel_failure(ctx, MT_KIND_VMALLOC, ctx->args[1], 0, 0, -1, 0);
	return 0;
}

/* vm_unmapped_area(unsigned long addr, struct vm_unmapped_area_info *info): addr is
 * an errno when no free virtual range of that length and alignment exists. Kept
 * as evidence for the syscall it happens in, never counted as a failure. */
int mt_vm_unmapped_area(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[0] < (u64)-4095)
		return 0;
	u64 length = 0;
	bpf_probe_read_kernel(&length, sizeof(length),
			      (void *)ctx->args[1] + MT_OFF_VM_UNMAPPED_AREA_INFO_LENGTH);
	kernel_failure(ctx, MT_KIND_UNMAPPED_AREA, length, 0, 0, -1, 0);
	return 0;
}

/* percpu_alloc_percpu_fail(bool reserved, bool is_atomic, size_t size, size_t align) */
int mt_percpu_fail(struct bpf_raw_tracepoint_args *ctx)
{
	kernel_failure(ctx, MT_KIND_PERCPU, ctx->args[2], 0, 0, -1, 0);
	return 0;
}
#endif /* MT_PROBE_KMEM */

/* ======================================================================== */
#ifdef MT_PROBE_OOM
/* OOM kills. The raw tracepoint oom:mark_victim hands us the victim's
 * task_struct, so the victim's own pid, comm, memory cgroup and size are read
 * from it (offsets from BTF), not the killer's. Rare: no fast path needed. */

static __always_inline u64 mm_counter(void *mm, u32 item)
{
#ifdef MT_HAVE_RSS_STAT
	s64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v),
			      mm + MT_OFF_MM_RSS_STAT + item * MT_SIZEOF_PERCPU_COUNTER +
				      MT_OFF_PERCPU_COUNTER_COUNT);
	return v > 0 ? (u64)v : 0;
#else
	return 0;
#endif
}

/* mark_victim(struct task_struct *task, uid_t uid) */
int mt_mark_victim(struct bpf_raw_tracepoint_args *ctx)
{
	void *victim = (void *)ctx->args[0];
	struct mt_event *e = events.ringbuf_reserve(sizeof(struct mt_event));
	if (!e) {
		count_drop(MT_DROP_RINGBUF);
		return 0;
	}
	if (zero_event(e) != 0) {
		events.ringbuf_discard(e, 0);
		count_drop(MT_DROP_RINGBUF);
		return 0;
	}
	event_header(e, victim, MT_KIND_OOM_KILL);
	/* event_header filled the killer's identity; the event is about the victim. */
	u32 pid = 0, tgid = 0;
	bpf_probe_read_kernel(&pid, sizeof(pid), victim + MT_OFF_TASK_PID);
	bpf_probe_read_kernel(&tgid, sizeof(tgid), victim + MT_OFF_TASK_TGID);
	e->pid = tgid;
	e->tid = pid;
	e->cgroup_id = 0; /* the killer's v2 id would mislead; user space resolves by memcg */
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), victim + MT_OFF_TASK_COMM);
	e->oom_uid = (u32)ctx->args[1];
	void *mm = read_ptr(victim, MT_OFF_TASK_MM);
	if (mm) {
		bpf_probe_read_kernel(&e->oom_total_vm, sizeof(u64), mm + MT_OFF_MM_TOTAL_VM);
		e->oom_rss = mm_counter(mm, MT_MM_FILEPAGES) + mm_counter(mm, MT_MM_ANONPAGES) +
			     mm_counter(mm, MT_MM_SHMEMPAGES);
	}
	e->kernel_stack_id = kernel_stack(ctx);
	e->user_stack_id = -1;

	struct mt_kfail_key key = {};
	key.memcg_id = e->memcg_id;
	key.pid = tgid;
	key.kind = MT_KIND_OOM_KILL;
	__builtin_memcpy(key.comm, e->comm, sizeof(key.comm));
	count_kfail(&key);
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif /* MT_PROBE_OOM */

/* ======================================================================== */
#ifdef MT_PROBE_KMSG
/* The kernel's own words as evidence. printk:console carries the OOM
 * report's constraint line ("oom-kill:constraint=CONSTRAINT_MEMCG,...") and the
 * overcommit refusal ("__vm_enough_memory: pid: ..., not enough memory for the
 * allocation"); only lines with those prefixes are streamed. printk is rare, so
 * no fast path is needed. */

/* console(const char *text, size_t len) */
int mt_console(struct bpf_raw_tracepoint_args *ctx)
{
	char head[20] = {};
	bpf_probe_read_kernel(head, sizeof(head), (void *)ctx->args[0]);
	/* A leading newline or loglevel marker is not part of the text at this point. */
	int oom = head[0] == 'o' && head[1] == 'o' && head[2] == 'm' && head[3] == '-' &&
		  head[4] == 'k' && head[5] == 'i' && head[6] == 'l' && head[7] == 'l' &&
		  head[8] == ':';
	int vm = head[0] == '_' && head[1] == '_' && head[2] == 'v' && head[3] == 'm' &&
		 head[4] == '_' && head[5] == 'e' && head[6] == 'n' && head[7] == 'o';
	if (!oom && !vm)
		return 0;
	struct mt_event *e = events.ringbuf_reserve(sizeof(struct mt_event));
	if (!e) {
		count_drop(MT_DROP_RINGBUF);
		return 0;
	}
	if (zero_event(e) != 0) {
		events.ringbuf_discard(e, 0);
		count_drop(MT_DROP_RINGBUF);
		return 0;
	}
	event_header(e, (void *)bpf_get_current_task(), MT_KIND_KMSG);
	e->user_stack_id = -1;
	e->kernel_stack_id = -1;
	u64 len = ctx->args[1];
	if (len > MT_MSG_LEN - 1)
		len = MT_MSG_LEN - 1;
	bpf_probe_read_kernel(e->msg, len & (MT_MSG_LEN - 1), (void *)ctx->args[0]);
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif /* MT_PROBE_KMSG */

/* ======================================================================== */
#if defined(MT_PROBE_DECISIONS) && defined(MT_PROBE_KMEM)
/* The kernel's own decision points, on hosts with kprobes (they record through
 * MT_PROBE_KMEM's kernel_failure(), hence both switches). A kretprobe
 * sees the verdict; a refusal is kept, like a kernel failure, for the syscall it
 * happens in, and turns an inferred cause into a confirmed one. The return value
 * is read at pt_regs' ax offset from BTF, not from a header's struct. */

static __always_inline u64 return_value(struct pt_regs *ctx)
{
	u64 rc = 0;
	bpf_probe_read_kernel(&rc, sizeof(rc), (void *)ctx + MT_OFF_REGS_AX);
	return rc;
}

/* int __vm_enough_memory(struct mm_struct *mm, long pages, int cap_sys_admin) */
int mt_ret_vm_enough_memory(struct pt_regs *ctx)
{
	if (return_value(ctx) == 0)
		return 0;
	kernel_failure(ctx, MT_KIND_DECISION, 0, MT_DECISION_OVERCOMMIT, 0, -1, 0);
	return 0;
}

/* bool may_expand_vm(struct mm_struct *mm, vm_flags_t flags, unsigned long npages) */
int mt_ret_may_expand_vm(struct pt_regs *ctx)
{
	if (return_value(ctx) & 0xff)
		return 0;
	kernel_failure(ctx, MT_KIND_DECISION, 0, MT_DECISION_VM_LIMIT, 0, -1, 0);
	return 0;
}

/* int try_charge_memcg(struct mem_cgroup *memcg, gfp_t gfp_mask, unsigned int nr_pages) */
int mt_ret_try_charge_memcg(struct pt_regs *ctx)
{
	if (return_value(ctx) == 0)
		return 0;
	kernel_failure(ctx, MT_KIND_DECISION, 0, MT_DECISION_MEMCG, 0, -1, 0);
	return 0;
}

/* bool mlock_future_ok(const struct mm_struct *mm, vm_flags_t vm_flags, unsigned long bytes) */
int mt_ret_mlock_future_ok(struct pt_regs *ctx)
{
	if (return_value(ctx) & 0xff)
		return 0;
	kernel_failure(ctx, MT_KIND_DECISION, 0, MT_DECISION_MEMLOCK, 0, -1, 0);
	return 0;
}
#endif /* MT_PROBE_DECISIONS && MT_PROBE_KMEM */
