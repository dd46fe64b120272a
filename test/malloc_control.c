/* malloc_control.c - glibc's malloc control and reports: mallopt, mallinfo2/mallinfo,
 * malloc_trim, malloc_stats, and hmalloc's own hm_stats_get/hm_stats_print.  Built twice:
 * standard names and hm_ names (see hm_test.h). */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>

#include "hm_test.h"

TestSuite(malloc_control, .timeout = 60);

Test(malloc_control, mallopt_return_values) {
  cr_assert_eq(A(mallopt)(M_MMAP_THRESHOLD, 256 * 1024), 1, "mallopt(M_MMAP_THRESHOLD) != 1");
  cr_assert_eq(A(mallopt)(M_TRIM_THRESHOLD, 512 * 1024), 1, "mallopt(M_TRIM_THRESHOLD) != 1");
  /* accepted and ignored */
  cr_assert_eq(A(mallopt)(M_ARENA_MAX, 2), 1, "mallopt(M_ARENA_MAX) != 1");
  cr_assert_eq(A(mallopt)(M_TOP_PAD, 65536), 1, "mallopt(M_TOP_PAD) != 1");
  cr_assert_eq(A(mallopt)(M_MMAP_MAX, 65536), 1, "mallopt(M_MMAP_MAX) != 1");
  /* unknown */
  cr_assert_eq(A(mallopt)(12345, 1), 0, "mallopt(unknown parameter) != 0");
  cr_assert_eq(A(mallopt)(-12345, 1), 0, "mallopt(unknown negative parameter) != 0");
  /* the allocator still works */
  void *p = A(malloc)(opaque(300000));
  cr_assert_not_null(p);
  memset(p, 1, 300000);
  A(free)(p);
  assert_heap_ok();
}

Test(malloc_control, mmap_threshold_is_honoured) {
  /* raised: a 512 KiB block is no longer a large (mmap) block */
  cr_assert_eq(A(mallopt)(M_MMAP_THRESHOLD, 1024 * 1024), 1);
  hm_stats_t before = stats_now();
  void *p = A(malloc)(opaque(512 * 1024));
  hm_stats_t after = stats_now();
  cr_assert_not_null(p);
  memset(p, 0x21, 512 * 1024);
  cr_assert_eq(after.large_count, before.large_count,
               "with M_MMAP_THRESHOLD = 1 MiB, malloc(512 KiB) made a large block");
  A(free)(p);
  /* lowered: a 100 KiB block is a large block */
  cr_assert_eq(A(mallopt)(M_MMAP_THRESHOLD, 64 * 1024), 1);
  before = stats_now();
  p = A(malloc)(opaque(100 * 1024));
  after = stats_now();
  cr_assert_not_null(p);
  memset(p, 0x22, 100 * 1024);
  cr_assert_eq(after.large_count, before.large_count + 1,
               "with M_MMAP_THRESHOLD = 64 KiB, malloc(100 KiB) is not a large block");
  struct mallinfo2 mi = A(mallinfo2)();
  cr_assert_geq(mi.hblks, 1);
  A(free)(p);
  assert_heap_ok();
}

