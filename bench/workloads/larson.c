/* larson.c - server churn with cross-thread frees, modelled on Larson & Krishnan's
 * "larson" server benchmark.
 *
 * A server thread handles a request by freeing some old objects and allocating new ones
 * (random sizes 16-1024 B), then hands its whole working set on to the thread that serves
 * the next batch and exits.  So blocks are routinely freed by a different thread than the
 * one that allocated them, and threads are created and retired all the time: this
 * punishes allocators whose thread caches hoard memory or whose remote frees are slow.
 *
 * -t N runs N such chains concurrently; each chain passes its working set through a
 * sequence of short-lived detached threads.  Total work is fixed and split between chains.
 *
 * Check: every block carries its pattern and is verified before it is freed. */
#include "wl.h"

enum { SLOTS = 2000, MIN_SIZE = 16, MAX_SIZE = 1024 };

/* Each chain's state on cache lines of its own (128 bytes: the adjacent-line prefetch pairs
 * lines): in one array, one chain's counter shared a line with the next chain's rng and
 * step count, which both chains write or read on every step.  That false sharing is the
 * workload's, not the allocator's, and it slowed the 2-thread run of every allocator alike:
 * glibc, jemalloc and mimalloc took 0.40-0.52 s with it and 0.27 s without. */
struct chain {
    _Alignas(128) unsigned id;
    size_t rounds_left;
    size_t steps_per_round;
    struct wl_rng rng;
    void *p[SLOTS];
    uint32_t size[SLOTS];
    uint64_t tag[SLOTS];
    uint64_t counter;
};

static void replace(struct chain *c, size_t i)
{
    if (c->p[i]) {
        wl_verify(c->p[i], c->size[i], c->tag[i], "larson");
        free(c->p[i]);
    }
    c->size[i] = (uint32_t)wl_range(&c->rng, MIN_SIZE, MAX_SIZE);
    c->tag[i] = wl_tag(c->id, ++c->counter);
    c->p[i] = wl_xmalloc(c->size[i]);
    wl_fill(c->p[i], c->size[i], c->tag[i]);
}

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static int chains_running;

static void *serve(void *arg);

/* Detached, so a finished server really goes away (its thread cache is torn down) while
 * its successor runs, as in larson. */
static void spawn(struct chain *c)
{
    pthread_attr_t at;
    pthread_t t;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, serve, c) != 0)
        wl_fail("larson: pthread_create failed");
    pthread_attr_destroy(&at);
}

/* One server thread: serve a round of requests, then hand every block to a successor. */
static void *serve(void *arg)
{
    struct chain *c = arg;
    for (size_t s = 0; s < c->steps_per_round; s++)
        replace(c, (size_t)(wl_rand(&c->rng) % SLOTS));
    if (--c->rounds_left > 0) {
        spawn(c);
    } else {
        pthread_mutex_lock(&done_lock);
        chains_running--;
        pthread_cond_signal(&done_cond);
        pthread_mutex_unlock(&done_lock);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    size_t total = wl_scaled(&a, 5e6, 40000);
    size_t rounds = 200 / (size_t)a.threads < 4 ? 4 : 200 / (size_t)a.threads;
    struct chain *c = aligned_alloc(_Alignof(struct chain), (size_t)a.threads * sizeof *c);
    if (c)
        memset(c, 0, (size_t)a.threads * sizeof *c);
    if (!c)
        wl_fail("larson: no memory for chains");
    for (int i = 0; i < a.threads; i++) {
        c[i].id = (unsigned)i + 1;
        c[i].rounds_left = rounds;
        c[i].steps_per_round = total / (size_t)a.threads / rounds;
        wl_rng_init(&c[i].rng, a.seed * 7919 + (uint64_t)i);
        /* The initial working set comes from the main thread: the first server frees
         * blocks it did not allocate. */
        for (size_t j = 0; j < SLOTS; j++)
            replace(&c[i], j);
    }
    chains_running = a.threads;
    for (int i = 0; i < a.threads; i++)
        spawn(&c[i]);
    pthread_mutex_lock(&done_lock);
    while (chains_running > 0)
        pthread_cond_wait(&done_cond, &done_lock);
    pthread_mutex_unlock(&done_lock);
    for (int i = 0; i < a.threads; i++)
        for (size_t j = 0; j < SLOTS; j++) {
            wl_verify(c[i].p[j], c[i].size[j], c[i].tag[j], "larson");
            free(c[i].p[j]);
        }
    printf("larson: %d chains x %zu rounds, %zu replacements\n", a.threads, rounds, total);
    free(c);
    return 0;
}
