// malloc and free only, single-threaded, for comparing `leaks --malloc` with a uprobe script
// that follows those two calls: on "go", keeps 300 blocks of 1..300 x 24 bytes from keep_some
// and churns 20,000 more (each freed at once), says "done", and waits for "exit".
// usage: malloc_plain wait
#include <stdio.h>
#include <stdlib.h>

static void *volatile sink;

__attribute__((noinline)) void keep_some(void **kept) {
    for (int i = 0; i < 300; i++) {
        kept[i] = malloc((size_t)(i + 1) * 24);
        if (!kept[i]) exit(1);
    }
}

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(void) {
    static void *kept[300];
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    wait_line();
    keep_some(kept);
    for (int i = 0; i < 20000; i++) {
        void *p = malloc(16 + i % 500);
        if (!p) exit(1);
        sink = p;
        free(p);
    }
    printf("done\n");
    wait_line();
    return 0;
}
