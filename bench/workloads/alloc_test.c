/* alloc_test.c - random sizes and random lifetimes per thread, modelled on ithare's
 * alloc-test.
 *
 * Each thread owns a table of slots.  Every step picks a random slot: a live block is
 * verified and freed, an empty slot gets a new block.  Sizes follow roughly a 1/size
 * distribution from 8 bytes to 32 KiB (most requests small, a long tail of big ones),
 * which is what alloc-test uses to approximate real programs.  Because the slot is random
 * the lifetime of every block is random too, so free lists get thoroughly mixed.
 *
 * Threads never share blocks; the total live set is kept the same at every thread count: this measures per-thread scalability (compare -t 1/2/64).
 *
 * Check: every block carries its pattern and is verified before free. */
#include "wl.h"

struct slot {
    void *p;
    size_t size;
    uint64_t tag;
};

struct worker {
    unsigned id;
    size_t steps;
    size_t slots;
    uint64_t seed;
};

/* 1/size-like: pick a power-of-two bucket uniformly, then a size inside it. */
static size_t pick_size(struct wl_rng *r)
{
    unsigned bucket = (unsigned)(wl_rand(r) % 12);   /* 8 B .. 16 KiB buckets */
    size_t lo = (size_t)8 << bucket;
    return wl_range(r, lo, 2 * lo);
}

static void *run(void *arg)
{
    struct worker *w = arg;
    struct wl_rng rng;
    wl_rng_init(&rng, w->seed);
    struct slot *s = calloc(w->slots, sizeof *s);
    if (!s)
        wl_fail("alloc_test: no slot table");
    uint64_t counter = 0;
    for (size_t i = 0; i < w->steps; i++) {
        struct slot *x = &s[wl_rand(&rng) % w->slots];
        if (x->p) {
            wl_verify(x->p, x->size, x->tag, "alloc_test");
            free(x->p);
            x->p = NULL;
        } else {
            x->size = pick_size(&rng);
            x->tag = wl_tag(w->id, ++counter);
            x->p = wl_xmalloc(x->size);
            wl_fill(x->p, x->size, x->tag);
        }
    }
    for (size_t i = 0; i < w->slots; i++)
        if (s[i].p) {
            wl_verify(s[i].p, s[i].size, s[i].tag, "alloc_test");
            free(s[i].p);
        }
    free(s);
    return NULL;
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    /* Total work is fixed and split between threads, so -t 1 and -t 64 do the same
     * number of operations and wall times are directly comparable. */
    size_t total = wl_scaled(&a, 8e6, 40000);
    struct worker *w = calloc((size_t)a.threads, sizeof *w);
    pthread_t *t = calloc((size_t)a.threads, sizeof *t);
    for (int i = 0; i < a.threads; i++) {
        w[i].id = (unsigned)i + 1;
        w[i].steps = total / (size_t)a.threads;
        /* Same total live set at every thread count (about 16 MiB). */
        w[i].slots = 8192 / (size_t)a.threads < 256 ? 256 : 8192 / (size_t)a.threads;
        w[i].seed = a.seed * 1000 + (uint64_t)i;
    }
    wl_start_threads(t, a.threads, run, w, sizeof *w);
    wl_join_threads(t, a.threads);
    printf("alloc_test: %d threads, %zu steps\n", a.threads, total);
    free(w);
    free(t);
    return 0;
}
