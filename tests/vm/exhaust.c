/* The article's example 3 (SEED.md): map 1 MiB of anonymous memory, touch it, never unmap,
 * forever, until the kernel says no or the OOM killer ends it. Only for the VM tier's guest. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void) {
    const size_t chunk = 1 << 20;
    for (;;) {
        char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap failed");
            return 1;
        }
        memset(p, 0, chunk); /* touch every page: now it is real memory */
    }
}
