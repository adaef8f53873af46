// Touches MIB MiB of anonymous memory asking for transparent huge pages (MADV_HUGEPAGE): with
// THP defrag set to "always", each huge page the kernel cannot find free it reclaims and
// compacts for at once, in this task (direct reclaim).
// usage: thp_touch MIB [wait]
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: thp_touch MIB [wait]\n"); return 2; }
    size_t bytes = (size_t)atol(argv[1]) << 20;
    int wait = argc > 2 && strcmp(argv[2], "wait") == 0;
    setvbuf(stdout, NULL, _IONBF, 0);
    char *p = mmap(NULL, bytes + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    p = (char *)(((unsigned long)p + (2 << 20) - 1) & ~((2UL << 20) - 1));
    madvise(p, bytes, MADV_HUGEPAGE);
    if (wait) { printf("ready\n"); wait_line(); }
    for (size_t i = 0; i < bytes; i += 4096) p[i] = 1;
    if (wait) { printf("done\n"); wait_line(); }
    return 0;
}
