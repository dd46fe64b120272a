/* threads.c - hmalloc under threads: cross-thread frees through a shared queue with content
 * checks, thousands of threads that allocate and exit (sequentially and concurrently) with
 * bounded memory, blocks freed after the thread that allocated them has exited, and threads
 * that make only medium calls or only medium and large frees.
 * Standard names, in an executable whose malloc is hmalloc. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>

#include "hm_test.h"

TestSuite(threads, .timeout = 120);

/* ---- a bounded, lock-protected queue of blocks ------------------------------------------ */

typedef struct item_s {
  void *p;
  size_t size;
  uint64_t seed;
} item_t;

#define QCAP 4096
static struct {
  pthread_mutex_t lock;
  item_t items[QCAP];
  size_t head, count;
} q = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int q_push(item_t it) {
  pthread_mutex_lock(&q.lock);
  int ok = q.count < QCAP;
  if (ok) {
    q.items[(q.head + q.count) % QCAP] = it;
    q.count++;
  }
  pthread_mutex_unlock(&q.lock);
  return ok;
}

static int q_pop(item_t *it) {
  pthread_mutex_lock(&q.lock);
  int ok = q.count > 0;
  if (ok) {
    *it = q.items[q.head];
    q.head = (q.head + 1) % QCAP;
    q.count--;
  }
  pthread_mutex_unlock(&q.lock);
  return ok;
}

static atomic_int failures;
static atomic_ulong verified;
static char failure_msg[256];

static void note_failure(const char *what, const item_t *it, size_t at) {
  if (atomic_fetch_add(&failures, 1) == 0)
    snprintf(failure_msg, sizeof failure_msg, "%s: block %p of %zu bytes, offset %zu", what, it->p,
             it->size, at);
}

static void verify_and_free(const item_t *it) {
  size_t bad = check_pattern(it->p, it->size, it->seed);
  if (bad != (size_t)-1) note_failure("cross-thread block corrupted", it, bad);
  if (malloc_usable_size(it->p) < it->size) note_failure("usable size shrank", it, 0);
  free(it->p);
  atomic_fetch_add(&verified, 1);
}

static size_t random_size(uint64_t *rng) {
  uint64_t r = rng_next(rng);
  unsigned pick = (unsigned)(r % 1000);
  r >>= 10;
  if (pick < 800) return 1 + r % 512;      /* small */
  if (pick < 950) return 513 + r % 3584;   /* small, bigger classes */
  if (pick < 993) return 4097 + r % 100000; /* medium */
  return 131072 + r % (512 * 1024);         /* large */
}

typedef struct worker_arg_s {
  int id;
  int iters;
} worker_arg_t;

static void *exchange_worker(void *argp) {
  worker_arg_t *arg = argp;
  uint64_t rng = 0x1234567ull * (uint64_t)(arg->id + 1);
  for (int i = 0; i < arg->iters && atomic_load(&failures) == 0; i++) {
    if (rng_next(&rng) % 2) {
      item_t it = {.size = random_size(&rng), .seed = rng_next(&rng)};
      it.p = malloc(it.size);
      if (!it.p) {
        note_failure("malloc returned NULL", &it, 0);
        break;
      }
      fill_pattern(it.p, it.size, it.seed);
      if (!q_push(it)) verify_and_free(&it);
    } else {
      item_t it;
      if (q_pop(&it)) verify_and_free(&it);
    }
  }
  return NULL;
}

Test(threads, cross_thread_free_with_content_checks) {
  enum { T = 8 };
  pthread_t th[T];
  worker_arg_t args[T];
  hm_stats_t s0 = stats_now();
  for (int i = 0; i < T; i++) {
    args[i] = (worker_arg_t){.id = i, .iters = 40000};
    cr_assert_eq(pthread_create(&th[i], NULL, exchange_worker, &args[i]), 0);
  }
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  item_t it;
  while (q_pop(&it)) verify_and_free(&it);
  cr_assert_eq(atomic_load(&failures), 0, "%s", failure_msg);
  cr_assert_gt(atomic_load(&verified), 100000, "only %lu blocks went through the queue",
               atomic_load(&verified));
  assert_heap_ok();
  hm_stats_t s1 = stats_now();
  cr_assert_geq(s1.malloc_count, s0.malloc_count + atomic_load(&verified),
                "malloc_count moved by %llu for %lu blocks",
                (unsigned long long)(s1.malloc_count - s0.malloc_count), atomic_load(&verified));
  cr_assert_geq(s1.free_count, s0.free_count + atomic_load(&verified),
                "free_count moved by %llu for %lu blocks",
                (unsigned long long)(s1.free_count - s0.free_count), atomic_load(&verified));
  cr_assert_leq(s1.allocated, s0.allocated + 64 * KiB, "allocated %zu -> %zu with nothing live",
                s0.allocated, s1.allocated);
}

