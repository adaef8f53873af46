/* ~N*3 allocation syscalls as fast as possible: mmap+munmap of one page, and brk up/down by
 * sbrk. Used by the trace benchmark. Usage: syscall_storm N */
#define _DEFAULT_SOURCE
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    for (long i = 0; i < n; i++) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 1;
        munmap(p, 4096);
        /* alternate growing and shrinking the break */
        sbrk((i & 1) ? -4096 : 4096);
    }
    return 0;
}
