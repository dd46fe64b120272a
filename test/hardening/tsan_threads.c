/* tsan_threads.c - many threads on the hm_ API, for ThreadSanitizer (.ci/sanitizers builds
 * it with -Db_sanitize=thread -Doverride=false) and as a plain threaded test otherwise.
 *
 * Blocks of every tier travel between threads and are freed by a thread other than the one
 * that allocated them; every block carries a pattern derived from its address, size and a
 * seed, checked by whoever frees it, so a block handed out twice or written by a neighbour is
 * caught even without a sanitizer.  Under TSan, any data race inside the allocator (thread
 * caches, central lists, arenas, large list, page map, heap check) is reported, and TSan's
 * report makes the test fail (exit code 66, see the TSAN_OPTIONS in .ci/sanitizers).
 * No suppressions: a race here is a bug to fix.  Under TSan it is built with
 * -DHM_NO_CRITERION and runs on cr_shim.h (Criterion itself cannot start under TSan). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef HM_NO_CRITERION
#include "cr_shim.h" /* Criterion cannot start under TSan; see cr_shim.h */
#else
#include <criterion/criterion.h>
#endif

#include "hmalloc.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* ---- patterns ---- */
static uint64_t mix(uint64_t x) {
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

/* Pattern words at the start and the end of the block, and one per 4 KiB in between (the
 * interesting places: headers, neighbours, page boundaries) - TSan makes full scans slow. */
static size_t next_off(size_t off) { return off < 256 ? off + 8 : off + 4096; }

static void stamp(unsigned char *p, size_t n, uint64_t seed) {
  uint64_t base = mix((uintptr_t)p ^ seed ^ ((uint64_t)n << 20));
  if (n < 8) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(base >> (8 * i));
    return;
  }
  size_t off = 0, end = 0;
  for (; off + 8 <= n; off = next_off(off)) {
    uint64_t w = base ^ off;
    memcpy(p + off, &w, 8);
    end = off + 8;
  }
  if (n - 8 >= end) { /* the last word, unless it overlaps one written above */
    uint64_t w = ~base;
    memcpy(p + n - 8, &w, 8);
  }
}

static bool stamp_ok(const unsigned char *p, size_t n, uint64_t seed) {
  uint64_t base = mix((uintptr_t)p ^ seed ^ ((uint64_t)n << 20));
  if (n < 8) {
    for (size_t i = 0; i < n; i++)
      if (p[i] != (unsigned char)(base >> (8 * i))) return false;
    return true;
  }
  size_t off = 0, end = 0;
  uint64_t w;
  for (; off + 8 <= n; off = next_off(off)) {
    memcpy(&w, p + off, 8);
    if (w != (base ^ off)) return false;
    end = off + 8;
  }
  if (n - 8 >= end) {
    memcpy(&w, p + n - 8, 8);
    if (w != ~base) return false;
  }
  return true;
}

