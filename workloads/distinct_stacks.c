// Benchmark workload: 16384 distinct call paths, each touching one new page, so that a tracer
// counting faults per stack has a report of 16384 distinct stacks to symbolize. Each path goes
// through 14 levels of two functions each (f1_a or f1_b, then f2_a or f2_b, ...), so paths
// differ by function name, not only by return address: folded stacks keep them apart.
// usage: distinct_stacks STAMP_FILE
// Writes to STAMP_FILE, just before it exits, its CLOCK_MONOTONIC time in nanoseconds (so the
// time a tracer takes after the workload's exit can be measured), and prints
// "elapsed_ns N minflt M leaves L".
// Built -O2 -g: no frame pointers; unwinders need the DWARF call frame information.
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define LEVELS 14
#define LEAVES (1L << LEVELS)

// Every function is a distinct frame: not inlined, not cloned, never merged with its twin
// (their bodies differ by the constant they add), and its calls are not tail calls (the barrier
// after them), which would drop the caller's frame.
#define FRAME __attribute__((noinline, noclone))
#define BARRIER __asm__ volatile("" ::: "memory")

static char *pages;
static long page_size;
static long touched;
volatile unsigned long sink;

FRAME void touch_page(void) {
    pages[touched++ * page_size] = 1;
    BARRIER;
}

#define LEAF(k)                                                                                \
    FRAME void f##k##_a(void) { sink += 2 * (k); touch_page(); BARRIER; }                       \
    FRAME void f##k##_b(void) { sink += 2 * (k) + 1; touch_page(); BARRIER; }

#define LEVEL(k, n)                                                                            \
    FRAME void f##k##_a(void) { sink += 2 * (k); f##n##_a(); f##n##_b(); BARRIER; }             \
    FRAME void f##k##_b(void) { sink += 2 * (k) + 1; f##n##_a(); f##n##_b(); BARRIER; }

LEAF(14)
LEVEL(13, 14)
LEVEL(12, 13)
LEVEL(11, 12)
LEVEL(10, 11)
LEVEL(9, 10)
LEVEL(8, 9)
LEVEL(7, 8)
LEVEL(6, 7)
LEVEL(5, 6)
LEVEL(4, 5)
LEVEL(3, 4)
LEVEL(2, 3)
LEVEL(1, 2)

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: distinct_stacks STAMP_FILE\n"); return 2; }
    page_size = sysconf(_SC_PAGESIZE);
    pages = mmap(NULL, LEAVES * page_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(pages, LEAVES * page_size, MADV_NOHUGEPAGE);
    FILE *stamp = fopen(argv[1], "w");
    if (!stamp) { perror(argv[1]); return 1; }

    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    long long start = now_ns();
    f1_a();
    f1_b();
    long long elapsed = now_ns() - start;
    getrusage(RUSAGE_SELF, &after);
    printf("elapsed_ns %lld minflt %ld leaves %ld\n", elapsed, after.ru_minflt - before.ru_minflt,
           touched);
    fflush(stdout);
    fprintf(stamp, "%lld\n", now_ns());
    return fclose(stamp) == 0 ? 0 : 1;
}