/* ---- threads that allocate and exit -------------------------------------------------- */

static size_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, rss = 0;
  if (fscanf(f, "%lu %lu", &size, &rss) != 2) rss = 0;
  fclose(f);
  return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

/* Fills the thread cache in many classes, touches the medium and large tiers, frees it all
 * and exits: whatever the thread cached must go back for later threads. */
static void *alloc_and_exit(void *argp) {
  uintptr_t id = (uintptr_t)argp;
  enum { N = 300 };
  void *p[N];
  for (int i = 0; i < N; i++) {
    size_t n = 16 + ((size_t)i * 37 + id) % 2048;
    p[i] = malloc(n);
    if (!p[i]) return (void *)1;
    memset(p[i], (int)i, n < 64 ? n : 64);
  }
  void *m[4];
  for (int i = 0; i < 4; i++) {
    m[i] = malloc(8000 + (size_t)i * 9000);
    if (!m[i]) return (void *)1;
    memset(m[i], 1, 8000);
  }
  void *l = malloc(200000);
  if (!l) return (void *)1;
  memset(l, 2, 4096);
  for (int i = 0; i < N; i++) free(p[i]);
  for (int i = 0; i < 4; i++) free(m[i]);
  free(l);
  /* leave the cache full of freed small objects again */
  for (int i = 0; i < 64; i++) free(malloc(32 + (size_t)i * 16));
  return NULL;
}

static void run_threads(int total, int concurrent) {
  pthread_t th[64];
  for (int done = 0; done < total; done += concurrent) {
    for (int i = 0; i < concurrent; i++)
      cr_assert_eq(pthread_create(&th[i], NULL, alloc_and_exit, (void *)(uintptr_t)(done + i)), 0);
    for (int i = 0; i < concurrent; i++) {
      void *ret = (void *)2;
      pthread_join(th[i], &ret);
      cr_assert_null(ret, "a thread's malloc returned NULL");
    }
  }
}

/* The same, once every thread of a round is running (so they all hold an arena at once). */
static pthread_barrier_t all_running;
static void *alloc_and_exit_together(void *argp) {
  pthread_barrier_wait(&all_running);
  free(malloc(16)); /* picks the arena while the others hold theirs */
  pthread_barrier_wait(&all_running);
  return alloc_and_exit(argp);
}

static void thread_exit_bounded(int concurrent) {
  /* Warm up: pools, glibc's stack cache, and every arena `concurrent` threads can reach (a
   * new thread takes the least used arena, so threads that run one after another may all
   * share one, and how many overlap depends on the machine's load), each at the high-water
   * mark its threads' interleavings take it to: 2048 threads.  What 20,000 more threads add
   * on top is what they leak. */
  pthread_t th[64];
  pthread_barrier_init(&all_running, NULL, (unsigned)concurrent);
  for (int i = 0; i < concurrent; i++)
    cr_assert_eq(pthread_create(&th[i], NULL, alloc_and_exit_together, (void *)(uintptr_t)i), 0);
  for (int i = 0; i < concurrent; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&all_running);
  run_threads(2048, concurrent);
  hm_stats_t s0 = stats_now();
  size_t rss0 = rss_bytes();
  run_threads(20000, concurrent); /* the thread-cache issue: 20,000 short-lived threads */
  hm_stats_t s1 = stats_now();
  size_t rss1 = rss_bytes();
  cr_assert_lt(s1.mapped, s0.mapped + 8 * MiB,
               "20000 threads (%d at a time) that exited grew mapped from %zu to %zu", concurrent,
               s0.mapped, s1.mapped);
  cr_assert_lt(s1.allocated, s0.allocated + 256 * KiB,
               "allocated %zu -> %zu after threads freed everything", s0.allocated, s1.allocated);
  cr_assert_lt(s1.cached, s0.cached + 16 * MiB, "cached %zu -> %zu: dead threads' caches kept",
               s0.cached, s1.cached);
  cr_assert_lt(rss1, rss0 + 16 * MiB, "RSS %zu -> %zu after 20000 threads", rss0, rss1);
  assert_heap_ok();
}

