/* api_edge.c - edge cases of the C allocation API: zero sizes, alignment of every pointer,
 * overflow and huge requests, bad alignments, valloc/pvalloc, realloc's special cases,
 * free(NULL), errno, malloc_usable_size and calloc zeroing.  Built twice: standard names
 * and hm_ names (see hm_test.h). */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>

#include "hm_test.h"

#define PAGE ((size_t)4096)

TestSuite(api_edge, .timeout = 60);

/* ---- malloc(0) -------------------------------------------------------------------------- */

Test(api_edge, malloc_zero_unique_and_freeable) {
  enum { N = 200 };
  void *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = A(malloc)(opaque(0));
    cr_assert_not_null(p[i], "malloc(0) #%d returned NULL", i);
    cr_assert_eq((uintptr_t)p[i] % 16, 0, "malloc(0) = %p not 16-byte aligned", p[i]);
  }
  for (int i = 0; i < N; i++)
    for (int j = i + 1; j < N; j++)
      cr_assert_neq(p[i], p[j], "malloc(0) returned %p twice while both are live", p[i]);
  /* the usable size may be 0 or more; whatever it says must be writable */
  for (int i = 0; i < N; i++) memset(p[i], 0x5A, A(malloc_usable_size)(p[i]));
  for (int i = 0; i < N; i++) A(free)(p[i]);
  assert_heap_ok();
}

Test(api_edge, zero_sizes_of_other_entry_points) {
  void *c = A(calloc)(opaque(0), opaque(16));
  void *d = A(calloc)(opaque(16), opaque(0));
  void *r = A(realloc)(NULL, opaque(0));
  void *m = A(memalign)(64, opaque(0));
  void *a = A(aligned_alloc)(64, opaque(0));
  void *pm = (void *)0x1;
  cr_assert_eq(A(posix_memalign)(&pm, 64, opaque(0)), 0);
  cr_assert_not_null(c, "calloc(0, 16) returned NULL");
  cr_assert_not_null(d, "calloc(16, 0) returned NULL");
  cr_assert_not_null(r, "realloc(NULL, 0) returned NULL");
  cr_assert_not_null(m, "memalign(64, 0) returned NULL");
  cr_assert_not_null(a, "aligned_alloc(64, 0) returned NULL");
  cr_assert_neq(pm, (void *)0x1, "posix_memalign(64, 0) left *out untouched on success");
  cr_assert_eq((uintptr_t)m % 64, 0);
  cr_assert_eq((uintptr_t)a % 64, 0);
  cr_assert_eq((uintptr_t)pm % 64, 0);
  void *all[] = {c, d, r, m, a, pm};
  for (size_t i = 0; i < 6; i++)
    for (size_t j = i + 1; j < 6; j++) cr_assert_neq(all[i], all[j]);
  for (size_t i = 0; i < 6; i++) A(free)(all[i]);
  assert_heap_ok();
}

/* ---- 16-byte alignment of every pointer ------------------------------------------------ */

