// Runs PROGRAM ARGS N times, one after the other, each waited for, then prints the kernel's
// count of its children's faults: "children_minflt=M children_majflt=J".
// usage: spawn_many N PROGRAM [ARGS...]
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: spawn_many N PROGRAM [ARGS...]\n"); return 2; }
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) { execv(argv[2], &argv[2]); _exit(127); }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    }
    struct rusage usage;
    getrusage(RUSAGE_CHILDREN, &usage);
    printf("children_minflt=%ld children_majflt=%ld\n", usage.ru_minflt, usage.ru_majflt);
    return 0;
}
