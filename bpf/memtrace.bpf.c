/* memtrace.bpf.c: the failure tracer's BPF programs (`memtrace`), one section per
 * probe family, each compiled in when the probe plan (tracer/kernel/probes.py)
 * chose one of its probes, with -D MT_PROBE_<family>:
 *   MT_PROBE_SYSCALLS  failing syscalls (sys_exit)
 *   MT_PROBE_KMEM      kernel-side allocation failures (page, slab, vmalloc, percpu)
 *   MT_PROBE_OOM       OOM kills (mark_victim)
 *   MT_PROBE_KMSG      the kernel's console lines that are evidence (console)
 *   MT_PROBE_DECISIONS the kernel's decision points (kretprobes; needs MT_PROBE_KMEM)
 *   MT_PROBE_CGROUPS   every cgroup's kernfs id and path as it is made or renamed
 *   MT_PROBE_PROCESSES where each process's code is (exec, executable mappings, fork)
 *   MT_PROBE_GROWTH    every process's resident growth, sampled by bytes, for what grew
 *                      before an OOM kill and what grows now (bpf/growth.bpf.h)
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
#include "task.bpf.h"
#ifdef MT_PROBE_GROWTH
#define GROWTH_SAMPLING 1
#define GROWTH_MAPPED 0 /* what became resident is what an OOM kill asks about */
#include "growth.bpf.h"
#endif

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
/* Kernel pointers found once at start (MT_GLOBAL_*), by mt_discover. */
BPF_ARRAY(globals, u64, MT_GLOBAL_MAX);
/* One node's pivots while the VMA tree is walked (too big for the BPF stack). */
struct mt_pivots {
	u64 v[16];
};
BPF_PERCPU_ARRAY(scratch_pivots, struct mt_pivots, 1);
/* Programs tail-called (memtrace.h MT_TAIL_*; user space fills them): mt_sys_exit's in
 * sys_tails, loaded as the same kind of program as it (a tail call keeps its type), the
 * others in tails. */
BPF_PROG_ARRAY(tails, MT_TAILS);
BPF_PROG_ARRAY(sys_tails, MT_TAILS);
/* Events with a stack copy are built here and copied into the ring buffer at their real
 * length. One slot per program that can interrupt another on the same CPU (a syscall's
 * exit, a page allocation failing in an interrupt, a slab one inside that). */
#define MT_SLOT_SYSCALL 0
#define MT_SLOT_PAGE 1
#define MT_SLOT_OTHER 2
BPF_PERCPU_ARRAY(scratch_events, struct mt_event_full, 3);
/* Until when (bpf_ktime_get_ns) this CPU found the ring buffer full: events built in the
 * scratch slots are not built at all for a moment after, since they would be dropped. */
#define MT_RING_FULL_BACKOFF_NS 100000ULL
BPF_PERCPU_ARRAY(ring_full_until, u64, 1);
/* Stack copies made per call site in the current second (kernel-side only). */
struct mt_ustack_site {
	u32 tgid;
	s32 stack_id;
	u64 ip;
};
struct mt_ustack_budget {
	u64 window_ns;
	u64 used;
};
BPF_TABLE("lru_hash", struct mt_ustack_site, struct mt_ustack_budget, ustack_budget, MT_USTACK_SITES);

static __always_inline void count_drop(u32 reason)
{
	u64 *v = drops.lookup(&reason);
	if (v)
		*v += 1;
}

/* kernfs id of the task's memory cgroup. The same chain names the v1 memory cgroup on a
 * hybrid host and the v2 cgroup on a unified one. */
static __always_inline u64 task_memcg_id(void *task)
{
	return css_cgroup_id(task_memcg_css(task));
}

/* The task's memory cgroup's charge and limit, and of all the cgroups whose limits apply
 * (its ancestors', walked up the page_counter parents) the one with the least headroom:
 * the limit a charge would hit first. struct mem_cgroup from its css by container_of
 * (css's offset in mem_cgroup from BTF). Only on failure paths. */
static __always_inline void memcg_evidence(void *css, struct mt_memcg_evidence *ev)
{
#ifdef MT_HAVE_MEMCG_COUNTERS
	if (!css)
		return;
	void *counter = css - MT_OFF_MEMCG_CSS + MT_OFF_MEMCG_MEMORY;
	void *best = 0;
	u64 best_room = ~0ULL;
	for (int level = 0; level < MT_MEMCG_LEVELS; level++) {
		s64 usage = 0;
		u64 max = 0;
		if (bpf_probe_read_kernel(&usage, sizeof(usage), counter + MT_OFF_PAGE_COUNTER_USAGE) ||
		    bpf_probe_read_kernel(&max, sizeof(max), counter + MT_OFF_PAGE_COUNTER_MAX))
			break;
		u64 used = usage > 0 ? (u64)usage : 0;
		u64 room = used >= max ? 0 : max - used;
		if (level == 0) {
			ev->usage = used;
			ev->max = max;
			ev->valid = 1;
		}
		if (room < best_room) {
			best_room = room;
			best = counter;
			ev->limit_usage = used;
			ev->limit_max = max;
			ev->limit_level = level;
		}
		counter = read_ptr(counter, MT_OFF_PAGE_COUNTER_PARENT);
		if (!counter)
			break;
	}
	if (best)
		ev->limit_id = css_cgroup_id(best - MT_OFF_MEMCG_MEMORY + MT_OFF_MEMCG_CSS);
#endif
}

/* ---- memory state that changes fast, read at the failure (struct mt_host_evidence) ---- */

static __always_inline u64 read_count(void *p)
{
	s64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), p);
	return v > 0 ? (u64)v : 0;
}

/* Free pages, watermarks and the reclaimable pages of every zone and node, as
 * si_mem_available() and calculate_totalreserve_pages() read them (bounded loops, not
 * unrolled: this is inlined into several programs). The nodes are reached
 * from a memory cgroup (any: each has one lruvec per node, pointing at the node's
 * pglist_data), since this kernel's symbol table has no data symbols to find them by. */
