/* Maps files through descriptors it keeps open for half a second afterwards, so that a tracer
 * reading /proc/PID/fd after each call still finds them: a plain file (shared, then private at
 * an offset), an unlinked one, one whose name needs quoting, a memfd, /dev/zero; then
 * anonymous memory (fd -1). Each mapping has its own odd length (1001, 1002, ...), so that
 * tests can pick these calls out from the dynamic loader's.
 * Usage: map_fds DIR */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int file(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 3 * 4096) != 0) _exit(3);
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int plain = file(argv[1], "plain");
    mmap(NULL, 1001, PROT_READ | PROT_WRITE, MAP_SHARED, plain, 0);
    mmap(NULL, 1002, PROT_READ, MAP_PRIVATE, plain, 4096);
    int gone = file(argv[1], "gone");
    char path[4096];
    snprintf(path, sizeof path, "%s/gone", argv[1]);
    unlink(path);
    mmap(NULL, 1003, PROT_READ, MAP_PRIVATE, gone, 0);
    int odd = file(argv[1], "odd <name>\t\"x\"");
    mmap(NULL, 1004, PROT_READ, MAP_PRIVATE, odd, 0);
    int mem = memfd_create("map_fds", 0);
    if (mem < 0 || ftruncate(mem, 4096) != 0) return 3;
    mmap(NULL, 1005, PROT_READ, MAP_SHARED, mem, 0);
    int zero = open("/dev/zero", O_RDONLY);
    mmap(NULL, 1006, PROT_READ, MAP_PRIVATE, zero, 0);
    mmap(NULL, 1007, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* The descriptors stay open while the tracer reads its records. */
    struct timespec half = {0, 500 * 1000 * 1000};
    nanosleep(&half, NULL);
    return 0;
}