Test(malloc_control, mallinfo2_plausible) {
  struct mallinfo2 m0 = A(mallinfo2)();
  /* 1 MiB worth of medium blocks */
  enum { N = 64 };
  void *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = A(malloc)(opaque(16 * 1024));
    cr_assert_not_null(p[i]);
    memset(p[i], 0x31, 16 * 1024);
  }
  struct mallinfo2 m1 = A(mallinfo2)();
  cr_assert_geq(m1.uordblks, m0.uordblks + MiB,
                "uordblks %zu -> %zu after allocating 1 MiB of 16 KiB blocks", m0.uordblks,
                m1.uordblks);
  cr_assert_geq(m1.arena + m1.hblkhd, m1.uordblks,
                "arena %zu + hblkhd %zu < uordblks %zu: more in use than obtained", m1.arena,
                m1.hblkhd, m1.uordblks);
  cr_assert_lt(m1.uordblks, m0.uordblks + 64 * MiB, "uordblks grew absurdly");
  /* a 1 MiB block is an mmapped block */
  void *big = A(malloc)(opaque(MiB));
  cr_assert_not_null(big);
  memset(big, 0x32, MiB);
  struct mallinfo2 m2 = A(mallinfo2)();
  cr_assert_eq(m2.hblks, m1.hblks + 1, "hblks %zu -> %zu after a 1 MiB allocation", m1.hblks,
               m2.hblks);
  cr_assert_geq(m2.hblkhd, m1.hblkhd + MiB, "hblkhd %zu -> %zu after a 1 MiB allocation",
                m1.hblkhd, m2.hblkhd);
  cr_assert_lt(m2.hblkhd, m1.hblkhd + MiB + 64 * KiB);
  A(free)(big);
  struct mallinfo2 m3 = A(mallinfo2)();
  cr_assert_eq(m3.hblks, m1.hblks, "hblks did not go back after freeing the 1 MiB block");
  cr_assert_eq(m3.hblkhd, m1.hblkhd);
  for (int i = 0; i < N; i++) A(free)(p[i]);
  struct mallinfo2 m4 = A(mallinfo2)();
  cr_assert_leq(m4.uordblks + MiB, m1.uordblks,
                "uordblks %zu -> %zu after freeing the 1 MiB of medium blocks", m1.uordblks,
                m4.uordblks);
  /* the old interface reports the same numbers while they fit an int */
  struct mallinfo mo = A(mallinfo)();
  struct mallinfo2 m5 = A(mallinfo2)();
  cr_assert_eq((size_t)mo.hblks, m5.hblks);
  cr_assert_eq((size_t)mo.hblkhd, m5.hblkhd);
  cr_assert_geq(mo.uordblks, 0);
  cr_assert_geq(mo.arena, 0);
}

Test(malloc_control, mallinfo_saturates) {
  /* more than INT_MAX bytes of mmapped blocks: the int fields saturate instead of wrapping.
   * Untouched mmap pages cost no memory. */
  void *p[3];
  for (int i = 0; i < 3; i++) {
    p[i] = A(malloc)(opaque((size_t)1 << 30));
    cr_assert_not_null(p[i], "malloc(1 GiB) failed");
  }
  struct mallinfo2 m2 = A(mallinfo2)();
  cr_assert_geq(m2.hblkhd, (size_t)3 << 30);
  struct mallinfo m = A(mallinfo)();
  cr_assert_eq(m.hblkhd, INT_MAX, "mallinfo().hblkhd = %d with %zu bytes mapped", m.hblkhd,
               m2.hblkhd);
  for (int i = 0; i < 3; i++) A(free)(p[i]);
}

Test(malloc_control, malloc_trim_keeps_live_blocks) {
  enum { N = 512 };
  static void *p[N];
  static size_t sz[N];
  uint64_t seed = 99;
  for (int i = 0; i < N; i++) {
    sz[i] = 1 + rng_next(&seed) % (i % 2 ? 4096 : 120000);
    p[i] = A(malloc)(opaque(sz[i]));
    cr_assert_not_null(p[i]);
    fill_pattern(p[i], sz[i], (uint64_t)i);
  }
  /* free three quarters, in a scattered order */
  for (int i = 0; i < N; i++)
    if (i % 4) {
      A(free)(p[i]);
      p[i] = NULL;
    }
  hm_stats_t before = stats_now();
  int rc = A(malloc_trim)(0);
  hm_stats_t after = stats_now();
  cr_assert(rc == 0 || rc == 1, "malloc_trim returned %d", rc);
  cr_assert_leq(after.mapped, before.mapped, "malloc_trim increased mapped");
  for (int i = 0; i < N; i += 4) cr_assert_pattern(p[i], sz[i], (uint64_t)i);
  assert_heap_ok();
  rc = A(malloc_trim)(1 << 20);
  cr_assert(rc == 0 || rc == 1, "malloc_trim(1 MiB) returned %d", rc);
  /* the released memory is usable again, and reads as what we write */
  for (int i = 0; i < N; i++)
    if (i % 4) {
      sz[i] = 1 + rng_next(&seed) % 120000;
      p[i] = A(malloc)(opaque(sz[i]));
      cr_assert_not_null(p[i]);
      fill_pattern(p[i], sz[i], (uint64_t)i + 7);
    }
  for (int i = 0; i < N; i++) cr_assert_pattern(p[i], sz[i], (uint64_t)i + (i % 4 ? 7 : 0));
  /* calloc after trim still gives zeroes (pages released by madvise read back as zero, and
   * pages not released must be cleared) */
  for (int i = 0; i < N; i++) A(free)(p[i]);
  A(malloc_trim)(0);
  for (int i = 0; i < 64; i++) {
    size_t n = 1000 + (size_t)i * 1800;
    unsigned char *c = A(calloc)(1, opaque(n));
    cr_assert_not_null(c);
    size_t bad = first_nonzero(c, n);
    cr_assert_eq(bad, (size_t)-1, "calloc(%zu) after malloc_trim: byte %zu not zero", n, bad);
    p[i] = c;
  }
  for (int i = 0; i < 64; i++) A(free)(p[i]);
  assert_heap_ok();
}