Test(api_edge, every_pointer_16_aligned) {
  /* every size 0..8192, then every size around each power of two and many steps up to 2 MiB;
   * a window of live blocks makes the allocator hand out fresh memory, not one slot. */
  enum { WINDOW = 64 };
  void *live[WINDOW] = {0};
  size_t k = 0;
#define TRY(sz)                                                                                \
  do {                                                                                       \
    size_t n_ = (sz);                                                                        \
    void *p_ = A(malloc)(opaque(n_));                                                        \
    cr_assert_not_null(p_, "malloc(%zu) returned NULL", n_);                                  \
    cr_assert_eq((uintptr_t)p_ % 16, 0, "malloc(%zu) = %p is not 16-byte aligned", n_, p_);    \
    if (n_) {                                                                                \
      ((volatile char *)p_)[0] = 1;                                                          \
      ((volatile char *)p_)[n_ - 1] = 2;                                                     \
    }                                                                                        \
    if (live[k % WINDOW]) A(free)(live[k % WINDOW]);                                         \
    live[k % WINDOW] = p_;                                                                   \
    k++;                                                                                     \
  } while (0)
  for (size_t n = 0; n <= 8192; n++) TRY(n);
  for (size_t pw = 16; pw <= 2 * MiB; pw <<= 1)
    for (size_t d = 0; d < 33; d++) {
      TRY(pw - 16 + d);
    }
  for (size_t n = 8192; n <= 2 * MiB; n += n / 7 + 1) TRY(n);
  TRY(2 * MiB);
#undef TRY
  for (size_t i = 0; i < WINDOW; i++) A(free)(live[i]);
  /* the other entry points too */
  for (size_t n = 1; n <= 2 * MiB; n = n * 3 + 1) {
    void *c = A(calloc)(1, opaque(n));
    void *r = A(realloc)(NULL, opaque(n));
    void *ra = A(reallocarray)(NULL, opaque(n), 1);
    cr_assert_not_null(c);
    cr_assert_not_null(r);
    cr_assert_not_null(ra);
    cr_assert_eq((uintptr_t)c % 16, 0, "calloc(1, %zu) = %p", n, c);
    cr_assert_eq((uintptr_t)r % 16, 0, "realloc(NULL, %zu) = %p", n, r);
    cr_assert_eq((uintptr_t)ra % 16, 0, "reallocarray(NULL, %zu, 1) = %p", n, ra);
    void *r2 = A(realloc)(r, opaque(n * 2 + 3));
    cr_assert_not_null(r2);
    cr_assert_eq((uintptr_t)r2 % 16, 0, "realloc(p, %zu) = %p", n * 2 + 3, r2);
    A(free)(c);
    A(free)(r2);
    A(free)(ra);
  }
  assert_heap_ok();
}

/* ---- overflow and huge requests ------------------------------------------------------- */

#define EXPECT_ENOMEM(call, what)                                                            \
  do {                                                                                       \
    errno = 0;                                                                               \
    void *q_ = (call);                                                                       \
    int e_ = errno;                                                                          \
    cr_expect_null(q_, "%s returned %p instead of NULL", what, q_);                         \
    if (q_) A(free)(q_);                                                                     \
    else cr_expect_eq(e_, ENOMEM, "%s: errno %d (%s), expected ENOMEM", what, e_, strerror(e_)); \
  } while (0)

Test(api_edge, calloc_overflow) {
  const size_t h = (size_t)1 << 32;
  EXPECT_ENOMEM(A(calloc)(opaque(h), opaque(h)), "calloc(2^32, 2^32)");
  EXPECT_ENOMEM(A(calloc)(opaque(SIZE_MAX), opaque(2)), "calloc(SIZE_MAX, 2)");
  EXPECT_ENOMEM(A(calloc)(opaque(2), opaque(SIZE_MAX)), "calloc(2, SIZE_MAX)");
  EXPECT_ENOMEM(A(calloc)(opaque(SIZE_MAX), opaque(SIZE_MAX)), "calloc(SIZE_MAX, SIZE_MAX)");
  EXPECT_ENOMEM(A(calloc)(opaque(SIZE_MAX / 16 + 1), opaque(16)), "calloc(SIZE_MAX/16+1, 16)");
  EXPECT_ENOMEM(A(calloc)(opaque(((size_t)1 << 62) + 1), opaque(4)), "calloc(2^62+1, 4)");
  /* products that do not wrap but exceed PTRDIFF_MAX */
  EXPECT_ENOMEM(A(calloc)(opaque((size_t)1 << 62), opaque(2)), "calloc(2^62, 2)");
  EXPECT_ENOMEM(A(calloc)(opaque(1), opaque((size_t)PTRDIFF_MAX + 1)), "calloc(1, PTRDIFF_MAX+1)");
  /* a valid calloc still works afterwards */
  unsigned *v = A(calloc)(opaque(1000), sizeof(unsigned));
  cr_assert_not_null(v);
  cr_assert_eq(first_nonzero(v, 1000 * sizeof(unsigned)), (size_t)-1);
  A(free)(v);
}