static __always_inline void zone_evidence(void *css, struct mt_host_evidence *h)
{
#if defined(MT_HAVE_ZONES) && defined(MT_HAVE_MEMCG)
	if (!css)
		return;
	void *memcg = css - MT_OFF_MEMCG_CSS;
	int seen = 0;
	for (int nid = 0; nid < MT_NR_NODES && nid < MT_MAX_NODES; nid++) {
		void *pn = read_ptr(memcg, MT_OFF_MEMCG_NODEINFO + nid * sizeof(void *));
		if (!pn)
			continue;
		void *pgdat = read_ptr(pn, MT_OFF_MEMCG_PER_NODE_LRUVEC + MT_OFF_LRUVEC_PGDAT);
		if (!pgdat)
			continue;
		seen = 1;
		h->file += read_count(pgdat + MT_OFF_PGDAT_VM_STAT + MT_NR_INACTIVE_FILE * 8) +
			   read_count(pgdat + MT_OFF_PGDAT_VM_STAT + MT_NR_ACTIVE_FILE * 8);
		h->reclaimable += read_count(pgdat + MT_OFF_PGDAT_VM_STAT + MT_NR_SLAB_RECLAIMABLE_B * 8) +
				  read_count(pgdat + MT_OFF_PGDAT_VM_STAT + MT_NR_KERNEL_MISC_RECLAIMABLE * 8);
		for (int z = 0; z < MT_NR_ZONES && z < MT_MAX_ZONES; z++) {
			void *zone = pgdat + MT_OFF_PGDAT_NODE_ZONES + z * MT_SIZEOF_ZONE;
			u64 managed = read_count(zone + MT_OFF_ZONE_MANAGED_PAGES);
			if (!managed)
				continue;
			u64 boost = read_count(zone + MT_OFF_ZONE_WATERMARK_BOOST);
			u64 high = read_count(zone + MT_OFF_ZONE_WATERMARK + MT_WMARK_HIGH * 8) + boost;
			h->managed += managed;
			h->free += read_count(zone + MT_OFF_ZONE_VM_STAT + MT_NR_FREE_PAGES * 8);
			u32 slot = h->block_zones;
			if (slot < MT_BLOCK_ZONES) {
				slot &= MT_BLOCK_ZONES - 1;
				h->block_zone[slot] = (u8)((nid << 4) | z);
				for (int o = 0; o < MT_NR_ORDERS && o < MT_BLOCK_ORDERS; o++)
					h->blocks[slot][o] = (u32)read_count(
						zone + MT_OFF_ZONE_FREE_AREA + o * MT_SIZEOF_FREE_AREA +
						MT_OFF_FREE_AREA_NR_FREE);
				h->block_zones = slot + 1;
			}
			h->wmark_min += read_count(zone + MT_OFF_ZONE_WATERMARK + MT_WMARK_MIN * 8) + boost;
			h->wmark_low += read_count(zone + MT_OFF_ZONE_WATERMARK + MT_WMARK_LOW * 8) + boost;
			h->wmark_high += high;
			u64 most = 0;
			for (int j = z; j < MT_NR_ZONES && j < MT_MAX_ZONES; j++) {
				u64 r = read_count(zone + MT_OFF_ZONE_LOWMEM_RESERVE + j * 8);
				if (r > most)
					most = r;
			}
			most += high;
			h->reserve += most < managed ? most : managed;
		}
	}
	if (seen)
		h->flags |= MT_HOST_ZONES;
#endif
}

/* The default huge page pool (its struct hstate was found at start by mt_discover). */
static __always_inline void hugetlb_evidence(struct mt_host_evidence *h)
{
#ifdef MT_HAVE_HUGETLB
	u32 slot = MT_GLOBAL_HSTATE;
	u64 *hp = globals.lookup(&slot);
	if (!hp || !*hp)
		return;
	void *hs = (void *)*hp;
	h->huge_total = read_count(hs + MT_OFF_HSTATE_NR_HUGE_PAGES);
	h->huge_free = read_count(hs + MT_OFF_HSTATE_FREE_HUGE_PAGES);
	h->huge_reserved = read_count(hs + MT_OFF_HSTATE_RESV_HUGE_PAGES);
	h->huge_surplus = read_count(hs + MT_OFF_HSTATE_SURPLUS_HUGE_PAGES);
	bpf_probe_read_kernel(&h->huge_order, sizeof(u32), hs + MT_OFF_HSTATE_ORDER);
	h->flags |= MT_HOST_HUGETLB;
#endif
}

#ifdef MT_HAVE_MAPLE
/* The VMA of mm that contains addr: a descent of the mm's maple tree as mtree_range_walk()
 * does it (a node's slot i covers addresses up to pivot[i]; a zero pivot past the first
 * ends the node's data, whose last slot reaches the node's end). Returns the VMA, 0 for
 * a hole, or sets *unknown when the tree is not as expected (deeper, changing). */
static __always_inline void *vma_at(void *mm, u64 addr, int *unknown)
{
	u32 zero = 0;
	struct mt_pivots *piv = scratch_pivots.lookup(&zero);
	if (!piv) {
		*unknown = 1;
		return 0;
	}
	u64 entry = (u64)read_ptr(mm, MT_OFF_MM_MT + MT_OFF_MAPLE_TREE_ROOT);
	for (int level = 0; level < MT_TREE_LEVELS; level++) {
		/* The root is a node when tagged MAPLE_ROOT_NODE (xa_is_node); below it, every
		 * slot of an inner node holds a child (its type in bits 3-6, bit 2 a hint). */
		if (entry <= 4096 || (level == 0 && (entry & 3) != 2))
			break;
		void *node = (void *)(entry & ~0xffULL);           /* MAPLE_NODE_MASK */
		u32 type = (entry >> 3) & 0xf;                     /* MAPLE_NODE_TYPE_SHIFT, _MASK */
		u32 npivots = MT_MAPLE_RANGE64_PIVOTS;
		u64 pivots_at = MT_OFF_MAPLE_RANGE64_PIVOT, slots_at = MT_OFF_MAPLE_RANGE64_SLOT;
		if (type == MT_MAPLE_ARANGE_64) {
			npivots = MT_MAPLE_ARANGE64_PIVOTS;
			pivots_at = MT_OFF_MAPLE_ARANGE64_PIVOT;
			slots_at = MT_OFF_MAPLE_ARANGE64_SLOT;
		} else if (type != MT_MAPLE_RANGE_64 && type != MT_MAPLE_LEAF_64) {
			break;
		}
		if (bpf_probe_read_kernel(piv->v, MT_MAPLE_RANGE64_PIVOTS * 8, node + pivots_at))
			break;
		u32 slot = npivots;
		for (int i = 0; i < MT_MAPLE_RANGE64_PIVOTS; i++) {
			if (i >= npivots)
				break;
			u64 p = piv->v[i];
			if (p >= addr || (i > 0 && p == 0)) {
				slot = i;
				break;
			}
		}
		entry = (u64)read_ptr(node, slots_at + (slot & 15) * sizeof(void *));
		if (type == MT_MAPLE_LEAF_64)
			return (void *)entry;
	}
	*unknown = 1;
	return 0;
}
#endif

/* Whether [start, start+len) is fully mapped, as the range syscalls require (they fail
 * with ENOMEM on a hole): MT_HOST_RANGE_CHECKED, plus MT_HOST_RANGE_MAPPED when it was;
 * 0 when it could not be told. Follows the VMAs from start, at most MT_RANGE_VMAS. The
 * loops here are bounded loops the verifier follows, not unrolled (too large unrolled). */
static __always_inline u32 range_check(void *task, u64 start, u64 len)
{
#ifdef MT_HAVE_MAPLE
	void *mm = read_ptr(task, MT_OFF_TASK_MM);
	if (!mm || !len)
		return 0;
	u64 end = (start + len + MT_PAGE_SIZE - 1) & ~(u64)(MT_PAGE_SIZE - 1);
	u64 pos = start & ~(u64)(MT_PAGE_SIZE - 1);
	for (int i = 0; i < MT_RANGE_VMAS; i++) {
		int unknown = 0;
		void *vma = vma_at(mm, pos, &unknown);
		if (unknown)
			return 0;
		if (!vma)
			return MT_HOST_RANGE_CHECKED; /* a hole at pos */
		u64 vm_start = 0, vm_end = 0;
		bpf_probe_read_kernel(&vm_start, sizeof(u64), vma + MT_OFF_VMA_VM_START);
		bpf_probe_read_kernel(&vm_end, sizeof(u64), vma + MT_OFF_VMA_VM_END);
		if (vm_start > pos || vm_end <= pos)
			return 0; /* the tree changed under us */
		pos = vm_end;
		if (pos >= end)
			return MT_HOST_RANGE_CHECKED | MT_HOST_RANGE_MAPPED;
	}
#endif
	return 0;
}

