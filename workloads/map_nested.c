// Allocation calls from nested functions, for `trace --stack` against `strace -k`: each round
// maps in map_inner (reached through map_outer and map_middle), and unmaps in unmap_leaf.
// usage: map_nested ROUNDS THREADS   (THREADS > 0: that many threads do the rounds too)
// It lingers 300 ms before exiting (times MEMTRACE_TEST_TIME_SCALE, on slow machines): a
// tracer reads a process's mappings while it lives, and this one would otherwise be gone
// within a millisecond.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static long rounds;

__attribute__((noinline)) void *map_inner(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    __asm__ volatile("" ::: "memory");
    return p;
}

__attribute__((noinline)) void *map_middle(size_t bytes) {
    void *p = map_inner(bytes);
    __asm__ volatile("" ::: "memory");
    return p;
}

__attribute__((noinline)) void *map_outer(size_t bytes) {
    void *p = map_middle(bytes);
    __asm__ volatile("" ::: "memory");
    return p;
}

__attribute__((noinline)) void unmap_leaf(void *p, size_t bytes) {
    munmap(p, bytes);
    __asm__ volatile("" ::: "memory");
}

static void *work(void *arg) {
    size_t bytes = (size_t)arg;
    for (long i = 0; i < rounds; i++) {
        void *p = map_outer(bytes);
        if (p == MAP_FAILED) exit(1);
        unmap_leaf(p, bytes);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: map_nested ROUNDS THREADS\n");
        return 2;
    }
    rounds = atol(argv[1]);
    long threads = atol(argv[2]);
    pthread_t ids[16];
    if (threads > 16) threads = 16;
    for (long t = 0; t < threads; t++)
        pthread_create(&ids[t], NULL, work, (void *)(size_t)((t + 2) * 4096));
    work((void *)(size_t)4096);
    for (long t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    const char *scale = getenv("MEMTRACE_TEST_TIME_SCALE");
    usleep(300 * 1000 * (scale && atoi(scale) > 0 ? atoi(scale) : 1));
    return 0;
}
