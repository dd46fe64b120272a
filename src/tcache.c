/* tcache.c - per-thread caches of small objects: the slow paths behind the inline fast paths
 * of alloc_inline.h, set-up, byte cap, and teardown at thread exit.
 *
 * The cache is a TLS struct (initial-exec) that a thread starts with all zero but for the
 * size-class table its TLS image carries: every list is empty and every limit is 0, so the
 * first malloc (empty list) and the first free (space below 0, or the zero mark) of a thread
 * land here and set the cache up.  The fast paths never ask "initialised?".
 * A free by any thread goes to that thread's cache whatever span the object came from; a
 * list that passes its limit gives all of it back to the central lists in one batch (so a
 * consumer thread freeing a producer's objects stays bounded), and a refill takes a batch.
 * Batches and limits adapt to what the thread does with each class (slow start, as tcmalloc's
 * lists do): a thread's first refills of a class take 8, 16 and 32 objects, then batches;
 * a list may first hold one batch; each refill raises its limit by a batch, up to the class's
 * ceiling; every third overflow with no refill in between lowers it by a batch again.  So a
 * thread that allocates a class in bursts keeps room for a burst, and a thread that mostly
 * frees a class (a consumer of another thread's blocks, or a thread that is winding down)
 * holds one batch of it, not the ceiling: measured, that took 64-thread xmalloc from 41 to
 * 28 MB of peak RSS and thread_churn from 5.9 to 5.1 MB, with no workload slower.
 * Byte cap: a thread's small lists start under a cap of a quarter of HMALLOC_TCACHE_MAX (the
 * start cap); ceilings are chosen so one list holds at most a quarter of the start cap; when
 * the lists as a whole pass the cap (checked on every slow path), the list holding the most
 * bytes is halved until they are down to half the cap (enforce_cap).  A list the cap halved
 * that its thread then refills before the list overflows on its own says the cap is too small
 * for what the thread keeps going round: the cap grows by a start cap, up to
 * HMALLOC_TCACHE_MAX (grow_cap).  The medium cache (at the end of this file) keeps up to
 * HMALLOC_TCACHE_MAX apart.
 * Thread exit: a pthread key destructor flushes everything and marks the cache DEAD with
 * limits 0; later frees (glibc frees after the destructors ran) go straight to the central
 * lists and later mallocs take one object at a time without caching.
 * Registry: live caches are linked under hmi_registry_lock so stats can sum their counters. */
#include <pthread.h>
#include <string.h>

#include "class_table.h"
#include "internal.h"

__thread hm_tcache_t hmi_tcache __attribute__((tls_model("initial-exec"))) = {
  .class_of = HM_CLASS_OF_TABLE,
};

hm_lock_t hmi_registry_lock = HM_LOCK_INIT;
static hm_tcache_t *registry;
static unsigned live_caches; /* caches on the registry (written under its lock) */
static uint64_t dead_class[4][HM_CLASSES]; /* per-class counters of exited threads */

/* Add a cache's counters to the totals of exited threads.  Caller holds the registry lock. */
static void fold(const hm_tstats_t *t) {
  uint64_t mallocs = t->malloc_count, frees = t->free_count;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    dead_class[0][c] += t->class_malloc[c];
    dead_class[1][c] += t->class_free[c];
    dead_class[2][c] += t->class_refill[c];
    dead_class[3][c] += t->class_flush[c];
    mallocs += t->class_malloc[c];
    frees += t->class_free[c];
  }
  hm_tstats_t total = *t;
  total.malloc_count = mallocs;
  total.free_count = frees;
  hmi_stats_fold(&total);
}
static void setup(hm_tcache_t *tc);

/* The end of a slow path in a thread whose cache is not live.
 * A thread whose cache is torn down (DEAD) still counts its calls in its TLS counters, which
 * no stats reading can see any more: fold them into the totals at the end of each of its
 * calls (all of them take a slow path: its lists are empty and its limits zero).
 * A thread whose cache is not set up (NEW) at the end of an allocation (set_up) has made
 * only medium or large calls so far (the small paths set the cache up): set it up now.
 * Until this was done, such a thread counted its calls where no stats reading saw them,
 * and used arena 0 and no medium cache for good: two threads each allocating and freeing
 * 16-20 KiB blocks took 116-509 ns per pair, all of it in arena 0's lock (glibc 28 ns).  Not
 * at the end of a free: glibc frees thread data after the key destructors have run, and a
 * cache set up then would stay registered after its thread is gone.  Such a free's counts go
 * straight to the totals (a thread that only frees medium or large blocks was counted
 * nowhere): only its call counters can be non-zero (the per-class ones move on the small
 * paths, which set the cache up), and folding them needs no lock.  Measured on a thread
 * freeing 16-20 KiB blocks another thread allocated: 43 ns per free, 37 ns uncounted. */