#ifdef MT_HAVE_FILE_PATHS
/* A file of the current task by descriptor: task->files->fdt->fd[fd]. */
static __always_inline void *task_file(void *task, u32 fd)
{
	void *files = read_ptr(task, MT_OFF_TASK_FILES);
	void *fdt = files ? read_ptr(files, MT_OFF_FILES_STRUCT_FDT) : 0;
	if (!fdt)
		return 0;
	u32 max_fds = 0;
	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), fdt + MT_OFF_FDTABLE_MAX_FDS);
	if (fd >= max_fds)
		return 0;
	void *fds = read_ptr(fdt, MT_OFF_FDTABLE_FD);
	return fds ? read_ptr(fds, (u64)fd * sizeof(void *)) : 0;
}

/* Longest path component kept (a longer one truncates the path). */
#define MT_PATH_PART 64
/* Components and mount crossings followed up to the namespace's root. */
#define MT_PATH_STEPS 24

/* A file's path as d_path() would build it, from the dentry up to the root of its mount
 * namespace, crossing mount points: its components, innermost first, each NUL-terminated,
 * into out[MT_MSG_LEN]. Returns MT_F_TRUNCATED when they did not all fit. Bounded loop. */
static __always_inline u32 file_path(void *file, char *out)
{
	void *dentry = read_ptr(file, MT_OFF_FILE_F_PATH + MT_OFF_PATH_DENTRY);
	void *vfsmnt = read_ptr(file, MT_OFF_FILE_F_PATH + MT_OFF_PATH_MNT);
	if (!dentry || !vfsmnt)
		return MT_F_TRUNCATED;
	void *mnt = vfsmnt - MT_OFF_MOUNT_MNT;
	u32 pos = 0;
	for (int i = 0; i < MT_PATH_STEPS; i++) {
		void *root = read_ptr(mnt, MT_OFF_MOUNT_MNT + MT_OFF_VFSMOUNT_MNT_ROOT);
		if (dentry == root) {
			void *parent = read_ptr(mnt, MT_OFF_MOUNT_MNT_PARENT);
			if (!parent || parent == mnt)
				return 0; /* the namespace's root: done */
			dentry = read_ptr(mnt, MT_OFF_MOUNT_MNT_MOUNTPOINT);
			mnt = parent;
			continue;
		}
		void *up = read_ptr(dentry, MT_OFF_DENTRY_D_PARENT);
		if (!up || up == dentry)
			return 0;
		void *name = read_ptr(dentry, MT_OFF_DENTRY_D_NAME + MT_OFF_QSTR_NAME);
		if (!name || pos > MT_MSG_LEN - MT_PATH_PART - 1)
			return MT_F_TRUNCATED;
		long n = bpf_probe_read_kernel_str(out + pos, MT_PATH_PART, name);
		if (n <= 1 || n >= MT_PATH_PART)
			return MT_F_TRUNCATED;
		pos += n;
		dentry = up;
	}
	return MT_F_TRUNCATED;
}
#endif

