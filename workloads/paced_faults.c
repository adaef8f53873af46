// Keeps a known resident size and takes minor faults at a steady, known pace, until killed.
// usage: paced_faults RESIDENT_MIB FAULTS_PER_SECOND
// Touches RESIDENT_MIB MiB and keeps it, prints "ready", then every 100 ms touches a tenth of
// FAULTS_PER_SECOND fresh pages of a separate window and gives them back (MADV_DONTNEED), so
// each touch is a fault again and the resident size stays put.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: paced_faults RESIDENT_MIB FAULTS_PER_SECOND\n"); return 2; }
    long page = sysconf(_SC_PAGESIZE);
    size_t resident = (size_t)atol(argv[1]) << 20;
    long per_tick = atol(argv[2]) / 10;
    char *kept = mmap(NULL, resident, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *window = mmap(NULL, per_tick * page, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (kept == MAP_FAILED || window == MAP_FAILED) { perror("mmap"); return 1; }
    memset(kept, 1, resident);
    printf("ready\n");
    fflush(stdout);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        for (long i = 0; i < per_tick; i++) window[i * page] = 1;
        madvise(window, per_tick * page, MADV_DONTNEED);
        next.tv_nsec += 100 * 1000 * 1000;
        if (next.tv_nsec >= 1000000000L) { next.tv_sec++; next.tv_nsec -= 1000000000L; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
