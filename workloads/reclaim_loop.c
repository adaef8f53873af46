// Benchmark workload: reads FILE through the page cache from inside the memory cgroup CGROUP
// (a directory; its limit much smaller than the file), so that the cgroup reclaims its own page
// cache at its limit all along: memcg reclaim stalls, contained.
// usage: reclaim_loop FILE CGROUP
// Joins CGROUP, drops FILE from the page cache (so every page is read and charged here), prints
// "ready", waits for a line on stdin, reads the file once, then prints
// "elapsed_ns N bytes M" and exits.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: reclaim_loop FILE CGROUP\n"); return 2; }
    char procs[4096];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", argv[2]);
    FILE *join = fopen(procs, "w");
    if (!join || fprintf(join, "%d\n", getpid()) < 0 || fclose(join)) {
        perror(procs);
        return 1;
    }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    static char buffer[1 << 20];
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;

    long long start = now_ns(), total = 0;
    ssize_t n;
    while ((n = read(fd, buffer, sizeof buffer)) > 0) total += n;
    if (n < 0) { perror("read"); return 1; }
    printf("elapsed_ns %lld bytes %lld\n", now_ns() - start, total);
    fflush(stdout);
    return 0;
}
