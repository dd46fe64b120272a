/* Small tier: spans carved from the medium heap and given back when empty; thread cache
 * refill, flush and byte cap; objects of a span never overlap. */
#include <criterion/criterion.h>
#include <sys/wait.h>
#include <pthread.h>
#include <string.h>

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "hmalloc.h"
#include "internal.h"
#include "stats_internal.h"

/* Bytes the thread's small lists hold. */
static size_t small_cached_bytes(const hm_tcache_t *tc) {
  size_t bytes = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++) bytes += (size_t)hm_bin_count(tc, c) * hmi_class_size[c];
  return bytes;
}

Test(span, objects_are_distinct_aligned_and_span_local) {
  enum { N = 20000 };
  static void *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = malloc(48);
    cr_assert_eq((uintptr_t)p[i] % 16, 0);
    memset(p[i], i & 0xff, 48);
  }
  for (int i = 0; i < N; i++) {
    unsigned char *b = p[i];
    for (int j = 0; j < 48; j++) cr_assert_eq(b[j], i & 0xff, "object %d overwritten", i);
  }
  for (int i = 0; i < N; i++) free(p[i]);
  cr_assert_eq(hm_heap_check(), 0);
}

Test(span, empty_spans_return_to_the_medium_heap) {
  hmi_ensure_init();
  unsigned cls = hmi_size_class(1000);
  hm_central_t *c = &hmi_central[cls];
  enum { N = 5000 }; /* ~5 MB of 1000-byte objects: ~80 spans */
  static void *p[N];
  for (int i = 0; i < N; i++) p[i] = malloc(1000);
  uint32_t spans = c->span_count;
  cr_assert_gt(spans, 60);
  for (int i = 0; i < N; i++) free(p[i]);
  hm_tcache_t *tc = &hmi_tcache;
  cr_assert_leq(hm_bin_count(tc, cls), tc->limit[cls]);
  cr_assert_lt(c->span_count, spans / 4, "emptied spans were released");
  cr_assert_gt(c->spans_released, 0);
  cr_assert_eq(hm_heap_check(), 0);
}

Test(span, tcache_refill_and_flush_in_batches) {
  hmi_ensure_init();
  unsigned cls = hmi_size_class(64);
  hm_tcache_t *tc = &hmi_tcache;
  void *p = malloc(64);
  uint64_t refills = tc->stats.refills;
  uint32_t count = hm_bin_count(tc, cls);
  cr_assert_gt(count, 0, "a refill brings a batch, not one object");
  for (uint32_t i = 0; i < count; i++) free(malloc(64)), (void)0;
  cr_assert_eq(tc->stats.refills, refills, "served from the cache");
  static void *q[5000];
  for (int i = 0; i < 5000; i++) q[i] = malloc(64);
  uint64_t flushes = tc->stats.flushes;
  for (int i = 0; i < 5000; i++) free(q[i]);
  cr_assert_gt(tc->stats.flushes, flushes);
  cr_assert_leq(hm_bin_count(tc, cls), tc->limit[cls]);
  free(p);
}

Test(span, cache_stays_under_its_byte_cap) {
  hmi_ensure_init();
  hm_tcache_t *tc = &hmi_tcache;
  static void *q[64][200];
  for (unsigned c = 0; c < HM_CLASSES; c += 1)
    for (int i = 0; i < 200; i++) q[c][i] = malloc(hmi_class_size[c]);
  for (unsigned c = 0; c < HM_CLASSES; c += 1)
    for (int i = 0; i < 200; i++) free(q[c][i]);
  size_t bytes = 0, biggest = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    bytes += (size_t)hm_bin_count(tc, c) * hmi_class_size[c];
    if ((size_t)tc->limit[c] * hmi_class_size[c] > biggest)
      biggest = (size_t)tc->limit[c] * hmi_class_size[c];
  }
  cr_assert_leq(bytes, tc->bytes_cap + biggest, "%zu bytes cached, cap %zu", bytes, tc->bytes_cap);
  cr_assert_leq(tc->bytes_cap, hmi_options.tcache_max);
}

/* A thread's first refills of a class take 8, 16 and 32 objects, then whole batches (64
 * objects of 48 bytes): a thread that needs a few objects of a class takes a few. */
static void *warmup_body(void *arg) {
  uint32_t *seen = arg;
  hm_tcache_t *tc = &hmi_tcache;
  unsigned cls = hmi_size_class(48);
  static void *p[200];
  int k = 0;
  for (int r = 0; r < 5; r++) {
    p[k++] = malloc(48); /* the list is empty: a refill */
    seen[r] = hm_bin_count(tc, cls) + 1;
    while (hm_bin_count(tc, cls) > 0) p[k++] = malloc(48);
  }
  for (int i = 0; i < k; i++) free(p[i]);
  return NULL;
}

Test(span, first_refills_of_a_class_are_small) {
  uint32_t seen[5];
  pthread_t t;
  pthread_create(&t, NULL, warmup_body, seen);
  pthread_join(t, NULL);
  cr_assert_eq(seen[0], 8);
  cr_assert_eq(seen[1], 16);
  cr_assert_eq(seen[2], 32);
  cr_assert_eq(seen[3], 64);
  cr_assert_eq(seen[4], 64);
  cr_assert_eq(hm_heap_check(), 0);
}

/* A thread whose first call is a free of another thread's object does not keep it: the
 * object goes back to its span (kept, it would be the first object the thread gets back,
 * in a cache line other threads use: Hoard's cache-scratch). */
