// Mappings kept and dropped from known functions, for `memtrace leaks`: before "ready",
// keep_before maps 2 MiB (made before a tracer attaches: not a leak it can see); on "go",
// keep_small maps 3 x 64 KiB, keep_big 4 MiB (MAP_NORESERVE, so it stays its own mapping) of
// which it touches 1 MiB, keep_grown maps 64 KiB and grows it to 256 KiB with mremap, and churn
// maps and unmaps 1 MiB 50 times. Everything kept stays mapped until "exit".
// usage: keep_maps wait
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define KIB 1024UL

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

static char *map(size_t bytes, int extra) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
    if (p == MAP_FAILED) exit(1);
    return p;
}

__attribute__((noinline)) char *keep_before(void) { return map(2048 * KIB, 0); }

__attribute__((noinline)) void keep_small(char **kept) {
    for (int i = 0; i < 3; i++) kept[i] = map(64 * KIB, 0);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) char *keep_big(void) {
    char *p = map(4096 * KIB, MAP_NORESERVE);
    // Small pages only: with transparent huge pages, 1 MiB touched could be 2 MiB resident.
    madvise(p, 4096 * KIB, MADV_NOHUGEPAGE);
    for (unsigned long i = 0; i < 1024 * KIB; i += 4 * KIB) p[i] = 1;
    return p;
}

__attribute__((noinline)) char *keep_grown(void) {
    char *p = map(64 * KIB, 0);
    p = mremap(p, 64 * KIB, 256 * KIB, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) exit(1);
    return p;
}

__attribute__((noinline)) void churn(void) {
    for (int i = 0; i < 50; i++) munmap(map(1024 * KIB, 0), 1024 * KIB);
    __asm__ volatile("" ::: "memory");
}

int main(void) {
    char *before = keep_before();
    before[0] = 1;
    printf("ready\n");
    fflush(stdout);
    wait_line();
    char *small[3];
    keep_small(small);
    char *big = keep_big();
    char *grown = keep_grown();
    churn();
    printf("done\n");
    fflush(stdout);
    wait_line();
    return big[0] + grown[0] + small[0][0] - 1;
}
