/* xmalloc.c - producer/consumer, modelled on xmalloc-test (Lever & Boreham).
 *
 * Half of the threads only allocate (producers) and half only free (consumers); blocks
 * travel between them in batches through a shared, bounded queue.  Every single free is
 * therefore a remote free of memory another thread allocated, the worst case for
 * allocators with thread-local heaps (memory must flow back to its owner, or the
 * producers keep asking the OS for more).
 *
 * With -t 1 one thread alternates between producing a batch and consuming it (no remote
 * frees; the baseline for scaling).  Total work is fixed and split between producers.
 *
 * Check: every block carries its pattern, verified by the consumer before free. */
#include "wl.h"

enum { BATCH = 256, MAX_QUEUED = 64 };

struct batch {
    struct batch *next;
    void *p[BATCH];
    uint32_t size[BATCH];
    uint64_t tag[BATCH];
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    struct batch *head, *tail;
    int queued;
    int producers_left;
} q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
        NULL, NULL, 0, 0 };

struct worker {
    unsigned id;
    size_t batches;
    uint64_t seed;
};

static struct batch *produce(struct wl_rng *rng, unsigned id, uint64_t *counter)
{
    struct batch *b = wl_xmalloc(sizeof *b);
    b->next = NULL;
    for (int i = 0; i < BATCH; i++) {
        /* mostly small messages, sometimes a larger one, like xmalloc-test's 1..N mix */
        b->size[i] = (uint32_t)((wl_rand(rng) & 15) == 0 ? wl_range(rng, 512, 4096)
                                                           : wl_range(rng, 8, 256));
        b->tag[i] = wl_tag(id, ++*counter);
        b->p[i] = wl_xmalloc(b->size[i]);
        wl_fill(b->p[i], b->size[i], b->tag[i]);
    }
    return b;
}

static void consume(struct batch *b)
{
    for (int i = 0; i < BATCH; i++) {
        wl_verify(b->p[i], b->size[i], b->tag[i], "xmalloc");
        free(b->p[i]);
    }
    free(b);
}

static void *producer(void *arg)
{
    struct worker *w = arg;
    struct wl_rng rng;
    wl_rng_init(&rng, w->seed);
    uint64_t counter = 0;
    for (size_t n = 0; n < w->batches; n++) {
        struct batch *b = produce(&rng, w->id, &counter);
        pthread_mutex_lock(&q.lock);
        while (q.queued >= MAX_QUEUED)   /* bounded: memory in flight stays small */
            pthread_cond_wait(&q.not_full, &q.lock);
        if (q.tail)
            q.tail->next = b;
        else
            q.head = b;
        q.tail = b;
        q.queued++;
        pthread_cond_signal(&q.not_empty);
        pthread_mutex_unlock(&q.lock);
    }
    pthread_mutex_lock(&q.lock);
    q.producers_left--;
    pthread_cond_broadcast(&q.not_empty);
    pthread_mutex_unlock(&q.lock);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&q.lock);
        while (!q.head && q.producers_left > 0)
            pthread_cond_wait(&q.not_empty, &q.lock);
        struct batch *b = q.head;
        if (!b) {
            pthread_mutex_unlock(&q.lock);
            return NULL;
        }
        q.head = b->next;
        if (!q.head)
            q.tail = NULL;
        q.queued--;
        pthread_cond_signal(&q.not_full);
        pthread_mutex_unlock(&q.lock);
        consume(b);
    }
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    size_t total = wl_scaled(&a, 16000, 100);   /* batches of 256 blocks */

    if (a.threads == 1) {
        struct wl_rng rng;
        wl_rng_init(&rng, a.seed);
        uint64_t counter = 0;
        for (size_t n = 0; n < total; n++)
            consume(produce(&rng, 1, &counter));
    } else {
        int np = a.threads / 2, nc = a.threads - np;
        struct worker *w = calloc((size_t)np, sizeof *w);
        pthread_t *tp = calloc((size_t)np, sizeof *tp), *tc = calloc((size_t)nc, sizeof *tc);
        if (!w || !tp || !tc)
            wl_fail("xmalloc: no memory for threads");
        q.producers_left = np;
        for (int i = 0; i < np; i++) {
            w[i].id = (unsigned)i + 1;
            w[i].batches = total / (size_t)np;
            w[i].seed = a.seed * 31 + (uint64_t)i;
        }
        wl_start_threads(tc, nc, consumer, NULL, 0);
        wl_start_threads(tp, np, producer, w, sizeof *w);
        wl_join_threads(tp, np);
        wl_join_threads(tc, nc);
        free(w);
        free(tp);
        free(tc);
    }
    printf("xmalloc: %d threads, %zu batches of %d\n", a.threads, total, BATCH);
    return 0;
}
