// Four threads allocating and freeing without pause, for attaching `leaks --malloc` to a busy
// process: before "go" they churn; on "go" each keeps 100 blocks of 64 bytes from
// keep_per_thread (25,600 bytes in 400 blocks in all), says "done", and churns on until "exit".
// usage: malloc_threads wait
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 4

static atomic_int phase;   // 0 churn, 1 keep, 2 exit
static atomic_int kept;
static void *volatile sink;

__attribute__((noinline)) void keep_per_thread(void) {
    for (int i = 0; i < 100; i++) {
        void *p = malloc(64);
        if (!p) exit(1);
        sink = p;
    }
}

static void *worker(void *arg) {
    (void)arg;
    int done = 0;
    for (unsigned long i = 0; atomic_load(&phase) != 2; i++) {
        void *p = malloc(16 + i % 200);
        if (!p) exit(1);
        sink = p;
        free(p);
        if (!done && atomic_load(&phase) == 1) {
            keep_per_thread();
            done = 1;
            atomic_fetch_add(&kept, 1);
        }
    }
    return NULL;
}

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(void) {
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, worker, NULL)) exit(1);
    printf("ready\n");
    fflush(stdout);
    wait_line();
    atomic_store(&phase, 1);
    while (atomic_load(&kept) < THREADS) {
    }
    printf("done\n");
    fflush(stdout);
    wait_line();
    atomic_store(&phase, 2);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    return 0;
}