static void *first_free_body(void *arg) {
  hm_tcache_t *tc = &hmi_tcache;
  unsigned cls = hmi_size_class(8);
  cr_assert_eq(tc->state, HM_TC_NEW);
  free(arg);
  cr_assert_eq(tc->state, HM_TC_LIVE);
  cr_assert_eq(hm_bin_count(tc, cls), 0, "the other thread's object was given back");
  void *p = malloc(8); /* a later free of the thread's own object is kept as usual */
  free(p);
  cr_assert_gt(hm_bin_count(tc, cls), 0);
  return NULL;
}

Test(span, first_free_of_a_new_thread_is_given_back) {
  void *obj = malloc(8);
  pthread_t t;
  pthread_create(&t, NULL, first_free_body, obj);
  pthread_join(t, NULL);
  cr_assert_eq(hm_heap_check(), 0);
}

/* Run body on a thread of its own (a fresh cache), then check the heap. */
static void run_on_thread(void *(*body)(void *)) {
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, body, NULL), 0);
  pthread_join(t, NULL);
  cr_assert_eq(hm_heap_check(), 0);
}

/* The calling thread's cache, set up, under a byte cap of `cap`: as if HMALLOC_TCACHE_MAX were
 * four times it (a cache starts at a quarter of its maximum). */
static hm_tcache_t *cache_with_cap(size_t cap) {
  free(malloc(32)); /* set-up */
  hmi_tcache.bytes_cap = cap;
  hmi_tcache.bytes_max = 4 * cap;
  return &hmi_tcache;
}

/* Over the cap, the list with the most bytes is halved first; the small lists of other
 * classes keep their objects.  (Halving every list at each breach emptied the cache for
 * every class a thread uses, and any cap below the default cost about as much as no cache.) */
static void *cap_breach_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(64 << 10);
  unsigned small = hmi_size_class(32), big = hmi_size_class(2048);
  void *s[8], *b[90];
  for (int i = 0; i < 8; i++) s[i] = malloc(32);
  for (int i = 0; i < 8; i++) free(s[i]);
  uint32_t small_count = hm_bin_count(tc, small);
  cr_assert_geq(small_count, 8);
  /* 60 KiB of each of two classes: refills grow their limits; freed, they hold more than
   * the cap between them */
  for (int i = 0; i < 30; i++) b[i] = malloc(2048);
  for (int i = 30; i < 90; i++) b[i] = malloc(1024);
  uint64_t flushes = tc->stats.class_flush[small];
  for (int i = 0; i < 90; i++) free(b[i]);
  size_t bytes = small_cached_bytes(tc);
  cr_assert_leq(bytes, tc->bytes_cap, "%zu bytes cached", bytes);
  cr_assert_gt(tc->stats.class_flush[big], 0);
  cr_assert_eq(tc->stats.class_flush[small], flushes, "the 32-byte list was not flushed");
  cr_assert_eq(hm_bin_count(tc, small), small_count);
  return NULL;
}

Test(span, cap_breach_halves_the_biggest_list_first) { run_on_thread(cap_breach_body); }

/* One breach can halve several lists, and one list more than once; the halvings are made
 * together (flush_cuts walks the lists at once) and must come to what halving the biggest list
 * again and again gives: each list keeps its oldest objects, each halving is one flush. */
static void *cap_breach_cuts_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(64 << 10);
  unsigned a = hmi_size_class(2048), b = hmi_size_class(1024), c64 = hmi_size_class(64);
  static void *pa[20], *pb[30];
  for (int i = 0; i < 20; i++) pa[i] = malloc(2048);
  for (int i = 0; i < 30; i++) pb[i] = malloc(1024);
  for (int i = 0; i < 20; i++) free(pa[i]);
  for (int i = 0; i < 30; i++) free(pb[i]); /* more than the cap now: no slow path yet */
  uint32_t before[HM_CLASSES];
  uint64_t flushes[HM_CLASSES];
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    before[c] = hm_bin_count(tc, c);
    flushes[c] = tc->stats.class_flush[c];
  }
  cr_assert_gt(small_cached_bytes(tc), tc->bytes_cap);
  free(malloc(64)); /* a refill: the slow path checks the cap */
  before[c64] = hm_bin_count(tc, c64) - 1; /* at the check: the refill less the object taken */
  /* the rule: halve the list holding the most bytes until the lists hold half the cap */
  uint32_t left[HM_CLASSES], cuts[HM_CLASSES] = {0};
  size_t bytes = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    left[c] = before[c];
    bytes += (size_t)left[c] * hmi_class_size[c];
  }
  while (bytes > tc->bytes_cap / 2) {
    unsigned pick = 0;
    for (unsigned c = 1; c < HM_CLASSES; c++)
      if ((size_t)left[c] * hmi_class_size[c] > (size_t)left[pick] * hmi_class_size[pick]) pick = c;
    uint32_t n = (left[pick] + 1) / 2;
    left[pick] -= n;
    cuts[pick]++;
    bytes -= (size_t)n * hmi_class_size[pick];
  }
  cr_assert_geq(cuts[a], 2, "the 2048-byte list is halved twice in this breach");
  cr_assert_geq(cuts[b], 1);
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    if (c == c64) continue;
    cr_assert_eq(hm_bin_count(tc, c), left[c], "class %u: %u objects, want %u", c,
                 hm_bin_count(tc, c), left[c]);
    cr_assert_eq(tc->stats.class_flush[c] - flushes[c], cuts[c], "class %u: one flush a halving", c);
  }
  /* the objects freed last went first: what the 2048-byte list keeps is none of them, each
   * object once */
  uint32_t gone = before[a] - left[a], seen = 0;
  void *kept[64];
  for (void *q = tc->head[a]; q != NULL; q = hmi_next_checked(q)) {
    cr_assert_lt(seen, 64);
    for (uint32_t i = 0; i < seen; i++) cr_assert_neq(kept[i], q, "object %p twice", q);
    for (uint32_t i = 0; i < gone && i < 20; i++)
      cr_assert_neq(q, pa[19 - i], "object %p, freed last, is still cached", q);
    kept[seen++] = q;
  }
  cr_assert_eq(seen, left[a]);
  return NULL;
}

