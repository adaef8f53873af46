// Benchmark workload: takes FAULTS minor faults on fresh anonymous pages, in a bounded 64 MiB
// window that is mapped, touched and unmapped over and over, split across THREADS threads.
// usage: fault_loop FAULTS THREADS
// Prints "ready", waits for a line on stdin (so a tracer can attach first), works, then prints
// "elapsed_ns N minflt M" (M: the kernel's own count, from getrusage) and exits.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define WINDOW_PAGES 16384L  /* 64 MiB of 4 KiB pages */

static long faults_per_thread;

static void *work(void *arg) {
    (void)arg;
    long page = sysconf(_SC_PAGESIZE);
    for (long done = 0; done < faults_per_thread;) {
        long pages = faults_per_thread - done < WINDOW_PAGES ? faults_per_thread - done : WINDOW_PAGES;
        char *region = mmap(NULL, pages * page, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED) { perror("mmap"); exit(1); }
        madvise(region, pages * page, MADV_NOHUGEPAGE);
        for (long i = 0; i < pages; i++) region[i * page] = 1;
        munmap(region, pages * page);
        done += pages;
    }
    return NULL;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: fault_loop FAULTS THREADS\n"); return 2; }
    long faults = atol(argv[1]), threads = atol(argv[2]);
    if (threads < 1 || threads > 64) return 2;
    faults_per_thread = faults / threads;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;

    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    long long start = now_ns();
    pthread_t ids[64];
    for (long t = 1; t < threads; t++) pthread_create(&ids[t], NULL, work, NULL);
    work(NULL);
    for (long t = 1; t < threads; t++) pthread_join(ids[t], NULL);
    long long elapsed = now_ns() - start;
    getrusage(RUSAGE_SELF, &after);
    printf("elapsed_ns %lld minflt %ld\n", elapsed, after.ru_minflt - before.ru_minflt);
    fflush(stdout);
    return 0;
}
