/* wl.h - helpers shared by every macro workload in bench/workloads: argument parsing,
 * a small PRNG, block fill/verify patterns and failure reporting.
 *
 * Every workload is a standalone program run by bench/run under each allocator through
 * LD_PRELOAD.  The program itself does not time anything (the runner measures wall time,
 * CPU time and peak RSS of the child); it only does the work and checks its results, so a
 * broken allocator makes the run fail (exit status 2) instead of looking fast.
 *
 * Command line of every workload:  NAME [-t THREADS] [-s SCALE] [-r SEED]
 *   -t  worker threads (threaded workloads; default 2)
 *   -s  work multiplier (1.0 = full run, bench/run --quick uses a small fraction)
 *   -r  PRNG seed (default 1), so every allocator sees the same request sequence */
#ifndef BENCH_WL_H
#define BENCH_WL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct wl_args {
    int threads;
    double scale;
    uint64_t seed;
};

static inline void wl_parse(int argc, char **argv, struct wl_args *a)
{
    a->threads = 2;
    a->scale = 1.0;
    a->seed = 1;
    int c;
    while ((c = getopt(argc, argv, "t:s:r:")) != -1) {
        switch (c) {
        case 't': a->threads = atoi(optarg); break;
        case 's': a->scale = atof(optarg); break;
        case 'r': a->seed = strtoull(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: %s [-t threads] [-s scale] [-r seed]\n", argv[0]);
            exit(1);
        }
    }
    if (a->threads < 1 || a->threads > 1024 || !(a->scale > 0)) {
        fprintf(stderr, "%s: bad arguments\n", argv[0]);
        exit(1);
    }
}

/* Scale an iteration count, never below `min` so quick mode still exercises every path. */
static inline size_t wl_scaled(const struct wl_args *a, double full, size_t min)
{
    double v = full * a->scale;
    return v < (double)min ? min : (size_t)v;
}

/* A failed check is fatal: report it and exit 2 so the runner records a failure. */
__attribute__((noreturn, format(printf, 1, 2)))
static inline void wl_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("CHECK FAILED: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static inline void *wl_xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        wl_fail("malloc(%zu) returned NULL", n);
    return p;
}

/* xorshift64*: fast, good enough for picking sizes and slots, identical on every run. */
struct wl_rng {
    uint64_t s;
};

static inline void wl_rng_init(struct wl_rng *r, uint64_t seed)
{
    r->s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    if (r->s == 0)
        r->s = 1;
}

static inline uint64_t wl_rand(struct wl_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [lo, hi]. */
static inline size_t wl_range(struct wl_rng *r, size_t lo, size_t hi)
{
    return lo + (size_t)(wl_rand(r) % (hi - lo + 1));
}

/* Fisher-Yates shuffle of a pointer array. */
static inline void wl_shuffle(struct wl_rng *r, void **v, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(wl_rand(r) % i);
        void *t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

/* Block patterns.  The pattern depends on a per-object tag, so two objects handed the
 * same or overlapping memory corrupt each other's pattern and the later verify fails.
 * Small blocks are written completely (like real objects); big blocks get their head,
 * their tail and one word in every page, which touches every page (so RSS is real)
 * without making the workload a memset benchmark. */
static inline uint64_t wl_word(uint64_t tag, size_t i)
{
    return (tag * 0x9E3779B97F4A7C15ull) ^ (i * 0xD6E8FEB86659FD93ull) ^ 0xA5A5A5A5A5A5A5A5ull;
}

#define WL_FULL_FILL_LIMIT 1024
#define WL_EDGE 64

/* Pattern byte i of an object is byte (i & 7) of wl_word(tag, i / 8); whole words are
 * written with memcpy so filling costs about one multiply per 8 bytes. */
static inline void wl_fill_range(unsigned char *p, size_t from, size_t to, uint64_t tag)
{
    size_t i = from;
    for (; i < to && (i & 7); i++)
        p[i] = (unsigned char)(wl_word(tag, i >> 3) >> ((i & 7) * 8));
    for (; i + 8 <= to; i += 8) {
        uint64_t w = wl_word(tag, i >> 3);
        memcpy(p + i, &w, 8);
    }
    for (; i < to; i++)
        p[i] = (unsigned char)(wl_word(tag, i >> 3) >> ((i & 7) * 8));
}

static inline int wl_check_range(const unsigned char *p, size_t from, size_t to, uint64_t tag)
{
    size_t i = from;
    for (; i < to && (i & 7); i++)
        if (p[i] != (unsigned char)(wl_word(tag, i >> 3) >> ((i & 7) * 8)))
            return 0;
    for (; i + 8 <= to; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w != wl_word(tag, i >> 3))
            return 0;
    }
    for (; i < to; i++)
        if (p[i] != (unsigned char)(wl_word(tag, i >> 3) >> ((i & 7) * 8)))
            return 0;
    return 1;
}

/* Visit the pattern-bearing byte ranges of a block of `size` bytes. */
#define WL_FOR_RANGES(size, FROM, TO, BODY)                                               \
    do {                                                                                  \
        size_t wl_sz_ = (size);                                                           \
        if (wl_sz_ <= WL_FULL_FILL_LIMIT) {                                               \
            size_t FROM = 0, TO = wl_sz_;                                                 \
            BODY;                                                                         \
        } else {                                                                          \
            { size_t FROM = 0, TO = WL_EDGE; BODY; }                                      \
            for (size_t wl_pg_ = 4096; wl_pg_ + 8 <= wl_sz_ - WL_EDGE; wl_pg_ += 4096) {  \
                size_t FROM = wl_pg_, TO = wl_pg_ + 8;                                    \
                BODY;                                                                     \
            }                                                                             \
            { size_t FROM = wl_sz_ - WL_EDGE, TO = wl_sz_; BODY; }                        \
        }                                                                                 \
    } while (0)

static inline void wl_fill(void *p, size_t size, uint64_t tag)
{
    WL_FOR_RANGES(size, a, b, wl_fill_range((unsigned char *)p, a, b, tag));
}

/* Returns 1 when the block still holds its pattern. */
static inline int wl_ok(const void *p, size_t size, uint64_t tag)
{
    int ok = 1;
    WL_FOR_RANGES(size, a, b, if (ok && !wl_check_range((const unsigned char *)p, a, b, tag)) ok = 0);
    return ok;
}

static inline void wl_verify(const void *p, size_t size, uint64_t tag, const char *what)
{
    if (!wl_ok(p, size, tag))
        wl_fail("%s: block %p (%zu bytes, tag %llu) was corrupted", what, p, size,
                (unsigned long long)tag);
}

/* Per-object tags must be unique across threads: thread id in the high bits. */
static inline uint64_t wl_tag(unsigned thread, uint64_t counter)
{
    return ((uint64_t)thread << 48) ^ counter;
}

static inline void wl_start_threads(pthread_t *t, int n, void *(*fn)(void *), void *args,
                                    size_t arg_size)
{
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, fn, (char *)args + (size_t)i * arg_size) != 0)
            wl_fail("pthread_create failed");
}

static inline void wl_join_threads(pthread_t *t, int n)
{
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
}

/* The false-sharing loop of cache-scratch and cache-thrash: `rounds` times, allocate a
 * `size`-byte object, write every byte `writes` times (volatile: each write must really reach
 * the cache line), then write a known value last and verify it before freeing. */
static inline void wl_write_rounds(const char *name, unsigned id, int size, size_t rounds,
                                   size_t writes)
{
    for (size_t r = 0; r < rounds; r++) {
        volatile unsigned char *p = wl_xmalloc((size_t)size);
        for (size_t k = 0; k < writes; k++)
            for (int i = 0; i < size; i++)
                p[i] = (unsigned char)(p[i] + 1 + (i ^ (int)id));
        for (int i = 0; i < size; i++)
            p[i] = (unsigned char)(id * 31 + (unsigned)i);
        for (int i = 0; i < size; i++)
            if (p[i] != (unsigned char)(id * 31 + (unsigned)i))
                wl_fail("%s: object %p corrupted", name, (void *)p);
        free((void *)p);
    }
}

#endif