static __always_inline void count_syscall(struct mt_syscall_key *key)
{
	u64 *v = syscall_counts.lookup(key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	/* First of its key: insert only if absent, so two CPUs creating the same key at
	 * once cannot overwrite each other's 1; the loser adds to the winner's entry. */
	u64 one = 1;
	if (syscall_counts.insert(key, &one) == 0)
		return;
	v = syscall_counts.lookup(key);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		count_drop(MT_DROP_COUNTER_FULL);
}

static __always_inline void count_kfail(struct mt_kfail_key *key)
{
	u64 *v = kfail_counts.lookup(key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	/* First of its key: insert only if absent, so two CPUs creating the same key at
	 * once cannot overwrite each other's 1; the loser adds to the winner's entry. */
	u64 one = 1;
	if (kfail_counts.insert(key, &one) == 0)
		return;
	v = kfail_counts.lookup(key);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
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

/* Fill the fields every event has; returns the task's memory cgroup's css. */
static __always_inline void *event_header(struct mt_event *e, void *task, u32 kind)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	void *css = task_memcg_css(task);
	e->memcg_id = css_cgroup_id(css);
	memcg_evidence(css, &e->memcg);
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->actor_tid = (u32)pid_tgid;
	e->kind = kind;
	e->syscall_nr = -1;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return css;
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

/* A cleared event in this CPU's scratch slot, or 0 (counted as a lost event; also while
 * the ring buffer was just found full, so a storm costs little more than its counting). */
static __always_inline struct mt_event_full *new_full_event(u32 slot)
{
	u32 zero = 0;
	u64 *until = ring_full_until.lookup(&zero);
	if (until && *until && bpf_ktime_get_ns() < *until) {
		count_drop(MT_DROP_RINGBUF); /* a storm: the ring buffer was full a moment ago */
		return 0;
	}
	struct mt_event_full *full = scratch_events.lookup(&slot);
	if (!full || zero_event(&full->e) != 0) {
		count_drop(MT_DROP_RINGBUF);
		return 0;
	}
	return full;
}

/* Copy a scratch event into the ring buffer: the event, and its stack copy if any. */
static __always_inline void submit_full_event(struct mt_event_full *full)
{
	u64 size = sizeof(struct mt_event) + full->e.ustack_len;
	if (size > sizeof(struct mt_event_full))
		size = sizeof(struct mt_event_full);
	if (events.ringbuf_output(full, size, 0) != 0) {
		count_drop(MT_DROP_RINGBUF);
		u32 zero = 0;
		u64 *until = ring_full_until.lookup(&zero);
		if (until)
			*until = bpf_ktime_get_ns() + MT_RING_FULL_BACKOFF_NS;
	}
}

/* Whether this call site may have its user stack copied now: MT_USTACK_PER_SECOND per
 * second per (process, frame-pointer stack, instruction), the rest counted as skipped. */
static __always_inline int stack_copy_allowed(u32 tgid, s32 stack_id, u64 ip)
{
	struct mt_ustack_site site = {};
	site.tgid = tgid;
	site.stack_id = stack_id;
	site.ip = ip;
	u64 now = bpf_ktime_get_ns();
	struct mt_ustack_budget *b = ustack_budget.lookup(&site);
	if (!b) {
		struct mt_ustack_budget fresh = {};
		fresh.window_ns = now;
		fresh.used = 1;
		ustack_budget.update(&site, &fresh);
		return 1;
	}
	if (now - b->window_ns >= 1000000000ULL) {
		b->window_ns = now;
		b->used = 1;
		return 1;
	}
	if (b->used < MT_USTACK_PER_SECOND) {
		b->used += 1;
		return 1;
	}
	count_drop(MT_DROP_STACK_COPY_RATE);
	return 0;
}

/* The user registers and a copy of the top of the user stack (regs: the task's saved user
 * registers), for unwinding in user space through code without frame pointers; the copy
 * shrinks until it fits below the top of the stack's mapping. */
static __always_inline void copy_user_stack(struct mt_event_full *full, void *regs,
					    s32 stack_id)
{
	struct mt_event *e = &full->e;
	bpf_probe_read_kernel(&e->ustack_ip, sizeof(u64), regs + MT_OFF_REGS_IP);
	bpf_probe_read_kernel(&e->ustack_sp, sizeof(u64), regs + MT_OFF_REGS_SP);
	bpf_probe_read_kernel(&e->ustack_bp, sizeof(u64), regs + MT_OFF_REGS_BP);
	if (!stack_copy_allowed(e->pid, stack_id, e->ustack_ip))
		return;
	void *sp = (void *)e->ustack_sp;
	u32 len = 0;
	MT_COPY_STACK_TOP(full->stack, MT_USTACK_BYTES, sp, len);
	e->ustack_len = len;
	if (!len)
		count_drop(MT_DROP_STACK_COPY);
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
#ifdef MT_PROBE_GROWTH
/* Growth of every process but memtrace, kept so that an OOM kill can say what the victim
 * (and its memory cgroup's other processes) grew in the minutes before, although the
 * victim is gone by the time anyone asks: bpf/growth.bpf.h's byte sampler over anonymous
 * memory, each sample with a copy of the user stack, and the releases of sampled memory
 * (munmap, madvise, brk shrinking, mremap moves), on a ring buffer of their own.
 *
 * No program of its own on the hot paths: a program on page faults costs about 100 ns a
 * fault on this kind of host (a tracepoint's dispatch), so the sampler rides in the page
 * allocator's program (mt_page_alloc, run for every page anyway), counting user pages
 * (__GFP_HARDWALL and __GFP_MOVABLE: anonymous memory and page cache, not page tables),
 * huge pages by their order; the syscall side rides
 * in mt_sys_exit (a second sys_exit program would cost a whole run on every syscall), exec
 * in mt_exec. Only exits have a program of their own (rare).
 *
 * A page is not mapped yet when it is allocated: the sample waits in the CPU's state until a
 * later user page allocation on that CPU reads from the page whether it became anonymous
 * memory (page cache and shared memory are not growth here) and where: its index in its
 * anon_vma, and the mapping of the process holding that index. */

BPF_RINGBUF_OUTPUT(growth_events, MT_GROWTH_RINGBUF_PAGES);
/* The countdown and the waiting sample (struct mt_growth_cpu), and that sample's event. */
BPF_PERCPU_ARRAY(growth_cpu, struct mt_growth_cpu, 1);
BPF_PERCPU_ARRAY(growth_scratch, struct lk_event, 1);
/* The span of each process's sampled addresses (struct lk_span) and its last break. */
BPF_TABLE("lru_hash", u32, struct lk_span, growth_spans, LK_MAX_PROCESSES);
BPF_TABLE("lru_hash", u32, u64, growth_breaks, LK_MAX_PROCESSES);
/* Sampled bytes whose record the full ring buffer refused, per process (key tgid << 1):
 * the stacks are lost, the process's growth is not. Kept past the process's exit (an OOM
 * victim's are read after it), the least recent forgotten. */
BPF_TABLE("lru_hash", u64, u64, lost_growth, LK_MAX_PROCESSES);

static __always_inline struct lk_event *growth_reserve(u32 bytes)
{
	struct lk_event *e = growth_events.ringbuf_reserve(bytes);
	if (!e)
		count_drop(MT_DROP_GROWTH_RINGBUF);
	return e;
}

static __always_inline void growth_stack_dropped(void)
{
	count_drop(MT_DROP_GROWTH_STACK_COPY);
}

static __always_inline u64 *growth_countdown(void)
{
	u32 zero = 0;
	struct mt_growth_cpu *c = growth_cpu.lookup(&zero);
	return c ? &c->left : 0;
}

static __always_inline struct lk_span *growth_span(u32 tgid)
{
	return growth_spans.lookup(&tgid);
}

static __always_inline void growth_span_new(u32 tgid, struct lk_span *s)
{
	growth_spans.update(&tgid, s);
}

static __always_inline u64 *growth_break(u32 tgid)
{
	return growth_breaks.lookup(&tgid);
}

static __always_inline void growth_break_new(u32 tgid, u64 brk)
{
	growth_breaks.update(&tgid, &brk);
}

/* memtrace reads growth every tenth of a second without waiting on it: no wake-up (each would
 * cost an interrupt on the CPU that submits). */
#define MT_RB_NO_WAKEUP 1 /* BPF_RB_NO_WAKEUP of include/uapi/linux/bpf.h */

static __always_inline void growth_submit(struct lk_event *e)
{
	growth_events.ringbuf_submit(e, MT_RB_NO_WAKEUP);
}

static __always_inline void growth_lost(u64 key, u64 bytes)
{
	u64 *n = lost_growth.lookup(&key);
	if (n) {
		__sync_fetch_and_add(n, bytes);
		return;
	}
	if (lost_growth.insert(&key, &bytes) != 0) { /* another CPU made it first */
		n = lost_growth.lookup(&key);
		if (n)
			__sync_fetch_and_add(n, bytes);
	}
}

static __always_inline int growth_wanted(void)
{
	return 1;
}

/* memtrace's own growth is left out: reading growth makes memtrace grow. */
static __always_inline int growth_of_self(u32 tgid)
{
#ifdef MT_SELF_TGID
	return tgid == MT_SELF_TGID;
#else
	return 0;
#endif
}

/* munmap and madvise returning 0, brk and mremap returning an address (mt_sys_exit's tail). */
static __always_inline void growth_after_syscall(void *regs, s64 nr, long ret)
{
	if (nr != MT_NR_MUNMAP && nr != MT_NR_MADVISE && nr != MT_NR_BRK && nr != MT_NR_MREMAP)
		return;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!growth_of_self(tgid))
		growth_syscall(regs, nr, ret, tgid);
}

/* Where an anonymous page of `mm` with this index in its anon_vma is mapped: the process's
 * mapping in the anon_vma's tree (an interval tree of mappings by page offset) whose offsets
 * hold the index. A private anonymous mapping's offsets start at its address's page number,
 * and keep it when mremap moves it, so without the walk (more than MT_GROWTH_TREE_STEPS
 * steps, a tree changing under us) the page is placed where it was first mapped. */
static __always_inline u64 growth_anon_address(void *anon_vma, u64 index, void *mm)
{
	void *node = read_ptr(anon_vma, MT_OFF_ANON_VMA_RB_NODE);
	for (int i = 0; i < MT_GROWTH_TREE_STEPS && node; i++) {
		void *vma = read_ptr(node - MT_OFF_AVC_RB, MT_OFF_AVC_VMA);
		if (!vma)
			break;
		u64 pgoff = 0, start = 0, end = 0;
		bpf_probe_read_kernel(&pgoff, sizeof(pgoff), vma + MT_OFF_VMA_VM_PGOFF);
		if (index < pgoff) {
			node = read_ptr(node, MT_OFF_RB_LEFT);
			continue;
		}
		bpf_probe_read_kernel(&start, sizeof(start), vma + MT_OFF_VMA_VM_START);
		bpf_probe_read_kernel(&end, sizeof(end), vma + MT_OFF_VMA_VM_END);
		if (index < pgoff + ((end - start) >> MT_PAGE_SHIFT) && read_ptr(vma, MT_OFF_VMA_VM_MM) == mm)
			return start + ((index - pgoff) << MT_PAGE_SHIFT);
		node = read_ptr(node, MT_OFF_RB_RIGHT);
	}
	return index << MT_PAGE_SHIFT;
}

/* This CPU's waiting sample, at a later user page allocation (`fresh`, its page): sent if
 * its page became anonymous memory, at the address where it is mapped; dropped if it did not
 * (page cache, shared memory, KSM) or was freed. A page not mapped yet and still held is on
 * its way (a huge page is zeroed first, then its fault allocates a page table before mapping
 * it; a charge near a cgroup's limit reclaims first): it waits, unless `now` says it waited
 * longer than MT_GROWTH_WAIT_NS. Returns whether no sample waits any more. */
static __always_inline int growth_page_mapped(struct mt_growth_cpu *c, u64 fresh, u64 now)
{
	u64 page = c->page;
	u32 zero = 0;
	struct lk_event *e = growth_scratch.lookup(&zero);
	if (page == fresh || !e) { /* freed and handed out again */
		c->page = 0;
		return 1;
	}
	u64 mapping = (u64)read_ptr((void *)page, MT_OFF_FOLIO_MAPPING);
	if (!mapping && !(now && now - e->ts_ns > MT_GROWTH_WAIT_NS)) {
		s32 refs = 0;
		bpf_probe_read_kernel(&refs, sizeof(refs), (void *)page + MT_OFF_FOLIO_REFCOUNT);
		if (refs > 0)
			return 0;
	}
	c->page = 0;
	if ((mapping & 3) != 1)
		return 1; /* FOLIO_MAPPING_ANON alone: anonymous memory */
	u64 index = 0;
	bpf_probe_read_kernel(&index, sizeof(index), (void *)page + MT_OFF_FOLIO_INDEX);
	u64 addr = growth_anon_address((void *)(mapping & ~3ULL), index, (void *)c->mm);
	e->addr = addr;
	if (!accept_sample(e->pid, addr, addr + e->len))
		return 1;
	u64 size = __builtin_offsetof(struct lk_event, stack) + e->stack_len;
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (growth_events.ringbuf_output(e, size, MT_RB_NO_WAKEUP) != 0) {
		count_drop(MT_DROP_GROWTH_RINGBUF);
		growth_lost((u64)e->pid << 1, e->weight);
	}
	return 1;
}

/* A sample point fell in this allocation of `bytes` (standing for `weight`): if a user
 * process's, its event (with the user stack) waits for the page to be mapped. While the
 * CPU's previous sample is still on its way, the point moves on to the next user allocation
 * (a page table its fault allocates, usually): the bytes after the point in this one are the
 * estimate's only loss. */
static __always_inline void growth_page_sampled(struct mt_growth_cpu *c, u64 page, u64 bytes,
						u64 weight)
{
	void *task = (void *)bpf_get_current_task();
	u32 task_flags = 0;
	bpf_probe_read_kernel(&task_flags, sizeof(task_flags), task + MT_OFF_TASK_FLAGS);
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if ((task_flags & MT_PF_KTHREAD) || growth_of_self(pid_tgid >> 32))
		return;
	void *mm = read_ptr(task, MT_OFF_TASK_MM);
	u32 zero = 0;
	struct lk_event *e = growth_scratch.lookup(&zero);
	if (!mm || !e)
		return;
	if (c->page && !growth_page_mapped(c, page, bpf_ktime_get_ns())) {
		c->left = 1;
		return;
	}
	fill_event(e, LK_EV_FAULT);
	e->weight = weight;
	e->len = bytes;
	e->cgroup_id = css_cgroup_id(task_memcg_css(task));
	snapshot(e, (void *)bpf_task_pt_regs((struct task_struct *)bpf_get_current_task_btf()));
	c->page = page;
	c->mm = (u64)mm;
}

/* mt_page_alloc's growth work (tail-called) for a user page (a huge page by its order): a
 * sample waiting for its page, a sample point in this one. */
int mt_growth_page_tail(struct bpf_raw_tracepoint_args *ctx)
{
	u32 zero = 0;
	struct mt_growth_cpu *c = growth_cpu.lookup(&zero);
	if (!c)
		return 0;
	if (c->page)
		growth_page_mapped(c, ctx->args[0], 0);
	u64 bytes = (u64)MT_PAGE_SIZE << (ctx->args[1] & 15);
	u64 weight = sample_bytes_at(&c->left, bytes);
	if (weight)
		growth_page_sampled(c, ctx->args[0], bytes, weight);
	return 0;
}

/* A process image ends (exec, exit): its heap and samples with it. Returns whether it had
 * sampled growth, which user space must then hear about. */
static __always_inline int growth_forget(u32 tgid)
{
	int had = growth_spans.lookup(&tgid) != 0;
	growth_spans.delete(&tgid);
	growth_breaks.delete(&tgid);
	return had;
}

static __always_inline void growth_ended(u32 tgid, u32 kind)
{
	if (!growth_forget(tgid))
		return;
	struct lk_event *e = new_small_event(kind);
	if (e)
		growth_submit(e);
}

/* sched_process_exit(struct task_struct *p, bool group_dead) */
int mt_growth_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	if (tgid == (u32)pid_tgid) /* only the process's main thread ends it */
		growth_ended(tgid, LK_EV_EXIT);
	return 0;
}
#endif /* MT_PROBE_GROWTH */

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

#ifdef MT_HAVE_FILE_PATHS
#define MT_PROT_EXEC 0x4
#define MT_MAP_ANONYMOUS 0x20

/* A file mapped executable (the dynamic loader mapping a library's code): streamed with
 * its path, so the library's frames can be named after the process is gone. Read on
 * every successful mmap, but mostly one register: code mappings are rare. */
static __always_inline void exec_mapping(void *regs, long addr)
{
	u64 prot = 0, flags = 0, fd = 0, offset = 0, len = 0;
	bpf_probe_read_kernel(&prot, sizeof(prot), regs + MT_OFF_REGS_DX);
	if (!(prot & MT_PROT_EXEC))
		return;
	bpf_probe_read_kernel(&flags, sizeof(flags), regs + MT_OFF_REGS_R10);
	bpf_probe_read_kernel(&fd, sizeof(fd), regs + MT_OFF_REGS_R8);
	if ((flags & MT_MAP_ANONYMOUS) || (s32)fd < 0)
		return;
	bpf_probe_read_kernel(&len, sizeof(len), regs + MT_OFF_REGS_SI);
	bpf_probe_read_kernel(&offset, sizeof(offset), regs + MT_OFF_REGS_R9);
	void *task = (void *)bpf_get_current_task();
	void *file = task_file(task, (u32)fd);
	if (!file)
		return;
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
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->kind = MT_KIND_MAP;
	e->syscall_nr = -1;
	e->user_stack_id = -1;
	e->kernel_stack_id = -1;
	e->args[0] = (u64)addr;
	e->args[1] = len;
	e->args[2] = offset;
	e->flags = file_path(file, e->msg);
	events.ringbuf_submit(e, 0);
}
#endif

/* Syscalls that fail with ENOMEM when their range is not fully mapped (whose first two
 * arguments are the start and length). */
static __always_inline int is_range_syscall(s64 nr)
{
	return nr == MT_NR_MPROTECT || nr == MT_NR_PKEY_MPROTECT || nr == MT_NR_MADVISE ||
	       nr == MT_NR_MLOCK || nr == MT_NR_MLOCK2 || nr == MT_NR_MUNLOCK ||
	       nr == MT_NR_MSYNC || nr == MT_NR_MINCORE;
}

#define MT_MAP_HUGETLB 0x40000 /* include/uapi/asm-generic/mman-common.h */
#define MT_SHM_HUGETLB 04000   /* include/uapi/linux/shm.h */

static __always_inline void clear_pending(u32 tid)
{
	if (pending.delete(&tid) == 0) {
		u32 zero = 0;
		u64 *a = armed.lookup(&zero);
		if (a && *a > 0)
			__sync_fetch_and_add(a, -1);
	}
}

/* Returns 1 when the syscall (nr, from its saved registers) failed and an event was handled. */
static __always_inline int syscall_failed(struct bpf_raw_tracepoint_args *ctx, long ret, s64 nr)
{
	void *regs = (void *)ctx->args[0];

	u32 flags = 0;
	u32 err = 0;
	if (ret == -ENOMEM) {
		err = ENOMEM;
	} else if (ret == -EAGAIN) {
		if (!is_memory_eagain_syscall(nr))
			return 0;
		err = EAGAIN;
	} else {
#ifdef MT_HAVE_FILE_PATHS
		if (nr == MT_NR_MMAP) {
			exec_mapping(regs, ret);
			return 0;
		}
#endif
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

	struct mt_event_full *full = new_full_event(MT_SLOT_SYSCALL);
	if (!full)
		goto out;
	struct mt_event *e = &full->e;
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
	/* No kernel stack: at sys_exit it is the exit path, which says nothing; the kernel
	 * failures linked below carry theirs. */
	e->kernel_stack_id = -1;
	copy_user_stack(full, regs, e->user_stack_id);
	task_evidence(task, &e->task);
	/* The zones as the first page failure inside this call saw them. */
	if (p && matched && (p->host.flags & MT_HOST_ZONES))
		bpf_probe_read_kernel(&e->host, sizeof(e->host), &p->host);
	if ((nr == MT_NR_MMAP && (e->args[3] & MT_MAP_HUGETLB)) ||
	    (nr == MT_NR_SHMGET && (e->args[2] & MT_SHM_HUGETLB)))
		hugetlb_evidence(&e->host);
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
#ifdef MT_HAVE_MAPLE
	/* The range check walks the VMA tree in loops: a program of its own, so the verifier
	 * follows those loops once, not once per path through this one. It submits the event
	 * and clears the thread's pending failures; if the call fails, this goes on. */
	if (err == ENOMEM && is_range_syscall(nr))
		sys_tails.call(ctx, MT_TAIL_RANGE_CHECK);
#endif
	submit_full_event(full);
out:
	if (p)
		clear_pending(tid);
	return 1;
}

#ifdef MT_HAVE_MAPLE
/* The end of syscall_failed() for the range syscalls (tail-called): whether the whole
 * range given was mapped, then the event out. */
int mt_range_tail(struct bpf_raw_tracepoint_args *ctx)
{
	u32 slot = MT_SLOT_SYSCALL;
	struct mt_event_full *full = scratch_events.lookup(&slot);
	if (!full)
		return 0;
	void *task = (void *)bpf_get_current_task();
	full->e.host.flags |= range_check(task, full->e.args[0], full->e.args[1]);
	submit_full_event(full);
	clear_pending((u32)bpf_get_current_pid_tgid());
	return 0;
}
#endif

/* Every syscall exit: a thread's kernel failures pending for this syscall are forgotten. */
static __always_inline void syscall_done(void)
{
	u32 zero = 0;
	u64 *a = armed.lookup(&zero);
	if (a && *a) {
		u32 tid = (u32)bpf_get_current_pid_tgid();
		clear_pending(tid);
	}
}

/* The syscall in progress at sys_exit: orig_ax of the saved user registers. Attached as a
 * BTF-typed tracepoint (tp_btf, -DMT_SYS_EXIT_BTF), the registers are a typed pointer and
 * this is one load; as a raw tracepoint it is a helper call, most of this program's cost on
 * a server whose syscalls return 0 (a test program that only reads it: 110 ns a run as a
 * raw tracepoint, 59 as tp_btf, here). */
static __always_inline s64 sys_exit_nr(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef MT_SYS_EXIT_BTF
	return *(s64 *)((void *)ctx->args[0] + MT_OFF_REGS_ORIG_AX);
#else
	s64 nr = -1;
	bpf_probe_read_kernel(&nr, sizeof(nr), (void *)ctx->args[0] + MT_OFF_REGS_ORIG_AX);
	return nr;
#endif
}

int mt_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	long ret = ctx->args[1];
	/* The common case first: 1 .. MT_MIN_BRK_ADDR-1 (a count, a pid, a descriptor) is no
	 * failure, no break address, nothing growth looks at. */
	if ((u64)ret - 1 < MT_MIN_BRK_ADDR - 1) {
		syscall_done();
		return 0;
	}
	s64 nr = -1;
	if (ret == -ENOMEM || ret == -EAGAIN || ret >= MT_MIN_BRK_ADDR) {
		nr = sys_exit_nr(ctx);
		if (syscall_failed(ctx, ret, nr))
			return 0;
	}
	syscall_done();
#ifdef MT_PROBE_GROWTH
	/* Growth's work, in a program of its own: munmap and madvise returning 0 (only for a
	 * process with sampled memory left), brk and mremap returning an address. */
	if (ret == 0) {
		nr = sys_exit_nr(ctx);
		if (nr != MT_NR_MUNMAP && nr != MT_NR_MADVISE)
			return 0;
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		struct lk_span *sp = growth_spans.lookup(&tgid);
		if (!sp || sp->lo >= sp->hi)
			return 0;
		sys_tails.call(ctx, MT_TAIL_GROWTH_SYSCALL);
	} else if (ret >= MT_MIN_BRK_ADDR && (nr == MT_NR_BRK || nr == MT_NR_MREMAP)) {
		sys_tails.call(ctx, MT_TAIL_GROWTH_SYSCALL);
	}
#endif
	return 0;
}

#ifdef MT_PROBE_GROWTH
/* mt_sys_exit's growth work (tail-called): the syscall returned ret, its number is read again. */
int mt_growth_syscall_tail(struct bpf_raw_tracepoint_args *ctx)
{
	growth_after_syscall((void *)ctx->args[0], sys_exit_nr(ctx), ctx->args[1]);
	return 0;
}
#endif
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

	/* A page failure: the zones' free pages, watermarks and free blocks per order as they
	 * are now (compaction and freeing merge blocks again within milliseconds), for this
	 * event and for the event of the syscall it happens in; once per syscall. */
	int streamed = !(flags & MT_F_OPPORTUNISTIC) && !evidence_only;
	int zones_read = 0;
	scratch->host.flags = 0;
	if (kind == MT_KIND_PAGE_ALLOC) {
		struct mt_pending *had = (flags & MT_F_IN_SYSCALL) ? pending.lookup(&tid) : 0;
		int needed = !had || !(had->host.flags & MT_HOST_ZONES);
		struct mt_event *z = zeroes.lookup(&zero);
		if ((streamed || ((flags & MT_F_IN_SYSCALL) && needed)) && z &&
		    bpf_probe_read_kernel(&scratch->host, sizeof(scratch->host), &z->host) == 0) {
			zone_evidence(task_memcg_css(task), &scratch->host);
			zones_read = 1;
		} else if (had && streamed) {
			bpf_probe_read_kernel(&scratch->host, sizeof(scratch->host), &had->host);
		}
	}

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
			if (zones_read && !(p->host.flags & MT_HOST_ZONES))
				bpf_probe_read_kernel(&p->host, sizeof(p->host), &scratch->host);
			u32 n = p->n;
			if (n < MT_MAX_LINKED) {
				__builtin_memcpy(&p->kf[n & (MT_MAX_LINKED - 1)], kf, sizeof(*kf));
				p->n = n + 1;
			} else {
				count_drop(MT_DROP_PENDING_FULL);
			}
		}
	}

	if (!streamed)
		return; /* counted; streamed only if its syscall then fails */

	struct mt_event_full *full = new_full_event(kind == MT_KIND_PAGE_ALLOC ? MT_SLOT_PAGE
									     : MT_SLOT_OTHER);
	if (!full)
		return;
	struct mt_event *e = &full->e;
	event_header(e, task, kind);
	if (scratch->host.flags & MT_HOST_ZONES)
		bpf_probe_read_kernel(&e->host, sizeof(e->host), &scratch->host);
	e->flags = flags;
	e->kernel_stack_id = kf->kernel_stack_id;
	e->user_stack_id = (flags & MT_F_KTHREAD) ? -1 : user_stack(ctx);
