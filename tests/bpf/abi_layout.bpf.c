/* abi_layout.bpf.c: every struct of memtrace.h as the value of a map of its own, so the
 * BTF bcc attaches to the maps describes each one exactly as the compiler laid it out
 * (tests/bpf/test_abi.py compares it with tracer/kernel/abi.py's mirrors). The real
 * programs keep some structs (lk_event) only in inlined code, which BTF does not keep. */
#include "memtrace.h"

/* failure tracer */
BPF_ARRAY(layout_mt_kfail, struct mt_kfail, 1);
BPF_ARRAY(layout_mt_task_evidence, struct mt_task_evidence, 1);
BPF_ARRAY(layout_mt_memcg_evidence, struct mt_memcg_evidence, 1);
BPF_ARRAY(layout_mt_host_evidence, struct mt_host_evidence, 1);
BPF_ARRAY(layout_mt_event, struct mt_event, 1);
BPF_ARRAY(layout_mt_event_full, struct mt_event_full, 1);
BPF_ARRAY(layout_mt_syscall_key, struct mt_syscall_key, 1);
BPF_ARRAY(layout_mt_kfail_key, struct mt_kfail_key, 1);
BPF_ARRAY(layout_mt_pending, struct mt_pending, 1);
BPF_ARRAY(layout_mt_growth_cpu, struct mt_growth_cpu, 1);

/* leak profiler */
BPF_ARRAY(layout_lk_key, struct lk_key, 1);
BPF_ARRAY(layout_lk_stats, struct lk_stats, 1);
BPF_ARRAY(layout_lk_alloc, struct lk_alloc, 1);
BPF_ARRAY(layout_lk_entry, struct lk_entry, 1);
BPF_ARRAY(layout_lk_event, struct lk_event, 1);
BPF_ARRAY(layout_lk_span, struct lk_span, 1);

/* bcc emits BTF only for a module with at least one program; this one is never loaded. */
int abi_layout(void *ctx)
{
	return 0;
}
