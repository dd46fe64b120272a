/* The fit allocator (medium tier): long random sequences of alloc, free and in-place resize
 * on a private arena, for both fit policies, with the heap walker (hmi_arena_check: split and
 * coalesce invariants, bins, bitmaps, counters) after every few operations; block contents
 * are checked so no two blocks overlap. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <malloc.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hmalloc.h"
#include "internal.h"

#define SLOTS 512

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

typedef struct {
  unsigned char *p;
  size_t size;
  unsigned char tag;
} slot_t;

static void fill(slot_t *s) { memset(s->p, s->tag, s->size); }
static void verify(const slot_t *s) {
  for (size_t i = 0; i < s->size; i++)
    if (s->p[i] != s->tag) cr_assert_fail("block %p byte %zu overwritten", (void *)s->p, i);
}

static hm_segment_t *seg_of(void *p) {
  hm_pmentry_t e = hmi_pagemap_get((uintptr_t)p);
  cr_assert_eq(e & 7, HM_PM_MEDIUM);
  return HM_PM_PTR(e);
}

static void random_run(hm_fit_t fit, unsigned ops) {
  hmi_ensure_init();
  hmi_options.fit = fit;
  static hm_arena_t arena;
  hmi_arena_init(&arena, 7, false);
  slot_t slots[SLOTS] = {{0}};
  for (unsigned i = 0; i < ops; i++) {
    slot_t *s = &slots[rnd() % SLOTS];
    unsigned action = (unsigned)(rnd() % 10);
    if (s->p == NULL) {
      size_t size = 16 + rnd() % (rnd() % 4 == 0 ? 120000 : 6000);
      size_t align = rnd() % 8 == 0 ? (size_t)32 << (rnd() % 9) : 16;
      s->p = hmi_arena_alloc(&arena, size, align);
      cr_assert_not_null(s->p);
      cr_assert_eq((uintptr_t)s->p % align, 0);
      cr_assert_geq(hmi_arena_usable(s->p), size);
      s->size = size;
      s->tag = (unsigned char)(i | 1);
      fill(s);
    } else if (action < 2) {
      size_t size = 16 + rnd() % 20000;
      if (hmi_arena_resize(s->p, seg_of(s->p), size)) {
        cr_assert_geq(hmi_arena_usable(s->p), size);
        size_t keep = size < s->size ? size : s->size;
        s->size = keep;
        verify(s);
        s->size = size;
        fill(s);
      }
    } else {
      verify(s);
      hmi_arena_free(s->p, seg_of(s->p));
      s->p = NULL;
    }
    if (i % 64 == 0) cr_assert_eq(hmi_arena_check(&arena), 0, "heap walker failed at op %u", i);
  }
  for (unsigned i = 0; i < SLOTS; i++)
    if (slots[i].p) {
      verify(&slots[i]);
      hmi_arena_free(slots[i].p, seg_of(slots[i].p));
    }
  cr_assert_eq(hmi_arena_check(&arena), 0);
  cr_assert_eq(arena.in_use, 0);
  cr_assert_eq(arena.in_use_chunks, 0);
  /* everything coalesced: one free chunk per remaining segment */
  unsigned segs = 0;
  for (hm_segment_t *s = arena.segments; s; s = s->next) segs++;
  cr_assert_eq(arena.free_chunks, segs);
  cr_assert_leq(segs, 1, "fully free mmap segments beyond one were not unmapped");
}

Test(arena, random_sequence_best_fit) { random_run(HM_FIT_BEST, 60000); }
Test(arena, random_sequence_first_fit) { random_run(HM_FIT_FIRST, 60000); }

Test(arena, split_and_coalesce_with_both_neighbours) {
  hmi_ensure_init();
  static hm_arena_t arena;
  hmi_arena_init(&arena, 8, false);
  void *a = hmi_arena_alloc(&arena, 10000, 16);
  void *b = hmi_arena_alloc(&arena, 10000, 16);
  void *c = hmi_arena_alloc(&arena, 10000, 16);
  void *guard = hmi_arena_alloc(&arena, 10000, 16);
  cr_assert(arena.splits >= 4, "each allocation from the fresh segment splits it");
  hm_segment_t *seg = seg_of(a);
  size_t chunks_before = arena.free_chunks;
  hmi_arena_free(a, seg);
  hmi_arena_free(c, seg);
  cr_assert_eq(arena.free_chunks, chunks_before + 2);
  uint64_t coalesces = arena.coalesces;
  hmi_arena_free(b, seg); /* merges with a before and c after */
  cr_assert_eq(arena.coalesces, coalesces + 2);
  cr_assert_eq(arena.free_chunks, chunks_before + 1);
  cr_assert_eq(hmi_arena_check(&arena), 0);
  /* the merged space serves a request bigger than any one of the three */
  void *big = hmi_arena_alloc(&arena, 29000, 16);
  cr_assert_eq(big, a, "best fit reuses the coalesced hole");
  hmi_arena_free(big, seg);
  hmi_arena_free(guard, seg);
  cr_assert_eq(hmi_arena_check(&arena), 0);
}

