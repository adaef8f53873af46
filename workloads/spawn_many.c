// Runs PROGRAM ARGS N times, one after the other, each waited for, then prints the kernel's
// count of its children's faults: "children_minflt=M children_majflt=J". Children are started
// with posix_spawn (vfork and exec, as shells and container runtimes start them): a child runs
// nothing of its own before its exec, so all its faults are the program's.
// usage: spawn_many N PROGRAM [ARGS...]
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: spawn_many N PROGRAM [ARGS...]\n"); return 2; }
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        pid_t pid;
        int rc = posix_spawn(&pid, argv[2], NULL, NULL, &argv[2], environ);
        if (rc != 0) { fprintf(stderr, "posix_spawn: %d\n", rc); return 1; }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    }
    struct rusage usage;
    getrusage(RUSAGE_CHILDREN, &usage);
    printf("children_minflt=%ld children_majflt=%ld\n", usage.ru_minflt, usage.ru_majflt);
    return 0;
}