void hmi_tcache_settle_slow(bool set_up) {
  hm_tcache_t *tc = &hmi_tcache;
  if (tc->state == HM_TC_NEW) {
    if (set_up) {
      hmi_ensure_init();
      setup(tc);
    } else {
      hmi_stats_fold(&tc->stats);
      tc->stats.malloc_count = tc->stats.free_count = tc->stats.realloc_count = 0;
      tc->stats.refills = tc->stats.flushes = 0;
    }
    return;
  }
  hm_lock(&hmi_registry_lock);
  fold(&tc->stats);
  memset(&tc->stats, 0, sizeof tc->stats);
  hm_unlock(&hmi_registry_lock);
}

static pthread_key_t exit_key;
static uint32_t class_batch[HM_CLASSES]; /* objects moved per refill */
static uint32_t class_limit[HM_CLASSES]; /* most objects a list may come to hold */
/* Flushes of a list with no refill in between that lower its limit by a batch. */
#define OVERFLOWS_TO_SHRINK 3
/* Objects in a thread's first refill of a class (a multiple of 4, as batches are). */
#define FIRST_BATCH 8

static void thread_exit(void *arg);
static void flush(hm_tcache_t *tc, unsigned c, uint32_t n);

/* The cap every thread cache starts with: a quarter of HMALLOC_TCACHE_MAX. */
static size_t start_cap(void) { return hmi_options.tcache_max / 4; }
/* The same for one cache: a quarter of the maximum it was set up with. */
static size_t cache_start_cap(const hm_tcache_t *tc) { return tc->bytes_max / 4; }

/* Process set-up: batch sizes, limits for the start cap, and the exit key. */
void hmi_tcache_init_process(void) {
  size_t cap = start_cap();
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    size_t size = hmi_class_size[c];
    /* A batch is 16 KiB worth (a quarter of the cap under a cap below 64 KiB), 4 to 64
     * objects, a multiple of 4: every class size is a multiple of 16, so a batch covers
     * whole 64-byte cache lines, and two threads refilling from a fresh span never share a
     * line (no false sharing handed out).  A class whose smallest batch is more than a
     * quarter of the cap is not cached at all (as with a cap of 0): one refill of it would
     * put the cache over its cap and empty the other lists.  With these rules and
     * enforce_cap's, alloc_test-t2 under a 16 KiB cap takes 0.52 s, against 1.04 s before,
     * 0.64 s with no cache and 0.36 s with the default cap. */
    size_t share = cap / 4;
    size_t batch = (share < ((size_t)16 << 10) ? share : ((size_t)16 << 10)) / size;
    if (batch > 64) batch = 64;
    batch &= ~(size_t)3;
    if (batch < 4) batch = 4;
    size_t limit = share / size;
    if (limit > 1024) limit = 1024;
    if (limit < batch) limit = batch;
    if (cap == 0 || hmi_check_mode || batch * size > share) limit = 0, batch = 1; /* no caching */
    class_batch[c] = (uint32_t)batch;
    class_limit[c] = (uint32_t)limit;
  }
  pthread_key_create(&exit_key, thread_exit);
}

/* A list's limit when the thread starts using its class: one batch (the ceiling when that is
 * smaller, 0 when caching is off). */
static uint32_t start_limit(unsigned c) {
  return class_batch[c] < class_limit[c] ? class_batch[c] : class_limit[c];
}

/* Change list c's limit, keeping its count (limit - space).  A stats reader on another
 * thread may see the two words from either side of the change: its count is approximate. */
static void set_limit(hm_tcache_t *tc, unsigned c, uint32_t limit) {
  HM_RACY_ADD(tc->space[c], (int64_t)limit - (int64_t)tc->limit[c]);
  HM_RACY_SET(tc->limit[c], limit);
}

static void setup(hm_tcache_t *tc) {
  /* Frees made before set-up pushed with key 0 and mark 0 (the TLS copies were still zero):
   * re-link those objects under the real key. */
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    void *list = NULL;
    for (void *q = tc->head[c]; q != NULL;) {
      void *next = hmi_next_checked_k(q, 0);
      *(void **)q = hmi_link(list, q);
      ((uintptr_t *)q)[1] = hmi_free_mark;
      list = q;
      q = next;
    }
    tc->head[c] = list;
    uint32_t count = hm_bin_count(tc, c);
    HM_RACY_SET(tc->limit[c], start_limit(c));
    HM_RACY_SET(tc->space[c], (int64_t)tc->limit[c] - (int64_t)count);
  }
  tc->list_key = hmi_list_key;
  tc->free_mark = hmi_free_mark;
  tc->bytes_max = hmi_options.tcache_max;
  tc->bytes_cap = start_cap();
  tc->trimmed = 0;
  tc->hooked = 0;
  hm_lock(&hmi_registry_lock);
  tc->arena_index = hmi_arena_assign(); /* under the lock: see hmi_arena_lock_all */
  tc->state = HM_TC_LIVE;
  tc->prev = NULL;
  tc->next = registry;
  if (registry) registry->prev = tc;
  registry = tc;
  HM_RACY_ADD(live_caches, 1);
  hm_unlock(&hmi_registry_lock);
  /* Any non-NULL value makes the destructor run at thread exit.  pthread_setspecific does not
   * allocate for the first 32 keys, and ours is created at start-up. */
  pthread_setspecific(exit_key, tc);
  hmi_tcache_sync_hooks();
}