Test(span, cap_breach_halves_lists_together_as_one_by_one) { run_on_thread(cap_breach_cuts_body); }

/* The cap grows by a start cap when a list it halved is refilled before that list overflowed
 * on its own (the thread goes round more than the cap lets it keep), up to the maximum; a list
 * that overflows first takes back the evidence. */
static const size_t cap_sizes[4] = {1024, 2048, 3072, 4096};

/* Fill four lists to their ceilings (256 KiB in all), free them, and let a slow path check
 * the cap: the class of a list it halved. */
static unsigned over_the_cap(hm_tcache_t *tc) {
  static void *b[4][64];
  for (int c = 0; c < 4; c++)
    for (size_t i = 0; i < (64 << 10) / cap_sizes[c]; i++) b[c][i] = malloc(cap_sizes[c]);
  for (int c = 0; c < 4; c++)
    for (size_t i = 0; i < (64 << 10) / cap_sizes[c]; i++) free(b[c][i]);
  free(malloc(64)); /* a slow path checks the cap */
  cr_assert_neq(tc->trimmed, 0, "the cap (%zu) halved a list", tc->bytes_cap);
  return (unsigned)__builtin_ctzll(tc->trimmed);
}

/* malloc objects of class cls until one takes a refill; they go to keep[]. */
static int take_until_refill(hm_tcache_t *tc, unsigned cls, void **keep) {
  uint64_t refills = tc->stats.class_refill[cls];
  int k = 0;
  while (tc->stats.class_refill[cls] == refills) keep[k++] = malloc(hmi_class_size[cls]);
  return k;
}

/* Refill each list of the mask (its objects taken until a refill, then freed). */
static void refill_halved(hm_tcache_t *tc, uint64_t halved) {
  static void *keep[4000];
  for (uint64_t m = halved; m != 0; m &= m - 1) {
    int k = take_until_refill(tc, (unsigned)__builtin_ctzll(m), keep);
    for (int i = 0; i < k; i++) free(keep[i]);
  }
}

/* Rounds of over_the_cap, each list it halved then refilled: each refill grows the cap by a
 * start cap, up to the maximum.  The cap before each round goes to caps[]. */
static void growth_rounds(hm_tcache_t *tc, size_t *caps, int rounds) {
  size_t step = tc->bytes_max / 4;
  for (int round = 0; round < rounds; round++) {
    caps[round] = tc->bytes_cap;
    over_the_cap(tc);
    uint64_t halved = tc->trimmed;
    size_t before = tc->bytes_cap;
    refill_halved(tc, halved);
    cr_assert_eq(tc->trimmed & halved, 0, "each refill took its list's evidence");
    size_t want = before + (size_t)__builtin_popcountll(halved) * step;
    if (want > tc->bytes_max) want = tc->bytes_max;
    cr_assert_eq(tc->bytes_cap, want, "cap %zu, want %zu", tc->bytes_cap, want);
  }
}

static void *cap_growth_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(64 << 10); /* at most 256 KiB */
  size_t caps[1];
  growth_rounds(tc, caps, 1);
  cr_assert_gt(tc->bytes_cap, 64 << 10);
  return NULL;
}

Test(span, cap_grows_when_a_halved_list_is_refilled_before_it_overflows) {
  run_on_thread(cap_growth_body);
}

static void *cap_ceiling_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(88 << 10);
  tc->bytes_max = 96 << 10; /* steps of 24 KiB: one would pass the maximum */
  size_t caps[1];
  growth_rounds(tc, caps, 1);
  cr_assert_eq(tc->bytes_cap, 96 << 10, "up to the maximum, never above: %zu", tc->bytes_cap);
  return NULL;
}

Test(span, cap_grows_no_further_than_its_maximum) { run_on_thread(cap_ceiling_body); }

static void *no_growth_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(64 << 10);
  static void *spare[4][200];
  for (int c = 0; c < 4; c++)
    for (int i = 0; i < 200; i++) spare[c][i] = malloc(cap_sizes[c]);
  unsigned cls = over_the_cap(tc);
  int c = 0;
  while (hmi_class_size[hmi_size_class(cap_sizes[c])] != hmi_class_size[cls]) c++;
  /* the halved list overflows on its own, with objects the thread already had */
  uint64_t flushes = tc->stats.class_flush[cls];
  int freed = 0;
  while (tc->stats.class_flush[cls] == flushes) free(spare[c][freed++]);
  cr_assert_eq((tc->trimmed >> cls) & 1, 0);
  static void *keep[4000];
  int k = take_until_refill(tc, cls, keep);
  cr_assert_eq(tc->bytes_cap, 64 << 10, "not grown: %zu", tc->bytes_cap);
  for (int i = 0; i < k; i++) free(keep[i]);
  for (int d = 0; d < 4; d++)
    for (int i = d == c ? freed : 0; i < 200; i++) free(spare[d][i]);
  return NULL;
}

Test(span, cap_stays_when_the_halved_list_overflows_first) { run_on_thread(no_growth_body); }

/* Under a cap so small that one batch of a big class is more than a quarter of it, that
 * class is not cached at all, and the others take batches of a quarter of the cap at most. */
