/* enomem_storm.c: threads failing mmap with ENOMEM as fast as they can, for measuring
 * what a storm of failures costs memtrace itself (its peak RSS) and checking that its
 * exact counts keep up.
 *
 * Each thread asks for a 64 TiB anonymous private mapping in a loop: more than this
 * machine's memory, so the kernel's overcommit check refuses it (ENOMEM) without
 * touching anything. Nothing is ever mapped, so the storm itself costs no memory.
 *
 * Usage: enomem_storm [THREADS [SECONDS [COMM]]]   (defaults: 2 threads, 5 s)
 * COMM, when given, names the process and its threads (PR_SET_NAME) so a tracer's
 * totals for it can be found. Prints one line when done:
 *   "enomem_storm pid=<pid> threads=<n> seconds=<s> enomem=<count> other=<count>"
 * where enomem is the exact number of mmap calls that failed with ENOMEM and other
 * the calls that did anything else (expected 0). Exit status 1 when other > 0.
 * Built by bench/peak_rss.py and the tests with: gcc -O2 -pthread. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define HUGE_BYTES (1UL << 46)
#define MAX_THREADS 64

struct worker {
	pthread_t thread;
	double deadline;
	unsigned long enomem;
	unsigned long other;
};

static const char *comm_name;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *fail_mmap(void *arg)
{
	struct worker *w = arg;
	if (comm_name)
		prctl(PR_SET_NAME, comm_name, 0, 0, 0);
	/* The clock is read once per 1024 calls: cheap next to the syscalls. */
	while (now_s() < w->deadline) {
		for (int i = 0; i < 1024; i++) {
			void *p = mmap(NULL, HUGE_BYTES, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED && errno == ENOMEM) {
				w->enomem++;
			} else {
				w->other++;
				if (p != MAP_FAILED)
					munmap(p, HUGE_BYTES);
			}
		}
	}
	return NULL;
}

static long arg_or(int argc, char **argv, int i, long def, long max)
{
	if (argc <= i)
		return def;
	char *end = NULL;
	long v = strtol(argv[i], &end, 10);
	if (!end || *end || v <= 0 || v > max) {
		fprintf(stderr, "enomem_storm: bad argument %s\n", argv[i]);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	long threads = arg_or(argc, argv, 1, 2, MAX_THREADS);
	long seconds = arg_or(argc, argv, 2, 5, 3600);
	static struct worker workers[MAX_THREADS];

	if (argc > 3) {
		comm_name = argv[3];
		prctl(PR_SET_NAME, comm_name, 0, 0, 0);
	}
	/* One failure before the threads start: a tracer's per-process counter then exists
	 * before they race. (memtrace's BPF counter is created by a lookup, then an update:
	 * two CPUs creating it at the same instant can lose one count; that is a tracer bug
	 * of its own, measured apart, not what this storm is for.) Counted like the rest. */
	unsigned long primed = 0;
	void *first = mmap(NULL, HUGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	if (first == MAP_FAILED && errno == ENOMEM) {
		primed = 1;
	} else {
		if (first != MAP_FAILED)
			munmap(first, HUGE_BYTES);
		fprintf(stderr, "enomem_storm: a 64 TiB mmap did not fail with ENOMEM\n");
		return 1;
	}
	double deadline = now_s() + (double)seconds;
	for (long i = 0; i < threads; i++) {
		workers[i].deadline = deadline;
		int err = pthread_create(&workers[i].thread, NULL, fail_mmap, &workers[i]);
		if (err) {
			fprintf(stderr, "enomem_storm: pthread_create: %s\n", strerror(err));
			return 2;
		}
	}
	unsigned long enomem = primed, other = 0;
	for (long i = 0; i < threads; i++) {
		pthread_join(workers[i].thread, NULL);
		enomem += workers[i].enomem;
		other += workers[i].other;
	}
	printf("enomem_storm pid=%d threads=%ld seconds=%ld enomem=%lu other=%lu\n", (int)getpid(),
	       threads, seconds, enomem, other);
	fflush(stdout);
	return other ? 1 : 0;
}