/* A span-sized hole between two live chunks (what a released span leaves) serves the next
 * span: an aligned request must not demand room for the worst-case alignment slack from a
 * chunk that is already aligned. */
static void aligned_hole_reused(hm_fit_t fit, unsigned index) {
  hmi_ensure_init();
  hmi_options.fit = fit;
  static hm_arena_t arenas[2];
  hm_arena_t *arena = &arenas[index];
  hmi_arena_init(arena, 10 + index, false);
  size_t span = HM_SPAN_SIZE - HM_CHUNK_HEADER;
  void *a = hmi_arena_alloc(arena, span, HM_PAGE);
  void *b = hmi_arena_alloc(arena, span, HM_PAGE);
  void *c = hmi_arena_alloc(arena, span, HM_PAGE);
  cr_assert(a && b && c);
  cr_assert_eq((uintptr_t)b % HM_PAGE, 0);
  hm_segment_t *seg = seg_of(b);
  hmi_arena_free(b, seg); /* a hole of exactly one span between a and c */
  void *again = hmi_arena_alloc(arena, span, HM_PAGE);
  cr_assert_eq(again, b, "the aligned hole is reused (got %p, hole at %p)", again, b);
  /* a request that does not fit the hole as it lies still goes elsewhere, aligned */
  hmi_arena_free(again, seg);
  void *wider = hmi_arena_alloc(arena, span, 2 * HM_PAGE);
  cr_assert_eq((uintptr_t)wider % (2 * HM_PAGE), 0);
  cr_assert_eq(hmi_arena_check(arena), 0);
  hmi_arena_free(wider, seg_of(wider));
  hmi_arena_free(a, seg);
  hmi_arena_free(c, seg);
  cr_assert_eq(hmi_arena_check(arena), 0);
  hmi_options.fit = HM_FIT_BEST;
}
Test(arena, aligned_hole_reused_best_fit) { aligned_hole_reused(HM_FIT_BEST, 0); }
Test(arena, aligned_hole_reused_first_fit) { aligned_hole_reused(HM_FIT_FIRST, 1); }

/* In a fresh arena of that index: a block a of 8000 bytes filled with 7s, then b of 8000
 * bytes right after it, then a small guard block (so that nothing after b is free). */
static char *block_with_neighbour(hm_arena_t *arena, unsigned index, void **b, void **guard) {
  hmi_ensure_init();
  hmi_arena_init(arena, index, false);
  char *a = hmi_arena_alloc(arena, 8000, 16);
  *b = hmi_arena_alloc(arena, 8000, 16);
  *guard = hmi_arena_alloc(arena, 100, 16);
  memset(a, 7, 8000);
  return a;
}

Test(arena, resize_grows_into_free_neighbour_and_shrinks_in_place) {
  static hm_arena_t arena;
  void *b, *guard;
  char *a = block_with_neighbour(&arena, 9, &b, &guard);
  hm_segment_t *seg = seg_of(a);
  cr_assert_not(hmi_arena_resize(a, seg, 12000), "neighbour in use: cannot grow");
  hmi_arena_free(b, seg);
  cr_assert(hmi_arena_resize(a, seg, 15000));
  cr_assert_geq(hmi_arena_usable(a), 15000);
  for (int i = 0; i < 8000; i++) cr_assert_eq(a[i], 7);
  cr_assert(hmi_arena_resize(a, seg, 5000));
  cr_assert_leq(hmi_arena_usable(a), 5000 + 5000 / 4 + 32,
                "shrink gives the tail back but a quarter of headroom (%zu)", hmi_arena_usable(a));
  cr_assert_eq(hmi_arena_check(&arena), 0);
  hmi_arena_free(a, seg);
  hmi_arena_free(guard, seg);
  cr_assert_eq(hmi_arena_check(&arena), 0);
}

