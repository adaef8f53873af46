// Anonymous memory pushed out to swap and touched again, for major faults from swap-ins: maps
// MIB MiB (small pages only), writes every page, then every page again (in a memory cgroup
// smaller than MIB, the second pass swaps in what reclaim swapped out). Prints its own counts
// of the second pass, `swapins minflt=N majflt=M` (getrusage deltas), on stderr.
// usage: swap_touch MIB
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>

static void touch(char *p, size_t bytes, char value) {
    for (size_t i = 0; i < bytes; i += 4096) p[i] = value;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: swap_touch MIB\n"); return 2; }
    size_t bytes = (size_t)atol(argv[1]) << 20;
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(p, bytes, MADV_NOHUGEPAGE);
    touch(p, bytes, 1);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    touch(p, bytes, 2);
    getrusage(RUSAGE_SELF, &after);
    fprintf(stderr, "swapins minflt=%ld majflt=%ld\n", after.ru_minflt - before.ru_minflt,
            after.ru_majflt - before.ru_majflt);
    return 0;
}