Test(api_edge, reallocarray_overflow_keeps_block) {
  const size_t n = 1000;
  unsigned char *p = A(malloc)(opaque(n));
  cr_assert_not_null(p);
  fill_pattern(p, n, 7);
  const size_t h = (size_t)1 << 32;
  errno = 0;
  void *q = A(reallocarray)(p, opaque(h), opaque(h));
  cr_assert_null(q, "reallocarray(p, 2^32, 2^32) returned %p", q);
  cr_assert_eq(errno, ENOMEM, "reallocarray overflow: errno %d", errno);
  cr_assert_pattern(p, n, 7);
  errno = 0;
  q = A(reallocarray)(p, opaque(SIZE_MAX / 2 + 1), opaque(2));
  cr_assert_null(q);
  cr_assert_eq(errno, ENOMEM);
  cr_assert_pattern(p, n, 7);
  EXPECT_ENOMEM(A(reallocarray)(NULL, opaque(h), opaque(h)), "reallocarray(NULL, 2^32, 2^32)");
  EXPECT_ENOMEM(A(reallocarray)(NULL, opaque((size_t)1 << 62), opaque(2)),
                "reallocarray(NULL, 2^62, 2)");
  /* a valid reallocarray grows and keeps the contents */
  unsigned char *r = A(reallocarray)(p, opaque(3000), opaque(4));
  cr_assert_not_null(r);
  cr_assert(A(malloc_usable_size)(r) >= 12000);
  cr_assert_eq(check_pattern_at(r, (uintptr_t)p, n, 7), (size_t)-1,
               "reallocarray lost the contents");
  memset(r, 0x11, 12000);
  A(free)(r);
  assert_heap_ok();
}

Test(api_edge, sizes_above_ptrdiff_max) {
  const size_t big[] = {(size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX + 4096,
                        (size_t)PTRDIFF_MAX + ((size_t)1 << 40), SIZE_MAX - 4096, SIZE_MAX - 16,
                        SIZE_MAX - 15, SIZE_MAX - 1, SIZE_MAX};
  char what[96];
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
    size_t n = big[i];
    snprintf(what, sizeof what, "malloc(%zu)", n);
    EXPECT_ENOMEM(A(malloc)(opaque(n)), what);
    snprintf(what, sizeof what, "calloc(1, %zu)", n);
    EXPECT_ENOMEM(A(calloc)(1, opaque(n)), what);
    snprintf(what, sizeof what, "realloc(NULL, %zu)", n);
    EXPECT_ENOMEM(A(realloc)(NULL, opaque(n)), what);
    snprintf(what, sizeof what, "aligned_alloc(64, %zu)", n);
    EXPECT_ENOMEM(A(aligned_alloc)(64, opaque(n)), what);
    snprintf(what, sizeof what, "aligned_alloc(1 MiB, %zu)", n);
    EXPECT_ENOMEM(A(aligned_alloc)(MiB, opaque(n)), what);
    snprintf(what, sizeof what, "memalign(4096, %zu)", n);
    EXPECT_ENOMEM(A(memalign)(4096, opaque(n)), what);
    snprintf(what, sizeof what, "valloc(%zu)", n);
    EXPECT_ENOMEM(A(valloc)(opaque(n)), what);
    snprintf(what, sizeof what, "pvalloc(%zu)", n);
    EXPECT_ENOMEM(A(pvalloc)(opaque(n)), what);
    void *out = (void *)0x1234;
    int rc = A(posix_memalign)(&out, 64, opaque(n));
    cr_expect_eq(rc, ENOMEM, "posix_memalign(64, %zu) returned %d, expected ENOMEM", n, rc);
    cr_expect_eq(out, (void *)0x1234, "posix_memalign(64, %zu) failed but wrote *out", n);
  }
}