/* Enter or leave hooked mode to match hm_set_hooks (see hooks.c). */
void hmi_tcache_sync_hooks(void) {
  hm_tcache_t *tc = &hmi_tcache;
  bool want = __atomic_load_n(&hmi_hooks_on, __ATOMIC_ACQUIRE) != 0;
  if (tc->state != HM_TC_LIVE || want == (tc->hooked != 0)) return;
  if (want) hmi_mcache_flush(tc);
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    if (want) flush(tc, c, hm_bin_count(tc, c));
    uint32_t count = hm_bin_count(tc, c); /* before the limit changes: count = limit - space */
    HM_RACY_SET(tc->limit[c], want ? 0 : start_limit(c));
    HM_RACY_SET(tc->space[c], (int64_t)tc->limit[c] - (int64_t)count);
  }
  tc->hooked = want;
}

/* Give `n` objects from the front of bin c back to the central lists. */
static void flush(hm_tcache_t *tc, unsigned c, uint32_t n) {
  uint32_t count = hm_bin_count(tc, c);
  if (n > count) n = count;
  if (n == 0) return;
  void *head = tc->head[c];
  if (n == count) { /* the whole list: it already ends in a NULL link, nothing to walk */
    tc->head[c] = NULL;
  } else {
    void *last = head;
    for (uint32_t i = 1; i < n; i++) last = hmi_next_checked(last);
    tc->head[c] = hmi_next_checked(last);
    *(void **)last = hmi_link(NULL, last);
  }
  HM_RACY_ADD(tc->space[c], (int64_t)n);
  HM_RACY_ADD(tc->stats.flushes, 1);
  HM_RACY_ADD(tc->stats.class_flush[c], 1);
  /* Only lists of up to two batches go to the transfer cache, where the next refill takes
   * them whole.  A bigger one (a whole list, flushed when it overflowed) would come back
   * whole to a thread whose list then sits at its limit, to be flushed again at the next
   * free: in python3 the 64-byte class moved 61 million objects through the transfer cache
   * for 1.7 million mallocs.  Such a list goes to its spans instead, walked while it is
   * still in cache.  python3 0.91-0.97x (four comparisons of 7-11 interleaved runs),
   * fragment 0.93-0.98x, shuffle 0.94-1.0x, alloc_test-t2 0.97-1.0x; larson, xmalloc,
   * churn and thread_churn unchanged; peak RSS unchanged. */
  hmi_span_give(c, head, n, 2 * class_batch[c]);
}

/* More live thread caches than twice the CPUs: threads that cannot all run at once gain
 * little from big caches, and each cache holds memory.  Then a cache keeps its start cap
 * (grow_cap) and the medium cache shares it with the small lists, as it did before it had a
 * budget of its own (at most half the start cap, emptied first when the cache passes it): the
 * cache of each of 64 threads on 2 CPUs stays within the start cap.  With a budget of twice
 * the (start) cap for every thread, alloc_test with 64 threads peaked at 36 MB (median of 11
 * runs, up to 78 MB), 26 MB before. */
static bool crowded(void) {
  return __atomic_load_n(&live_caches, __ATOMIC_RELAXED) > 2 * hmi_options.cpus;
}

/* Bytes of medium blocks a thread may keep: HMALLOC_TCACHE_MAX, apart from the small lists'
 * cap (half the start cap, shared with them, in a crowded process). */
static size_t mcache_budget(const hm_tcache_t *tc) {
  return crowded() ? cache_start_cap(tc) / 2 : tc->bytes_max;
}

static size_t cached_bytes(const hm_tcache_t *tc) {
  size_t bytes = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++)
    bytes += (size_t)hm_bin_count(tc, c) * hmi_class_size[c];
  return bytes;
}

/* The pieces enforce_cap cuts off the front of one list, in order: each halving cuts one.
 * A list holds at most 1024 objects (class_limit), which 11 halvings empty: 24 is ample. */
enum { CUTS_MAX = 24 };
typedef struct {
  uint32_t n[CUTS_MAX]; /* objects in each piece */
  unsigned k;           /* pieces */
  uint32_t total;       /* their sum */
} hm_cuts_t;

/* Lists whose fronts are walked at once (WALKS), and the state of one walk: the node it is
 * at, its position in the list (1 for the head), the piece it is in and where that ends. */