/* A resized block keeps a quarter of its size as headroom: a buffer grown by appends grows
 * in place even when the memory after it was taken meanwhile.  Trimmed to the exact size,
 * its tail went to the next allocation that fit and the next append had to move it. */
Test(arena, resize_keeps_headroom_for_the_next_growth) {
  static hm_arena_t arena;
  void *b, *guard;
  char *a = block_with_neighbour(&arena, 10, &b, &guard);
  hm_segment_t *seg = seg_of(a);
  hmi_arena_free(b, seg);
  cr_assert(hmi_arena_resize(a, seg, 9000), "grows into the free neighbour");
  cr_assert_geq(hmi_arena_usable(a), 9000 + 9000 / 4 - 16);
  cr_assert_leq(hmi_arena_usable(a), 9000 + 9000 / 4 + 32, "the rest goes back");
  /* the rest of b's chunk is taken now, just after a */
  char *c = hmi_arena_alloc(&arena, 16000 - 9000 - 9000 / 4 - 200, 16);
  cr_assert_eq((uintptr_t)c, (uintptr_t)a + hmi_arena_usable(a) + HM_CHUNK_HEADER,
               "the next allocation takes the memory right after a");
  cr_assert(hmi_arena_resize(a, seg, 10000), "grows in place, into its headroom");
  cr_assert(hmi_arena_resize(a, seg, 11000));
  for (int i = 0; i < 8000; i++) cr_assert_eq(a[i], 7);
  cr_assert_eq(hmi_arena_check(&arena), 0);
  hmi_arena_free(a, seg);
  hmi_arena_free(c, seg);
  hmi_arena_free(guard, seg);
  cr_assert_eq(hmi_arena_check(&arena), 0);
}

Test(arena, header_of_user_data_is_not_a_chunk) {
  char *p = malloc(20000);
  hm_segment_t *seg = seg_of(p);
  cr_assert_not_null(hmi_arena_chunk_of(p, seg));
  cr_assert_null(hmi_arena_chunk_of(p + 16, seg));
  cr_assert_null(hmi_arena_chunk_of(p + 8, seg));
  memset(p, 0xab, 20000);
  cr_assert_null(hmi_arena_chunk_of(p + 4096, seg));
  free(p);
}

Test(arena, main_heap_consistent_after_mixed_use) {
  void *ptrs[2000];
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 2000; i++) ptrs[i] = malloc((size_t)(i * 37 % 9000) + 1);
    for (int i = 0; i < 2000; i += 2) free(ptrs[i]);
    cr_assert_eq(hm_heap_check(), 0);
    for (int i = 1; i < 2000; i += 2) free(ptrs[i]);
    cr_assert_eq(hm_heap_check(), 0);
  }
}

Test(arena, brk_top_is_trimmed) {
  hmi_ensure_init();
  free(malloc(16));             /* set the thread cache up, then pin this thread to */
  hmi_tcache.arena_index = 0;   /* the main arena, the one on the brk heap */
  void *cur = sbrk(0);
  void *blocks[64];
  for (int i = 0; i < 64; i++) blocks[i] = malloc(100000); /* 6.4 MB of medium blocks */
  cr_assert_gt((char *)sbrk(0) - (char *)cur, 6000000, "the brk heap grew");
  uint64_t trims = hmi_main_arena.brk_trims;
  for (int i = 63; i >= 0; i--) free(blocks[i]);
  cr_assert_gt(hmi_main_arena.brk_trims, trims);
  cr_assert_lt((char *)sbrk(0) - (char *)cur, 1 << 20, "the free top went back to the OS");
  cr_assert_eq(hm_heap_check(), 0);
}

/* A batch of small objects allocated and freed in turn: its spans go back to the heap, whose
 * top is trimmed, and come out again.  After a few turns the heap keeps enough free at its
 * top (the pad doubles at each regrowth after a trim) that it stops trimming and regrowing,
 * each regrowth faulting every page in again; what it keeps stays bounded. */