#ifdef MT_HAVE_TASK_PT_REGS
	if (!(flags & MT_F_KTHREAD))
		copy_user_stack(full, (void *)bpf_task_pt_regs(
					      (struct task_struct *)bpf_get_current_task_btf()),
				e->user_stack_id);
#endif
	__builtin_memcpy(&e->kf, kf, sizeof(*kf));
	submit_full_event(full);
}

/* mm_page_alloc(struct page *page, unsigned int order, gfp_t gfp, int migratetype) */
int mt_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[0]) {
#ifdef MT_PROBE_GROWTH
		if (((u32)ctx->args[2] & MT_GFP_USER_MOVABLE) == MT_GFP_USER_MOVABLE) {
			/* A user page: growth's sampler counts it down here; a sample point, or a
			 * sample waiting for its page, goes on in a program of its own. */
			u32 zero = 0;
			struct mt_growth_cpu *c = growth_cpu.lookup(&zero);
			u64 bytes = (u64)MT_PAGE_SIZE << (ctx->args[1] & 15);
			if (c && !c->page && c->left > bytes) {
				c->left -= bytes;
				return 0;
			}
			tails.call(ctx, MT_TAIL_GROWTH_PAGE);
		}
#endif
		return 0;
	}
	u32 order = (u32)ctx->args[1];
	kernel_failure(ctx, MT_KIND_PAGE_ALLOC, (u64)MT_PAGE_SIZE << (order & 31), order,
		       (u32)ctx->args[2], (s32)ctx->args[3], 0);
	return 0;
}