enum { WALKS = 8 };
typedef struct {
  unsigned cls;
  void *at;
  uint32_t pos, end;
  unsigned piece;
  void *first[CUTS_MAX], *last[CUTS_MAX];
} hm_walk_t;

/* Give back the pieces cuts[c] of every list c, as that many flushes would, but walking up to
 * WALKS lists at once.  Cut from a list that has run a thread's frees through a big heap,
 * nearly every link is a cache and TLB miss, and a walk meets them one after another: the
 * walks interleaved, WALKS misses are in flight at once.  On shuffle,
 * where each breach of the cap halves about 27 lists and these walks meet 2.4 million links
 * (about one per object freed), the walks went from 5.2% of the samples to 2.7% and the run
 * took 0.98x the time (9-11 interleaved runs; 4 or 16 walks at once within 1% of 8); part of
 * the gain goes to give_to_spans, 0.9% -> 1.8%, whose objects are colder after 8 walks. */
static void flush_cuts(hm_tcache_t *tc, const hm_cuts_t *cuts) {
  hm_walk_t walk[WALKS];
  unsigned c = 0;
  for (;;) {
    unsigned k = 0;
    for (; c < HM_CLASSES && k < WALKS; c++) {
      if (cuts[c].k == 0) continue;
      if (cuts[c].k == 1 && cuts[c].total == hm_bin_count(tc, c)) {
        flush(tc, c, cuts[c].total); /* the whole list: nothing to walk */
        continue;
      }
      hm_walk_t *w = &walk[k++];
      w->cls = c;
      w->at = tc->head[c];
      w->first[0] = w->at;
      w->pos = 1;
      w->piece = 0;
      w->end = cuts[c].n[0];
    }
    if (k == 0) return;
    /* Round-robin, one link of each unfinished walk per turn; a walk is done when it has
     * read the link after its last piece (the list's new head, maybe NULL). */
    for (unsigned busy = k; busy > 0;) {
      busy = 0;
      for (unsigned i = 0; i < k; i++) {
        hm_walk_t *w = &walk[i];
        const hm_cuts_t *cut = &cuts[w->cls];
        if (w->piece == cut->k) continue;
        busy++;
        void *next = hmi_next_checked(w->at);
        if (w->pos == w->end) {
          w->last[w->piece++] = w->at;
          if (w->piece < cut->k) {
            w->first[w->piece] = next;
            w->end += cut->n[w->piece];
          }
        }
        w->at = next;
        w->pos++;
      }
    }
    for (unsigned i = 0; i < k; i++) {
      hm_walk_t *w = &walk[i];
      const hm_cuts_t *cut = &cuts[w->cls];
      unsigned cls = w->cls;
      tc->head[cls] = w->at;
      HM_RACY_ADD(tc->space[cls], (int64_t)cut->total);
      HM_RACY_ADD(tc->stats.flushes, cut->k);
      HM_RACY_ADD(tc->stats.class_flush[cls], cut->k);
      for (unsigned j = 0; j < cut->k; j++) {
        *(void **)w->last[j] = hmi_link(NULL, w->last[j]);
        hmi_span_give(cls, w->first[j], cut->n[j], 2 * class_batch[cls]);
      }
    }
  }
}

/* Keep the small lists under the byte cap (the medium cache has its own budget, in
 * hmi_mcache_push, but for a crowded process: then it counts too, and is emptied first).
 * Over it, the list holding the most bytes is halved, again and again,
 * until the lists are down to half the cap.  Halving every list at each breach, as this did before,
 * made any cap below the default cost about as much as no cache: with a 64 KiB cap,
 * alloc_test-t2 took 0.65 s (0.64 with no cache, 0.36 with the default cap), because each
 * breach flushed up to 48 lists that the next refills took back; biggest first, 0.49 s.
 * (Flushing whole lists instead, or stopping at 3/4 of the cap, made fragment 30% and
 * shuffle 3% slower at the default cap.)
 * The halvings are chosen first and made together by flush_cuts, which walks the lists at
 * once. */
static void enforce_cap(hm_tcache_t *tc) {
  size_t bytes = cached_bytes(tc);
  bool shared = crowded(); /* the medium cache counts too, and goes first */
  size_t cap =
      shared && tc->bytes_cap > cache_start_cap(tc) ? cache_start_cap(tc) : tc->bytes_cap;
  if (bytes + (shared ? tc->mcache_bytes : 0) <= cap) return;
  if (shared) hmi_mcache_flush(tc);
  if (bytes <= cap) return;
  size_t target = cap / 2;
  hm_cuts_t cuts[HM_CLASSES];
  uint32_t left[HM_CLASSES];
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    cuts[c].k = 0;
    cuts[c].total = 0;
    left[c] = hm_bin_count(tc, c);
  }
  while (bytes > target) {
    unsigned pick = 0;
    size_t most = 0;
    for (unsigned c = 0; c < HM_CLASSES; c++) {
      size_t b = (size_t)left[c] * hmi_class_size[c];
      if (b > most) most = b, pick = c;
    }
    uint32_t n = (left[pick] + 1) / 2;
    if (n == 0 || cuts[pick].k == CUTS_MAX) break;
    cuts[pick].n[cuts[pick].k++] = n;
    cuts[pick].total += n;
    left[pick] -= n;
    tc->trimmed |= (uint64_t)1 << pick;
    bytes -= (size_t)n * hmi_class_size[pick];
  }
  flush_cuts(tc, cuts);
}

