// Forks N children that each touch P fresh anonymous pages, waits for all, touches P itself.
// usage: fork_children N PAGES
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void touch(long pages) {
    long page_size = sysconf(_SC_PAGESIZE);
    char *region = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) _exit(1);
    madvise(region, pages * page_size, MADV_NOHUGEPAGE);
    for (long i = 0; i < pages; i++) region[i * page_size] = 1;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: fork_children N PAGES\n"); return 2; }
    long children = atol(argv[1]), pages = atol(argv[2]);
    for (long i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) { touch(pages); _exit(0); }
    }
    int status, failed = 0;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
    touch(pages);
    return failed;
}
