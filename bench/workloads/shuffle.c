/* shuffle.c - random sizes 8-512 B, 500k-1M objects allocated then freed in shuffled
 * order, repeated.
 *
 * A batch allocation followed by frees in an unrelated order is what destroying a big
 * hash table, a parse tree or a cache does.  Freeing in random order scatters the free
 * blocks over all pages and size classes, so the next round's allocations come from
 * fragmented free lists; cache and TLB misses dominate.  Each round allocates a random
 * count of objects between 500k and 1M (scaled down in quick mode).
 *
 * Check: every object is filled with its pattern and verified just before its free. */
#include "wl.h"

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    struct wl_rng rng;
    wl_rng_init(&rng, a.seed);
    size_t rounds = wl_scaled(&a, 4, 1);
    /* Quick mode shrinks the object counts as well, full mode uses 500k-1M. */
    size_t lo = a.scale >= 1.0 ? 500000 : wl_scaled(&a, 500000, 20000);
    size_t hi = 2 * lo;
    void **p = wl_xmalloc(hi * sizeof *p);
    size_t total = 0;
    for (size_t r = 0; r < rounds; r++) {
        size_t n = wl_range(&rng, lo, hi);
        for (size_t i = 0; i < n; i++) {
            size_t size = wl_range(&rng, 8, 512);
            p[i] = wl_xmalloc(size);
            /* The size is stored in the object itself, so the shuffled free can verify
             * the pattern without a side table. */
            wl_fill(p[i], size, (uint64_t)(uintptr_t)p[i]);
            memcpy(p[i], &size, sizeof(uint32_t) < size ? sizeof(uint32_t) : size);
        }
        wl_shuffle(&rng, p, n);
        for (size_t i = 0; i < n; i++) {
            uint32_t size = 0;
            memcpy(&size, p[i], 4);
            if (size < 8 || size > 512)
                wl_fail("shuffle: object %p has a corrupted header", p[i]);
            if (!wl_check_range(p[i], 4, size, (uint64_t)(uintptr_t)p[i]))
                wl_fail("shuffle: object %p (%u bytes) corrupted", p[i], size);
            free(p[i]);
        }
        total += n;
    }
    free(p);
    printf("shuffle: %zu rounds, %zu objects\n", rounds, total);
    return 0;
}
