// Allocates and touches anonymous memory inside a memory cgroup until the OOM killer acts.
// usage: oom_alloc hog MIB            touch MIB MiB (1 MiB at a time), then wait to be killed
//        oom_alloc parent MIB CHILD    fork a child first; with oom_score_adj 1000 touch MIB MiB,
//                                      then let the child (oom_score_adj 0) touch CHILD MiB: the
//                                      child triggers the OOM kill of its parent. Prints
//                                      "child PID" first; the child exits 0 once done.
//        oom_alloc steps MIB MS        touch MIB MiB more every MS milliseconds until killed;
//                                      after each step prints "grown KIB at UNIX_SECONDS"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void set_adj(const char *value) {
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (!f || fputs(value, f) < 0 || fclose(f)) { perror("oom_score_adj"); exit(1); }
}

static void touch_mib(long mib) {
    for (long i = 0; i < mib; i++) {
        char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); exit(1); }
        memset(p, 1, 1 << 20);
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "hog") == 0) {
        touch_mib(atol(argv[2]));
        for (;;) pause();
    }
    if (argc >= 4 && strcmp(argv[1], "parent") == 0) {
        int go[2];
        if (pipe(go)) return 1;
        pid_t child = fork();
        if (child < 0) return 1;
        if (child == 0) {
            char c;
            close(go[1]);
            set_adj("0");
            if (read(go[0], &c, 1) != 1) return 3;
            touch_mib(atol(argv[3]));
            return 0;
        }
        printf("child %d\n", child);
        fflush(stdout);
        set_adj("1000");
        touch_mib(atol(argv[2]));
        if (write(go[1], "g", 1) != 1) return 1;
        for (;;) pause();
    }
    if (argc >= 4 && strcmp(argv[1], "steps") == 0) {
        long step = atol(argv[2]), ms = atol(argv[3]);
        struct timespec pause_for = {ms / 1000, (ms % 1000) * 1000000L}, now;
        for (long grown = 0;;) {
            touch_mib(step);
            grown += step * 1024;
            clock_gettime(CLOCK_REALTIME, &now);
            printf("grown %ld at %ld.%06ld\n", grown, (long)now.tv_sec, now.tv_nsec / 1000);
            fflush(stdout);
            nanosleep(&pause_for, NULL);
        }
    }
    fprintf(stderr, "usage: oom_alloc hog MIB | oom_alloc parent MIB CHILD_MIB | "
                    "oom_alloc steps MIB MS\n");
    return 2;
}
