/* fuzz_api.c - libFuzzer harness for the hm_ API.
 *
 * Each input is decoded into a sequence of calls (hm_malloc, hm_calloc, hm_realloc, hm_free,
 * hm_posix_memalign, hm_aligned_alloc, hm_memalign, and a few calls that must fail cleanly)
 * run against a shadow model: a fixed array of slots, each holding a block, the size that was
 * asked for, its alignment and the seed of the pattern it was filled with.  Every block is
 * filled over its whole usable size, so an allocator that hands out overlapping blocks, or a
 * usable size that reaches into a neighbour, shows up as a broken pattern.  Checked:
 *   - hm_malloc_usable_size(p) >= size, every pointer 16-byte aligned, aligned calls honour
 *     their alignment (8 bytes .. 1 MiB);
 *   - calloc'ed bytes are zero, realloc keeps the prefix, contents survive other calls;
 *   - hm_heap_check() == 0 after every call (every CHECK_EVERY calls for long inputs);
 *   - failures are clean: NULL with ENOMEM or EINVAL, the old block left intact.
 * Sizes cover every tier: small (<= 4096), medium (to 128 KiB), large (>= 128 KiB, up to
 * 16 MiB), and the boundaries between them.  Live bytes are capped at 64 MiB.  Every block
 * still live at the end of an input is checked and freed, so inputs are independent as far as
 * the model is concerned (the allocator keeps its state, which is the point).
 *
 * Input format (fuzz/make_corpus.py writes the seed corpus in it), repeated until the end:
 *   op byte (mod 10), slot byte (mod 64), then the op's arguments:
 *     0 malloc SIZE            1 calloc SIZE count-1      2 realloc SIZE       3 free
 *     4 posix_memalign ALIGN SIZE     5 aligned_alloc ALIGN SIZE     6 memalign ALIGN SIZE
 *     7 verify                 8 bad call: which x        9 realloc by a small delta:
 *                                                            delta shift(mod 10) grow(bit 0)
 *   SIZE: tier byte t, then by t & 3:  0: 2 bytes LE, size = v % 4097 (small);
 *         1: 3 bytes LE, 4097 + v % (128 KiB - 4097) (medium);
 *         2: 3 bytes LE, 128 KiB + v % ((t & 0x1c) == 0x1c ? 16 MiB : 1 MiB) (large);
 *         3: 1 byte, index into boundary_sizes[].
 *   ALIGN: 1 byte, alignment 8 << (b % 18), 8 bytes .. 1 MiB.
 * A short read yields zeros, so any byte string is a valid input. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hmalloc.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define NSLOTS 64
#define LIVE_CAP (64 * MiB)
#define CHECK_EVERY 8 /* after this many steps of one input, check the heap every 8th step */

typedef struct {
  unsigned char *p;
  size_t size;    /* requested */
  size_t usable;  /* filled with the pattern (hm_malloc_usable_size when allocated) */
  size_t align;   /* alignment asked for (16 for the plain calls) */
  uint64_t seed;
  bool zero;      /* calloc'ed: pattern not written yet, first `size` bytes must be zero */
} slot_t;

static slot_t slots[NSLOTS];
static size_t live_bytes;
static uint64_t step_no;

typedef struct {
  const uint8_t *d;
  size_t n, pos;
} reader_t;

static uint8_t rd8(reader_t *r) { return r->pos < r->n ? r->d[r->pos++] : 0; }
static uint32_t rd16(reader_t *r) { return (uint32_t)rd8(r) | (uint32_t)rd8(r) << 8; }
static uint32_t rd24(reader_t *r) { return rd16(r) | (uint32_t)rd8(r) << 16; }

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...);

static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fuzz_api: step %llu: ", (unsigned long long)step_no);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