Test(api_edge, huge_below_ptrdiff_max_fails_cleanly) {
  /* not an overflow: the OS simply cannot map that much.  Must be NULL/ENOMEM, no crash. */
  const size_t big[] = {(size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX - 4096, (size_t)1 << 62,
                        (size_t)1 << 48};
  char what[64];
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
    snprintf(what, sizeof what, "malloc(%zu)", big[i]);
    EXPECT_ENOMEM(A(malloc)(opaque(big[i])), what);
    snprintf(what, sizeof what, "calloc(%zu, 1)", big[i]);
    EXPECT_ENOMEM(A(calloc)(opaque(big[i]), 1), what);
    snprintf(what, sizeof what, "memalign(65536, %zu)", big[i]);
    EXPECT_ENOMEM(A(memalign)(65536, opaque(big[i])), what);
  }
  void *p = A(malloc)(opaque(100));
  cr_assert_not_null(p, "malloc(100) fails after the huge requests");
  A(free)(p);
  assert_heap_ok();
}

Test(api_edge, aligned_size_overflow) {
  /* size + alignment slack overflows size_t */
  char what[96];
  const size_t aligns[] = {16, 64, 4096, 65536, MiB};
  for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
    size_t al = aligns[i];
    size_t n = SIZE_MAX - al / 2;
    snprintf(what, sizeof what, "aligned_alloc(%zu, SIZE_MAX - %zu)", al, al / 2);
    EXPECT_ENOMEM(A(aligned_alloc)(al, opaque(n)), what);
    snprintf(what, sizeof what, "memalign(%zu, SIZE_MAX - %zu)", al, al / 2);
    EXPECT_ENOMEM(A(memalign)(al, opaque(n)), what);
    void *out = (void *)0x1234;
    cr_expect_eq(A(posix_memalign)(&out, al, opaque(n)), ENOMEM);
    cr_expect_eq(out, (void *)0x1234);
  }
  /* pvalloc rounds up to a page: SIZE_MAX - 100 would wrap to 0 */
  EXPECT_ENOMEM(A(pvalloc)(opaque(SIZE_MAX - 100)), "pvalloc(SIZE_MAX - 100)");
  EXPECT_ENOMEM(A(valloc)(opaque(SIZE_MAX - 100)), "valloc(SIZE_MAX - 100)");
}

/* ---- bad alignments ------------------------------------------------------------------- */

Test(api_edge, posix_memalign_einval) {
  const size_t bad[] = {0,  1,    2,    3,  4,           5,   12,          24,
                        40, 48,   100,  96, 4097,        MiB + 8, ((size_t)1 << 40) + 16,
                        SIZE_MAX, SIZE_MAX - 7};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    void *out = (void *)0x1234;
    int rc = A(posix_memalign)(&out, opaque(bad[i]), 64);
    cr_expect_eq(rc, EINVAL, "posix_memalign(alignment %zu) returned %d, expected EINVAL", bad[i],
                 rc);
    cr_expect_eq(out, (void *)0x1234, "posix_memalign(alignment %zu) wrote *out = %p", bad[i], out);
    if (rc == 0 && out != (void *)0x1234) A(free)(out);
  }
  /* valid ones: every power of two that is a multiple of sizeof(void *) */
  for (size_t al = sizeof(void *); al <= 4 * MiB; al <<= 1) {
    void *out = NULL;
    int rc = A(posix_memalign)(&out, al, 100);
    cr_assert_eq(rc, 0, "posix_memalign(%zu, 100) returned %d", al, rc);
    cr_assert_not_null(out);
    cr_assert_eq((uintptr_t)out % al, 0, "posix_memalign(%zu) gave %p", al, out);
    memset(out, 0x77, 100);
    A(free)(out);
  }
}

static const size_t non_pow2[] = {3, 5, 12, 24, 40, 48, 100, 96, 4097, MiB + 8, SIZE_MAX,
                                  SIZE_MAX - 7};
#define N_NON_POW2 (sizeof non_pow2 / sizeof non_pow2[0])

