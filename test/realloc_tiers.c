/* realloc_tiers.c - realloc up through every tier (small, medium, large) and back down, and
 * in-place / moving resizes, checking at every step that the preserved prefix is intact.
 * Built twice: standard names and hm_ names (see hm_test.h). */
#include "hm_test.h"

TestSuite(realloc_tiers, .timeout = 60);

static const size_t ladder[] = {1,      16,      100,         1000,         4000,
                                10000,  60000,   200000,      2 * 1024 * 1024, 20 * 1024 * 1024};
#define N_LADDER (sizeof ladder / sizeof ladder[0])

/* Grows to 20 MiB and shrinks back to 1 byte.  Every step: the first min(old, new) bytes
 * are what was written before, the whole new size is writable, usable >= new size. */
static void walk(const size_t *steps, size_t n_steps, uint64_t seed) {
  unsigned char *p = A(malloc)(opaque(steps[0]));
  cr_assert_not_null(p);
  size_t cur = steps[0];
  uintptr_t base = (uintptr_t)p;
  fill_pattern(p, cur, seed);
  for (size_t i = 1; i < n_steps; i++) {
    size_t next = steps[i];
    unsigned char *q = A(realloc)(p, opaque(next));
    cr_assert_not_null(q, "realloc(%zu -> %zu) returned NULL", cur, next);
    cr_assert_eq((uintptr_t)q % 16, 0);
    cr_assert_geq(A(malloc_usable_size)(q), next, "realloc(%zu -> %zu): usable %zu", cur, next,
                  A(malloc_usable_size)(q));
    size_t keep = cur < next ? cur : next;
    /* the pattern was written for (base, cur) */
    size_t bad = check_prefix_at(q, base, cur, seed, keep);
    cr_assert_eq(bad, (size_t)-1, "realloc(%zu -> %zu): byte %zu of the preserved prefix changed",
                 cur, next, bad);
    /* rewrite the whole block with the pattern of its new address and size */
    p = q;
    cur = next;
    base = (uintptr_t)p;
    fill_pattern(p, cur, seed);
  }
  cr_assert_pattern(p, cur, seed);
  A(free)(p);
}

Test(realloc_tiers, up_and_down_every_tier) {
  size_t steps[2 * N_LADDER - 1];
  size_t k = 0;
  for (size_t i = 0; i < N_LADDER; i++) steps[k++] = ladder[i];
  for (size_t i = N_LADDER - 1; i-- > 0;) steps[k++] = ladder[i];
  walk(steps, k, 1);
  assert_heap_ok();
}

Test(realloc_tiers, jumps_between_tiers) {
  /* every ordered pair of ladder sizes, in both directions */
  for (size_t i = 0; i < N_LADDER; i++)
    for (size_t j = 0; j < N_LADDER; j++) {
      if (i == j) continue;
      size_t steps[3] = {ladder[i], ladder[j], ladder[i]};
      walk(steps, 3, i * 100 + j);
    }
  assert_heap_ok();
}

Test(realloc_tiers, with_neighbours) {
  /* the same ladder with live neighbours around, so that in-place growth must not eat them */
  enum { NB = 16 };
  void *nb[NB];
  size_t nbs[NB];
  for (int i = 0; i < NB; i++) {
    nbs[i] = ladder[i % N_LADDER] / 2 + 3;
    nb[i] = A(malloc)(opaque(nbs[i]));
    cr_assert_not_null(nb[i]);
    fill_pattern(nb[i], nbs[i], 500 + (uint64_t)i);
  }
  for (int rep = 0; rep < 3; rep++) {
    size_t steps[2 * N_LADDER - 1];
    size_t k = 0;
    for (size_t i = 0; i < N_LADDER; i++) steps[k++] = ladder[i];
    for (size_t i = N_LADDER - 1; i-- > 0;) steps[k++] = ladder[i];
    walk(steps, k, 40 + (uint64_t)rep);
    for (int i = 0; i < NB; i++) cr_assert_pattern(nb[i], nbs[i], 500 + (uint64_t)i);
  }
  for (int i = 0; i < NB; i++) A(free)(nb[i]);
  assert_heap_ok();
}

