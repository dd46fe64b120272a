/* realloc_heavy.c - realloc-dominated workload.
 *
 * Dynamic arrays and string builders grow with realloc; parsers shrink buffers to fit
 * when they are done.  A set of live buffers is grown by random small amounts (most
 * steps), occasionally by doubling, and sometimes shrunk, with sizes from a few bytes up
 * to about 1 MiB.  Allocators that can grow in place (spare room in the size class, or
 * mremap for big blocks) avoid copying; the others copy on every step.
 *
 * Check: each buffer's contents are a pattern over its whole current length (written
 * incrementally as it grows), verified after every realloc: a realloc that loses or
 * garbles data fails the run. */
#include "wl.h"

enum { BUFS = 256, MAX_SIZE = 1 << 20 };

struct buf {
    unsigned char *p;
    size_t len;
    uint64_t tag;
};

/* The tail check covers the old end (copied data) without re-reading the whole buffer
 * each step, which would turn the benchmark into a memory scan. */
static void check_tail(const struct buf *b, size_t upto)
{
    size_t from = upto > 256 ? upto - 256 : 0;
    if (!wl_check_range(b->p, from, upto, b->tag) || !wl_check_range(b->p, 0, upto < 64 ? upto : 64, b->tag))
        wl_fail("realloc_heavy: buffer %p lost its data", (void *)b->p);
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    struct wl_rng rng;
    wl_rng_init(&rng, a.seed);
    static struct buf b[BUFS];
    size_t steps = wl_scaled(&a, 1.5e6, 20000);
    uint64_t counter = 0;
    for (size_t s = 0; s < steps; s++) {
        struct buf *x = &b[wl_rand(&rng) % BUFS];
        size_t newlen;
        uint64_t r = wl_rand(&rng) % 100;
        if (!x->p)
            newlen = wl_range(&rng, 1, 64);
        else if (r < 85)
            newlen = x->len + wl_range(&rng, 1, 32);       /* append a token */
        else if (r < 93)
            newlen = x->len * 2;                           /* vector doubling */
        else if (r < 99)
            newlen = x->len / 2 + 1;                       /* shrink to fit */
        else
            newlen = 0;                                    /* drop the buffer */
        if (newlen > MAX_SIZE)
            newlen = wl_range(&rng, 1, 64);                /* restart a huge one small */
        if (newlen == 0) {
            check_tail(x, x->len);
            free(x->p);
            x->p = NULL;
            x->len = 0;
            continue;
        }
        if (!x->p)
            x->tag = wl_tag(1, ++counter);
        unsigned char *np = realloc(x->p, newlen);
        if (!np)
            wl_fail("realloc_heavy: realloc(%zu) returned NULL", newlen);
        x->p = np;
        size_t kept = x->len < newlen ? x->len : newlen;
        check_tail(x, kept);
        if (newlen > x->len)
            wl_fill_range(x->p, x->len, newlen, x->tag);
        x->len = newlen;
    }
    for (size_t i = 0; i < BUFS; i++)
        if (b[i].p) {
            if (!wl_check_range(b[i].p, 0, b[i].len, b[i].tag))
                wl_fail("realloc_heavy: buffer %zu lost its data", i);
            free(b[i].p);
        }
    printf("realloc_heavy: %zu steps\n", steps);
    return 0;
}