static void *tiny_cap_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = &hmi_tcache;
  unsigned small = hmi_size_class(32), big = hmi_size_class(4096);
  free(malloc(32));
  free(malloc(4096));
  cr_assert_eq(tc->limit[big], 0, "4 KiB objects are not cached under a 16 KiB cap");
  cr_assert_eq(hm_bin_count(tc, big), 0);
  cr_assert_gt(tc->limit[small], 0);
  void *p[200];
  for (int i = 0; i < 200; i++) p[i] = malloc(32);
  cr_assert_leq((size_t)hm_bin_count(tc, small) * 32, 4096, "a batch is a quarter of the cap");
  for (int i = 0; i < 200; i++) free(p[i]);
  size_t bytes = small_cached_bytes(tc);
  cr_assert_leq(bytes, 16384);
  return NULL;
}

Test(span, tiny_cap_leaves_big_classes_uncached) {
  hmi_ensure_init();
  hmi_options.tcache_max = 65536; /* as HMALLOC_TCACHE_MAX=64K would at start-up: caches start
                                   * under a 16 KiB cap */
  hmi_tcache_init_process();      /* (a second exit key: its destructor finds the cache dead) */
  pthread_t t;
  pthread_create(&t, NULL, tiny_cap_body, NULL);
  pthread_join(t, NULL);
  cr_assert_eq(hm_heap_check(), 0);
}

static void *thread_body(void *arg) {
  (void)arg;
  void *p[300];
  for (int i = 0; i < 300; i++) p[i] = malloc(32 + (size_t)i);
  for (int i = 0; i < 300; i++) free(p[i]);
  return &hmi_tcache;
}

Test(span, exiting_thread_gives_its_cache_back) {
  pthread_t t;
  pthread_create(&t, NULL, thread_body, NULL);
  void *tc_addr;
  pthread_join(t, &tc_addr);
  /* the dead thread's cache was flushed: its objects are free slots again */
  hm_stats_t s;
  hm_stats_get(&s);
  cr_assert_eq(hm_heap_check(), 0);
  (void)tc_addr;
  (void)s;
}

Test(span, flushed_batches_go_through_the_transfer_cache) {
  hmi_ensure_init();
  unsigned cls = hmi_size_class(200);
  hm_central_t *c = &hmi_central[cls];
  static void *p[3000];
  for (int i = 0; i < 3000; i++) p[i] = malloc(200);
  for (int i = 0; i < 3000; i++) free(p[i]); /* flushes whole batches */
  cr_assert_gt(c->xfer_n, 0, "a flushed batch is kept whole");
  cr_assert_gt(c->xfer_objects, 0);
  uint32_t held = c->xfer_n;
  /* empty this thread's list, then a refill takes a whole batch back */
  hm_tcache_t *tc = &hmi_tcache;
  static void *q[3000];
  uint32_t cached = hm_bin_count(tc, cls);
  for (uint32_t i = 0; i <= cached; i++) q[i] = malloc(200);
  cr_assert_eq(c->xfer_n, held - 1, "the refill took one batch");
  for (uint32_t i = 0; i <= cached; i++) free(q[i]);
  cr_assert_eq(hm_heap_check(), 0);
  malloc_trim(0);
  cr_assert_eq(c->xfer_n, 0, "malloc_trim drains the transfer cache into the spans");
  cr_assert_eq(c->xfer_objects, 0);
  cr_assert_eq(hm_heap_check(), 0);
}

/* List limits adapt to the thread: one batch at first, a batch more per refill up to the
 * ceiling, a batch less per three overflows with no refill.  Each phase runs in a thread of
 * its own so that it starts from a fresh cache. */
enum { ADAPT_N = 4000, ADAPT_SIZE = 64 }; /* frees enough for 3 overflows of a full list */
static void *adapt_objects[ADAPT_N];
struct adapt_seen {
  uint32_t start_limit;   /* after set-up by a free, before any refill */
  uint32_t after_allocs;  /* after ADAPT_N mallocs (many refills) */
  uint32_t after_frees;   /* after those ADAPT_N objects came back (many overflows) */
  uint32_t consumer_limit, consumer_count; /* a thread that only frees */
};

static void *adapt_producer(void *arg) {
  struct adapt_seen *seen = arg;
  hm_tcache_t *tc = &hmi_tcache;
  unsigned cls = hmi_size_class(ADAPT_SIZE);
  free(malloc(ADAPT_SIZE * 2)); /* set-up through another class */
  seen->start_limit = tc->limit[cls];
  for (int i = 0; i < ADAPT_N; i++) adapt_objects[i] = malloc(ADAPT_SIZE);
  seen->after_allocs = tc->limit[cls];
  for (int i = 0; i < ADAPT_N; i++) free(adapt_objects[i]);
  seen->after_frees = tc->limit[cls];
  for (int i = 0; i < ADAPT_N; i++) adapt_objects[i] = malloc(ADAPT_SIZE); /* for the consumer */
  return NULL;
}

static void *adapt_consumer(void *arg) {
  struct adapt_seen *seen = arg;
  hm_tcache_t *tc = &hmi_tcache;
  unsigned cls = hmi_size_class(ADAPT_SIZE);
  for (int i = 0; i < ADAPT_N; i++) {
    free(adapt_objects[i]);
    cr_assert_leq(hm_bin_count(tc, cls), tc->limit[cls]);
  }
  seen->consumer_limit = tc->limit[cls];
  seen->consumer_count = hm_bin_count(tc, cls);
  return NULL;
}