#define EXPECT_EINVAL(call, ...)                                                             \
  do {                                                                                       \
    errno = 0;                                                                               \
    void *q_ = (call);                                                                       \
    int e_ = errno;                                                                          \
    char w_[96];                                                                             \
    snprintf(w_, sizeof w_, __VA_ARGS__);                                                    \
    cr_expect_null(q_, "%s returned %p, expected NULL/EINVAL", w_, q_);                      \
    if (q_) A(free)(q_);                                                                     \
    else cr_expect_eq(e_, EINVAL, "%s: errno %d, expected EINVAL", w_, e_);                  \
  } while (0)

Test(api_edge, aligned_alloc_bad_alignment) {
  for (size_t i = 0; i < N_NON_POW2; i++)
    EXPECT_EINVAL(A(aligned_alloc)(opaque(non_pow2[i]), 64), "aligned_alloc(%zu, 64)", non_pow2[i]);
  EXPECT_EINVAL(A(aligned_alloc)(opaque(0), 64), "aligned_alloc(0, 64)");
  /* powers of two below sizeof(void *) are valid */
  for (size_t al = 1; al <= 8; al <<= 1) {
    void *a = A(aligned_alloc)(al, opaque(24));
    cr_assert_not_null(a, "aligned_alloc(%zu, 24) returned NULL", al);
    cr_assert_eq((uintptr_t)a % 16, 0);
    A(free)(a);
  }
  /* size not a multiple of the alignment is accepted (C17 / glibc) */
  void *q = A(aligned_alloc)(64, opaque(100));
  cr_assert_not_null(q);
  cr_assert_eq((uintptr_t)q % 64, 0);
  A(free)(q);
}

Test(api_edge, memalign_huge_alignment_einval) {
  /* alignments above half the address space can never be honoured */
  const size_t bad[] = {SIZE_MAX, SIZE_MAX - 7, SIZE_MAX / 2 + 2, (SIZE_MAX / 2 + 1) | 16};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    EXPECT_EINVAL(A(memalign)(opaque(bad[i]), 64), "memalign(%zu, 64)", bad[i]);
  for (size_t al = 1; al <= 8; al <<= 1) {
    void *m = A(memalign)(al, opaque(24));
    cr_assert_not_null(m, "memalign(%zu, 24) returned NULL", al);
    cr_assert_eq((uintptr_t)m % 16, 0);
    A(free)(m);
  }
}

/* The issue asks for NULL/EINVAL from memalign with an alignment that is not a power of two
 * (glibc itself rounds such an alignment up to the next power of two). */
Test(api_edge, memalign_non_power_of_two_einval) {
  for (size_t i = 0; i < N_NON_POW2; i++)
    EXPECT_EINVAL(A(memalign)(opaque(non_pow2[i]), 64), "memalign(%zu, 64)", non_pow2[i]);
}

/* ---- valloc / pvalloc ------------------------------------------------------------------ */

Test(api_edge, valloc_pvalloc_page_aligned) {
  cr_assert_eq((size_t)sysconf(_SC_PAGESIZE), PAGE, "tests assume 4 KiB pages");
  const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 5000, 10000, 65536, 100000, 131072, 300000,
                          MiB + 1};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    unsigned char *v = A(valloc)(opaque(n));
    cr_assert_not_null(v, "valloc(%zu) returned NULL", n);
    cr_assert_eq((uintptr_t)v % PAGE, 0, "valloc(%zu) = %p not page aligned", n, v);
    size_t uv = A(malloc_usable_size)(v);
    cr_assert_geq(uv, n, "valloc(%zu): usable size %zu", n, uv);
    memset(v, 0xA1, uv);

    size_t rounded = (n + PAGE - 1) / PAGE * PAGE; /* glibc: pvalloc(0) rounds to 0 */
    unsigned char *pv = A(pvalloc)(opaque(n));
    cr_assert_not_null(pv, "pvalloc(%zu) returned NULL", n);
    cr_assert_eq((uintptr_t)pv % PAGE, 0, "pvalloc(%zu) = %p not page aligned", n, pv);
    size_t upv = A(malloc_usable_size)(pv);
    cr_assert_geq(upv, rounded, "pvalloc(%zu): usable size %zu < %zu (size rounded up to a page)",
                  n, upv, rounded);
    fill_pattern(pv, rounded, n);
    cr_assert_eq(v[0], 0xA1);
    cr_assert_eq(v[uv ? uv - 1 : 0], uv ? 0xA1 : v[0]);
    cr_assert_pattern(pv, rounded, n);
    A(free)(v);
    A(free)(pv);
  }
  assert_heap_ok();
}

