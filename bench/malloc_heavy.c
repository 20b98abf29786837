/* malloc_heavy.c: millions of small malloc/free calls a second, for measuring what a
 * tracer on the process's allocator (uprobes) or on its syscalls and page faults costs
 * the fast path of malloc.
 *
 * Each iteration frees the oldest block of a small rotating window of live blocks,
 * mallocs a new one of a varied small size (16 to 1024 bytes, from a cheap LCG), writes
 * one byte to it and keeps it in the window: one malloc and one free per iteration,
 * almost all served from glibc's tcache/fastbins, no syscalls and no new pages once
 * warmed up.
 *
 * It first warms up: fills the window and runs WARMUP untimed iterations of the same
 * loop, so the heap and glibc's per-size caches have reached their steady size (no brk
 * left to do) before anything is measured. Then it prints "ready" and waits for
 * SIGUSR1 so a tracer can attach first; then it runs ITERS iterations, prints
 * "elapsed <seconds> cpu <seconds> ..." (CLOCK_MONOTONIC and the process's CPU time,
 * around the loop only) and exits.
 *
 * Usage: malloc_heavy ITERS [WINDOW [WARMUP]]
 *   WINDOW: live blocks, a power of two (default 64); WARMUP: default 1000000.
 * Built by bench/leaks_bench.py with gcc -O2 into bench/out/malloc_heavy. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_WINDOW 64L
#define DEFAULT_WARMUP 1000000L
#define MAX_WINDOW 65536L

/* Global, so the compiler cannot pair up a malloc with its free and drop both. */
char *window[MAX_WINDOW];
volatile unsigned long sink;

static double clock_s(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse_arg(const char *s, const char *what)
{
	char *end = NULL;
	long v = strtol(s, &end, 10);
	if (!end || *end || v <= 0) {
		fprintf(stderr, "malloc_heavy: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static size_t next_size(unsigned int *state)
{
	*state = *state * 1103515245u + 12345u;
	return 16 + ((*state >> 16) & 1008u); /* 16..1024, multiples of 16 */
}

/* n iterations: free the oldest block of the window, malloc a new one, touch it. */
static void churn(long n, unsigned long mask, unsigned int *state)
{
	for (long i = 0; i < n; i++) {
		unsigned long slot = (unsigned long)i & mask;
		sink += (unsigned char)window[slot][0];
		free(window[slot]);
		char *p = malloc(next_size(state));
		if (!p) {
			perror("malloc_heavy: malloc");
			exit(1);
		}
		p[0] = (char)i;
		window[slot] = p;
	}
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: malloc_heavy ITERS [WINDOW [WARMUP]]\n");
		return 2;
	}
	long iters = parse_arg(argv[1], "ITERS");
	long win = argc > 2 ? parse_arg(argv[2], "WINDOW") : DEFAULT_WINDOW;
	long warmup = argc > 3 ? parse_arg(argv[3], "WARMUP") : DEFAULT_WARMUP;
	if (win > MAX_WINDOW || (win & (win - 1))) {
		fprintf(stderr, "malloc_heavy: WINDOW must be a power of two <= %ld\n", MAX_WINDOW);
		return 2;
	}
	unsigned long mask = (unsigned long)win - 1;
	unsigned int state = 12345u;

	/* Block SIGUSR1 before saying ready: a signal sent right after "ready" stays
	 * pending until sigwait takes it, so there is no race. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
		perror("malloc_heavy: sigprocmask");
		return 1;
	}

	for (long i = 0; i < win; i++) { /* warm-up: the window, then the steady state */
		window[i] = malloc(next_size(&state));
		if (!window[i]) {
			perror("malloc_heavy: malloc");
			return 1;
		}
		window[i][0] = (char)i;
	}
	churn(warmup, mask, &state);

	printf("ready\n");
	fflush(stdout);
	int sig = 0;
	if (sigwait(&set, &sig) != 0) {
		fprintf(stderr, "malloc_heavy: sigwait failed\n");
		return 1;
	}

	double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	churn(iters, mask, &state);
	double t1 = clock_s(CLOCK_MONOTONIC), c1 = clock_s(CLOCK_PROCESS_CPUTIME_ID);

	printf("elapsed %.6f cpu %.6f iters %ld window %ld\n", t1 - t0, c1 - c0, iters, win);
	fflush(stdout);
	for (long i = 0; i < win; i++)
		free(window[i]);
	return 0;
}
