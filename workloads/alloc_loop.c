// Benchmark workload: CALLS allocation syscalls, a third each of brk, mmap and munmap: the program
// break grows and shrinks by a page, and a page is mapped and unmapped, over and over.
// usage: alloc_loop CALLS
// Prints "ready", waits for a line on stdin (so a tracer can attach first), works, then prints
// "elapsed_ns N calls M cpu_ns C" and exits. C, the process's user+system CPU time, includes
// what tracers run in its context (BPF programs) but not time spent waiting for a busy CPU: a
// steadier figure than N on a loaded machine.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: alloc_loop CALLS\n"); return 2; }
    long rounds = atol(argv[1]) / 3;
    long page = sysconf(_SC_PAGESIZE);
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;

    long long start = now_ns();
    // Raw syscalls: libc's sbrk caches the break and would skip some calls.
    unsigned long base = syscall(SYS_brk, 0);
    for (long i = 0; i < rounds; i++) {
        syscall(SYS_brk, base + ((i & 1) ? 0 : page));
        void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        munmap(p, page);
    }
    long long elapsed = now_ns() - start;
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    long long cpu = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000000LL +
                    (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1000LL;
    printf("elapsed_ns %lld calls %ld cpu_ns %lld\n", elapsed, rounds * 3, cpu);
    fflush(stdout);
    return 0;
}