Test(span, list_limits_grow_with_refills_and_shrink_with_overflows) {
  struct adapt_seen seen;
  pthread_t t;
  pthread_create(&t, NULL, adapt_producer, &seen);
  pthread_join(t, NULL);
  pthread_create(&t, NULL, adapt_consumer, &seen);
  pthread_join(t, NULL);
  cr_assert_gt(seen.start_limit, 0);
  cr_assert_geq(seen.after_allocs, 4 * seen.start_limit, "refills raise the limit: %u from %u",
                seen.after_allocs, seen.start_limit);
  cr_assert_lt(seen.after_frees, seen.after_allocs, "overflows lower it: %u from %u",
               seen.after_frees, seen.after_allocs);
  cr_assert_eq(seen.consumer_limit, seen.start_limit, "a thread that only frees keeps one batch");
  cr_assert_leq(seen.consumer_count, seen.start_limit);
  cr_assert_eq(hm_heap_check(), 0);
}

/* A free that takes a list over its limit hands the whole list on: the list is empty after
 * it.  A long list (a thread that has refilled many times) goes back to its spans; a list of
 * up to two batches (a thread that only frees, whose limit is one batch) waits whole in the
 * class's transfer cache for the next refill. */
struct overflow_seen {
  uint32_t limit, count_at_limit, count_after;   /* the thread's list of ADAPT_SIZE */
  uint32_t xfer_n_before, xfer_n_after, last_batch; /* the class's transfer cache */
  size_t xfer_objects_before, xfer_objects_after;
};
static struct overflow_seen overflow_by_producer, overflow_by_consumer;
static int overflow_next; /* the next object of adapt_objects to free */

/* Free objects until the calling thread's list is at its limit, then one more. */
static void overflow_once(struct overflow_seen *seen) {
  hm_tcache_t *tc = &hmi_tcache;
  unsigned cls = hmi_size_class(ADAPT_SIZE);
  hm_central_t *c = &hmi_central[cls];
  int i = overflow_next;
  while (i < ADAPT_N && hm_bin_count(tc, cls) < tc->limit[cls]) free(adapt_objects[i++]);
  seen->limit = tc->limit[cls];
  seen->count_at_limit = hm_bin_count(tc, cls);
  seen->xfer_n_before = c->xfer_n;
  seen->xfer_objects_before = c->xfer_objects;
  free(adapt_objects[i++]); /* one over the limit */
  seen->count_after = hm_bin_count(tc, cls);
  seen->xfer_n_after = c->xfer_n;
  seen->xfer_objects_after = c->xfer_objects;
  seen->last_batch = c->xfer_n > 0 ? c->xfer_count[c->xfer_n - 1] : 0;
  overflow_next = i;
}

static void *overflow_producer(void *arg) {
  (void)arg;
  for (int i = 0; i < ADAPT_N; i++) adapt_objects[i] = malloc(ADAPT_SIZE);
  overflow_next = 0;
  overflow_once(&overflow_by_producer);
  return NULL;
}

static void *overflow_consumer(void *arg) {
  (void)arg;
  free(adapt_objects[overflow_next++]); /* set-up (this one goes straight back to its span) */
  overflow_once(&overflow_by_consumer);
  while (overflow_next < ADAPT_N) free(adapt_objects[overflow_next++]);
  return NULL;
}

Test(span, an_overflowing_free_hands_on_the_whole_list) {
  pthread_t t;
  pthread_create(&t, NULL, overflow_producer, NULL);
  pthread_join(t, NULL);
  pthread_create(&t, NULL, overflow_consumer, NULL);
  pthread_join(t, NULL);
  const struct overflow_seen *p = &overflow_by_producer, *c = &overflow_by_consumer;
  uint32_t batch = c->limit; /* a thread that only frees holds one batch (tested above) */
  cr_assert_gt(p->limit, 2 * batch, "refills grew the producer's limit to %u", p->limit);
  cr_assert_eq(p->count_at_limit, p->limit, "the list fills up to its limit");
  cr_expect_eq(p->count_after, 0, "the overflowing free empties the list (%u left)", p->count_after);
  cr_expect_eq(p->xfer_n_after, p->xfer_n_before, "a long list does not go to the transfer cache");
  cr_expect_eq(p->xfer_objects_after, p->xfer_objects_before);
  cr_assert_eq(c->count_at_limit, batch);
  cr_expect_eq(c->count_after, 0);
  cr_expect_eq(c->xfer_n_after, c->xfer_n_before + 1, "a list of one batch waits in the transfer cache");
  cr_expect_eq(c->last_batch, batch + 1, "whole: limit + 1 objects, not %u", c->last_batch);
  cr_expect_eq(hm_heap_check(), 0);
}

/* Objects carved from a fresh span come out in ascending address order, one after the
 * next, as a program that allocates a structure piece by piece then walks it would want. */
static void *ascending_body(void *arg) {
  char **p = arg;
  for (int i = 0; i < 40; i++) p[i] = malloc(720);
  return NULL;
}

Test(span, fresh_objects_are_handed_out_in_ascending_order) {
  char *p[40];
  pthread_t t;
  pthread_create(&t, NULL, ascending_body, p);
  pthread_join(t, NULL);
  size_t size = hmi_class_size[hmi_size_class(720)];
  /* the thread's first refills take 8 then 16 objects: each run is contiguous, ascending */
  for (int i = 1; i < 24; i++)
    if (i != 8)
      cr_expect_eq(p[i], p[i - 1] + size, "object %d at %p, the one before at %p", i, (void *)p[i], (void *)p[i - 1]);
  for (int i = 0; i < 40; i++) free(p[i]);
  cr_expect_eq(hm_heap_check(), 0);
}

/* Frees every other 1000-byte object of ~20 spans in a thread that then exits, so the
 * spans hold their free slots in their free maps. */