Test(arena, batches_that_trim_and_regrow_the_heap_soon_stop_doing_it) {
  hmi_ensure_init();
  free(malloc(16));
  hmi_tcache.arena_index = 0;
  static void *p[2000];
  uint64_t grows = 0, trims = 0;
  for (int turn = 0; turn < 50; turn++) {
    if (turn == 10) { /* after ten turns, as long as they take */
      grows = hmi_main_arena.brk_grows;
      trims = hmi_main_arena.brk_trims;
    }
    for (int i = 0; i < 2000; i++) cr_assert_not_null(p[i] = malloc(1024)); /* 2 MB */
    for (int i = 2000; i-- > 0;) free(p[i]);
  }
  uint64_t g = hmi_main_arena.brk_grows - grows, t = hmi_main_arena.brk_trims - trims;
  cr_expect_eq(t + g, 0, "%llu trims and %llu regrowths in the last 40 turns",
               (unsigned long long)t, (unsigned long long)g);
  cr_expect_leq(hmi_arena_top_free(&hmi_main_arena), (size_t)5 << 20, "free top %zu",
                hmi_arena_top_free(&hmi_main_arena));
  malloc_trim(0); /* forgets the pad: the free top goes back */
  cr_expect_lt(hmi_arena_top_free(&hmi_main_arena), (size_t)64 << 10, "free top %zu",
               hmi_arena_top_free(&hmi_main_arena));
  cr_expect_eq(hmi_main_arena.top_pad, 0);
  cr_assert_eq(hm_heap_check(), 0);
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  cr_assert_eq(fscanf(f, "%ld %ld", &pages, &resident), 2);
  fclose(f);
  return resident * 4;
}

Test(arena, malloc_trim_releases_free_pages_inside_the_heap) {
  hmi_ensure_init();
  free(malloc(16));
  hmi_tcache.arena_index = 0;
  enum { N = 400 };
  static char *blocks[N];
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(100000); /* 40 MB of medium blocks, all touched */
    memset(blocks[i], 1, 100000);
  }
  /* Free every block but every tenth: the holes coalesce but stay below live blocks, so
   * automatic top trimming cannot give them back. */
  for (int i = 0; i < N; i++)
    if (i % 10 != 9) free(blocks[i]);
  long before = rss_kib();
  cr_assert_eq(malloc_trim(0), 1);
  long after = rss_kib();
  cr_assert_lt(after, before - 20000, "RSS went from %ld KiB to %ld KiB", before, after);
  cr_assert_eq(hm_heap_check(), 0);
  for (int i = 9; i < N; i += 10) {
    for (int j = 0; j < 100000; j += 4096) cr_assert_eq(blocks[i][j], 1);
    free(blocks[i]);
  }
  /* released pages are reusable */
  char *again = malloc(100000);
  memset(again, 2, 100000);
  free(again);
  cr_assert_eq(hm_heap_check(), 0);
}

static void *arena_of_new_thread(void *arg) {
  (void)arg;
  free(malloc(16)); /* sets the cache up, which picks the arena */
  return (void *)(uintptr_t)hmi_tcache.arena_index;
}

Test(arena, mallopt_arena_max_limits_the_arenas_of_new_threads) {
  hmi_ensure_init();
  cr_assert_eq(mallopt(M_ARENA_MAX, 1), 1);
  for (int i = 0; i < 4; i++) {
    pthread_t t;
    void *index;
    pthread_create(&t, NULL, arena_of_new_thread, NULL);
    pthread_join(t, &index);
    cr_assert_eq((uintptr_t)index, 0, "thread %d went to arena %lu", i, (unsigned long)(uintptr_t)index);
  }
  cr_assert_eq(mallopt(M_ARENA_MAX, 0), 0, "0 arenas is refused");
}

/* A new thread takes the arena the fewest live threads use: threads started one after
 * another reuse the arena of the one that exited (round-robin would hand each a new arena),
 * and threads alive together get different arenas. */
static pthread_barrier_t together;
static void *arena_of_thread_alive_with_others(void *arg) {
  (void)arg;
  free(malloc(16));
  uintptr_t index = hmi_tcache.arena_index;
  pthread_barrier_wait(&together); /* every thread has its arena before any exits */
  return (void *)index;
}