/* List cls, which the cap halved, is refilled before it overflowed on its own: the thread
 * goes round more objects than the cap lets it keep, and each halving sends them through
 * the central lists and back, where other threads take them to their cores and give theirs.
 * Grow the cap by a start cap, up to HMALLOC_TCACHE_MAX, in a process with other thread
 * caches live, not more than twice the CPUs (a crowded process's caches keep the start cap).
 * A list that overflows first (a thread freeing more than it takes) clears its bit: the
 * halving was right.  In alloc_test-t2 refills fell from 77k to 5k and flushes from 94k to
 * 1.3k; against a fixed 256 KiB cap (7-9 interleaved runs) alloc_test-t2 took 0.90-0.93x
 * the time, larson-t2 0.97-0.99x, xmalloc-t2 0.97x, larson-t64 0.96x, peak RSS within noise.
 * A lone thread gains little (alloc_test-t1 0.98x) and shuffle lost 2-4%: its lists, halved
 * at the end of each free phase and refilled in the next allocation phase, grew the cap
 * every round, and its free phase then flushed colder lists (a fixed 1 MiB cap made it
 * 1.23-1.31x slower): so a lone thread keeps the start cap. */
static void grow_cap(hm_tcache_t *tc, unsigned cls) {
  tc->trimmed &= ~((uint64_t)1 << cls);
  size_t step = cache_start_cap(tc);
  if (tc->bytes_cap < tc->bytes_max && __atomic_load_n(&live_caches, __ATOMIC_RELAXED) > 1 &&
      !crowded())
    tc->bytes_cap = tc->bytes_max - tc->bytes_cap > step ? tc->bytes_cap + step : tc->bytes_max;
}

void *hmi_tcache_alloc_slow(unsigned cls) {
  hm_tcache_t *tc = &hmi_tcache;
  hmi_ensure_init();
  if (tc->state == HM_TC_NEW) setup(tc);
  else if (HM_UNLIKELY(hmi_hooks_on != tc->hooked)) hmi_tcache_sync_hooks();
  if (tc->head[cls] != NULL) { /* set-up just re-linked an object of this class */
    void *p = tc->head[cls];
    tc->head[cls] = hmi_next_checked(p);
    ((uintptr_t *)p)[1] = 0;
    HM_RACY_ADD(tc->space[cls], 1);
    return p;
  }
  void *list;
  uint32_t want = tc->state == HM_TC_LIVE && tc->limit[cls] > 0 ? class_batch[cls] : 1;
  /* A thread's first refills of a class take 8, 16, then 32 objects, up to the batch: a
   * thread that only needs a few objects of a class does not take (and touch) 16 KiB of
   * it.  Measured: thread_churn 4.9 -> 4.4 MB of peak RSS, no workload slower. */
  if (want > 1 && tc->warmup[cls] < 3) {
    uint32_t first = (uint32_t)FIRST_BATCH << tc->warmup[cls]++;
    if (first < want) want = first;
  }
  if ((tc->trimmed >> cls) & 1) grow_cap(tc, cls); /* refilled after the cap halved it */
  uint32_t n = hmi_span_take(cls, want, &list);
  if (n == 0) return NULL;
  HM_RACY_ADD(tc->stats.refills, 1);
  HM_RACY_ADD(tc->stats.class_refill[cls], 1);
  if ((tc->stats.refills & 255) == 0) hmi_large_idle_tick();
  void *p = list;
  tc->head[cls] = hmi_next_checked(p);
  ((uintptr_t *)p)[1] = 0;
  HM_RACY_ADD(tc->space[cls], -(int64_t)(n - 1));
  if (n > 1) {
    /* The thread took a whole list of this class: let the list keep one more batch. */
    tc->overflows[cls] = 0;
    if (tc->limit[cls] < class_limit[cls]) {
      uint32_t limit = tc->limit[cls] + class_batch[cls];
      set_limit(tc, cls, limit < class_limit[cls] ? limit : class_limit[cls]);
    }
    enforce_cap(tc);
  }
  return p;
}

