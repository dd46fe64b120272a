/* hm_test.h - helpers shared by the Criterion test files of hmalloc.
 *
 * The API test files are compiled twice (see test/meson.build):
 *   - without HM_TEST_PREFIX: they call the standard names (malloc, free, ...) in an
 *     executable linked with the whole of libhmalloc.a, so those names ARE hmalloc;
 *   - with HM_TEST_PREFIX=1: they call the hm_ names, linked with libhmalloc.so.
 * A(name) picks the name to call. */
#ifndef HM_TEST_H
#define HM_TEST_H

#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "hmalloc.h"

#ifdef HM_TEST_PREFIX
#define A(name) hm_##name
#define API_NAMES "hm_"
#else
#define A(name) name
#define API_NAMES "std"
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* Sizes the compiler cannot see through, so that no call is folded or warned about. */
static inline size_t opaque(size_t n) {
  volatile size_t v = n;
  return v;
}

/* One size in each tier and at each boundary: small (<= 4096), medium (up to the 128 KiB
 * mmap threshold), large (mmap). */
static const size_t tier_sizes[] = {
    1,     8,     16,     17,     100,    1000,   1024,    1025,    4095,
    4096,  4097,  5000,   10000,  32768,  60000,  131071,  131072,  131073,
    200000, 1048576, 2097152 + 7,
};
#define N_TIER_SIZES (sizeof tier_sizes / sizeof tier_sizes[0])

/* Pattern derived from the block's address, its size and a seed, one 64-bit word per 8 bytes
 * (tail bytes from the same word), so a block moved or overwritten by a neighbour is caught. */
static inline uint64_t pattern_word(uintptr_t base, size_t size, uint64_t seed, size_t i) {
  uint64_t x = (uint64_t)base ^ ((uint64_t)size << 17) ^ seed ^ (i * 0x9E3779B97F4A7C15ull);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return x;
}

static inline void fill_pattern(void *p, size_t n, uint64_t seed) {
  unsigned char *b = p;
  size_t words = n / 8;
  for (size_t i = 0; i < words; i++) {
    uint64_t w = pattern_word((uintptr_t)p, n, seed, i);
    memcpy(b + i * 8, &w, 8);
  }
  uint64_t w = pattern_word((uintptr_t)p, n, seed, words);
  memcpy(b + words * 8, &w, n - words * 8);
}

/* Checks the first `keep` bytes of a block that was filled by fill_pattern(base, n, seed)
 * (and may since have moved, e.g. by realloc, to p).  Returns the offset of the first wrong
 * byte, or (size_t)-1 when that prefix is intact. */
static inline size_t check_prefix_at(const void *p, uintptr_t base, size_t n, uint64_t seed,
                                     size_t keep) {
  const unsigned char *b = p;
  if (keep > n) keep = n;
  size_t words = keep / 8;
  for (size_t i = 0; i < words; i++) {
    uint64_t w = pattern_word(base, n, seed, i), got;
    memcpy(&got, b + i * 8, 8);
    if (got != w) {
      for (size_t k = 0; k < 8; k++)
        if (((const unsigned char *)&w)[k] != b[i * 8 + k]) return i * 8 + k;
    }
  }
  uint64_t w = pattern_word(base, n, seed, words);
  for (size_t k = 0; k < keep - words * 8; k++)
    if (((const unsigned char *)&w)[k] != b[words * 8 + k]) return words * 8 + k;
  return (size_t)-1;
}

static inline size_t check_pattern_at(const void *p, uintptr_t base, size_t n, uint64_t seed) {
  return check_prefix_at(p, base, n, seed, n);
}

static inline size_t check_pattern(const void *p, size_t n, uint64_t seed) {
  return check_pattern_at(p, (uintptr_t)p, n, seed);
}

#define cr_assert_pattern(p, n, seed)                                                       \
  do {                                                                                      \
    size_t bad_ = check_pattern((p), (n), (seed));                                          \
    cr_assert(bad_ == (size_t)-1, "block %p of %zu bytes corrupted at offset %zu", (void *)(p), \
              (size_t)(n), bad_);                                                           \
  } while (0)

/* Returns the offset of the first non-zero byte, or (size_t)-1. */
static inline size_t first_nonzero(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i]) return i;
  return (size_t)-1;
}

static inline void assert_heap_ok(void) {
  cr_assert_eq(hm_heap_check(), 0, "hm_heap_check() found a broken invariant (see stderr)");
}

static inline hm_stats_t stats_now(void) {
  hm_stats_t s;
  memset(&s, 0, sizeof s);
  hm_stats_get(&s);
  return s;
}

/* xorshift PRNG for reproducible workloads. */
static inline uint64_t rng_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

#endif
