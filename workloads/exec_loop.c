// Benchmark workload: starts PROGRAM N times, one after the other, each waited for
// (posix_spawn: vfork and exec, as shells and container runtimes start programs).
// usage: exec_loop N PROGRAM [ARGS...]
// Prints "ready", waits for a line on stdin (so a tracer can attach first), works, then prints
// "elapsed_ns NS programs N" and exits.
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: exec_loop N PROGRAM [ARGS...]\n"); return 2; }
    long n = atol(argv[1]);
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;

    long long start = now_ns();
    for (long i = 0; i < n; i++) {
        pid_t pid;
        int rc = posix_spawn(&pid, argv[2], NULL, NULL, &argv[2], environ);
        if (rc != 0) { fprintf(stderr, "posix_spawn: %d\n", rc); return 1; }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    }
    printf("elapsed_ns %lld programs %ld\n", now_ns() - start, n);
    fflush(stdout);
    return 0;
}
