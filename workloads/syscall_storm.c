// Benchmark workload: `dd if=/dev/zero of=/dev/null bs=1 count=N` with a ready/go handshake, so
// a tracer's start-up is not timed: N reads of one byte from /dev/zero and N writes of it to
// /dev/null, 2N syscalls that `memtrace trace` does not trace (they must not pay for it).
// usage: syscall_storm N
// Prints "ready", waits for a line on stdin, works, then prints "elapsed_ns T calls 2N".
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
    if (argc < 2) { fprintf(stderr, "usage: syscall_storm N\n"); return 2; }
    long n = atol(argv[1]);
    int in = open("/dev/zero", O_RDONLY), out = open("/dev/null", O_WRONLY);
    if (in < 0 || out < 0) { perror("open"); return 1; }
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;

    long long start = now_ns();
    char byte;
    for (long i = 0; i < n; i++) {
        if (read(in, &byte, 1) != 1 || write(out, &byte, 1) != 1) { perror("read/write"); return 1; }
    }
    long long elapsed = now_ns() - start;
    printf("elapsed_ns %lld calls %ld\n", elapsed, 2 * n);
    fflush(stdout);
    return 0;
}
