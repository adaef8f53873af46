// Exactly 2*N allocation syscalls: N times mmap one page, then munmap it.
// usage: map_loop N wait   (prints "ready", waits for a line, works, prints "done", waits for
// a line again, then exits: a tracer attached in between sees exactly 2*N calls)
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: map_loop N wait\n"); return 2; }
    long n = atol(argv[1]);
    printf("ready\n");
    fflush(stdout);
    wait_line();
    for (long i = 0; i < n; i++) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED || munmap(p, 4096)) return 1;
    }
    printf("done\n");
    fflush(stdout);
    wait_line();
    return 0;
}