Test(realloc_tiers, small_steps_grow_and_shrink) {
  /* many small steps, as a growing buffer does: in-place growth paths of each tier */
  size_t n = 8;
  unsigned char *p = A(malloc)(n);
  cr_assert_not_null(p);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31 + 7);
  while (n < 3 * MiB) {
    size_t next = n + n / 3 + 5;
    unsigned char *q = A(realloc)(p, opaque(next));
    cr_assert_not_null(q);
    for (size_t i = 0; i < n; i += (n > 65536 ? 61 : 1))
      cr_assert_eq(q[i], (unsigned char)(i * 31 + 7), "growth %zu -> %zu lost byte %zu", n, next,
                   i);
    cr_assert_eq(q[n - 1], (unsigned char)((n - 1) * 31 + 7));
    for (size_t i = n; i < next; i++) q[i] = (unsigned char)(i * 31 + 7);
    p = q;
    n = next;
  }
  while (n > 8) {
    size_t next = n - n / 4 - 1;
    unsigned char *q = A(realloc)(p, opaque(next));
    cr_assert_not_null(q);
    for (size_t i = 0; i < next; i += (next > 65536 ? 61 : 1))
      cr_assert_eq(q[i], (unsigned char)(i * 31 + 7), "shrink %zu -> %zu lost byte %zu", n, next,
                   i);
    cr_assert_eq(q[next - 1], (unsigned char)((next - 1) * 31 + 7));
    p = q;
    n = next;
  }
  A(free)(p);
  assert_heap_ok();
}

Test(realloc_tiers, same_size_and_usable_size) {
  /* realloc to the same size or within the usable size keeps the contents (and normally the
   * address, which is not required) */
  for (size_t t = 0; t < N_TIER_SIZES; t++) {
    size_t n = tier_sizes[t];
    unsigned char *p = A(malloc)(opaque(n));
    cr_assert_not_null(p);
    size_t u = A(malloc_usable_size)(p);
    fill_pattern(p, n, 3);
    uintptr_t base = (uintptr_t)p;
    unsigned char *q = A(realloc)(p, opaque(n));
    cr_assert_not_null(q);
    cr_assert_eq(check_pattern_at(q, base, n, 3), (size_t)-1, "realloc to same size %zu", n);
    unsigned char *r = A(realloc)(q, opaque(u));
    cr_assert_not_null(r);
    cr_assert_eq(check_pattern_at(r, base, n, 3), (size_t)-1, "realloc to usable size %zu", u);
    memset(r + n, 0x99, u - n);
    A(free)(r);
  }
  assert_heap_ok();
}

Test(realloc_tiers, stats_count_reallocs) {
  hm_stats_t before = stats_now();
  void *p = A(malloc)(opaque(100));
  for (size_t i = 0; i < N_LADDER; i++) p = A(realloc)(p, opaque(ladder[i]));
  hm_stats_t after = stats_now();
  cr_assert_not_null(p);
  cr_assert_geq(after.realloc_count, before.realloc_count + N_LADDER,
                "realloc_count moved by %llu for %zu reallocs",
                (unsigned long long)(after.realloc_count - before.realloc_count), N_LADDER);
  A(free)(p);
}

/* A medium or large block resized to a size it holds with at most a quarter to spare stays
 * where it is, as it is (realloc answers that without asking the tier); one shrunk to a
 * third of its usable size gives the rest back (its usable size drops). */
Test(realloc_tiers, resizes_within_the_usable_size_stay_and_big_shrinks_give_back) {
  static const size_t sizes[] = {60000, 1 << 20};
  for (size_t t = 0; t < 2; t++) {
    unsigned char *p = A(malloc)(opaque(sizes[t]));
    cr_assert_not_null(p);
    size_t u = A(malloc_usable_size)(p);
    fill_pattern(p, sizes[t], 5);
    cr_assert_eq(A(realloc)(p, opaque(u)), p, "realloc of %zu to its usable size %zu", sizes[t], u);
    size_t most = u - u / 6; /* a sixth of u to spare: under a quarter of the new size */
    cr_assert_eq(A(realloc)(p, opaque(most)), p);
    cr_expect_eq(A(malloc_usable_size)(p), u, "a shrink to %zu of %zu changed the block", most, u);
    size_t third = u / 3;
    unsigned char *q = A(realloc)(p, opaque(third));
    cr_assert_not_null(q); /* in place, unless a large block made of several kept mappings */
    cr_expect_lt(A(malloc_usable_size)(q), u / 2, "a shrink to %zu of %zu kept %zu usable", third,
                 u, A(malloc_usable_size)(q));
    cr_assert_eq(check_prefix_at(q, (uintptr_t)p, sizes[t], 5, third), (size_t)-1);
    A(free)(q);
  }
  assert_heap_ok();
}
