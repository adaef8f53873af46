/* Renames itself and one of its threads between mmap calls, each call with its own length:
 *   3 pages under the name the program was started with,
 *   5 pages after prctl(PR_SET_NAME, "renamed-main"),
 *   7 pages in a new thread (which inherits "renamed-main"),
 *  11 pages in that thread after the main thread wrote "from-outside" to its comm file.
 * Usage: renames */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

static atomic_int stage;
static atomic_int thread_id;

static void map_pages(long pages) {
    long page = sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    munmap(p, pages * page);
}

static void *worker(void *arg) {
    (void)arg;
    map_pages(7);
    atomic_store(&thread_id, gettid());
    while (atomic_load(&stage) != 1) usleep(100);
    map_pages(11);
    return NULL;
}

int main(void) {
    map_pages(3);
    prctl(PR_SET_NAME, "renamed-main", 0, 0, 0);
    map_pages(5);
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL)) return 1;
    while (atomic_load(&thread_id) == 0) usleep(100);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", atomic_load(&thread_id));
    FILE *comm = fopen(path, "w");
    if (!comm || fputs("from-outside", comm) < 0 || fclose(comm)) { perror(path); return 1; }
    atomic_store(&stage, 1);
    pthread_join(t, NULL);
    return 0;
}