/* ---- realloc special cases ------------------------------------------------------------- */

Test(api_edge, realloc_null_is_malloc) {
  const size_t sizes[] = {1, 100, 4096, 10000, 100000, 300000};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    hm_stats_t before = stats_now();
    void *p = A(realloc)(NULL, opaque(sizes[i]));
    hm_stats_t after = stats_now();
    cr_assert_not_null(p, "realloc(NULL, %zu) returned NULL", sizes[i]);
    cr_assert_geq(A(malloc_usable_size)(p), sizes[i]);
    cr_assert_geq(after.malloc_count, before.malloc_count + 1,
                  "realloc(NULL, n) did not count as an allocation");
    cr_assert_eq(after.realloc_count, before.realloc_count,
                 "realloc(NULL, n) counted as a realloc of a pointer");
    cr_assert_eq(after.free_count, before.free_count, "realloc(NULL, n) freed something");
    memset(p, 0x3C, sizes[i]);
    A(free)(p);
  }
}

Test(api_edge, realloc_to_zero_frees) {
  const size_t sizes[] = {1, 100, 4096, 10000, 100000, 300000, 3 * MiB};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    void *p = A(malloc)(opaque(sizes[i]));
    cr_assert_not_null(p);
    memset(p, 0x42, sizes[i]);
    hm_stats_t before = stats_now();
    void *q = A(realloc)(p, opaque(0));
    hm_stats_t after = stats_now();
    cr_assert_null(q, "realloc(p, 0) returned %p instead of freeing p and returning NULL", q);
    cr_assert_eq(after.free_count, before.free_count + 1,
                 "realloc(p of %zu, 0): free_count %llu -> %llu", sizes[i],
                 (unsigned long long)before.free_count, (unsigned long long)after.free_count);
    cr_assert_lt(after.allocated, before.allocated,
                 "realloc(p of %zu, 0): allocated did not decrease (%zu -> %zu)", sizes[i],
                 before.allocated, after.allocated);
    if (sizes[i] >= 200000)
      cr_assert_eq(after.large_count, before.large_count - 1, "large block not released");
  }
  assert_heap_ok();
}

Test(api_edge, failed_realloc_leaves_block_intact) {
  const size_t huge[] = {(size_t)PTRDIFF_MAX + 1, SIZE_MAX - 4096, SIZE_MAX, (size_t)PTRDIFF_MAX,
                         (size_t)1 << 50};
  for (size_t t = 0; t < N_TIER_SIZES; t++) {
    size_t n = tier_sizes[t];
    unsigned char *p = A(malloc)(opaque(n));
    cr_assert_not_null(p);
    fill_pattern(p, n, 99);
    size_t usable = A(malloc_usable_size)(p);
    for (size_t h = 0; h < sizeof huge / sizeof huge[0]; h++) {
      errno = 0;
      void *q = A(realloc)(p, opaque(huge[h]));
      int e = errno;
      cr_assert_null(q, "realloc(p of %zu, %zu) returned %p", n, huge[h], q);
      cr_assert_eq(e, ENOMEM, "realloc(p of %zu, %zu): errno %d, expected ENOMEM", n, huge[h], e);
      cr_assert_pattern(p, n, 99);
      cr_assert_eq(A(malloc_usable_size)(p), usable, "failed realloc changed the usable size");
    }
    /* the block is still a live, working block */
    unsigned char *r = A(realloc)(p, opaque(n + 1000));
    cr_assert_not_null(r);
    cr_assert_eq(check_pattern_at(r, (uintptr_t)p, n, 99), (size_t)-1);
    A(free)(r);
  }
  assert_heap_ok();
}

/* ---- free ------------------------------------------------------------------------------ */