static void *half_free_body(void *arg) {
  void **p = arg;
  for (int i = 0; i < 1300; i++) p[i] = malloc(1000);
  for (int i = 0; i < 1300; i += 2) free(p[i]);
  return NULL;
}

/* A refill takes the objects given back to a span from its free map, lowest address first
 * (every other object here), without reading the objects. */
Test(span, refill_takes_a_spans_freed_objects_lowest_first) {
  hmi_ensure_init();
  unsigned cls = hmi_size_class(1000);
  static void *p[1300];
  pthread_t t;
  pthread_create(&t, NULL, half_free_body, p);
  pthread_join(t, NULL);
  malloc_trim(0); /* transfer batches back into their spans */
  hm_central_t *c = &hmi_central[cls];
  cr_assert_eq(c->xfer_n, 0);
  hm_span_t *first_span = c->partial;
  cr_assert_not_null(first_span);
  cr_assert_geq(first_span->bump - first_span->used, 16, "the span has 16 objects given back");
  /* the 16 lowest objects its free map holds */
  uintptr_t expected[16];
  uint32_t k = 0;
  for (uint32_t i = 0; k < 16 && i < first_span->bump; i++)
    if ((first_span->free_map[i / 64] >> (i % 64)) & 1)
      expected[k++] = first_span->start + i * hmi_class_size[cls];
  cr_assert_eq(k, 16);
  void *list;
  uint32_t n = hmi_span_take(cls, 16, &list);
  cr_assert_eq(n, 16);
  uint32_t got = 0;
  for (void *q = list; q != NULL; q = hmi_next_checked(q)) {
    cr_assert_lt(got, 16);
    cr_expect_eq((uintptr_t)q, expected[got], "object %u: %p, not %p", got, q, (void *)expected[got]);
    for (int i = 1; i < 1300; i += 2) cr_assert_neq(p[i], q, "%p is in use", q);
    got++;
  }
  cr_assert_eq(got, 16);
  hmi_span_give(cls, list, n, n);
  cr_assert_eq(hm_heap_check(), 0);
  for (int i = 1; i < 1300; i += 2) free(p[i]);
  cr_assert_eq(hm_heap_check(), 0);
}

/* The heap checker reads the free maps: a bit beyond a span's bump is reported. */
Test(span, heap_check_reports_a_free_map_bit_beyond_bump) {
  void *p = malloc(1000);
  free(p);
  malloc_trim(0);
  hm_span_t *s = HM_PM_PTR(hmi_pagemap_get((uintptr_t)p));
  cr_assert_eq(hm_heap_check(), 0);
  cr_assert_lt(s->bump, s->capacity);
  uint32_t beyond = (uint32_t)s->bump;
  s->free_map[beyond / 64] |= (uint64_t)1 << (beyond % 64);
  cr_expect_eq(hm_heap_check(), -1);
  s->free_map[beyond / 64] &= ~((uint64_t)1 << (beyond % 64));
  cr_expect_eq(hm_heap_check(), 0);
}

Test(span, medium_blocks_are_cached_whole_per_thread) {
  free(malloc(16)); /* set the thread cache up */
  hm_tcache_t *tc = &hmi_tcache;
  void *before = malloc(20000);
  void *p = malloc(20000);
  void *after = malloc(20000); /* neighbours in use: p could not coalesce, so it is kept */
  size_t usable = malloc_usable_size(p);
  cr_assert_eq(usable, hmi_mclass_size(hmi_mclass(20000)), "rounded to its class");
  hm_arena_t *a = ((hm_segment_t *)HM_PM_PTR(hmi_pagemap_get((uintptr_t)p)))->arena;
  size_t chunks = a->in_use_chunks;
  free(p);
  cr_assert_eq(tc->mcache_bytes, usable);
  cr_assert_eq(a->in_use_chunks, chunks, "kept by the thread, not given back to the arena");
  void *q = malloc(19000); /* same class */
  cr_assert_eq(q, p, "reused whole");
  cr_assert_eq(tc->mcache_bytes, 0);
  free(q);
  malloc_trim(0);
  cr_assert_eq(tc->mcache_bytes, 0, "malloc_trim empties this thread's medium cache");
  cr_assert_eq(a->in_use_chunks, chunks - 1);
  /* a block next to free space is kept too: in a malloc/free loop at the heap top it is the
   * one asked for again */
  free(before);
  cr_assert_eq(tc->mcache_bytes, usable, "before's neighbour was free: kept all the same");
  void *r = malloc(20000);
  cr_assert_eq(r, before, "reused whole");
  free(after);
  free(r);
  cr_assert_eq(hm_heap_check(), 0);
}

/* The medium cache has its own budget, HMALLOC_TCACHE_MAX, apart from the small lists' cap:
 * it keeps more than the cap's worth of medium blocks, and a breach of the cap by the small
 * lists leaves it alone.  (It had half the cap, emptied at each breach.) */
