// Evicts a file from the page cache, maps it, and reads every page: major faults.
// usage: read_mapped FILE [wait]   (the file must be clean: written and fsync'ed)
// With `wait`, the same ready/go/done/exit protocol as touch_pages.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: read_mapped FILE [wait]\n"); return 2; }
    int wait = argc > 2 && strcmp(argv[2], "wait") == 0;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    if (fstat(fd, &st)) { perror("fstat"); return 1; }
    long page_size = sysconf(_SC_PAGESIZE);
    volatile char *map = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    // No readahead, so each page not in the cache is its own major fault.
    madvise((void *)map, st.st_size, MADV_RANDOM);
    if (wait) { printf("ready\n"); fflush(stdout); wait_line(); }
    if (posix_fadvise(fd, 0, st.st_size, POSIX_FADV_DONTNEED)) { perror("fadvise"); return 1; }
    unsigned long sum = 0;
    for (off_t off = 0; off < st.st_size; off += page_size) sum += map[off];
    if (wait) { printf("done %lu\n", sum); fflush(stdout); wait_line(); }
    return 0;
}