Test(api_edge, free_null_does_nothing) {
  void *keep = A(malloc)(opaque(64));
  hm_stats_t before = stats_now();
  for (int i = 0; i < 1000; i++) {
    errno = EILSEQ;
    A(free)(NULL);
    cr_assert_eq(errno, EILSEQ, "free(NULL) changed errno");
  }
  hm_stats_t after = stats_now();
  cr_assert_eq(after.free_count, before.free_count, "free(NULL) counted as a free");
  cr_assert_eq(after.allocated, before.allocated);
  cr_assert_eq(after.malloc_count, before.malloc_count);
  A(free)(keep);
  assert_heap_ok();
}

Test(api_edge, free_preserves_errno) {
  /* every kind of free: tcache push, flush to the central lists, medium coalescing and
   * trimming, large munmap */
  enum { N = 2000 };
  static void *p[N];
  uint64_t seed = 12345;
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < N; i++) {
      size_t n;
      uint64_t r = rng_next(&seed);
      if (i % 50 == 0) n = 140000 + r % (4 * MiB);
      else if (i % 5 == 0) n = 4097 + r % 120000;
      else n = 1 + r % 4096;
      p[i] = A(malloc)(opaque(n));
      cr_assert_not_null(p[i]);
      memset(p[i], 0xEE, n < 64 ? n : 64);
    }
    for (int i = 0; i < N; i++) {
      errno = EILSEQ;
      A(free)(p[i]);
      cr_assert_eq(errno, EILSEQ, "free() of block #%d changed errno to %d", i, errno);
    }
    errno = ENOTTY;
    A(malloc_trim)(0);
    void *x = A(malloc)(opaque(100));
    A(free)(x);
    cr_assert_eq(errno, ENOTTY, "malloc/free after malloc_trim changed errno");
  }
  assert_heap_ok();
}

/* ---- malloc_usable_size ---------------------------------------------------------------- */

Test(api_edge, usable_size_null_is_zero) {
  cr_assert_eq(A(malloc_usable_size)(NULL), 0);
}

Test(api_edge, usable_size_all_writable) {
  /* blocks of one size side by side, each filled over its whole usable size with its own
   * pattern: an overstated usable size would overwrite a neighbour or the allocator's data */
  enum { N = 48 };
  for (size_t t = 0; t < N_TIER_SIZES; t++) {
    size_t n = tier_sizes[t];
    int count = n >= MiB ? 6 : N;
    void *p[N];
    size_t u[N];
    for (int i = 0; i < count; i++) {
      p[i] = A(malloc)(opaque(n));
      cr_assert_not_null(p[i]);
      u[i] = A(malloc_usable_size)(p[i]);
      cr_assert_geq(u[i], n, "malloc_usable_size(malloc(%zu)) = %zu", n, u[i]);
      cr_assert_lt(u[i], n + n / 2 + 4096 + 64, "usable size %zu absurdly larger than %zu", u[i], n);
      fill_pattern(p[i], u[i], (uint64_t)i);
    }
    /* free every other block, allocate neighbours of mixed sizes into the holes */
    for (int i = 0; i < count; i++) cr_assert_pattern(p[i], u[i], (uint64_t)i);
    for (int i = 0; i < count; i += 2) A(free)(p[i]);
    for (int i = 0; i < count; i += 2) {
      size_t m = (i % 4 == 0) ? n / 2 + 1 : n + 17;
      p[i] = A(malloc)(opaque(m));
      cr_assert_not_null(p[i]);
      u[i] = A(malloc_usable_size)(p[i]);
      cr_assert_geq(u[i], m);
      fill_pattern(p[i], u[i], (uint64_t)i + 1000);
    }
    for (int i = 0; i < count; i++)
      cr_assert_pattern(p[i], u[i], (uint64_t)i + (i % 2 == 0 ? 1000 : 0));
    assert_heap_ok();
    for (int i = 0; i < count; i++) A(free)(p[i]);
  }
  assert_heap_ok();
}

