/* alignment.c - aligned allocation: every power of two from 8 B to 1 MiB, with sizes in each
 * tier, through posix_memalign, aligned_alloc and memalign; contents, usable size, frees in
 * mixed order, realloc of aligned blocks.  Built twice: standard names and hm_ names. */
#include "hm_test.h"

TestSuite(alignment, .timeout = 90);

static const size_t sizes[] = {1, 24, 100, 1000, 4096, 5000, 20000, 100000, 131072, 200000,
                               MiB + 3};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

enum { VIA_POSIX, VIA_ALIGNED_ALLOC, VIA_MEMALIGN, N_VIA };
static const char *const via_name[] = {"posix_memalign", "aligned_alloc", "memalign"};

static void *alloc_via(int via, size_t align, size_t size) {
  switch (via) {
  case VIA_POSIX: {
    void *p = (void *)0x1;
    int rc = A(posix_memalign)(&p, align, size);
    cr_assert_eq(rc, 0, "posix_memalign(%zu, %zu) returned %d", align, size, rc);
    return p;
  }
  case VIA_ALIGNED_ALLOC: return A(aligned_alloc)(align, size);
  default: return A(memalign)(align, size);
  }
}

static void check_one(int via, size_t align, size_t size, void **out, size_t *usable) {
  void *p = alloc_via(via, align, opaque(size));
  cr_assert_not_null(p, "%s(%zu, %zu) returned NULL", via_name[via], align, size);
  cr_assert_eq((uintptr_t)p % align, 0, "%s(%zu, %zu) = %p is misaligned", via_name[via], align,
               size, p);
  cr_assert_eq((uintptr_t)p % 16, 0);
  size_t u = A(malloc_usable_size)(p);
  cr_assert_geq(u, size, "%s(%zu, %zu): usable size %zu", via_name[via], align, size, u);
  fill_pattern(p, u, align ^ size);
  *out = p;
  *usable = u;
}

Test(alignment, every_power_of_two_every_tier) {
  for (int via = 0; via < N_VIA; via++) {
    for (size_t align = 8; align <= MiB; align <<= 1) {
      void *p[N_SIZES];
      size_t u[N_SIZES];
      for (size_t s = 0; s < N_SIZES; s++) check_one(via, align, sizes[s], &p[s], &u[s]);
      for (size_t s = 0; s < N_SIZES; s++) {
        size_t bad = check_pattern(p[s], u[s], align ^ sizes[s]);
        cr_assert_eq(bad, (size_t)-1, "%s(%zu, %zu) block overwritten at %zu", via_name[via], align,
                     sizes[s], bad);
      }
      /* free in an order that mixes tiers: odd indices first, then even */
      for (size_t s = 1; s < N_SIZES; s += 2) A(free)(p[s]);
      for (size_t s = 0; s < N_SIZES; s += 2) A(free)(p[s]);
    }
    assert_heap_ok();
  }
}

Test(alignment, many_live_aligned_blocks) {
  /* a few hundred live aligned blocks of mixed alignments interleaved with plain mallocs: the
   * padding in front of aligned medium chunks must give valid free chunks */
  enum { N = 600 };
  static void *p[N];
  static size_t sz[N], al[N];
  uint64_t seed = 4242;
  for (int i = 0; i < N; i++) {
    uint64_t r = rng_next(&seed);
    al[i] = (size_t)8 << (r % 15); /* 8 .. 128 KiB */
    if (i % 3 == 2) al[i] = 0;     /* plain malloc */
    size_t range = (i % 7 == 0) ? 300000 : (i % 2 ? 4096 : 40000);
    sz[i] = 1 + (rng_next(&seed) % range);
    p[i] = al[i] ? alloc_via((int)(r >> 20) % N_VIA, al[i], opaque(sz[i])) : A(malloc)(opaque(sz[i]));
    cr_assert_not_null(p[i]);
    if (al[i]) cr_assert_eq((uintptr_t)p[i] % al[i], 0);
    fill_pattern(p[i], sz[i], (uint64_t)i);
  }
  for (int i = 0; i < N; i += 3) {
    A(free)(p[i]);
    p[i] = NULL;
  }
  assert_heap_ok();
  for (int i = 0; i < N; i += 3) {
    al[i] = (size_t)16 << (i % 12);
    sz[i] = 1 + (rng_next(&seed) % 50000);
    p[i] = alloc_via(i % N_VIA, al[i], opaque(sz[i]));
    cr_assert_not_null(p[i]);
    cr_assert_eq((uintptr_t)p[i] % al[i], 0);
    fill_pattern(p[i], sz[i], (uint64_t)i);
  }
  for (int i = 0; i < N; i++) cr_assert_pattern(p[i], sz[i], (uint64_t)i);
  assert_heap_ok();
  for (int i = N - 1; i >= 0; i--) A(free)(p[i]);
  assert_heap_ok();
}

Test(alignment, realloc_of_aligned_blocks) {
  /* an aligned block is an ordinary block: realloc keeps its contents (not its alignment) */
  for (size_t align = 8; align <= MiB; align <<= 2) {
    for (size_t s = 0; s < N_SIZES; s++) {
      size_t n = sizes[s];
      unsigned char *p = alloc_via((int)(s % N_VIA), align, opaque(n));
      cr_assert_not_null(p);
      fill_pattern(p, n, 17);
      uintptr_t base = (uintptr_t)p;
      size_t grown = n * 2 + 100;
      unsigned char *q = A(realloc)(p, opaque(grown));
      cr_assert_not_null(q);
      cr_assert_eq(check_pattern_at(q, base, n, 17), (size_t)-1,
                   "realloc of a %zu-aligned %zu-byte block to %zu lost contents", align, n, grown);
      memset(q + n, 0x12, grown - n);
      size_t shrunk = n / 2 + 1;
      unsigned char *r = A(realloc)(q, opaque(shrunk));
      cr_assert_not_null(r);
      size_t bad = check_prefix_at(r, base, n, 17, shrunk);
      cr_assert_eq(bad, (size_t)-1, "shrinking a %zu-aligned block %zu -> %zu lost byte %zu", align,
                   grown, shrunk, bad);
      A(free)(r);
    }
  }
  assert_heap_ok();
}

Test(alignment, large_alignment_does_not_leak) {
  /* a 1 MiB-aligned allocation over-maps and must give the slack back: repeating it many
   * times must not make the mapped total grow without bound */
  void *warm = A(memalign)(MiB, opaque(1000));
  A(free)(warm);
  hm_stats_t before = stats_now();
  for (int i = 0; i < 300; i++) {
    void *p = A(memalign)(MiB, opaque(i % 2 ? 1000 : 300000));
    cr_assert_not_null(p);
    cr_assert_eq((uintptr_t)p % MiB, 0);
    ((volatile char *)p)[0] = 1;
    A(free)(p);
  }
  hm_stats_t after = stats_now();
  cr_assert_lt(after.mapped, before.mapped + 64 * MiB,
               "300 alloc/free pairs of 1 MiB-aligned blocks grew mapped from %zu to %zu",
               before.mapped, after.mapped);
  assert_heap_ok();
}