#ifdef MT_KMALLOC_LO0
/* One failed kmalloc is one failure. A kmalloc above the largest slab fails inside
 * __kmalloc_large_node_noprof(), which traces it (its call site: inside the allocator
 * function that inlined __do_kmalloc_node()), and that function then traces the same
 * failure for its caller. The inner trace is kept and counted; the thread's next kmalloc
 * failure is its twin when it follows at once with the same size and GFP flags. Anything
 * else in between ends the pairing, so a real second failure is never lost. */
#define MT_KMALLOC_TWIN_NS 1000000ULL
struct mt_kmalloc_inner {
	u64 ts_ns;
	u64 size;
	u32 gfp;
	u32 pad;
};
BPF_TABLE("lru_hash", u32, struct mt_kmalloc_inner, kmalloc_inner, 1024);

/* Kernel addresses come in as decimal -D values above LLONG_MAX: unsigned literals. */
#define MT_U64_(x) x##ULL
#define MT_U64(x) MT_U64_(x)

/* Whether a kmalloc call site lies in an allocator function that traces again. The ranges
 * are [MT_KMALLOC_LOn, MT_KMALLOC_HIn) from kallsyms (tracer/kernel/build.py). */
#define MT_IN_KMALLOC_RANGE(ip, n) \
	((ip) - MT_U64(MT_KMALLOC_LO##n) < MT_U64(MT_KMALLOC_HI##n) - MT_U64(MT_KMALLOC_LO##n))

static __always_inline int in_kmalloc_inliner(u64 ip)
{
	int in = MT_IN_KMALLOC_RANGE(ip, 0);
#ifdef MT_KMALLOC_LO1
	in |= MT_IN_KMALLOC_RANGE(ip, 1);
#endif
#ifdef MT_KMALLOC_LO2
	in |= MT_IN_KMALLOC_RANGE(ip, 2);
#endif
#ifdef MT_KMALLOC_LO3
	in |= MT_IN_KMALLOC_RANGE(ip, 3);
#endif
#ifdef MT_KMALLOC_LO4
	in |= MT_IN_KMALLOC_RANGE(ip, 4);
#endif
#ifdef MT_KMALLOC_LO5
	in |= MT_IN_KMALLOC_RANGE(ip, 5);
#endif
	return in;
}

/* 1 when this failure is the allocator's second trace of the one just recorded. */
static __always_inline int kmalloc_twin(u64 call_site, u64 size, u32 gfp)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 now = bpf_ktime_get_ns();
	struct mt_kmalloc_inner *inner = kmalloc_inner.lookup(&tid);
	if (inner) {
		int twin = inner->size == size && inner->gfp == gfp &&
			   now - inner->ts_ns < MT_KMALLOC_TWIN_NS;
		kmalloc_inner.delete(&tid);
		if (twin)
			return 1;
	}
	if (in_kmalloc_inliner(call_site)) {
		struct mt_kmalloc_inner seen = {};
		seen.ts_ns = now;
		seen.size = size;
		seen.gfp = gfp;
		kmalloc_inner.update(&tid, &seen);
	}
	return 0;
}
#endif

/* kmalloc(unsigned long call_site, const void *ptr, size_t bytes_req,
 *         size_t bytes_alloc, gfp_t gfp, int node) */
int mt_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1])
		return 0;