/* A thread whose first call is a free (set-up happens there) frees an object another thread
 * allocated: it has allocated nothing yet.  Kept, that object would be the first this
 * thread gets back for its class, next to objects the other thread and others hold (Hoard's
 * cache-scratch: passive false sharing, made by the allocator).  So it goes back to its span
 * at once; the thread's own objects come from a refill.  Measured on cache_scratch: 0.37 ->
 * 0.21 s with 2 threads, 0.73 -> 0.43 s with 4 (mimalloc 0.21 s with 2). */
static void give_back_foreign(hm_tcache_t *tc, unsigned cls) {
  flush(tc, cls, hm_bin_count(tc, cls));
}

/* p has just been pushed on its bin, which is now over its limit (or not set up). */
void hmi_tcache_free_slow(void *p, unsigned cls) {
  hm_tcache_t *tc = &hmi_tcache;
  if (HM_UNLIKELY(hmi_hooks_on)) hmi_hook_free(p, hmi_class_size[cls]);
  if (tc->state == HM_TC_NEW) {
    hmi_ensure_init();
    setup(tc);
    give_back_foreign(tc, cls);
    return;
  } else if (HM_UNLIKELY(hmi_hooks_on != tc->hooked)) {
    hmi_tcache_sync_hooks();
  }
  if (tc->state != HM_TC_LIVE || tc->limit[cls] == 0) {
    flush(tc, cls, hm_bin_count(tc, cls));
    hmi_tcache_settle();
    return;
  }
  tc->trimmed &= ~((uint64_t)1 << cls); /* the list filled up by itself (grow_cap) */
  /* Overflowing again and again with no refill: the thread frees more of this class than
   * it takes back, so a longer list would only hold objects no one asks for. */
  if (++tc->overflows[cls] >= OVERFLOWS_TO_SHRINK) {
    tc->overflows[cls] = 0;
    if (tc->limit[cls] > start_limit(cls)) {
      uint32_t limit = tc->limit[cls] - class_batch[cls];
      set_limit(tc, cls, limit > start_limit(cls) ? limit : start_limit(cls));
    }
  }
  /* The whole list goes, not the part over half the limit as before: no walk to a cut
   * point through objects that may be out of cache (a list of 64-byte objects at its limit
   * is 64 KiB), and one batch where there were two.  Measured against keeping half:
   * batch_lifo/256x1000 14.8 -> 8.3 us, batch_fifo/256x1000 15.2 -> 8.4, batch_random
   * 15.8 -> 11.0, xthread_free/64 30 -> 21 us; xmalloc-t64 0.91x (7 interleaved runs),
   * fragment 0.97x, python3 0.98x (5 runs); peak RSS the same except xmalloc-t64, 27 -> 28
   * MB (with the bound on transfer batches below as well). */
  flush(tc, cls, hm_bin_count(tc, cls));
  enforce_cap(tc);
}

/* p (of class cls, a valid object start) carries the free mark in its second word.  Every
 * path that hands a small object out clears that word (the pops here and in alloc_inline.h),
 * so the mark is there only if p is free: in this thread's list, another thread's, a
 * transfer batch or its span (a program could only write the 64-bit random mark itself after
 * reading it from freed memory).  So this is a double free, wherever the first free put p:
 * glibc's tcache, which searches only the calling thread's list, misses the other places.
 * A thread not set up yet compares with mark 0 and lands here for most objects: set it up
 * and look again. */
void hmi_free_marked(void *p, unsigned cls) {
  hm_tcache_t *tc = &hmi_tcache;
  bool first_call = tc->state == HM_TC_NEW;
  if (first_call) {
    hmi_ensure_init();
    setup(tc);
  }
  if (((uintptr_t *)p)[1] == tc->free_mark) hmi_fatal("hmalloc: free(): double free %p\n", p);
  *(void **)p = hmi_link(tc->head[cls], p);
  ((uintptr_t *)p)[1] = tc->free_mark;
  tc->head[cls] = p;
  HM_RACY_ADD(tc->stats.class_free[cls], 1);
  HM_RACY_ADD(tc->space[cls], -1);
  if (first_call) give_back_foreign(tc, cls);
  else if (tc->space[cls] < 0) hmi_tcache_free_slow(p, cls);
}

/* ---- medium cache ---- */

/* A cached medium block for a request of `size`, or NULL. */
void *hmi_mcache_pop(size_t size) {
  hm_tcache_t *tc = &hmi_tcache;
  unsigned m = hmi_mclass(size);
  void *p = tc->mcache[m];
  if (p == NULL) return NULL;
  tc->mcache[m] = hmi_next_checked(p);
  ((uintptr_t *)p)[1] = 0;
  tc->mcache_count[m]--;
  HM_RACY_ADD(tc->mcache_bytes, -hmi_mclass_size(m));
  return p;
}

/* Keep a freed medium block (p, validated by the caller's page-map lookup only) if it is of
 * a medium class and there is room; false if the caller must free it to its arena.  A block
 * already here is a double free. */
