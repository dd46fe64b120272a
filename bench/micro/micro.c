/* micro.c - micro benchmark workloads in plain C; registered with google-benchmark by
 * shim.cpp.  They only call the allocator and touch the memory minimally: what is
 * measured is the allocator's per-call cost.  A failed check aborts the benchmark
 * binary (exit 2), so a broken allocator cannot post a good number. */
#include "micro.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Make the compiler believe the pointer escapes, so malloc/free pairs are not elided. */
static inline void escape(void *p)
{
    __asm__ volatile("" : : "g"(p) : "memory");
}

static void fail(const char *what)
{
    fprintf(stderr, "CHECK FAILED: micro: %s\n", what);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        fail("malloc returned NULL");
    return p;
}

size_t mb_malloc_free(size_t size)
{
    unsigned char *p = xmalloc(size);
    p[0] = 1;             /* a real caller writes its object */
    p[size - 1] = 2;
    escape(p);
    free(p);
    return 1;
}

/* Pointer and order arrays are reused between iterations: only allocator work is timed. */
enum { MAX_BATCH = 4096 };
static void *batch_ptr[MAX_BATCH];
static uint32_t random_order[MAX_BATCH];
static size_t random_order_n;

static void make_random_order(size_t n)
{
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++)
        random_order[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        size_t j = (size_t)(s % i);
        uint32_t t = random_order[i - 1];
        random_order[i - 1] = random_order[j];
        random_order[j] = t;
    }
    random_order_n = n;
}

size_t mb_batch(size_t size, size_t count, enum mb_order order)
{
    if (count > MAX_BATCH)
        count = MAX_BATCH;
    for (size_t i = 0; i < count; i++) {
        unsigned char *p = xmalloc(size);
        p[0] = (unsigned char)i;
        batch_ptr[i] = p;
    }
    escape(batch_ptr);
    switch (order) {
    case MB_LIFO:
        for (size_t i = count; i-- > 0;)
            free(batch_ptr[i]);
        break;
    case MB_FIFO:
        for (size_t i = 0; i < count; i++)
            free(batch_ptr[i]);
        break;
    case MB_RANDOM:
        if (random_order_n != count)
            make_random_order(count);
        for (size_t i = 0; i < count; i++) {
            unsigned char *p = batch_ptr[random_order[i]];
            if (p[0] != (unsigned char)random_order[i])
                fail("batch block corrupted");
            free(p);
        }
        break;
    }
    return count;
}

size_t mb_calloc(size_t size)
{
    unsigned char *p = calloc(1, size);
    if (!p)
        fail("calloc returned NULL");
    if (p[size / 2] != 0 || p[size - 1] != 0)
        fail("calloc memory not zeroed");
    p[size / 2] = 0xFF;   /* dirty it, so a reused block must be zeroed again */
    escape(p);
    free(p);
    return 1;
}

size_t mb_realloc_grow(size_t step, size_t final_len)
{
    char *s = NULL;
    size_t len = 0, calls = 0;
    while (len < final_len) {
        char *n = realloc(s, len + step + 1);
        if (!n)
            fail("realloc returned NULL");
        s = n;
        memset(s + len, 'a' + (int)(calls % 26), step);
        len += step;
        s[len] = 0;
        calls++;
    }
    /* the first and last appended chunks must have survived all the moves */
    if (s[0] != 'a' || s[len - 1] != (char)('a' + (int)((calls - 1) % 26)))
        fail("realloc lost data");
    free(s);
    return calls;
}

size_t mb_aligned(size_t align, size_t size)
{
    unsigned char *p = aligned_alloc(align, size);
    if (!p)
        fail("aligned_alloc returned NULL");
    if ((uintptr_t)p & (align - 1))
        fail("aligned_alloc returned a misaligned block");
    p[0] = 1;
    escape(p);
    free(p);
    return 1;
}

/* Cross-thread free: a persistent consumer thread frees whole batches produced by the
 * benchmark thread.  Two batch slots let the producer fill one while the other is being
 * freed; hand-over is a single atomic flag per slot, so synchronisation costs little
 * next to 256 remote frees. */
enum { XT_BATCH = 256 };
struct xt_slot {
    _Atomic int full;
    size_t count;
    void *p[XT_BATCH];
};
static struct xt_slot xt_slots[2];
static _Atomic int xt_stop;
static pthread_t xt_thread;
static int xt_running;
static unsigned xt_next;

static void *xt_consumer(void *arg)
{
    (void)arg;
    unsigned k = 0;
    for (;;) {
        struct xt_slot *s = &xt_slots[k & 1];
        while (!atomic_load_explicit(&s->full, memory_order_acquire)) {
            if (atomic_load_explicit(&xt_stop, memory_order_relaxed))
                return NULL;
            sched_yield();
        }
        for (size_t i = 0; i < s->count; i++) {
            if (((unsigned char *)s->p[i])[0] != (unsigned char)i)
                fail("cross-thread block corrupted");
            free(s->p[i]);
        }
        atomic_store_explicit(&s->full, 0, memory_order_release);
        k++;
    }
}

size_t mb_xthread(size_t size, size_t count)
{
    if (count > XT_BATCH)
        count = XT_BATCH;
    if (!xt_running) {
        atomic_store(&xt_stop, 0);
        xt_next = 0;
        if (pthread_create(&xt_thread, NULL, xt_consumer, NULL) != 0)
            fail("pthread_create failed");
        xt_running = 1;
    }
    struct xt_slot *s = &xt_slots[xt_next & 1];
    while (atomic_load_explicit(&s->full, memory_order_acquire))
        sched_yield();   /* consumer still freeing the previous use of this slot */
    for (size_t i = 0; i < count; i++) {
        unsigned char *p = xmalloc(size);
        p[0] = (unsigned char)i;
        s->p[i] = p;
    }
    s->count = count;
    atomic_store_explicit(&s->full, 1, memory_order_release);
    xt_next++;
    return count;
}

void mb_xthread_stop(void)
{
    if (!xt_running)
        return;
    /* let the consumer drain both slots before it stops */
    for (int i = 0; i < 2; i++)
        while (atomic_load_explicit(&xt_slots[i].full, memory_order_acquire))
            sched_yield();
    atomic_store(&xt_stop, 1);
    pthread_join(xt_thread, NULL);
    xt_running = 0;
}