#ifdef MT_KMALLOC_LO0
	if (kmalloc_twin(ctx->args[0], ctx->args[2], (u32)ctx->args[4]))
		return 0;
#endif
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
	void *css = event_header(e, victim, MT_KIND_OOM_KILL);
	zone_evidence(css, &e->host); /* before the victim frees anything */
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
#if defined(MT_PROBE_CGROUPS) && defined(MT_HAVE_MEMCG)
/* Cgroup names from birth. A failure names its memory cgroup by kernfs id; a cgroup
 * made and removed within milliseconds (a short-lived job's) is gone before user space
 * could look its id up in /sys/fs/cgroup, so the kernel's own announcement of each new
 * cgroup (id, hierarchy, path) is streamed, ahead in the ring buffer of any failure in
 * it. Cgroups are made rarely: no fast path needed. */

static __always_inline int cgroup_named(struct bpf_raw_tracepoint_args *ctx)
{
	void *cgrp = (void *)ctx->args[0];
	void *kn = read_ptr(cgrp, MT_OFF_CGROUP_KN);
	void *root = read_ptr(cgrp, MT_OFF_CGROUP_ROOT);
	if (!kn || !root)
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
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = MT_KIND_CGROUP;
	e->syscall_nr = -1;
	e->user_stack_id = -1;
	e->kernel_stack_id = -1;
	bpf_probe_read_kernel(&e->memcg_id, sizeof(u64), kn + MT_OFF_KERNFS_NODE_ID);
	s32 hierarchy = 0;
	bpf_probe_read_kernel(&hierarchy, sizeof(hierarchy), root + MT_OFF_CGROUP_ROOT_HIERARCHY_ID);
	e->args[0] = (u64)hierarchy;
	long n = bpf_probe_read_kernel_str(e->msg, sizeof(e->msg), (void *)ctx->args[1]);
	if (n >= (long)sizeof(e->msg) || n < 0)
		e->flags |= MT_F_TRUNCATED;
	events.ringbuf_submit(e, 0);
	return 0;
}