Test(arena, new_threads_take_the_least_used_arena) {
  hmi_ensure_init();
  free(malloc(16)); /* this thread holds an arena too */
  if (hmi_arena_count < 4) cr_skip_test("needs 4 arenas (%u here)", hmi_arena_count);
  void *first, *index;
  pthread_t t;
  pthread_create(&t, NULL, arena_of_new_thread, NULL);
  pthread_join(t, &first);
  for (int i = 0; i < 4; i++) {
    pthread_create(&t, NULL, arena_of_new_thread, NULL);
    pthread_join(t, &index);
    cr_assert_eq(index, first, "thread %d after an exited one: arena %lu, not %lu", i,
                 (unsigned long)(uintptr_t)index, (unsigned long)(uintptr_t)first);
  }
  cr_assert_neq((uintptr_t)first, (uintptr_t)hmi_tcache.arena_index, "not the main thread's");
  pthread_t ts[3];
  void *got[3];
  pthread_barrier_init(&together, NULL, 3);
  for (int i = 0; i < 3; i++) pthread_create(&ts[i], NULL, arena_of_thread_alive_with_others, NULL);
  for (int i = 0; i < 3; i++) pthread_join(ts[i], &got[i]);
  pthread_barrier_destroy(&together);
  for (int i = 0; i < 3; i++) {
    cr_assert_neq((uintptr_t)got[i], (uintptr_t)hmi_tcache.arena_index);
    for (int j = 0; j < i; j++) cr_assert_neq(got[i], got[j], "threads %d and %d share an arena", i, j);
  }
}

/* The arena of a thread that exits, used by no other thread, keeps no segment: the spare
 * kept against map/unmap churn is unmapped with the last thread. */
static void *medium_block_in_new_thread(void *arg) {
  uintptr_t *out = arg;
  free(malloc(16)); /* sets the cache up (an arena of its own); class 16 has a span already */
  void *medium = malloc(100000);
  out[0] = hmi_tcache.arena_index;
  out[1] = hmi_arenas[out[0]]->segment_count;
  free(medium);
  return NULL;
}

Test(arena, arena_of_exited_thread_keeps_no_segment) {
  hmi_ensure_init();
  free(malloc(16)); /* this thread holds arena 0, and class 16 has a span */
  if (hmi_arena_count < 2) cr_skip_test("needs 2 arenas (%u here)", hmi_arena_count);
  uintptr_t out[2] = {0};
  pthread_t t;
  pthread_create(&t, NULL, medium_block_in_new_thread, out);
  pthread_join(t, NULL);
  cr_assert_neq(out[0], 0, "the thread got an arena of its own");
  cr_assert_geq(out[1], 1, "its medium block was in a segment of its arena");
  hm_arena_t *a = hmi_arenas[out[0]];
  cr_assert_eq(a->segment_count, 0, "arena %lu keeps %zu segments after its thread exited",
               (unsigned long)out[0], a->segment_count);
  cr_assert_eq(a->mapped, 0);
  cr_assert_eq(hmi_arena_check(a), 0);
}

/* Pages of an arena descriptor in memory (mincore), of those it spans. */
static unsigned resident_pages(const hm_arena_t *a, unsigned *spanned) {
  uintptr_t first = (uintptr_t)a & ~(uintptr_t)(HM_PAGE - 1);
  uintptr_t end = hm_align_up((uintptr_t)a + sizeof *a, HM_PAGE);
  unsigned char vec[8];
  *spanned = (unsigned)((end - first) / HM_PAGE);
  cr_assert_leq(*spanned, sizeof vec);
  cr_assert_eq(mincore((void *)first, end - first, vec), 0);
  unsigned n = 0;
  for (unsigned i = 0; i < *spanned; i++) n += vec[i] & 1;
  return n;
}

/* The arenas beyond the main one are untouched pages until a thread is given one: each
 * descriptor is about 6.5 KiB, and writing them at start-up put 14 pages into every process's
 * RSS (and locking them all around fork, 7 more in every forking process, this test's
 * included).  The stats, the heap check and malloc_trim leave them unread too, or the kernel
 * would map the zero page there (which mincore counts).  The last arena is checked (this
 * process has fewer live threads than arenas, so none was given it), then used. */
Test(arena, an_arena_no_thread_was_given_stays_out_of_memory) {
  hmi_ensure_init();
  cr_assert_geq(hmi_arena_count, 4, "4 arenas per CPU");
  hm_stats_t st;
  hm_stats_get(&st);
  cr_assert_eq(malloc_trim(0) | 1, 1);
  cr_assert_eq(hm_heap_check(), 0);
  hm_arena_t *last = hmi_arenas[hmi_arena_count - 1];
  cr_assert_null(hmi_arena_if_given(hmi_arena_count - 1));
  unsigned spanned, resident = resident_pages(last, &spanned);
  cr_assert_eq(resident, 0, "%u of %u pages resident", resident, spanned);
  void *p = hmi_arena_alloc(last, 3000, HM_ALIGN);
  cr_assert_not_null(p);
  cr_assert_gt(resident_pages(last, &spanned), 0);
  hmi_arena_free(p, seg_of(p));
  cr_assert_eq(hmi_arena_check(last), 0);
}
