// Blocks allocated and kept or freed from known functions, for `memtrace leaks --malloc`.
// Before "ready", keep_before allocates 10 x 1000 bytes (before a tracer attaches: not a leak it
// can see). Then (on "go" with `wait`, at once without) it keeps:
//   keep_small    150 small blocks from two threads: 100 x 48 and 50 x 200 bytes   (14,800)
//   keep_large    3 x 1 MiB (glibc serves them by mmap)                           (3,145,728)
//   keep_grown    a buffer grown by realloc from 16 bytes to 64 KiB, 1 block      (65,536)
//   keep_aligned  posix_memalign 2 x 8192, aligned_alloc 4096, calloc 10 x 100, memalign 300,
//                 valloc 5000, pvalloc 5000 (two pages), reallocarray 10 x 30       (35,272)
//   keep_edges    a block a failing realloc must leave as it was, one realloc(p, 0) frees,
//                 and a calloc whose size overflows (fails)                          (100, 1 block)
// and churn allocates and frees 20,000 x 4 blocks of every kind, keeping none. Everything kept
// stays allocated until the program exits.
// usage: malloc_keep [wait]
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

static void *volatile sink;

static void must(void *p) {
    if (!p) exit(1);
    sink = p;
}

__attribute__((noinline)) void keep_before(void) {
    for (int i = 0; i < 10; i++) must(malloc(1000));
}

struct small { int count; size_t size; };

__attribute__((noinline)) void keep_small(const struct small *s) {
    for (int i = 0; i < s->count; i++) must(malloc(s->size));
}

static void *small_thread(void *arg) {
    keep_small(arg);
    return NULL;
}

__attribute__((noinline)) void keep_large(void) {
    for (int i = 0; i < 3; i++) {
        char *p = malloc(1 << 20);
        must(p);
        memset(p, 1, 4096);
    }
}

__attribute__((noinline)) void keep_grown(void) {
    char *p = malloc(16);
    must(p);
    for (size_t size = 32; size <= 65536; size *= 2) {
        p = realloc(p, size);
        must(p);
    }
}

__attribute__((noinline)) void keep_aligned(void) {
    void *p;
    for (int i = 0; i < 2; i++) {
        if (posix_memalign(&p, 64, 8192) != 0) exit(1);
        must(p);
    }
    must(aligned_alloc(4096, 4096));
    must(calloc(10, 100));
    must(memalign(32, 300));
    must(valloc(5000));
    must(pvalloc(5000));
    must(reallocarray(NULL, 10, 30));
}

static volatile size_t huge = (size_t)1 << 62;

__attribute__((noinline)) void keep_edges(void) {
    char *p = malloc(100);
    must(p);
    if (realloc(p, huge) != NULL) exit(1);
    char *q = malloc(50);
    must(q);
    sink = realloc(q, 0);
    if (calloc(huge, 16) != NULL) exit(1);
}

__attribute__((noinline)) void churn(void) {
    for (int i = 0; i < 20000; i++) {
        void *p = malloc(i % 500 + 1);
        must(p);
        free(p);
        p = calloc(i % 7 + 1, 16);
        must(p);
        p = realloc(p, 4000);
        must(p);
        free(p);
        if (posix_memalign(&p, 128, 256) != 0) exit(1);
        free(p);
        free(NULL);
    }
}

static void work(void) {
    struct small a = {100, 48}, b = {50, 200};
    pthread_t ta, tb;
    if (pthread_create(&ta, NULL, small_thread, &a) || pthread_create(&tb, NULL, small_thread, &b))
        exit(1);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    keep_large();
    keep_grown();
    keep_aligned();
    keep_edges();
    churn();
}

int main(int argc, char **argv) {
    int wait = argc > 1 && strcmp(argv[1], "wait") == 0;
    keep_before();
    if (!wait) {
        work();
        return 0;
    }
    printf("ready\n");
    fflush(stdout);
    wait_line();
    work();
    printf("done\n");
    fflush(stdout);
    wait_line();
    return 0;
}