static void *medium_budget_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(64 << 10);
  tc->bytes_max = 128 << 10; /* the medium budget */
  /* Blocks freed to the arena could leave a big free chunk there, which empties the medium
   * cache (mcache_flush_wanted): the last block of each class stays in use, and so does a
   * block after the last one freed. */
  enum { N = HM_MCACHE_DEPTH + 1 };
  void *big[N], *mid[N];
  for (int i = 0; i < N; i++) big[i] = malloc(20000), mid[i] = malloc(9000);
  void *over = malloc(40000), *guard = malloc(40000);
  size_t big_usable = malloc_usable_size(big[0]), mid_usable = malloc_usable_size(mid[0]);
  for (int i = 0; i < HM_MCACHE_DEPTH; i++) free(big[i]), free(mid[i]);
  /* four of each class, 4 * (20480 + 9216) = 118784 bytes: over the cap, under the maximum */
  size_t want = HM_MCACHE_DEPTH * (big_usable + mid_usable);
  cr_assert_gt(want, tc->bytes_cap);
  cr_assert_leq(want, tc->bytes_max);
  cr_assert_eq(tc->mcache_bytes, want, "%zu cached, %zu expected", tc->mcache_bytes, want);
  /* small lists over the cap: halved, the medium cache kept */
  void *s[120];
  for (int i = 0; i < 120; i++) s[i] = malloc(1024);
  for (int i = 0; i < 120; i++) free(s[i]);
  cr_assert_gt(tc->stats.flushes, 0);
  cr_assert_leq(small_cached_bytes(tc), tc->bytes_cap);
  cr_assert_eq(tc->mcache_bytes, want, "the small lists' breach left the medium cache alone");
  /* a block that would take it past the maximum goes to its arena */
  free(over);
  cr_assert_eq(tc->mcache_bytes, want);
  free(guard);
  free(big[N - 1]);
  free(mid[N - 1]);
  return NULL;
}

Test(span, medium_cache_has_its_own_budget_of_the_maximum) {
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, medium_budget_body, NULL), 0);
  pthread_join(t, NULL);
  cr_assert_eq(hm_heap_check(), 0);
}

/* With more than twice as many live threads as CPUs, the medium cache shares the cap with the
 * small lists, as it did before it had a budget of its own. */
static pthread_barrier_t crowd_ready, crowd_done;
static void *crowd_member(void *arg) {
  (void)arg;
  free(malloc(16)); /* a live cache */
  pthread_barrier_wait(&crowd_ready);
  pthread_barrier_wait(&crowd_done);
  return NULL;
}

static void *crowded_budget_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(64 << 10);
  enum { N = HM_MCACHE_DEPTH + 1 };
  void *big[N];
  for (int i = 0; i < N; i++) big[i] = malloc(20000);
  for (int i = 0; i < HM_MCACHE_DEPTH; i++) free(big[i]);
  /* crowded: half the cap, 32 KiB, holds one 20 KiB block */
  cr_assert_eq(tc->mcache_bytes, malloc_usable_size(big[N - 1]), "%zu cached", tc->mcache_bytes);
  /* and it shares the cap with the small lists: 48 KiB of them and the 20 KiB block are over
  * it, so the next check (at a refill) empties the medium cache first */
  void *s[24];
  for (int i = 0; i < 24; i++) s[i] = malloc(2048);
  for (int i = 0; i < 24; i++) free(s[i]);
  cr_assert_geq(small_cached_bytes(tc), 48 << 10);
  free(malloc(64)); /* a refill */
  cr_assert_eq(tc->mcache_bytes, 0, "%zu cached", tc->mcache_bytes);
  free(big[N - 1]);
  return NULL;
}

/* Run body on a thread of its own while 16 times as many threads as CPUs hold live caches. */
static void run_in_crowd(void *(*body)(void *)) {
  unsigned crowd = hmi_options.cpus * 2 * 8;
  pthread_t *t = calloc(crowd, sizeof *t), one;
  cr_assert_not_null(t);
  pthread_barrier_init(&crowd_ready, NULL, crowd + 1);
  pthread_barrier_init(&crowd_done, NULL, crowd + 1);
  for (unsigned i = 0; i < crowd; i++) cr_assert_eq(pthread_create(&t[i], NULL, crowd_member, NULL), 0);
  pthread_barrier_wait(&crowd_ready);
  cr_assert_eq(pthread_create(&one, NULL, body, NULL), 0);
  pthread_join(one, NULL);
  pthread_barrier_wait(&crowd_done);
  for (unsigned i = 0; i < crowd; i++) pthread_join(t[i], NULL);
  free(t);
  cr_assert_eq(hm_heap_check(), 0);
}

Test(span, medium_cache_shares_the_cap_with_many_more_threads_than_cpus) {
  run_in_crowd(crowded_budget_body);
}

/* A crowded process's caches keep their start cap: a halved list refilled does not grow it. */
static void *crowded_cap_body(void *arg) {
  (void)arg;
  hm_tcache_t *tc = cache_with_cap(64 << 10);
  over_the_cap(tc);
  refill_halved(tc, tc->trimmed);
  cr_assert_eq(tc->bytes_cap, 64 << 10, "%zu", tc->bytes_cap);
  return NULL;
}

Test(span, cap_does_not_grow_with_many_more_threads_than_cpus) { run_in_crowd(crowded_cap_body); }

/* Kept medium blocks must not stop the heap from shrinking: a free that leaves a big free
 * chunk below the top empties the thread's medium cache, and the heap top is then given
 * back. */
Test(span, big_free_chunk_empties_the_medium_cache_so_the_heap_shrinks) {
  free(malloc(16)); /* set the thread cache up */
  hm_tcache_t *tc = &hmi_tcache;
  enum { N = 64 };
  void *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = malloc(20000);
    cr_assert_not_null(p[i]);
    memset(p[i], 1, 20000);
  }
  void *top = malloc(20000); /* the highest block of the heap */
  cr_assert_gt((uintptr_t)top, (uintptr_t)p[N - 1]);
  void *brk_before = sbrk(0);
  free(top);
  cr_assert_gt(tc->mcache_bytes, 0, "the top block is kept");
  for (int i = 0; i < N; i++) free(p[i]); /* 1.3 MB coalesce below the kept top block */
  cr_assert_eq(tc->mcache_bytes, 0, "the medium cache was emptied");
  cr_assert_lt((uintptr_t)sbrk(0), (uintptr_t)brk_before, "the heap shrank");
  cr_assert_eq(hm_heap_check(), 0);
}

