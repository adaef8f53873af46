// Touches N fresh anonymous pages, split across T threads: at least N minor faults.
// usage: touch_pages PAGES THREADS [wait]
// With `wait`: prints "ready", waits for a line on stdin, touches, prints "done", waits for a
// line again, then exits, so a test can read /proc/PID/stat around exactly the touching.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char *region;
static long pages_per_thread;
static long page_size;

static void *touch(void *arg) {
    long first = (long)arg * pages_per_thread;
    for (long i = 0; i < pages_per_thread; i++)
        region[(first + i) * page_size] = 1;
    return NULL;
}

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: touch_pages PAGES THREADS [wait]\n"); return 2; }
    long pages = atol(argv[1]), threads = atol(argv[2]);
    int wait = argc > 3 && strcmp(argv[3], "wait") == 0;
    if (threads < 1 || threads > 64 || pages < threads) return 2;
    page_size = sysconf(_SC_PAGESIZE);
    pages_per_thread = pages / threads;
    pthread_t ids[64];
    region = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED) { perror("mmap"); return 1; }
    // No transparent huge pages: one fault per 4 KiB page.
    madvise(region, pages * page_size, MADV_NOHUGEPAGE);
    if (wait) { printf("ready\n"); fflush(stdout); wait_line(); }
    for (long t = 1; t < threads; t++)
        if (pthread_create(&ids[t], NULL, touch, (void *)t)) return 1;
    touch(0);
    for (long t = 1; t < threads; t++) pthread_join(ids[t], NULL);
    if (wait) { printf("done\n"); fflush(stdout); wait_line(); }
    return 0;
}
