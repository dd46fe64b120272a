/* cache_scratch.c - passive false sharing, modelled on Hoard's cache-scratch.
 *
 * The main thread allocates one tiny object per worker, back to back (so they share cache
 * lines), and hands each worker its object.  The worker frees it and then repeatedly
 * allocates a tiny object, writes it many times and frees it.  An allocator that puts the
 * freed block into the worker's own cache and hands it straight back makes the workers
 * write into the cache line they share through main's allocation pattern: false sharing
 * induced by the allocator, not by the program.
 *
 * Check: the object's bytes are re-verified after the write loop, before free. */
#include "wl.h"

enum { OBJ_SIZE = 8 };

struct worker {
    unsigned id;
    unsigned char *initial;   /* allocated by main, freed by the worker */
    size_t rounds;
    size_t writes;
};

static void *run(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < OBJ_SIZE; i++)
        if (w->initial[i] != (unsigned char)(0xC0 + i))
            wl_fail("cache_scratch: initial object corrupted");
    free(w->initial);
    wl_write_rounds("cache_scratch", w->id, OBJ_SIZE, w->rounds, w->writes);
    return NULL;
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    struct worker *w = calloc((size_t)a.threads, sizeof *w);
    pthread_t *t = calloc((size_t)a.threads, sizeof *t);
    if (!w || !t)
        wl_fail("cache_scratch: no memory for threads");
    for (int i = 0; i < a.threads; i++) {
        w[i].id = (unsigned)i + 1;
        w[i].initial = wl_xmalloc(OBJ_SIZE);   /* consecutive: likely one cache line */
        for (int j = 0; j < OBJ_SIZE; j++)
            w[i].initial[j] = (unsigned char)(0xC0 + j);
        w[i].rounds = wl_scaled(&a, 120000, 300);
        w[i].writes = 1000;
    }
    wl_start_threads(t, a.threads, run, w, sizeof *w);
    wl_join_threads(t, a.threads);
    printf("cache_scratch: %d threads\n", a.threads);
    free(w);
    free(t);
    return 0;
}
