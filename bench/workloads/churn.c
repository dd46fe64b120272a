/* churn.c - single-threaded small-object churn, modelled on cfrac/espresso.
 *
 * cfrac factors numbers with a bignum library that allocates a fresh small digit array
 * for every intermediate result and frees operands soon after; espresso does the same
 * with small cube/set vectors.  Here a pool of live "bignums" (8-136 byte digit arrays)
 * is combined pairwise: each step allocates the result, then a random pool member is
 * replaced by it (freed), and a few temporaries die immediately.  Almost every request
 * is below 256 bytes and lifetimes are very short: the allocator's small-size fast path
 * and its free-list reuse decide the speed.
 *
 * Check: every number carries a checksum of its digits, verified before it is used and
 * before it is freed. */
#include "wl.h"

struct num {
    uint32_t len;      /* digits */
    uint32_t sum;      /* checksum of the digits */
    uint32_t d[];
};

static uint32_t digest(const struct num *n)
{
    uint32_t h = 2166136261u ^ n->len;
    for (uint32_t i = 0; i < n->len; i++)
        h = (h ^ n->d[i]) * 16777619u;
    return h;
}

static struct num *num_new(uint32_t len)
{
    struct num *n = wl_xmalloc(sizeof *n + len * sizeof(uint32_t));
    n->len = len;
    return n;
}

static void num_check(const struct num *n)
{
    if (digest(n) != n->sum)
        wl_fail("churn: number %p corrupted", (const void *)n);
}

/* a + b, digit-wise with carry, length max+1 like a real bignum add. */
static struct num *num_add(const struct num *a, const struct num *b)
{
    uint32_t len = (a->len > b->len ? a->len : b->len) + 1;
    if (len > 32)
        len = 1 + len % 31; /* keep numbers small: wrap like a modular reduction */
    struct num *r = num_new(len);
    uint64_t carry = 0;
    for (uint32_t i = 0; i < len; i++) {
        uint64_t s = carry + (i < a->len ? a->d[i] : 0) + (i < b->len ? b->d[i] : 0);
        r->d[i] = (uint32_t)s;
        carry = s >> 32;
    }
    r->sum = digest(r);
    return r;
}

/* Low half of a * b (schoolbook), the other common temporary. */
static struct num *num_mul_low(const struct num *a, const struct num *b)
{
    uint32_t len = a->len > b->len ? a->len : b->len;
    struct num *r = num_new(len);
    memset(r->d, 0, len * sizeof(uint32_t));
    for (uint32_t i = 0; i < a->len; i++) {
        uint64_t carry = 0;
        for (uint32_t j = 0; i + j < len && j < b->len; j++) {
            uint64_t t = (uint64_t)a->d[i] * b->d[j] + r->d[i + j] + carry;
            r->d[i + j] = (uint32_t)t;
            carry = t >> 32;
        }
    }
    r->sum = digest(r);
    return r;
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    struct wl_rng rng;
    wl_rng_init(&rng, a.seed);

    enum { POOL = 4096 };
    static struct num *pool[POOL];
    for (int i = 0; i < POOL; i++) {
        uint32_t len = (uint32_t)wl_range(&rng, 1, 8);
        pool[i] = num_new(len);
        for (uint32_t j = 0; j < len; j++)
            pool[i]->d[j] = (uint32_t)wl_rand(&rng);
        pool[i]->sum = digest(pool[i]);
    }

    size_t steps = wl_scaled(&a, 3e6, 20000);
    uint64_t acc = 0;
    for (size_t s = 0; s < steps; s++) {
        struct num *x = pool[wl_rand(&rng) % POOL];
        struct num *y = pool[wl_rand(&rng) % POOL];
        num_check(x);
        num_check(y);
        struct num *t = num_mul_low(x, y);   /* short-lived temporary */
        struct num *r = num_add(t, x);
        acc += r->d[0];
        free(t);
        size_t victim = wl_rand(&rng) % POOL;
        num_check(pool[victim]);
        free(pool[victim]);
        pool[victim] = r;
    }
    for (int i = 0; i < POOL; i++) {
        num_check(pool[i]);
        free(pool[i]);
    }
    printf("churn: %zu steps, acc %llu\n", steps, (unsigned long long)acc);
    return 0;
}