/* ---- the pattern: byte i of a block is byte i % 8 of word(seed, i / 8) ---- */
static inline uint64_t word(uint64_t seed, size_t i) {
  uint64_t x = seed ^ ((uint64_t)i * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

/* Blocks up to FULL_CHECK bytes carry the pattern everywhere.  Larger ones (large tier) carry
 * it in their first and last 8 KiB and in the 128 bytes around every page boundary, where an
 * allocator's headers and neighbours are: filling and checking megabytes at every step would
 * make the fuzzer crawl. */
#define FULL_CHECK (256 * KiB)
/* No coverage instrumentation in the pattern loops: comparison tracing there (every word
 * compared) would cost more than everything else and tell the fuzzer nothing. */
#define NO_COVERAGE __attribute__((no_sanitize("coverage")))
#define LINE 64

NO_COVERAGE static inline bool sampled(size_t off, size_t usable) {
  return usable <= FULL_CHECK || off < 8 * KiB || off + 8 * KiB >= usable ||
         (off & 4095) < LINE || (off & 4095) >= 4096 - LINE;
}

/* Write the pattern over the sampled lines of p[0, usable). */
NO_COVERAGE static void fill(unsigned char *p, size_t usable, uint64_t seed) {
  for (size_t off = 0; off < usable; off += LINE) {
    if (!sampled(off, usable)) continue;
    size_t end = off + LINE < usable ? off + LINE : usable, i = off;
    for (; i + 8 <= end; i += 8) {
      uint64_t w = word(seed, i >> 3);
      memcpy(p + i, &w, 8);
    }
    for (; i < end; i++) p[i] = (unsigned char)(word(seed, i >> 3) >> (8 * (i & 7)));
  }
}

/* Offset of the first byte of p[0, n) that differs from the pattern written by
 * fill(p, usable, seed), or SIZE_MAX. */
NO_COVERAGE static size_t check_fill(const unsigned char *p, size_t n, size_t usable, uint64_t seed) {
  for (size_t off = 0; off < n; off += LINE) {
    if (!sampled(off, usable)) continue;
    size_t end = off + LINE < n ? off + LINE : n, i = off;
    for (; i + 8 <= end; i += 8) {
      uint64_t w = word(seed, i >> 3), got;
      memcpy(&got, p + i, 8);
      if (got != w) break;
    }
    for (; i < end; i++)
      if (p[i] != (unsigned char)(word(seed, i >> 3) >> (8 * (i & 7)))) return i;
  }
  return SIZE_MAX;
}

/* Offset of the first non-zero byte among the sampled lines of p[0, n), or SIZE_MAX. */
NO_COVERAGE static size_t first_nonzero(const unsigned char *p, size_t n) {
  static const unsigned char zeros[LINE];
  for (size_t off = 0; off < n; off += LINE) {
    if (!sampled(off, n)) continue;
    size_t len = off + LINE < n ? LINE : n - off;
    if (memcmp(p + off, zeros, len) != 0)
      for (size_t i = off; i < off + len; i++)
        if (p[i]) return i;
  }
  return SIZE_MAX;
}

/* ---- decoding ---- */
static const size_t boundary_sizes[] = {
    0,           1,           8,           15,         16,         17,        127,
    128,         129,         1024,        1025,       2048,       4095,      4096,
    4097,        4112,        8192,        65520,      65536,      65537,     131055,
    131056,      131071,      131072,      131073,     262144,     1 * MiB,   1 * MiB + 1,
    2 * MiB - 1, 4 * MiB + 16, 16 * MiB,
};
#define N_BOUNDARY (sizeof boundary_sizes / sizeof boundary_sizes[0])

static size_t rd_size(reader_t *r) {
  uint8_t t = rd8(r);
  switch (t & 3) {
    case 0: return rd16(r) % (4096 + 1);                            /* small, 0 included */
    case 1: return 4097 + rd24(r) % (128 * KiB - 4097);             /* medium */
    case 2: return 128 * KiB + rd24(r) % ((t & 0x1c) == 0x1c ? 16 * MiB : MiB); /* large */
    default: return boundary_sizes[rd8(r) % N_BOUNDARY];
  }
}

static size_t rd_align(reader_t *r) { return (size_t)8 << (rd8(r) % 18); } /* 8 .. 1 MiB */

/* ---- the model ---- */
static void verify(int i, const char *when) {
  slot_t *s = &slots[i];
  if (s->p == NULL) return;
  size_t u = hm_malloc_usable_size(s->p);
  if (u < s->size) fail("%s: slot %d %p: usable size %zu < requested %zu", when, i, s->p, u, s->size);
  if (u < s->usable) fail("%s: slot %d %p: usable size shrank from %zu to %zu", when, i, s->p, s->usable, u);
  size_t bad = s->zero ? first_nonzero(s->p, s->size) : check_fill(s->p, s->usable, s->usable, s->seed);
  if (bad != SIZE_MAX)
    fail("%s: slot %d %p (size %zu, usable %zu, align %zu%s) corrupted at offset %zu", when, i,
         s->p, s->size, s->usable, s->align, s->zero ? ", calloc" : "", bad);
}

/* Record a new block in slot i (empty) and fill it, or leave its zeros for calloc. */
static void adopt(int i, void *p, size_t size, size_t align, bool zero, uint64_t seed,
                  const char *what) {
  slot_t *s = &slots[i];
  if (((uintptr_t)p & 15) != 0) fail("%s(%zu) = %p: not 16-byte aligned", what, size, p);
  if (((uintptr_t)p & (align - 1)) != 0)
    fail("%s(align %zu, %zu) = %p: alignment not honoured", what, align, size, p);
  size_t u = hm_malloc_usable_size(p);
  if (u < size) fail("%s(%zu) = %p: usable size %zu too small", what, size, p, u);
  for (int j = 0; j < NSLOTS; j++)
    if (slots[j].p != NULL && j != i) {
      uintptr_t a = (uintptr_t)p, b = (uintptr_t)slots[j].p;
      if (a < b + (slots[j].usable ? slots[j].usable : 1) && b < a + (u ? u : 1))
        fail("%s(%zu) = %p [usable %zu] overlaps slot %d %p [usable %zu]", what, size, p, u, j,
             slots[j].p, slots[j].usable);
    }
  s->p = p;
  s->size = size;
  s->usable = u;
  s->align = align;
  s->seed = seed;
  s->zero = zero;
  live_bytes += u;
  if (zero) {
    size_t bad = first_nonzero(p, size);
    if (bad != SIZE_MAX) fail("%s(%zu) = %p: byte %zu not zero", what, size, p, bad);
    /* the zeros are checked again on the next verify; then the block gets its pattern */
  } else {
    fill(p, u, seed);
  }
}

/* Resize slot i's live block to n (> 0) bytes: the prefix must survive, and the result is
 * adopted as a 16-byte aligned block (realloc promises no more, whatever it had before). */
static void realloc_checked(int i, size_t n) {
  slot_t *s = &slots[i];
  slot_t old = *s;
  unsigned char *p = hm_realloc(s->p, n);
  if (p == NULL) fail("hm_realloc(%p, %zu) failed: errno %d", old.p, n, errno);
  size_t keep = old.size < n ? old.size : n;
  size_t bad = old.zero ? first_nonzero(p, keep) : check_fill(p, keep, old.usable, old.seed);
  if (bad != SIZE_MAX)
    fail("hm_realloc(%p [%zu], %zu) = %p: prefix of %zu bytes differs at offset %zu", old.p,
         old.size, n, p, keep, bad);
  live_bytes -= old.usable;
  memset(s, 0, sizeof *s);
  adopt(i, p, n, 16, false, old.seed, "hm_realloc");
}


static void release(int i) {
  slot_t *s = &slots[i];
  if (s->p == NULL) return;
  verify(i, "free");
  hm_free(s->p);
  live_bytes -= s->usable;
  memset(s, 0, sizeof *s);
}

/* Turn a calloc'ed slot (verified zero) into an ordinary patterned one. */
static void pattern_zeroed(int i) {
  slot_t *s = &slots[i];
  if (s->p == NULL || !s->zero) return;
  verify(i, "calloc recheck");
  s->zero = false;
  fill(s->p, s->usable, s->seed);
}

static bool room_for(size_t n) { return n <= LIVE_CAP && live_bytes + n <= LIVE_CAP; }

static void expect_fail(void *p, int err, int want, const char *what) {
  if (p != NULL) fail("%s succeeded (%p), expected failure", what, p);
  if (err != want) fail("%s: errno %d, expected %d", what, err, want);
}

enum { OP_MALLOC, OP_CALLOC, OP_REALLOC, OP_FREE, OP_POSIX_MEMALIGN, OP_ALIGNED_ALLOC,
       OP_MEMALIGN, OP_VERIFY, OP_BAD_CALLS, OP_REALLOC_SAME, NOPS };

static void step(reader_t *r, uint64_t seed) {
  uint8_t op = rd8(r) % NOPS;
  int i = rd8(r) % NSLOTS;
  slot_t *s = &slots[i];
  switch (op) {
    case OP_MALLOC: {
      size_t n = rd_size(r);
      release(i);
      if (!room_for(n)) break;
      void *p = hm_malloc(n);
      if (p == NULL) fail("hm_malloc(%zu) failed: errno %d", n, errno);
      adopt(i, p, n, 16, false, seed, "hm_malloc");
      break;
    }
    case OP_CALLOC: {
      size_t n = rd_size(r);
      size_t count = 1 + rd8(r) % 16, each = n / count;
      release(i);
      if (!room_for(count * each)) break;
      void *p = hm_calloc(count, each);
      if (p == NULL) fail("hm_calloc(%zu, %zu) failed: errno %d", count, each, errno);
      adopt(i, p, count * each, 16, true, seed, "hm_calloc");
      break;
    }
    case OP_REALLOC: {
      size_t n = rd_size(r);
      if (s->p == NULL) {
        if (!room_for(n)) break;
        void *p = hm_realloc(NULL, n);
        if (p == NULL) fail("hm_realloc(NULL, %zu) failed: errno %d", n, errno);
        adopt(i, p, n, 16, false, seed, "hm_realloc(NULL)");
        break;
      }
      verify(i, "before realloc");
      if (n > s->usable && !room_for(n - s->usable)) break;
      if (n == 0) { /* frees the block, returns NULL */
        errno = 0;
        void *p = hm_realloc(s->p, 0);
        if (p != NULL) fail("hm_realloc(%p, 0) = %p, expected NULL", s->p, p);
        live_bytes -= s->usable;
        memset(s, 0, sizeof *s);
        break;
      }
      realloc_checked(i, n);
      break;
    }
    case OP_FREE:
      release(i);
      break;
    case OP_POSIX_MEMALIGN:
    case OP_ALIGNED_ALLOC:
    case OP_MEMALIGN: {
      size_t align = rd_align(r), n = rd_size(r);
      release(i);
      if (!room_for(n + align)) break;
      void *p = NULL;
      const char *what;
      if (op == OP_POSIX_MEMALIGN) {
        what = "hm_posix_memalign";
        int rc = hm_posix_memalign(&p, align, n);
        if (rc != 0) fail("hm_posix_memalign(%zu, %zu) = %d", align, n, rc);
      } else if (op == OP_ALIGNED_ALLOC) {
        what = "hm_aligned_alloc";
        p = hm_aligned_alloc(align, n);
      } else {
        what = "hm_memalign";
        p = hm_memalign(align, n);
      }
      if (p == NULL) fail("%s(%zu, %zu) failed: errno %d", what, align, n, errno);
      adopt(i, p, n, align, false, seed, what);
      break;
    }
    case OP_VERIFY:
      verify(i, "verify");
      pattern_zeroed(i);
      break;
    case OP_BAD_CALLS: {
      /* Calls that must fail without touching the heap or the blocks. */
      uint8_t which = rd8(r) % 7, x = rd8(r);
      void *p = NULL;
      errno = 0;
      switch (which) {
        case 0:
          p = hm_malloc(SIZE_MAX - x);
          expect_fail(p, errno, ENOMEM, "hm_malloc(huge)");
          break;
        case 1:
          p = hm_calloc(SIZE_MAX / 2 + 1 + x, 2 + x % 8);
          expect_fail(p, errno, ENOMEM, "hm_calloc(overflow)");
          break;
        case 2: {
          size_t bad_align = 24 + 16 * (size_t)(x % 4); /* 24 40 56 72 */
          int rc = hm_posix_memalign(&p, bad_align, 64);
          if (rc != EINVAL) fail("hm_posix_memalign(%zu) = %d, expected EINVAL", bad_align, rc);
          rc = hm_posix_memalign(&p, 4, 64);
          if (rc != EINVAL) fail("hm_posix_memalign(4) = %d, expected EINVAL", rc);
          break;
        }
        case 3:
          p = hm_aligned_alloc(48, 100);
          expect_fail(p, errno, EINVAL, "hm_aligned_alloc(48)");
          break;
        case 4:
          p = hm_memalign(3 * 4096, 100);
          expect_fail(p, errno, EINVAL, "hm_memalign(12288)");
          break;
        case 5:
          if (s->p != NULL) { /* a failed realloc leaves the block as it was */
            p = hm_realloc(s->p, (size_t)PTRDIFF_MAX + 1 + x);
            expect_fail(p, errno, ENOMEM, "hm_realloc(p, huge)");
            verify(i, "after failed realloc");
          }
          break;
        default:
          hm_free(NULL);
          if (hm_malloc_usable_size(NULL) != 0) fail("hm_malloc_usable_size(NULL) != 0");
          break;
      }
      break;
    }
    case OP_REALLOC_SAME: {
      /* realloc to a size close to the current one: the in-place paths */
      size_t delta = (size_t)rd8(r) << (rd8(r) % 10);
      bool grow = rd8(r) & 1;
      if (s->p == NULL) break;
      verify(i, "before realloc");
      size_t n = grow ? s->size + delta : (s->size > delta ? s->size - delta : 1);
      if (n == 0) n = 1; /* realloc(p, 0) frees: OP_REALLOC covers it */
      if (n > s->usable && !room_for(n - s->usable)) break;
      realloc_checked(i, n);
      break;
    }
  }
}

static void heap_check(const char *when) {
  if (hm_heap_check() != 0) fail("hm_heap_check() failed %s (see the line above)", when);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader_t r = {data, size, 0};
  step_no = 0;
  while (r.pos < r.n) {
    step_no++;
    step(&r, 0x5EED0000ull + step_no * 0x10001ull + r.pos);
    if (step_no <= CHECK_EVERY || step_no % CHECK_EVERY == 0) heap_check("after a step");
  }
  for (int i = 0; i < NSLOTS; i++) release(i);
  heap_check("at the end of the input");
  if (live_bytes != 0) fail("model: %zu live bytes left after freeing every slot", live_bytes);
  return 0;
}
