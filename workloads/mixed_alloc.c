/* Mixes heap allocations below and above malloc's mmap threshold (brk and mmap), anonymous and
 * file mappings with mremap, and a call that fails (mprotect of an unmapped range: ENOMEM).
 * Usage: mixed_alloc FILE */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void *volatile sink;

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    /* small: served from the brk heap, growing it */
    for (int i = 0; i < 64; i++) {
        char *p = malloc(4000);
        memset(p, 1, 4000);
        sink = p;
    }
    /* large: above the 128 KiB threshold, mmap'd and munmap'd at free */
    for (int i = 0; i < 4; i++) {
        char *p = malloc(1 << 20);
        p[0] = 1;
        sink = p;
        free(p);
    }
    /* anonymous mapping grown with mremap, advised, protected, unmapped */
    size_t len = 3 * 4096;
    char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    a[0] = 1;
    char *b = mremap(a, len, 10 * 4096, MREMAP_MAYMOVE);
    madvise(b, 10 * 4096, MADV_DONTNEED);
    mprotect(b, 4096, PROT_READ);
    munmap(b, 10 * 4096);
    /* a file mapping, shared and private */
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 5 * 4096) != 0) return 3;
    char *f = mmap(NULL, 5 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    f[0] = 'x';
    char *g = mmap(NULL, 2 * 4096, PROT_READ, MAP_PRIVATE, fd, 4096);
    munmap(g, 2 * 4096);
    munmap(f, 5 * 4096);
    close(fd);
    /* fails: nothing is mapped at 64 KiB (mmap_min_addr) */
    if (mprotect((void *)0x10000, 4096, PROT_READ) == 0) return 4;
    return 0;
}
