// Benchmark workload for the event storm: THREADS threads together make RATE traced calls per
// second (mmap then munmap of one page, so two calls per step) for SECONDS, or as many as they
// can when RATE is 0. Pacing is by deadline, in batches of 64 calls, so the rate holds on
// average without a timer per call; a thread that falls behind does not catch up in a burst.
// usage: paced_calls RATE SECONDS THREADS
// Prints "ready", waits for a line on stdin, works, then prints "elapsed_ns T calls M".
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double rate_per_thread; /* calls per second, 0: unpaced */
static long long duration_ns;
static long calls[64];

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *work(void *arg) {
    long index = (long)arg, done = 0;
    long long start = now_ns(), now = start;
    while (now - start < duration_ns) {
        for (int i = 0; i < BATCH; i += 2) {
            void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { perror("mmap"); exit(1); }
            munmap(p, 4096);
        }
        done += BATCH;
        now = now_ns();
        if (rate_per_thread > 0) {
            long long due = start + (long long)(done / rate_per_thread * 1e9);
            if (due > now) {
                struct timespec pause = { (due - now) / 1000000000LL, (due - now) % 1000000000LL };
                nanosleep(&pause, NULL);
                now = now_ns();
            } else if (now - due > 10000000LL) {
                /* More than 10 ms behind: drop the debt instead of bursting to repay it. */
                start = now - (long long)(done / rate_per_thread * 1e9);
            }
        }
    }
    calls[index] = done;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: paced_calls RATE SECONDS THREADS\n"); return 2; }
    double rate = atof(argv[1]), seconds = atof(argv[2]);
    long threads = atol(argv[3]);
    if (threads < 1 || threads > 64 || seconds <= 0 || rate < 0) return 2;
    rate_per_thread = rate / threads;
    duration_ns = (long long)(seconds * 1e9);
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;

    long long start = now_ns();
    pthread_t ids[64];
    for (long t = 1; t < threads; t++) pthread_create(&ids[t], NULL, work, (void *)t);
    work((void *)0);
    long total = calls[0];
    for (long t = 1; t < threads; t++) {
        pthread_join(ids[t], NULL);
        total += calls[t];
    }
    long long elapsed = now_ns() - start;
    printf("elapsed_ns %lld calls %ld\n", elapsed, total);
    fflush(stdout);
    return 0;
}
