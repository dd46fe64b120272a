/* large.c - large blocks, modelled on mimalloc-bench's malloc-large.
 *
 * Buffers of 64 KiB to 16 MiB (image, network and compression buffers) are allocated,
 * touched page by page, and replaced at random while about 20 stay live.  These sizes
 * go to mmap or to a large-object cache depending on the allocator: the costs are system
 * calls, page faults and how much freed memory is cached (speed) versus returned to the
 * OS (peak RSS).
 *
 * Check: every buffer gets a pattern in its head, tail and every page, verified before
 * free. */
#include "wl.h"

enum { LIVE = 20 };

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    struct wl_rng rng;
    wl_rng_init(&rng, a.seed);
    size_t steps = wl_scaled(&a, 6000, 40);
    void *p[LIVE] = { 0 };
    size_t size[LIVE] = { 0 };
    uint64_t tag[LIVE] = { 0 };
    uint64_t counter = 0;
    for (size_t s = 0; s < steps; s++) {
        size_t i = (size_t)(wl_rand(&rng) % LIVE);
        if (p[i]) {
            wl_verify(p[i], size[i], tag[i], "large");
            free(p[i]);
        }
        /* log-uniform between 64 KiB and 16 MiB: as many small "large" blocks as huge */
        unsigned shift = (unsigned)wl_range(&rng, 16, 23);
        size[i] = wl_range(&rng, (size_t)1 << shift, (size_t)2 << shift);
        tag[i] = wl_tag(1, ++counter);
        p[i] = wl_xmalloc(size[i]);
        wl_fill(p[i], size[i], tag[i]);
    }
    for (size_t i = 0; i < LIVE; i++)
        if (p[i]) {
            wl_verify(p[i], size[i], tag[i], "large");
            free(p[i]);
        }
    printf("large: %zu replacements\n", steps);
    return 0;
}