Test(threads, thread_exit_sequential_bounded) { thread_exit_bounded(1); }

Test(threads, thread_exit_concurrent_bounded) { thread_exit_bounded(16); }

/* ---- blocks that outlive their thread ------------------------------------------------- */

typedef struct batch_s {
  int n;
  item_t it[200];
} batch_t;

static void *make_batch(void *argp) {
  batch_t *b = argp;
  uint64_t rng = (uint64_t)(uintptr_t)b ^ 0xABCDEFull;
  b->n = 200;
  for (int i = 0; i < b->n; i++) {
    item_t *it = &b->it[i];
    it->size = random_size(&rng);
    it->seed = rng_next(&rng);
    it->p = malloc(it->size);
    if (!it->p) return (void *)1;
    fill_pattern(it->p, it->size, it->seed);
  }
  return NULL;
}

static void *free_batch_half(void *argp) {
  batch_t *b = argp;
  for (int i = 1; i < b->n; i += 2) verify_and_free(&b->it[i]);
  return NULL;
}

Test(threads, free_after_allocating_thread_exited) {
  hm_stats_t s0 = stats_now();
  batch_t *b = malloc(sizeof *b);
  cr_assert_not_null(b);
  for (int round = 0; round < 150; round++) {
    pthread_t maker, freer;
    void *ret = (void *)2;
    cr_assert_eq(pthread_create(&maker, NULL, make_batch, b), 0);
    pthread_join(maker, &ret);
    cr_assert_null(ret, "malloc failed in the allocating thread");
    /* the allocating thread is gone: half freed here, half by a new thread */
    for (int i = 0; i < b->n; i += 2) verify_and_free(&b->it[i]);
    cr_assert_eq(pthread_create(&freer, NULL, free_batch_half, b), 0);
    pthread_join(freer, NULL);
    cr_assert_eq(atomic_load(&failures), 0, "%s", failure_msg);
  }
  free(b);
  hm_stats_t s1 = stats_now();
  cr_assert_leq(s1.allocated, s0.allocated + 64 * KiB, "allocated %zu -> %zu", s0.allocated,
                s1.allocated);
  cr_assert_lt(s1.mapped, s0.mapped + 48 * MiB, "mapped %zu -> %zu over 150 rounds", s0.mapped,
               s1.mapped);
  assert_heap_ok();
}

/* Threads exit while their blocks are still queued; other threads free them concurrently. */
static void *produce_and_exit(void *argp) {
  uint64_t rng = (uint64_t)(uintptr_t)argp * 0x9E3779B97F4A7C15ull + 1;
  for (int i = 0; i < 100; i++) {
    item_t it = {.size = random_size(&rng), .seed = rng_next(&rng)};
    it.p = malloc(it.size);
    if (!it.p) {
      note_failure("malloc returned NULL", &it, 0);
      return NULL;
    }
    fill_pattern(it.p, it.size, it.seed);
    if (!q_push(it)) verify_and_free(&it);
  }
  return NULL;
}

static atomic_int producers_left;

static void *consume(void *argp) {
  (void)argp;
  item_t it;
  for (;;) {
    int last = atomic_load(&producers_left) == 0; /* read before the pop that finds it empty */
    if (q_pop(&it)) verify_and_free(&it);
    else if (last) break;
    else sched_yield();
  }
  return NULL;
}

Test(threads, concurrent_free_while_owners_exit) {
  enum { CONSUMERS = 3, PRODUCERS = 1500, WAVE = 6 };
  pthread_t cons[CONSUMERS];
  atomic_store(&producers_left, 1);
  for (int i = 0; i < CONSUMERS; i++) cr_assert_eq(pthread_create(&cons[i], NULL, consume, NULL), 0);
  for (int done = 0; done < PRODUCERS; done += WAVE) {
    pthread_t prod[WAVE];
    for (int i = 0; i < WAVE; i++)
      cr_assert_eq(pthread_create(&prod[i], NULL, produce_and_exit, (void *)(uintptr_t)(done + i)), 0);
    for (int i = 0; i < WAVE; i++) pthread_join(prod[i], NULL);
  }
  atomic_store(&producers_left, 0);
  for (int i = 0; i < CONSUMERS; i++) pthread_join(cons[i], NULL);
  item_t it;
  while (q_pop(&it)) verify_and_free(&it);
  cr_assert_eq(atomic_load(&failures), 0, "%s", failure_msg);
  assert_heap_ok();
}

/* ---- counting after the thread's cache is torn down ----------------------------------- */

