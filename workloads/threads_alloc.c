/* Four threads allocating in turn (so the calls, and their addresses, do not depend on
 * scheduling): each creates its own malloc arena with mmap (all stay alive until every turn is
 * over, so no arena is handed on), and allocates small and large blocks. Turns begin only once
 * every thread's stack is mapped.
 * Usage: threads_alloc */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn_changed = PTHREAD_COND_INITIALIZER;
static int turn = -1;
static void *volatile sink;

static void *work(void *arg) {
    int me = (int)(long)arg;
    pthread_mutex_lock(&lock);
    while (turn != me) pthread_cond_wait(&turn_changed, &lock);
    for (int i = 0; i < 8; i++) {
        char *p = malloc(200000);
        memset(p, 1, 4096);
        sink = p;
        free(p);
        sink = malloc(1000);
    }
    turn++;
    pthread_cond_broadcast(&turn_changed);
    while (turn != THREADS) pthread_cond_wait(&turn_changed, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(void) {
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)i);
    pthread_mutex_lock(&lock);
    turn = 0;
    pthread_cond_broadcast(&turn_changed);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    return 0;
}