bool hmi_mcache_push(void *p, hm_segment_t *seg) {
  hm_tcache_t *tc = &hmi_tcache;
  hm_chunk_t *c = hmi_arena_chunk_of(p, seg);
  if (c == NULL) return false; /* hmi_arena_free reports it */
  size_t flags = __atomic_load_n(&c->size_flags, __ATOMIC_RELAXED);
  if (!(flags & HM_CH_INUSE)) return false; /* hmi_arena_free reports the double free */
  /* In use for its arena, but carrying the free mark: it sits in a medium cache (this
   * thread's or another's), freed already.  Handouts clear the mark (hmi_mcache_pop,
   * hmi_arena_alloc), so only a free leaves it there. */
  if (((uintptr_t *)p)[1] == hmi_free_mark) hmi_fatal("hmalloc: free(): double free %p\n", p);
  if (tc->state != HM_TC_LIVE || tc->hooked) return false;
  size_t usable = (flags & ~HM_CH_FLAGS) - HM_CHUNK_HEADER;
  if (usable <= HM_SMALL_MAX || usable > HM_MCACHE_MAX) return false; /* aligned blocks */
  unsigned m = hmi_mclass(usable);
  if (hmi_mclass_size(m) != usable) return false; /* resized or aligned: not a class size */
  /* Kept whatever its neighbours: a block next to free space (the free top of the heap, in a
   * malloc/free loop) is the one a program asks for again.  Keeping only blocks whose
   * neighbours were in use made a 32 KiB malloc/free pair at the heap top take the arena
   * each time: 683 instructions per pair (loop included) against 231.  What kept blocks
   * could pin (free space below them that the heap cannot give back) is bounded by the
   * medium budget, and a free that leaves a big free chunk the heap cannot trim flushes the
   * cache (mcache_flush_wanted, arena.c).
   * The budget is HMALLOC_TCACHE_MAX, apart from the small lists' cap (but for a crowded
   * process, mcache_budget).  It was half the cap and shared with them (a breach of the cap
   * emptied the medium cache first), so a thread mixing small and medium sizes kept few medium
   * blocks: alloc_test took 0.89x (1 thread) and 0.91x (2 threads) the time with a budget of
   * twice the cap, for 1-3% more peak RSS (9 interleaved runs).  Twice that again (the
   * maximum, 1 MiB by default) took alloc_test's arena calls from 227k to 146k: alloc_test-t2
   * 0.96x, alloc_test-t1 0.976x, realloc_heavy 0.96x, sqlite3 0.945x (5-9 interleaved runs),
   * peak RSS up to 1.4% more; eight times the start cap gained nothing more (four blocks per
   * class are the limit then).  A fixed cap of 1 MiB for both made
   * shuffle 1.17x slower (its flushed lists grow colder): the small lists' cap grows only as
   * grow_cap says. */
  if (tc->mcache_count[m] >= HM_MCACHE_DEPTH ||
      tc->mcache_bytes + usable > mcache_budget(tc))
    return false;
  *(void **)p = hmi_link(tc->mcache[m], p);
  ((uintptr_t *)p)[1] = tc->free_mark;
  tc->mcache[m] = p;
  tc->mcache_count[m]++;
  HM_RACY_ADD(tc->mcache_bytes, usable);
  return true;
}

/* Give every cached medium block back to its arena. */
void hmi_mcache_flush(hm_tcache_t *tc) {
  for (unsigned m = 0; m < HM_MCLASSES; m++) {
    while (tc->mcache[m] != NULL) {
      void *p = tc->mcache[m];
      tc->mcache[m] = hmi_next_checked(p);
      ((uintptr_t *)p)[1] = 0;
      tc->mcache_count[m]--;
      HM_RACY_ADD(tc->mcache_bytes, -hmi_mclass_size(m));
      hmi_arena_free(p, HM_PM_PTR(hmi_pagemap_get((uintptr_t)p)));
    }
  }
}

/* Usable bytes held in the medium caches of live threads (stats). */
size_t hmi_tcache_medium_cached(void) {
  size_t bytes = 0;
  hm_lock(&hmi_registry_lock);
  for (hm_tcache_t *tc = registry; tc; tc = tc->next)
    bytes += __atomic_load_n(&tc->mcache_bytes, __ATOMIC_RELAXED);
  hm_unlock(&hmi_registry_lock);
  return bytes;
}

static void thread_exit(void *arg) {
  hm_tcache_t *tc = arg;
  if (tc != &hmi_tcache || tc->state != HM_TC_LIVE) return;
  hmi_mcache_flush(tc);
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    flush(tc, c, hm_bin_count(tc, c));
    HM_RACY_SET(tc->limit[c], 0);
    HM_RACY_SET(tc->space[c], 0);
  }
  tc->state = HM_TC_DEAD;
  hmi_arena_unassign(tc->arena_index); /* still used for what the thread frees from now on */
  hm_lock(&hmi_registry_lock);
  if (tc->prev) tc->prev->next = tc->next;
  else registry = tc->next;
  if (tc->next) tc->next->prev = tc->prev;
  HM_RACY_ADD(live_caches, -1u);
  fold(&tc->stats);
  memset(&tc->stats, 0, sizeof tc->stats);
  hm_unlock(&hmi_registry_lock);
}

