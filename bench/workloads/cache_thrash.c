/* cache_thrash.c - active false sharing, modelled on Hoard's cache-thrash.
 *
 * Every thread repeatedly allocates a tiny object, writes to it many times and frees it.
 * The threads never share anything, but if the allocator hands out neighbouring small
 * blocks to different threads (one shared heap carved sequentially), those blocks sit in
 * the same cache line and every write bounces the line between cores: the program gets
 * slower with more threads instead of faster.  A good allocator gives each thread its own
 * cache lines.
 *
 * Check: the object's bytes are re-verified after the write loop, before free. */
#include "wl.h"

enum { OBJ_SIZE = 8 };

struct worker {
    unsigned id;
    size_t rounds;
    size_t writes;
};

static void *run(void *arg)
{
    struct worker *w = arg;
    wl_write_rounds("cache_thrash", w->id, OBJ_SIZE, w->rounds, w->writes);
    return NULL;
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    struct worker *w = calloc((size_t)a.threads, sizeof *w);
    pthread_t *t = calloc((size_t)a.threads, sizeof *t);
    if (!w || !t)
        wl_fail("cache_thrash: no memory for threads");
    for (int i = 0; i < a.threads; i++) {
        w[i].id = (unsigned)i + 1;
        w[i].rounds = wl_scaled(&a, 120000, 300);
        w[i].writes = 1000;
    }
    wl_start_threads(t, a.threads, run, w, sizeof *w);
    wl_join_threads(t, a.threads);
    printf("cache_thrash: %d threads\n", a.threads);
    free(w);
    free(t);
    return 0;
}