/* malloc's fast path reads the size-class table from the thread's cache, where the TLS
 * image puts it: a thread that has not called the allocator yet has it whole, and every
 * request size from 0 to HM_SMALL_MAX gets a block at least that big. */
static void *class_table_of_fresh_thread(void *arg) {
  (void)arg;
  if (memcmp(hmi_tcache.class_of, hmi_class_of, sizeof hmi_class_of) != 0) return (void *)1;
  for (size_t n = 0; n <= HM_SMALL_MAX; n++) {
    void *p = malloc(n);
    if (p == NULL || malloc_usable_size(p) < n || malloc_usable_size(p) > n + n / 8 + 16)
      return (void *)2;
    free(p);
  }
  return NULL;
}

Test(span, every_thread_starts_with_the_class_table) {
  pthread_t t;
  void *ret = (void *)3;
  cr_assert_eq(pthread_create(&t, NULL, class_table_of_fresh_thread, NULL), 0);
  cr_assert_eq(pthread_join(t, &ret), 0);
  cr_assert_null(ret, "fresh thread: %s", ret == (void *)1 ? "class table differs" : "bad block size");
  cr_assert_null(class_table_of_fresh_thread(NULL), "main thread");
}

/* A lone thread keeps its start cap: growing it gained alloc_test-t1 2% and cost shuffle 2-4%.
 * Run in a forked child, where the calling thread's is the only live cache. */
static int lone_thread_cap(void) {
  hm_tcache_t *tc = cache_with_cap(64 << 10);
  over_the_cap(tc);
  refill_halved(tc, tc->trimmed);
  if (tc->bytes_cap != 64 << 10) return 1;
  /* with a second thread's cache live, the same evidence grows it */
  pthread_t t;
  pthread_barrier_init(&crowd_ready, NULL, 2);
  pthread_barrier_init(&crowd_done, NULL, 2);
  if (pthread_create(&t, NULL, crowd_member, NULL) != 0) return 2;
  pthread_barrier_wait(&crowd_ready);
  size_t caps[1];
  growth_rounds(tc, caps, 1);
  int grown = tc->bytes_cap > 64 << 10;
  pthread_barrier_wait(&crowd_done);
  pthread_join(t, NULL);
  return grown ? 0 : 3;
}

Test(span, cap_of_a_lone_thread_does_not_grow) {
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) _exit(lone_thread_cap());
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status));
  cr_assert_eq(WEXITSTATUS(status), 0,
               "1: a lone thread's cap grew; 3: a second thread's cache did not let it grow");
}

/* ---- per-class call counts ---- */

#define COUNT_CLASS_SIZE 100
static uint64_t class_calls(bool frees) {
  static hms_snap_t s; /* big: off the stack */
  hmi_stats_snapshot(&s);
  const hms_class_t *c = &s.cls[hmi_size_class(COUNT_CLASS_SIZE)];
  return frees ? c->frees : c->mallocs;
}

/* Allocate n objects of the class, freeing each at once but every `every`-th, which goes to
 * keep[] (the list sees refills, overflows and halvings); returns how many were kept. */
static unsigned churn_class(void **keep, unsigned n, unsigned every) {
  unsigned kept = 0;
  for (unsigned i = 0; i < n; i++) {
    void *p = malloc(COUNT_CLASS_SIZE);
    cr_assert_not_null(p);
    if (i % every == 0) keep[kept++] = p;
    else free(p);
  }
  return kept;
}

static pthread_barrier_t count_barrier;
static void *count_body(void *arg) {
  static void *keep[4000];
  unsigned *kept = arg;
  *kept = churn_class(keep, 12000, 3);
  for (unsigned i = 0; i < *kept; i += 2) free(keep[i]); /* some objects end in the list */
  pthread_barrier_wait(&count_barrier); /* counted while alive, objects in its list */
  pthread_barrier_wait(&count_barrier);
  for (unsigned i = 1; i < *kept; i += 2) free(keep[i]);
  return NULL;
}

/* Every malloc and free of the class is counted once, whoever reads: this thread (objects in
 * its list), another live thread (quiet at a barrier, objects in its list) and one that has
 * exited (its counts folded into the totals as its lists are flushed). */
Test(span, class_counts_are_exact_through_refills_flushes_and_thread_exit) {
  static void *keep[4000];
  uint64_t m0 = class_calls(false), f0 = class_calls(true);
  unsigned kept = churn_class(keep, 12000, 3);
  cr_assert_eq(class_calls(false) - m0, 12000);
  cr_assert_eq(class_calls(true) - f0, 12000 - kept);
  for (unsigned i = 0; i < kept; i++) free(keep[i]);
  cr_assert_eq(class_calls(true) - f0, 12000);

  uint64_t m1 = class_calls(false), f1 = class_calls(true);
  unsigned other_kept;
  pthread_t t;
  pthread_barrier_init(&count_barrier, NULL, 2);
  cr_assert_eq(pthread_create(&t, NULL, count_body, &other_kept), 0);
  pthread_barrier_wait(&count_barrier);
  cr_assert_eq(class_calls(false) - m1, 12000);
  cr_assert_eq(class_calls(true) - f1, 12000 - other_kept + (other_kept + 1) / 2);
  pthread_barrier_wait(&count_barrier);
  pthread_join(t, NULL);
  cr_assert_eq(class_calls(false) - m1, 12000);
  cr_assert_eq(class_calls(true) - f1, 12000);
  pthread_barrier_destroy(&count_barrier);
  cr_assert_eq(hm_heap_check(), 0);
}