/* Sum the counters of live caches (racy reads of other threads' words: each is exact for its
 * thread at some recent moment) and the bytes they hold. */
void hmi_tcache_sum(hm_tstats_t *out, size_t *cached) {
  memset(out, 0, sizeof *out);
  size_t bytes = 0;
  hm_lock(&hmi_registry_lock);
  for (hm_tcache_t *tc = registry; tc; tc = tc->next) {
    out->malloc_count += __atomic_load_n(&tc->stats.malloc_count, __ATOMIC_RELAXED);
    out->free_count += __atomic_load_n(&tc->stats.free_count, __ATOMIC_RELAXED);
    for (unsigned c = 0; c < HM_CLASSES; c++) {
      out->malloc_count += __atomic_load_n(&tc->stats.class_malloc[c], __ATOMIC_RELAXED);
      out->free_count += __atomic_load_n(&tc->stats.class_free[c], __ATOMIC_RELAXED);
    }
    out->realloc_count += __atomic_load_n(&tc->stats.realloc_count, __ATOMIC_RELAXED);
    out->refills += __atomic_load_n(&tc->stats.refills, __ATOMIC_RELAXED);
    out->flushes += __atomic_load_n(&tc->stats.flushes, __ATOMIC_RELAXED);
    for (unsigned c = 0; c < HM_CLASSES; c++)
      bytes += (size_t)HM_BIN_COUNT_RACY(tc, c) * hmi_class_size[c];
  }
  hm_unlock(&hmi_registry_lock);
  for (unsigned c = 0; c < HM_CLASSES; c++)
    bytes += __atomic_load_n(&hmi_central[c].xfer_objects, __ATOMIC_RELAXED) * hmi_class_size[c];
  if (cached) *cached = bytes;
}

/* A forked child has only the forking thread: the caches of the others stay allocated in
 * its copy of their stacks, but no thread will ever use or exit them.  Drop them from the
 * registry (their objects are lost to the child, as with every thread-caching allocator). */
void hmi_tcache_after_fork_child(void) {
  hm_tcache_t *self = hmi_tcache.state == HM_TC_LIVE ? &hmi_tcache : NULL;
  for (hm_tcache_t *tc = registry; tc; tc = tc->next)
    if (tc != self) fold(&tc->stats);
  registry = self;
  HM_RACY_SET(live_caches, self ? 1u : 0u);
  if (self) self->next = self->prev = NULL;
  hmi_arena_threads_after_fork(self ? self->arena_index : HM_MAX_ARENAS);
}

/* Objects of each class held in live thread caches, added to counts[] (stats). */
void hmi_tcache_class_counts(size_t counts[HM_CLASSES]) {
  for (unsigned c = 0; c < HM_CLASSES; c++) /* objects in transfer caches are cached too */
    counts[c] += __atomic_load_n(&hmi_central[c].xfer_objects, __ATOMIC_RELAXED);
  hm_lock(&hmi_registry_lock);
  for (hm_tcache_t *tc = registry; tc; tc = tc->next)
    for (unsigned c = 0; c < HM_CLASSES; c++) counts[c] += HM_BIN_COUNT_RACY(tc, c);
  hm_unlock(&hmi_registry_lock);
}

/* Per-class counters of live and exited threads, added to the arrays (stats). */
void hmi_tcache_class_stats(uint64_t mallocs[HM_CLASSES], uint64_t frees[HM_CLASSES],
                            uint64_t refills[HM_CLASSES], uint64_t flushes[HM_CLASSES]) {
  hm_lock(&hmi_registry_lock);
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    mallocs[c] += dead_class[0][c];
    frees[c] += dead_class[1][c];
    refills[c] += dead_class[2][c];
    flushes[c] += dead_class[3][c];
  }
  for (hm_tcache_t *tc = registry; tc; tc = tc->next)
    for (unsigned c = 0; c < HM_CLASSES; c++) {
      mallocs[c] += __atomic_load_n(&tc->stats.class_malloc[c], __ATOMIC_RELAXED);
      frees[c] += __atomic_load_n(&tc->stats.class_free[c], __ATOMIC_RELAXED);
      refills[c] += __atomic_load_n(&tc->stats.class_refill[c], __ATOMIC_RELAXED);
      flushes[c] += __atomic_load_n(&tc->stats.class_flush[c], __ATOMIC_RELAXED);
    }
  hm_unlock(&hmi_registry_lock);
}
