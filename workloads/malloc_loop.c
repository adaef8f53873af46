// Benchmark workload: CALLS allocator calls, half malloc and half free, of sizes 16 to 1024
// bytes, a few live at a time (as a busy program's short-lived objects); with KEEP, also keeps
// KEEP blocks of 32 bytes allocated to the end (for the memory row: 1M outstanding blocks).
// usage: malloc_loop CALLS [KEEP]
// Prints "ready", waits for a line on stdin (so a tracer can attach first), works, then prints
// "elapsed_ns N calls M cpu_ns C" (as alloc_loop) and, with KEEP, waits for another line
// before it exits (the tracer reads its table meanwhile).
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: malloc_loop CALLS [KEEP]\n"); return 2; }
    long pairs = atol(argv[1]) / 2;
    long keep = argc > 2 ? atol(argv[2]) : 0;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;

    long long start = now_ns();
    void *live[8] = {0};
    for (long i = 0; i < pairs; i++) {
        int slot = i & 7;
        free(live[slot]);
        live[slot] = malloc(16 + (i * 37) % 1009);
        if (!live[slot]) return 1;
    }
    for (int slot = 0; slot < 8; slot++) free(live[slot]);
    void **kept = keep ? malloc(keep * sizeof(void *)) : NULL;
    for (long i = 0; i < keep; i++) {
        kept[i] = malloc(32);
        if (!kept[i]) return 1;
    }
    long long elapsed = now_ns() - start;
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    long long cpu = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000000LL +
                    (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1000LL;
    printf("elapsed_ns %lld calls %ld cpu_ns %lld\n", elapsed, pairs * 2 + keep, cpu);
    fflush(stdout);
    if (keep && !fgets(line, sizeof line, stdin)) return 3;
    return 0;
}
