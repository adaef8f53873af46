// Faults in known functions, for `faults --stacks`: N pages in touch_near, M pages in
// touch_deep through a deeper chain, and a file evicted from the page cache read through a
// mapping in read_mapped. Prints the kernel's own counts of each phase (getrusage deltas).
// The tests build it with and without frame pointers: the stacks must be right either way.
// Transparent huge pages are off for it, so each page touched is one fault on every kernel.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096

static void counts(long *minor, long *major) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    *minor = usage.ru_minflt;
    *major = usage.ru_majflt;
}

__attribute__((noinline)) void touch_near(char *pages, long n) {
    for (long i = 0; i < n; i++) pages[i * PAGE] = (char)i;
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void touch_deep(char *pages, long n) {
    for (long i = 0; i < n; i++) pages[i * PAGE] = (char)(i + 1);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void middle_deep(char *pages, long n) {
    touch_deep(pages, n);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void outer_deep(char *pages, long n) {
    middle_deep(pages, n);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) long read_mapped(const char *pages, long n) {
    long sum = 0;
    for (long i = 0; i < n; i++) sum += pages[i * PAGE];
    return sum;
}

static char *anonymous(long n) {
    char *pages = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages == MAP_FAILED) { perror("mmap"); exit(1); }
    return pages;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s NEAR_PAGES DEEP_PAGES FILE\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    long near = atol(argv[1]), deep = atol(argv[2]);
    char *a = anonymous(near), *b = anonymous(deep);
    int fd = open(argv[3], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    fstat(fd, &st);
    long file_pages = st.st_size / PAGE;
    // Out of the page cache, so that reading it takes major faults.
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    char *f = mmap(NULL, file_pages * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f == MAP_FAILED) { perror("mmap file"); return 1; }
    madvise(f, file_pages * PAGE, MADV_RANDOM);  // one page per fault, no read-around

    long m0, j0, m1, j1, m2, j2, m3, j3;
    counts(&m0, &j0);
    touch_near(a, near);
    counts(&m1, &j1);
    outer_deep(b, deep);
    counts(&m2, &j2);
    long sum = read_mapped(f, file_pages);
    counts(&m3, &j3);
    // On stderr: stdout may be the tracer's report.
    fprintf(stderr, "near %ld %ld\ndeep %ld %ld\nfile %ld %ld\n", m1 - m0, j1 - j0, m2 - m1,
            j2 - j1, m3 - m2, j3 - j2);
    return sum == 42;  // keeps the reads; random data never sums to exactly that
}
