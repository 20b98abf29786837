/* task.bpf.h: reading the current task's kernel state, shared by bpf/memtrace.bpf.c and
 * bpf/leaks.bpf.c. Only plain helper calls here: bcc rewrites map calls in the main source
 * file alone, so anything that touches a map stays in the program files. Every offset
 * (MT_OFF_*) comes from the running kernel's BTF (tracer/kernel/build.py). */
#ifndef MEMTRACE_TASK_BPF_H
#define MEMTRACE_TASK_BPF_H

static __always_inline void *read_ptr(void *base, u64 off)
{
	void *p = 0;
	bpf_probe_read_kernel(&p, sizeof(p), base + off);
	return p;
}

/* The memory controller's css of the task: task->cgroups->subsys[memory]. */
static __always_inline void *task_memcg_css(void *task)
{
#ifdef MT_HAVE_MEMCG
	void *cset = read_ptr(task, MT_OFF_TASK_CGROUPS);
	if (!cset)
		return 0;
	return read_ptr(cset, MT_OFF_CSS_SET_SUBSYS_MEMCG);
#else
	return 0;
#endif
}

/* kernfs id of a cgroup_subsys_state's cgroup: css->cgroup->kn->id. */
static __always_inline u64 css_cgroup_id(void *css)
{
#ifdef MT_HAVE_MEMCG
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

/* Copy the top of a user stack into buf (room for max bytes, a constant): as much as the
 * stack's mapping holds above sp, in steps of an eighth of max, down to 256 bytes. A copy
 * that crossed the top of the mapping would fault as a whole, and the frames nearest the
 * top (main and its callers) are the ones a shorter copy loses, so the steps are fine.
 * Returns the bytes copied, 0 when not even 256 bytes could be read. */
#define MT_COPY_STACK_STEP(buf, n, sp, len) \
	if (!(len) && bpf_probe_read_user((buf), (n), (sp)) == 0) \
		(len) = (n);
#define MT_COPY_STACK_TOP(buf, max, sp, len) do { \
	(len) = 0; \
	MT_COPY_STACK_STEP(buf, (max), sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 8 * 7, sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 8 * 6, sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 8 * 5, sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 8 * 4, sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 8 * 3, sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 8 * 2, sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 8, sp, len) \
	MT_COPY_STACK_STEP(buf, (max) / 16, sp, len) \
	MT_COPY_STACK_STEP(buf, 256, sp, len) \
} while (0)

#endif /* MEMTRACE_TASK_BPF_H */