/* Calls a thread makes after hmalloc's exit destructor has run (glibc runs destructors of
 * later keys after it, and frees thread data after all of them) are still counted. */
static pthread_key_t late_key;
enum { LATE_MALLOCS = 3 * 10 };

static void late_destructor(void *arg) {
  (void)arg;
  static const size_t sizes[3] = {48, 20000, 300000}; /* small, medium, large */
  for (int i = 0; i < LATE_MALLOCS; i++) {
    char *p = malloc(sizes[i % 3]);
    if (p == NULL) abort();
    p[0] = 1;
    p = realloc(p, sizes[i % 3] + 8);
    free(p);
  }
}

static void *late_body(void *arg) {
  (void)arg;
  free(malloc(32)); /* the cache is set up: hmalloc's destructor will tear it down */
  pthread_setspecific(late_key, (void *)1);
  return NULL;
}

Test(threads, calls_after_cache_teardown_are_counted) {
  free(malloc(1)); /* hmalloc initialised: its key is older than late_key */
  cr_assert_eq(pthread_key_create(&late_key, late_destructor), 0);
  hm_stats_t before, after;
  hm_stats_get(&before);
  pthread_t t;
  pthread_create(&t, NULL, late_body, NULL);
  pthread_join(t, NULL);
  hm_stats_get(&after);
  /* 1 + 30 mallocs, 1 + 30 frees (at least: glibc may free thread data too), 30 reallocs */
  cr_expect_geq(after.malloc_count - before.malloc_count, 1 + LATE_MALLOCS);
  cr_expect_geq(after.free_count - before.free_count, 1 + LATE_MALLOCS);
  cr_expect_eq(after.realloc_count - before.realloc_count, LATE_MALLOCS,
               "%llu reallocs counted, %d made", (unsigned long long)(after.realloc_count - before.realloc_count),
               LATE_MALLOCS);
}

/* A thread whose only calls are medium mallocs and frees (buffers of 16-20 KiB): its cache
 * is set up by its first call all the same, so its calls are counted, it uses its medium cache
 * (not one arena split per malloc) and its own arena.  Such a thread used to stay unset-up:
 * its calls went uncounted and every one of them to arena 0 under its lock. */
#define MEDIUM_ONLY_CALLS 2000
static void *medium_only_body(void *arg) {
  for (int i = 0; i < MEDIUM_ONLY_CALLS; i++) {
    char *volatile p = malloc(16384 + (size_t)(i % 8) * 512);
    if (p == NULL) abort();
    p[0] = (char)i;
    free(p);
  }
  return arg;
}

Test(threads, a_thread_making_only_medium_calls_is_counted_and_cached) {
  free(malloc(1));
  hm_stats_t before, after;
  hm_stats_get(&before);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, medium_only_body, NULL), 0);
  pthread_join(t, NULL);
  hm_stats_get(&after);
  cr_expect_geq(after.malloc_count - before.malloc_count, MEDIUM_ONLY_CALLS);
  cr_expect_geq(after.free_count - before.free_count, MEDIUM_ONLY_CALLS);
  cr_expect_lt(after.splits - before.splits, MEDIUM_ONLY_CALLS / 10,
               "%llu chunk splits for %d mallocs: the medium cache was not used",
               (unsigned long long)(after.splits - before.splits), MEDIUM_ONLY_CALLS);
}

/* A thread whose only calls are frees of medium and large blocks (allocated by another
 * thread) does not set its cache up, but its frees are counted all the same. */
static void *medium_free_body(void *arg) {
  void **blocks = arg;
  for (int i = 0; i < MEDIUM_ONLY_CALLS; i++) free(blocks[i]);
  return NULL;
}

Test(threads, a_thread_making_only_medium_and_large_frees_is_counted) {
  static void *blocks[MEDIUM_ONLY_CALLS];
  for (int i = 0; i < MEDIUM_ONLY_CALLS; i++) {
    blocks[i] = malloc(i % 100 == 0 ? 200000 : 16384 + (size_t)(i % 8) * 512);
    cr_assert_not_null(blocks[i]);
  }
  hm_stats_t before, after;
  hm_stats_get(&before);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, medium_free_body, blocks), 0);
  pthread_join(t, NULL);
  hm_stats_get(&after);
  cr_expect_geq(after.free_count - before.free_count, MEDIUM_ONLY_CALLS, "%llu frees counted",
                (unsigned long long)(after.free_count - before.free_count));
}