/* cgroup_mkdir(struct cgroup *cgrp, const char *path) */
int mt_cgroup_mkdir(struct bpf_raw_tracepoint_args *ctx)
{
	return cgroup_named(ctx);
}

/* cgroup_rename(struct cgroup *cgrp, const char *path): v1 allows renaming a cgroup */
int mt_cgroup_rename(struct bpf_raw_tracepoint_args *ctx)
{
	return cgroup_named(ctx);
}
#endif /* MT_PROBE_CGROUPS && MT_HAVE_MEMCG */

/* ======================================================================== */
#if defined(MT_PROBE_PROCESSES) && defined(MT_HAVE_FILE_PATHS)
/* Where each process's code is, from the moment it exec's: the executable and its
 * interpreter at exec, libraries as they are mapped (exec_mapping, in the syscall
 * section), and a fork's child starting with its parent's. With this a failure's stack
 * is named although the process exits a millisecond after failing (its /proc/PID/maps
 * is gone by then). Process starts are rare next to syscalls: no fast path needed. */

#define MT_AT_BASE 7 /* include/uapi/linux/auxvec.h: the interpreter's load address */

static __always_inline struct mt_event *process_event(u32 kind)
{
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
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->kind = kind;
	e->syscall_nr = -1;
	e->user_stack_id = -1;
	e->kernel_stack_id = -1;
	return e;
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
int mt_exec(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef MT_PROBE_GROWTH
	growth_ended(bpf_get_current_pid_tgid() >> 32, LK_EV_EXEC); /* a new image, a new heap */
#endif
	void *task = (void *)ctx->args[0];
	void *mm = read_ptr(task, MT_OFF_TASK_MM);
	if (!mm)
		return 0;
	void *exe = read_ptr(mm, MT_OFF_MM_EXE_FILE);
	if (!exe)
		return 0;
	struct mt_event *e = process_event(MT_KIND_EXEC);
	if (!e)
		return 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_probe_read_kernel(&e->args[0], sizeof(u64), mm + MT_OFF_MM_START_CODE);
	/* AT_BASE from the auxiliary vector the kernel gave the process (pairs of longs) */
	for (int i = 0; i < MT_AUXV_WORDS / 2; i++) {
		u64 pair[2] = {};
		bpf_probe_read_kernel(pair, sizeof(pair), mm + MT_OFF_MM_SAVED_AUXV + i * 16);
		if (pair[0] == 0)
			break;
		if (pair[0] == MT_AT_BASE) {
			e->args[1] = pair[1];
			break;
		}
	}
	e->flags = file_path(exe, e->msg);
	events.ringbuf_submit(e, 0);
	return 0;
}

/* sched_process_fork(struct task_struct *parent, struct task_struct *child) */
int mt_fork(struct bpf_raw_tracepoint_args *ctx)
{
	u32 parent = 0, child = 0;
	bpf_probe_read_kernel(&parent, sizeof(parent), (void *)ctx->args[0] + MT_OFF_TASK_TGID);
	bpf_probe_read_kernel(&child, sizeof(child), (void *)ctx->args[1] + MT_OFF_TASK_TGID);
	if (parent == child)
		return 0; /* a new thread shares its process's mappings */
	struct mt_event *e = process_event(MT_KIND_FORK);
	if (!e)
		return 0;
	e->args[0] = child;
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif /* MT_PROBE_PROCESSES && MT_HAVE_FILE_PATHS */

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

/* int mlock_future_check(struct mm_struct *mm, unsigned long flags, unsigned long len):
 * the same verdict before Linux 6.3 renamed it, 0 or -EAGAIN (Debian 12's 6.1 has this). */
int mt_ret_mlock_future_check(struct pt_regs *ctx)
{
	if ((int)return_value(ctx) == 0)
		return 0;
	kernel_failure(ctx, MT_KIND_DECISION, 0, MT_DECISION_MEMLOCK, 0, -1, 0);
	return 0;
}
#endif /* MT_PROBE_DECISIONS && MT_PROBE_KMEM */

/* ======================================================================== */
#if defined(MT_HAVE_HUGETLB) && defined(MT_SELF_TGID)
/* Kernel pointers that no symbol names here (the symbol table has no data symbols), found
 * once at start through a file memtrace itself holds. Attached to sys_enter only while
 * memtrace makes one marker call, then detached: no cost afterwards.
 *
 * The default huge page size's struct hstate: memtrace opens a memfd with MFD_HUGETLB
 * (a file on the kernel's hugetlbfs mount of the default size) and calls
 * fcntl(fd, F_GETFD, MT_DISCOVER_MAGIC); the file's superblock (checked by its magic)
 * holds the hstate in its hugetlbfs_sb_info. */

#define MT_F_GETFD 1
#define MT_HUGETLBFS_MAGIC 0x958458f6 /* include/uapi/linux/magic.h */

/* sys_enter(struct pt_regs *regs, long id) */
int mt_discover(struct bpf_raw_tracepoint_args *ctx)
{
	if ((bpf_get_current_pid_tgid() >> 32) != MT_SELF_TGID || ctx->args[1] != MT_NR_FCNTL)
		return 0;
	void *regs = (void *)ctx->args[0];
	u64 fd = 0, cmd = 0, magic = 0;
	bpf_probe_read_kernel(&fd, sizeof(fd), regs + MT_OFF_REGS_DI);
	bpf_probe_read_kernel(&cmd, sizeof(cmd), regs + MT_OFF_REGS_SI);
	bpf_probe_read_kernel(&magic, sizeof(magic), regs + MT_OFF_REGS_DX);
	if (cmd != MT_F_GETFD || magic != MT_DISCOVER_MAGIC || fd > 1 << 20)
		return 0;
	void *task = (void *)bpf_get_current_task();
	void *files = read_ptr(task, MT_OFF_TASK_FILES);
	void *fdt = files ? read_ptr(files, MT_OFF_FILES_STRUCT_FDT) : 0;
	void *fds = fdt ? read_ptr(fdt, MT_OFF_FDTABLE_FD) : 0;
	void *file = fds ? read_ptr(fds, fd * sizeof(void *)) : 0;
	void *inode = file ? read_ptr(file, MT_OFF_FILE_F_INODE) : 0;
	void *sb = inode ? read_ptr(inode, MT_OFF_INODE_I_SB) : 0;
	if (!sb)
		return 0;
	u64 sb_magic = 0;
	bpf_probe_read_kernel(&sb_magic, sizeof(sb_magic), sb + MT_OFF_SUPER_BLOCK_S_MAGIC);
	if (sb_magic != MT_HUGETLBFS_MAGIC)
		return 0;
	void *info = read_ptr(sb, MT_OFF_SUPER_BLOCK_S_FS_INFO);
	void *hstate = info ? read_ptr(info, MT_OFF_HUGETLBFS_SB_INFO_HSTATE) : 0;
	if (!hstate)
		return 0;
	u32 slot = MT_GLOBAL_HSTATE;
	u64 value = (u64)hstate;
	globals.update(&slot, &value);
	return 0;
}
#endif /* MT_HAVE_HUGETLB && MT_SELF_TGID */