/* Runs fn with file descriptor 2 redirected to a temporary file; returns what was written. */
static size_t capture_fd(int fd, void (*fn)(void), char *buf, size_t cap) {
  char path[] = "/tmp/hm_test_stderr_XXXXXX";
  int tmp = mkstemp(path);
  cr_assert_geq(tmp, 0);
  unlink(path);
  int saved = dup(fd);
  cr_assert_geq(saved, 0);
  fflush(stderr);
  cr_assert_eq(dup2(tmp, fd), fd);
  fn();
  fflush(stderr);
  dup2(saved, fd);
  close(saved);
  off_t len = lseek(tmp, 0, SEEK_END);
  lseek(tmp, 0, SEEK_SET);
  ssize_t got = read(tmp, buf, cap - 1);
  close(tmp);
  buf[got > 0 ? got : 0] = 0;
  return (size_t)len;
}

static void call_malloc_stats(void) { A(malloc_stats)(); }

Test(malloc_control, malloc_stats_writes_to_stderr) {
  void *p = A(malloc)(opaque(10000));
  static char out[1 << 16];
  size_t len = capture_fd(2, call_malloc_stats, out, sizeof out);
  cr_assert_gt(len, 0, "malloc_stats wrote nothing to stderr");
  /* glibc's report has lines such as "system bytes" and "in use bytes" */
  cr_assert(strstr(out, "bytes") != NULL, "malloc_stats report has no byte counts:\n%s", out);
  A(free)(p);
}

static void call_stats_print(void) { hm_stats_print(2); }

Test(malloc_control, hm_stats_print_writes) {
  static char out[1 << 16];
  size_t len = capture_fd(2, call_stats_print, out, sizeof out);
  cr_assert_gt(len, 0, "hm_stats_print(2) wrote nothing");
}

Test(malloc_control, hm_stats_track_allocations) {
  hm_stats_t s0 = stats_now();
  void *small = A(malloc)(opaque(100));
  void *medium = A(malloc)(opaque(50000));
  void *large = A(malloc)(opaque(3 * MiB));
  cr_assert_not_null(small);
  cr_assert_not_null(medium);
  cr_assert_not_null(large);
  hm_stats_t s1 = stats_now();
  cr_assert_geq(s1.malloc_count, s0.malloc_count + 3);
  cr_assert_geq(s1.allocated, s0.allocated + 100 + 50000 + 3 * MiB,
                "allocated %zu -> %zu", s0.allocated, s1.allocated);
  cr_assert_eq(s1.large_count, s0.large_count + 1);
  cr_assert_geq(s1.large_bytes, s0.large_bytes + 3 * MiB);
  cr_assert_geq(s1.mapped, s1.large_bytes);
  cr_assert_geq(s1.peak_mapped, s1.mapped);
  cr_assert_geq(s1.mmap_count, s1.munmap_count);
  A(free)(small);
  A(free)(medium);
  A(free)(large);
  hm_stats_t s2 = stats_now();
  cr_assert_geq(s2.free_count, s1.free_count + 3);
  cr_assert_eq(s2.allocated, s0.allocated, "allocated %zu before, %zu after alloc+free",
               s0.allocated, s2.allocated);
  cr_assert_eq(s2.large_count, s0.large_count);
  cr_assert_eq(s2.large_bytes, s0.large_bytes);
}