static uint64_t rng(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* Mostly small, some medium, a few large. */
static size_t pick_size(uint64_t *s) {
  uint64_t r = rng(s);
  unsigned t = (unsigned)(r % 100);
  r >>= 8;
  if (t < 70) return 1 + r % 4096;
  if (t < 95) return 4097 + r % (128 * KiB - 4097);
  return 128 * KiB + r % (2 * MiB);
}

/* ---- a bounded multi-producer multi-consumer queue of blocks (mutex + condvars) ---- */
typedef struct {
  void *p;
  size_t n;
  uint64_t seed;
  int owner; /* allocating thread */
} item_t;

#define QCAP 256
typedef struct {
  pthread_mutex_t m;
  pthread_cond_t not_empty, not_full;
  item_t items[QCAP];
  size_t head, count;
  int producers_left;
} queue_t;

static void q_init(queue_t *q, int producers) {
  memset(q, 0, sizeof *q);
  pthread_mutex_init(&q->m, NULL);
  pthread_cond_init(&q->not_empty, NULL);
  pthread_cond_init(&q->not_full, NULL);
  q->producers_left = producers;
}

static void q_push(queue_t *q, item_t it) {
  pthread_mutex_lock(&q->m);
  while (q->count == QCAP) pthread_cond_wait(&q->not_full, &q->m);
  q->items[(q->head + q->count) % QCAP] = it;
  q->count++;
  pthread_cond_signal(&q->not_empty);
  pthread_mutex_unlock(&q->m);
}

/* false when every producer is done and the queue is empty */
static bool q_pop(queue_t *q, item_t *out) {
  pthread_mutex_lock(&q->m);
  while (q->count == 0 && q->producers_left > 0) pthread_cond_wait(&q->not_empty, &q->m);
  bool ok = q->count > 0;
  if (ok) {
    *out = q->items[q->head];
    q->head = (q->head + 1) % QCAP;
    q->count--;
    pthread_cond_signal(&q->not_full);
  }
  pthread_mutex_unlock(&q->m);
  return ok;
}

static void q_producer_done(queue_t *q) {
  pthread_mutex_lock(&q->m);
  q->producers_left--;
  pthread_cond_broadcast(&q->not_empty);
  pthread_mutex_unlock(&q->m);
}

static atomic_ulong bad_blocks, failed_allocs, freed_blocks;

/* ---- producers and consumers: every block is freed by a thread that did not allocate it --- */
typedef struct {
  queue_t *q;
  int id;
  int blocks;
} worker_arg_t;

static void *producer(void *argp) {
  worker_arg_t *a = argp;
  uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(a->id + 1);
  for (int i = 0; i < a->blocks; i++) {
    size_t n = pick_size(&s);
    unsigned char *p;
    unsigned kind = (unsigned)(rng(&s) % 8);
    if (kind == 0) {
      p = hm_calloc(1, n);
      if (p && p[n - 1] != 0) atomic_fetch_add(&bad_blocks, 1);
    } else if (kind == 1) {
      void *q = NULL;
      p = hm_posix_memalign(&q, (size_t)64 << (rng(&s) % 8), n) == 0 ? q : NULL;
    } else if (kind == 2) {
      /* grow a block through realloc before handing it over */
      p = hm_malloc(n / 2 + 1);
      if (p) {
        unsigned char *r = hm_realloc(p, n);
        if (r == NULL) hm_free(p);
        p = r;
      }
    } else {
      p = hm_malloc(n);
    }
    if (p == NULL) {
      atomic_fetch_add(&failed_allocs, 1);
      continue;
    }
    uint64_t seed = rng(&s);
    stamp(p, n, seed);
    q_push(a->q, (item_t){p, n, seed, a->id});
  }
  q_producer_done(a->q);
  return NULL;
}

static void *consumer(void *argp) {
  worker_arg_t *a = argp;
  item_t it;
  while (q_pop(a->q, &it)) {
    if (hm_malloc_usable_size(it.p) < it.n || !stamp_ok(it.p, it.n, it.seed))
      atomic_fetch_add(&bad_blocks, 1);
    hm_free(it.p);
    atomic_fetch_add(&freed_blocks, 1);
  }
  return NULL;
}

static void run_queue(int producers, int consumers, int blocks_each) {
  queue_t q;
  q_init(&q, producers);
  pthread_t th[64];
  worker_arg_t args[64];
  int n = 0;
  for (int i = 0; i < producers; i++, n++) {
    args[n] = (worker_arg_t){&q, i, blocks_each};
    cr_assert_eq(pthread_create(&th[n], NULL, producer, &args[n]), 0);
  }
  for (int i = 0; i < consumers; i++, n++) {
    args[n] = (worker_arg_t){&q, 100 + i, 0};
    cr_assert_eq(pthread_create(&th[n], NULL, consumer, &args[n]), 0);
  }
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

static void reset_counters(void) {
  atomic_store(&bad_blocks, 0);
  atomic_store(&failed_allocs, 0);
  atomic_store(&freed_blocks, 0);
}

Test(tsan_threads, producers_consumers_cross_thread_free, .timeout = 240) {
  reset_counters();
  enum { P = 6, C = 6, BLOCKS = 1500 };
  run_queue(P, C, BLOCKS);
  cr_expect_eq(atomic_load(&failed_allocs), 0, "%lu allocations failed",
               atomic_load(&failed_allocs));
  cr_expect_eq(atomic_load(&bad_blocks), 0, "%lu blocks arrived corrupted",
               atomic_load(&bad_blocks));
  cr_expect_eq(atomic_load(&freed_blocks), (unsigned long)(P * BLOCKS));
  cr_assert_eq(hm_heap_check(), 0);
}

/* ---- churn: each thread keeps a window of its own blocks, and swaps some with others ---- */
#define CHURN_THREADS 8
#define WINDOW 48
typedef struct {
  _Atomic(item_t *) mailbox; /* a block another thread left for this one */
} mailbox_t;
static mailbox_t boxes[CHURN_THREADS];

static void *churn(void *argp) {
  int id = (int)(intptr_t)argp;
  uint64_t s = 0xD1B54A32D192ED03ull * (uint64_t)(id + 7);
  item_t live[WINDOW];
  memset(live, 0, sizeof live);
  for (int iter = 0; iter < 4000; iter++) {
    item_t *slot = &live[rng(&s) % WINDOW];
    if (slot->p) {
      if (!stamp_ok(slot->p, slot->n, slot->seed)) atomic_fetch_add(&bad_blocks, 1);
      unsigned what = (unsigned)(rng(&s) % 4);
      if (what == 0) { /* realloc: the pattern moves with the block */
        size_t n = pick_size(&s);
        unsigned char *r = hm_realloc(slot->p, n);
        if (r == NULL) {
          atomic_fetch_add(&failed_allocs, 1);
          continue;
        }
        slot->p = r;
        slot->n = n;
        slot->seed = rng(&s);
        stamp(r, n, slot->seed);
        continue;
      }
      if (what == 1) { /* leave it in another thread's mailbox (it frees it) */
        item_t *box = hm_malloc(sizeof *box);
        if (box) {
          *box = *slot;
          box = atomic_exchange(&boxes[(id + 1 + rng(&s) % (CHURN_THREADS - 1)) % CHURN_THREADS]
                                    .mailbox, box);
          if (box) { /* the previous occupant: ours to free now */
            if (!stamp_ok(box->p, box->n, box->seed)) atomic_fetch_add(&bad_blocks, 1);
            hm_free(box->p);
            hm_free(box);
          }
          memset(slot, 0, sizeof *slot);
          continue;
        }
      }
      hm_free(slot->p);
      memset(slot, 0, sizeof *slot);
    } else {
      item_t *box = atomic_exchange(&boxes[id].mailbox, NULL);
      if (box) {
        if (!stamp_ok(box->p, box->n, box->seed)) atomic_fetch_add(&bad_blocks, 1);
        hm_free(box->p);
        hm_free(box);
      }
      size_t n = pick_size(&s);
      unsigned char *p = (rng(&s) & 1) ? hm_aligned_alloc(256, n) : hm_malloc(n);
      if (p == NULL) {
        atomic_fetch_add(&failed_allocs, 1);
        continue;
      }
      *slot = (item_t){p, n, rng(&s), id};
      stamp(p, n, slot->seed);
    }
  }
  for (int i = 0; i < WINDOW; i++)
    if (live[i].p) {
      if (!stamp_ok(live[i].p, live[i].n, live[i].seed)) atomic_fetch_add(&bad_blocks, 1);
      hm_free(live[i].p);
    }
  return NULL;
}

Test(tsan_threads, churn_with_mailboxes, .timeout = 240) {
  reset_counters();
  pthread_t th[CHURN_THREADS];
  for (int i = 0; i < CHURN_THREADS; i++)
    cr_assert_eq(pthread_create(&th[i], NULL, churn, (void *)(intptr_t)i), 0);
  for (int i = 0; i < CHURN_THREADS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < CHURN_THREADS; i++) { /* blocks left in mailboxes */
    item_t *box = atomic_exchange(&boxes[i].mailbox, NULL);
    if (box) {
      if (!stamp_ok(box->p, box->n, box->seed)) atomic_fetch_add(&bad_blocks, 1);
      hm_free(box->p);
      hm_free(box);
    }
  }
  cr_expect_eq(atomic_load(&failed_allocs), 0);
  cr_expect_eq(atomic_load(&bad_blocks), 0, "%lu blocks corrupted", atomic_load(&bad_blocks));
  cr_assert_eq(hm_heap_check(), 0);
}

/* ---- short-lived threads: their caches are flushed at exit while other threads free the
 * blocks they allocated ---- */
#define HANDOFF 64
static void *short_lived(void *argp) {
  item_t *out = argp;
  uint64_t s = (uintptr_t)argp | 1;
  for (int i = 0; i < HANDOFF; i++) {
    size_t n = (i % 4 == 3) ? 4097 + rng(&s) % 60000 : 1 + rng(&s) % 2048;
    unsigned char *p = hm_malloc(n);
    if (p == NULL) {
      out[i].p = NULL;
      continue;
    }
    out[i] = (item_t){p, n, rng(&s), 0};
    stamp(p, n, out[i].seed);
    /* some garbage the thread frees itself: it sits in the cache that exit flushes */
    void *tmp = hm_malloc(1 + rng(&s) % 1024);
    hm_free(tmp);
  }
  return NULL;
}

Test(tsan_threads, thread_exit_while_others_free, .timeout = 240) {
  reset_counters();
  for (int round = 0; round < 30; round++) {
    static item_t blocks[4][HANDOFF];
    pthread_t th[4];
    for (int t = 0; t < 4; t++) cr_assert_eq(pthread_create(&th[t], NULL, short_lived, blocks[t]), 0);
    for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
    /* the allocating threads are gone: free their blocks from here */
    for (int t = 0; t < 4; t++)
      for (int i = 0; i < HANDOFF; i++)
        if (blocks[t][i].p) {
          if (!stamp_ok(blocks[t][i].p, blocks[t][i].n, blocks[t][i].seed))
            atomic_fetch_add(&bad_blocks, 1);
          hm_free(blocks[t][i].p);
        }
  }
  cr_expect_eq(atomic_load(&bad_blocks), 0);
  cr_assert_eq(hm_heap_check(), 0);
}

/* ---- hm_heap_check while other threads allocate: it takes each lock in turn, so it must
 * neither race with them nor see a broken invariant ---- */
static atomic_bool stop_flag;

static void *churn_until_stopped(void *argp) {
  uint64_t s = (uintptr_t)argp * 0x2545F4914F6CDD1Dull + 1;
  void *win[32] = {0};
  while (!atomic_load(&stop_flag)) {
    unsigned k = (unsigned)(rng(&s) % 32);
    hm_free(win[k]);
    win[k] = hm_malloc(pick_size(&s));
  }
  for (int k = 0; k < 32; k++) hm_free(win[k]);
  return NULL;
}

Test(tsan_threads, heap_check_concurrent, .timeout = 240) {
  atomic_store(&stop_flag, false);
  pthread_t th[4];
  for (int t = 0; t < 4; t++)
    cr_assert_eq(pthread_create(&th[t], NULL, churn_until_stopped, (void *)(intptr_t)(t + 1)), 0);
  int bad = 0;
  for (int i = 0; i < 200; i++)
    if (hm_heap_check() != 0) bad++;
  atomic_store(&stop_flag, true);
  for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
  cr_expect_eq(bad, 0, "hm_heap_check failed %d times while other threads allocated", bad);
  cr_assert_eq(hm_heap_check(), 0);
}
