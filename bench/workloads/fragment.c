/* fragment.c - long-lived objects among short-lived ones, under fragmentation pressure.
 *
 * Long-running programs (servers, caches, compilers) interleave a few long-lived objects
 * with many temporaries.  Each phase here allocates a burst of temporaries of one size
 * range and keeps every 16th block alive (a "survivor"); the rest is freed at the end of
 * the phase.  Successive phases move to a different size range, so memory freed by one
 * phase can only be reused by later phases if the allocator can repurpose it, and the
 * scattered survivors pin pages.  Survivors also expire after a while, like cache entries.
 * The interesting number is peak RSS relative to the live data (a few tens of MiB).
 *
 * Check: temporaries are verified before free, survivors at expiry and at exit. */
#include "wl.h"

enum { BURST = 60000, KEEP_EVERY = 16, SURVIVOR_SLOTS = 32768 };

struct obj {
    void *p;
    uint32_t size;
    uint64_t tag;
};

/* Size ranges visited by successive phases: tiny, small, medium, mixed. */
static const uint32_t ranges[][2] = {
    { 8, 48 }, { 64, 192 }, { 256, 1024 }, { 1024, 4096 }, { 16, 512 }, { 4096, 16384 },
};

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    struct wl_rng rng;
    wl_rng_init(&rng, a.seed);
    size_t phases = wl_scaled(&a, 240, 6);
    static struct obj tmp[BURST];
    static struct obj surv[SURVIVOR_SLOTS];
    uint64_t counter = 0;
    size_t nranges = sizeof ranges / sizeof ranges[0];

    for (size_t ph = 0; ph < phases; ph++) {
        const uint32_t *r = ranges[ph % nranges];
        /* Bigger sizes get fewer objects, so each phase moves a similar byte volume. */
        size_t n = BURST * 64 / (r[0] + 63);
        if (n > BURST)
            n = BURST;
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            struct obj o = { NULL, (uint32_t)wl_range(&rng, r[0], r[1]), wl_tag(1, ++counter) };
            o.p = wl_xmalloc(o.size);
            wl_fill(o.p, o.size, o.tag);
            if (i % KEEP_EVERY == 0) {
                /* A survivor replaces a random older one (which expires now). */
                struct obj *s = &surv[wl_rand(&rng) % SURVIVOR_SLOTS];
                if (s->p) {
                    wl_verify(s->p, s->size, s->tag, "fragment survivor");
                    free(s->p);
                }
                *s = o;
                kept++;
            } else {
                tmp[i - kept] = o;
            }
        }
        for (size_t i = 0; i < n - kept; i++) {
            wl_verify(tmp[i].p, tmp[i].size, tmp[i].tag, "fragment temporary");
            free(tmp[i].p);
        }
    }
    size_t live = 0;
    for (size_t i = 0; i < SURVIVOR_SLOTS; i++)
        if (surv[i].p) {
            wl_verify(surv[i].p, surv[i].size, surv[i].tag, "fragment survivor");
            live += surv[i].size;
            free(surv[i].p);
        }
    printf("fragment: %zu phases, %zu bytes live at the end\n", phases, live);
    return 0;
}
