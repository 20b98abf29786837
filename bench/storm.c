/* storm.c: a fixed amount of allocation-heavy and syscall-heavy work, for measuring
 * what memtrace's always-on probes cost on the hot paths they hook.
 *
 *   phase 1 (mmap):    ITERS times: mmap a REGION-byte anonymous private mapping,
 *                      write one byte to each page (a page fault and a page
 *                      allocation each: mm_page_alloc, plus the slab allocations of
 *                      the VMA and page tables: kmalloc / kmem_cache_alloc), munmap.
 *   phase 2 (syscall): SYSCALLS times syscall(SYS_getppid): a syscall that does
 *                      nearly nothing, so sys_exit's probe cost is most of its cost.
 *
 * Usage: storm [ITERS [SYSCALLS [REGION_KIB]]]
 * Prints one line: "storm total_s=<s> mmap_s=<s> syscall_s=<s> iters=... syscalls=... region_kib=..."
 * Built by bench/run_all.py with gcc -O2 into bench/out/storm. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_ITERS 50000L
#define DEFAULT_SYSCALLS 8000000L
#define DEFAULT_REGION_KIB 64L

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long arg_or(int argc, char **argv, int i, long def)
{
	if (argc <= i)
		return def;
	char *end = NULL;
	long v = strtol(argv[i], &end, 10);
	if (!end || *end || v <= 0) {
		fprintf(stderr, "storm: bad argument %s\n", argv[i]);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	long iters = arg_or(argc, argv, 1, DEFAULT_ITERS);
	long syscalls = arg_or(argc, argv, 2, DEFAULT_SYSCALLS);
	long region_kib = arg_or(argc, argv, 3, DEFAULT_REGION_KIB);
	long page = sysconf(_SC_PAGESIZE);
	size_t region = (size_t)region_kib * 1024;
	volatile long sink = 0;

	double t0 = now_s();
	for (long i = 0; i < iters; i++) {
		char *p = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			perror("storm: mmap");
			return 1;
		}
		for (size_t off = 0; off < region; off += (size_t)page)
			p[off] = (char)i;
		sink += p[region - 1];
		if (munmap(p, region) != 0) {
			perror("storm: munmap");
			return 1;
		}
	}
	double t1 = now_s();
	for (long i = 0; i < syscalls; i++)
		sink += syscall(SYS_getppid);
	double t2 = now_s();

	/* CPU time, not wall time: what the storm itself spent (BPF programs run in its
	 * context), without the time a shared VM's CPU was taken from it. */
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
		     ru.ru_stime.tv_usec / 1e6;
	printf("storm total_s=%.6f mmap_s=%.6f syscall_s=%.6f cpu_s=%.6f iters=%ld syscalls=%ld "
	       "region_kib=%ld\n", t2 - t0, t1 - t0, t2 - t1, cpu, iters, syscalls, region_kib);
	return 0; /* sink is volatile: its updates keep the loops from being optimised away */
}
