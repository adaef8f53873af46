// A process that starts a child touching CHILD_PAGES fresh pages while it touches PAGES itself:
// a per-process count of the parent must not include the child's faults. The child is
// `touch_pages` (next to this binary), started with posix_spawn, which shares the parent's
// memory until the exec instead of write-protecting it as fork does: the parent then takes no
// copy-on-write fault after its work, so /proc readings around the work are exact.
// usage: fork_touch PAGES CHILD_PAGES wait
// Prints "ready", waits for a line, works, prints "done", waits for a line again, exits.
#include <libgen.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void touch(long pages) {
    long page_size = sysconf(_SC_PAGESIZE);
    char *region = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) _exit(1);
    madvise(region, pages * page_size, MADV_NOHUGEPAGE);
    for (long i = 0; i < pages; i++) region[i * page_size] = 1;
}

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[3], "wait") != 0) {
        fprintf(stderr, "usage: fork_touch PAGES CHILD_PAGES wait\n");
        return 2;
    }
    long pages = atol(argv[1]);
    char toucher[4096];
    snprintf(toucher, sizeof toucher, "%s/touch_pages", dirname(strdup(argv[0])));
    char *child_argv[] = {toucher, argv[2], "1", NULL};
    printf("ready\n");
    fflush(stdout);
    wait_line();
    pid_t child;
    if (posix_spawn(&child, toucher, NULL, NULL, child_argv, environ) != 0) {
        perror("posix_spawn");
        return 1;
    }
    touch(pages);
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    printf("done\n");
    fflush(stdout);
    wait_line();
    return 0;
}
