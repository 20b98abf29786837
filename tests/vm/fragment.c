/* Fragments physical memory on purpose, then makes an order-10 kernel allocation fail.
 *
 * Only for the VM tier's guest (tests/vm/test_fragmentation.py), following the recipe of
 * KERNEL-NOTES.md: lock nearly all free memory as 4 KiB pages (the caller sets
 * vm.compact_unevictable_allowed=0 so compaction cannot move them), free the pages whose
 * physical frame number is even (their buddies stay locked, so nothing merges), take the
 * remaining high-order blocks with locked transparent huge pages until no more form, then
 * ask for a 256 MiB pipe: its ring is a 2.5 MiB kcalloc, an order-10 page allocation.
 *
 * usage: fragment RESERVE_MIB   (memory left unlocked at the start, for everyone else)
 * Prints one JSON line: what it locked and freed, the fcntl result, /proc/buddyinfo read
 * right after the failure, then exits at once (all of it is freed). Needs root (PFNs). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24 /* Linux 5.18: drop pages of a locked mapping, no split */
#endif
#define PAGE 4096UL
#define HUGE (2UL << 20)
#define PFN_MASK ((1ULL << 55) - 1)
#define PRESENT (1ULL << 63)
#define KPF_THP 22

static long meminfo_kib(const char *key) {
    char line[256];
    size_t n = strlen(key);
    long value = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':')
            value = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return value;
}

static uint64_t pagemap_entry(int pagemap, const void *addr) {
    uint64_t e = 0;
    if (pread(pagemap, &e, sizeof e, (off_t)((uintptr_t)addr / PAGE) * 8) != sizeof e)
        return 0;
    return e;
}

static int is_thp(int pagemap, int kpageflags, const void *addr) {
    uint64_t e = pagemap_entry(pagemap, addr), flags = 0;
    if (!(e & PRESENT))
        return 0;
    if (pread(kpageflags, &flags, sizeof flags, (off_t)(e & PFN_MASK) * 8) != sizeof flags)
        return 0;
    return (flags >> KPF_THP) & 1;
}

static void print_buddyinfo(void) {
    char text[4096];
    FILE *f = fopen("/proc/buddyinfo", "r");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f)
        fclose(f);
    text[n] = 0;
    printf("\"buddyinfo\":\"");
    for (size_t i = 0; i < n; i++)
        printf(text[i] == '\n' ? "\\n" : "%c", text[i]);
    printf("\"");
}

int main(int argc, char **argv) {
    long reserve_mib = argc > 1 ? strtol(argv[1], NULL, 10) : 96;
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    int kpageflags = open("/proc/kpageflags", O_RDONLY);
    if (pagemap < 0 || kpageflags < 0) {
        perror("open pagemap/kpageflags (root?)");
        return 2;
    }
    long free_kib = meminfo_kib("MemFree");
    size_t size = (size_t)(free_kib - reserve_mib * 1024) * 1024;
    size &= ~(PAGE - 1);
    char *small = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (small == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    madvise(small, size, MADV_NOHUGEPAGE);
    if (mlock(small, size) != 0) {
        perror("mlock");
        return 2;
    }
    /* Free every page whose frame number is even: its buddy (odd) stays locked. */
    size_t pages = size / PAGE, freed = 0;
    for (size_t i = 0; i < pages; i++) {
        uint64_t e = pagemap_entry(pagemap, small + i * PAGE);
        if ((e & PRESENT) && (e & PFN_MASK) % 2 == 0) {
            if (madvise(small + i * PAGE, PAGE, MADV_DONTNEED_LOCKED) == 0)
                freed++;
        }
    }
    /* Take the high-order blocks left (and any compaction builds) as locked THPs. */
    size_t thps = 0, misses = 0;
    while (misses < 8) {
        char *raw = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                         -1, 0);
        if (raw == MAP_FAILED)
            break;
        char *huge = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
        madvise(huge, HUGE, MADV_HUGEPAGE);
        huge[0] = 1;
        if (is_thp(pagemap, kpageflags, huge) && mlock(huge, HUGE) == 0) {
            thps++;
            misses = 0;
        } else {
            munmap(raw, 2 * HUGE);
            misses++;
        }
    }
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        return 2;
    }
    int r = fcntl(p[1], F_SETPIPE_SZ, 256 << 20);
    int err = r < 0 ? errno : 0;
    printf("{\"pid\":%d,\"locked\":%zu,\"freed_pages\":%zu,\"thps\":%zu,\"fcntl\":%d,"
           "\"errno\":%d,\"mem_free_kib\":%ld,",
           getpid(), size, freed, thps, r, err, meminfo_kib("MemFree"));
    print_buddyinfo();
    printf("}\n");
    fflush(stdout);
    return 0;
}
