/* tcache.c - per-thread caches of small objects: the slow paths behind the inline fast paths
 * of alloc_inline.h, set-up, byte cap, and teardown at thread exit.
 *
 * The cache is a TLS struct (initial-exec), all zero when a thread starts: every list is
 * empty and every limit is 0, so the first malloc (empty list) and the first free
 * (count > limit) of a thread land here and set the cache up.  The fast paths never ask
 * "initialised?".
 * A free by any thread goes to that thread's cache whatever span the object came from; a
 * list that passes its limit gives half of it back to the central lists in one batch (so a
 * consumer thread freeing a producer's objects stays bounded), and a refill takes a batch.
 * Byte cap: limits are chosen so one list holds at most cap/4 bytes; when the cache as a whole
 * passes the cap (checked on every slow path), every list is halved.
 * Thread exit: a pthread key destructor flushes everything and marks the cache DEAD with
 * limits 0; later frees (glibc frees after the destructors ran) go straight to the central
 * lists and later mallocs take one object at a time without caching.
 * Registry: live caches are linked under hmi_registry_lock so stats can sum their counters. */
#include <pthread.h>
#include <string.h>

#include "internal.h"

__thread hm_tcache_t hmi_tcache __attribute__((tls_model("initial-exec")));

hm_lock_t hmi_registry_lock = HM_LOCK_INIT;
static hm_tcache_t *registry;
static pthread_key_t exit_key;
static uint32_t class_batch[HM_CLASSES]; /* objects moved per refill */
static uint32_t class_limit[HM_CLASSES]; /* objects a list may hold */

static void thread_exit(void *arg);

/* Process set-up: batch sizes, limits for the configured cap, and the exit key. */
void hmi_tcache_init_process(void) {
  size_t cap = hmi_options.tcache_max;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    size_t size = hmi_class_size[c];
    size_t batch = ((size_t)16 << 10) / size;
    if (batch > 64) batch = 64;
    if (batch < 2) batch = 2;
    size_t limit = cap / 4 / size;
    if (limit > 1024) limit = 1024;
    if (limit < batch) limit = batch;
    if (cap == 0) limit = 0, batch = 1;
    class_batch[c] = (uint32_t)batch;
    class_limit[c] = (uint32_t)limit;
  }
  pthread_key_create(&exit_key, thread_exit);
}

static void setup(hm_tcache_t *tc) {
  tc->bytes_cap = hmi_options.tcache_max;
  for (unsigned c = 0; c < HM_CLASSES; c++) tc->bins[c].limit = class_limit[c];
  tc->arena_index = hmi_arena_assign();
  tc->state = HM_TC_LIVE;
  hm_lock(&hmi_registry_lock);
  tc->prev = NULL;
  tc->next = registry;
  if (registry) registry->prev = tc;
  registry = tc;
  hm_unlock(&hmi_registry_lock);
  /* Any non-NULL value makes the destructor run at thread exit.  pthread_setspecific does not
   * allocate for the first 32 keys, and ours is created at start-up. */
  pthread_setspecific(exit_key, tc);
}

/* Give `n` objects from the front of bin c back to the central lists. */
static void flush(hm_tcache_t *tc, unsigned c, uint32_t n) {
  hm_bin_t *b = &tc->bins[c];
  if (n > b->count) n = b->count;
  if (n == 0) return;
  void *head = b->head, *last = head;
  for (uint32_t i = 1; i < n; i++) last = *(void **)last;
  b->head = *(void **)last;
  *(void **)last = NULL;
  hm_assert(b->count >= n);
  b->count -= n;
  tc->stats.flushes++;
  hmi_span_give(c, head, n);
}

static size_t cached_bytes(const hm_tcache_t *tc) {
  size_t bytes = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++)
    bytes += (size_t)tc->bins[c].count * hmi_class_size[c];
  return bytes;
}

/* Keep the whole cache under its byte cap: halve every list while it is over. */
static void enforce_cap(hm_tcache_t *tc) {
  while (cached_bytes(tc) > tc->bytes_cap) {
    for (unsigned c = 0; c < HM_CLASSES; c++) flush(tc, c, (tc->bins[c].count + 1) / 2);
  }
}

void *hmi_tcache_alloc_slow(unsigned cls) {
  hm_tcache_t *tc = &hmi_tcache;
  hmi_ensure_init();
  if (tc->state == HM_TC_NEW) setup(tc);
  hm_bin_t *b = &tc->bins[cls];
  if (b->head != NULL) { /* refilled meanwhile (cannot happen today, but cheap to honour) */
    void *p = b->head;
    b->head = *(void **)p;
    b->count--;
    return p;
  }
  void *list;
  uint32_t want = tc->state == HM_TC_LIVE && b->limit > 0 ? class_batch[cls] : 1;
  uint32_t n = hmi_span_take(cls, want, &list);
  if (n == 0) return NULL;
  tc->stats.refills++;
  void *p = list;
  b->head = *(void **)p;
  b->count = n - 1;
  if (n > 1) enforce_cap(tc);
  return p;
}

void hmi_tcache_free_slow(void *p, unsigned cls) {
  hm_tcache_t *tc = &hmi_tcache;
  /* p is already pushed on the bin; count exceeds limit. */
  if (tc->state == HM_TC_NEW) {
    hmi_ensure_init();
    setup(tc);
    if (tc->bins[cls].count <= tc->bins[cls].limit) return;
  }
  (void)p;
  hm_bin_t *b = &tc->bins[cls];
  if (tc->state != HM_TC_LIVE || b->limit == 0) {
    flush(tc, cls, b->count);
    return;
  }
  flush(tc, cls, b->count - b->limit / 2);
  enforce_cap(tc);
}

static void thread_exit(void *arg) {
  hm_tcache_t *tc = arg;
  if (tc != &hmi_tcache || tc->state != HM_TC_LIVE) return;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    flush(tc, c, tc->bins[c].count);
    tc->bins[c].limit = 0;
  }
  tc->state = HM_TC_DEAD;
  hm_lock(&hmi_registry_lock);
  if (tc->prev) tc->prev->next = tc->next;
  else registry = tc->next;
  if (tc->next) tc->next->prev = tc->prev;
  hmi_stats_fold(&tc->stats);
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
    out->realloc_count += __atomic_load_n(&tc->stats.realloc_count, __ATOMIC_RELAXED);
    out->refills += __atomic_load_n(&tc->stats.refills, __ATOMIC_RELAXED);
    out->flushes += __atomic_load_n(&tc->stats.flushes, __ATOMIC_RELAXED);
    for (unsigned c = 0; c < HM_CLASSES; c++)
      bytes += (size_t)__atomic_load_n(&tc->bins[c].count, __ATOMIC_RELAXED) * hmi_class_size[c];
  }
  hm_unlock(&hmi_registry_lock);
  if (cached) *cached = bytes;
}

/* A forked child has only the forking thread: the caches of the others stay allocated in
 * its copy of their stacks, but no thread will ever use or exit them.  Drop them from the
 * registry (their objects are lost to the child, as with every thread-caching allocator). */
void hmi_tcache_after_fork_child(void) {
  hm_tcache_t *self = hmi_tcache.state == HM_TC_LIVE ? &hmi_tcache : NULL;
  for (hm_tcache_t *tc = registry; tc; tc = tc->next)
    if (tc != self) hmi_stats_fold(&tc->stats);
  registry = self;
  if (self) self->next = self->prev = NULL;
}
