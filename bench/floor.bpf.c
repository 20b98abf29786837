/* floor.bpf.c: the least any tracer of allocation failures must pay on the hooks
 * memtrace uses on every event. Each program reads the one argument that says
 * "this failed", compares it and returns. The branch taken on a failure bumps a
 * counter, so the compiler cannot drop the comparison; in the benchmarks it never
 * runs. Loaded by bench/floor.py (bcc), which with --only-sys-exit attaches only
 * floor_sys_exit (the bare syscall hook); the raw tracepoint arguments are the same
 * ones bpf/memtrace.bpf.c reads. */

BPF_ARRAY(floor_hits, u64, 4);

static __always_inline int floor_hit(u32 slot)
{
	u64 *v = floor_hits.lookup(&slot);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

/* sys_exit(struct pt_regs *regs, long ret) */
int floor_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	if ((long)ctx->args[1] != -12)
		return 0;
	return floor_hit(0);
}

/* mm_page_alloc(struct page *page, unsigned int order, gfp_t gfp, int migratetype) */
int floor_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[0])
		return 0;
	return floor_hit(1);
}

/* kmalloc(unsigned long call_site, const void *ptr, size_t bytes_req,
 *         size_t bytes_alloc, gfp_t gfp, int node) */
int floor_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1])
		return 0;
	return floor_hit(2);
}

/* kmem_cache_alloc(unsigned long call_site, const void *ptr, struct kmem_cache *s,
 *                  gfp_t gfp, int node) */
int floor_kmem_cache(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1])
		return 0;
	return floor_hit(3);
}