Test(api_edge, usable_size_of_every_entry_point) {
  for (size_t t = 0; t < N_TIER_SIZES; t++) {
    size_t n = tier_sizes[t];
    void *blocks[6];
    blocks[0] = A(malloc)(opaque(n));
    blocks[1] = A(calloc)(opaque(n), 1);
    blocks[2] = A(realloc)(NULL, opaque(n));
    blocks[3] = A(memalign)(256, opaque(n));
    blocks[4] = A(aligned_alloc)(4096, opaque(n));
    cr_assert_eq(A(posix_memalign)(&blocks[5], 64, opaque(n)), 0);
    for (int i = 0; i < 6; i++) {
      cr_assert_not_null(blocks[i]);
      size_t u = A(malloc_usable_size)(blocks[i]);
      cr_assert_geq(u, n, "entry point #%d, size %zu: usable %zu", i, n, u);
      fill_pattern(blocks[i], u, (uint64_t)i);
    }
    for (int i = 0; i < 6; i++)
      cr_assert_pattern(blocks[i], A(malloc_usable_size)(blocks[i]), (uint64_t)i);
    for (int i = 0; i < 6; i++) A(free)(blocks[i]);
  }
  assert_heap_ok();
}

/* ---- calloc zeroing -------------------------------------------------------------------- */

Test(api_edge, calloc_zeroes_reused_dirty_memory) {
  for (size_t t = 0; t < N_TIER_SIZES; t++) {
    size_t n = tier_sizes[t];
    int rounds = n >= MiB ? 8 : 40;
    for (int r = 0; r < rounds; r++) {
      /* dirty a few blocks of this size over their whole usable size, free them, calloc */
      void *d[4];
      for (int i = 0; i < 4; i++) {
        d[i] = A(malloc)(opaque(n));
        cr_assert_not_null(d[i]);
        memset(d[i], 0xFF, A(malloc_usable_size)(d[i]));
      }
      for (int i = 0; i < 4; i++) A(free)(d[i]);
      for (int i = 0; i < 4; i++) {
        unsigned char *c = (i % 2) ? A(calloc)(opaque(n), 1) : A(calloc)(1, opaque(n));
        cr_assert_not_null(c);
        size_t bad = first_nonzero(c, n);
        cr_assert_eq(bad, (size_t)-1, "calloc(%zu) round %d: byte %zu is 0x%02x", n, r, bad,
                     bad == (size_t)-1 ? 0 : c[bad]);
        d[i] = c;
      }
      for (int i = 0; i < 4; i++) {
        memset(d[i], 0xAB, n);
        A(free)(d[i]);
      }
    }
  }
  assert_heap_ok();
}

Test(api_edge, calloc_zeroes_after_mixed_churn) {
  /* dirty memory freed in many sizes, coalesced in the medium heap, then calloc of sizes that
   * straddle the freed chunks */
  enum { N = 400 };
  static void *p[N];
  uint64_t seed = 777;
  for (int round = 0; round < 10; round++) {
    for (int i = 0; i < N; i++) {
      size_t n = 1 + rng_next(&seed) % (i % 3 ? 4096 : 100000);
      p[i] = A(malloc)(opaque(n));
      cr_assert_not_null(p[i]);
      memset(p[i], 0xCD, A(malloc_usable_size)(p[i]));
    }
    for (int i = 0; i < N; i++) A(free)(p[i]);
    for (int i = 0; i < N; i++) {
      size_t cnt = 1 + rng_next(&seed) % 64;
      size_t sz = 1 + rng_next(&seed) % (i % 3 ? 64 : 1600);
      p[i] = A(calloc)(opaque(cnt), opaque(sz));
      cr_assert_not_null(p[i]);
      size_t bad = first_nonzero(p[i], cnt * sz);
      cr_assert_eq(bad, (size_t)-1, "calloc(%zu, %zu): byte %zu not zero", cnt, sz, bad);
      memset(p[i], 0xCD, cnt * sz);
    }
    for (int i = 0; i < N; i++) A(free)(p[i]);
  }
  assert_heap_ok();
}
