// Reads a file through the page cache after dropping it from there, so that every page is read
// from disk and charged to the reader's memory cgroup.
// usage: read_file PATH wait
// Prints "ready", waits for a line, reads, prints "done BYTES", waits for a line again, exits.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 3 || strcmp(argv[2], "wait") != 0) {
        fprintf(stderr, "usage: read_file PATH wait\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    static char buffer[1 << 20];
    printf("ready\n");
    fflush(stdout);
    wait_line();
    long long total = 0;
    ssize_t n;
    while ((n = read(fd, buffer, sizeof buffer)) > 0) total += n;
    if (n < 0) { perror("read"); return 1; }
    printf("done %lld\n", total);
    fflush(stdout);
    wait_line();
    return 0;
}
