/* static_exe.c - a fully static executable (gcc -static) linked with libhmalloc.a.  Not a
 * Criterion program (libcriterion is shared only): it checks everything itself, prints what
 * it saw, and exits 0 only when all went well.  It allocates in every tier through the
 * standard names, uses threads, and verifies that hm_stats moved, i.e. that the malloc glibc's
 * own code calls in a static program is hmalloc's. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hmalloc.h"

static int failures;

#define CHECK(cond, ...)                                                                     \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      failures++;                                                                            \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                          \
      fprintf(stderr, __VA_ARGS__);                                                          \
      fputc('\n', stderr);                                                                   \
    }                                                                                        \
  } while (0)

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 131 + seed);
}

static int intact(const unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)(i * 131 + seed)) return 0;
  return 1;
}

static const size_t sizes[] = {0,     1,      16,     100,    1000,   4096,   4097,
                               10000, 60000,  131071, 131072, 200000, 1 << 20, 5 << 20};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

static void *thread_main(void *arg) {
  unsigned id = (unsigned)(uintptr_t)arg;
  for (int round = 0; round < 200; round++) {
    void *p[N_SIZES];
    for (size_t i = 0; i < N_SIZES; i++) {
      size_t n = sizes[i] > 300000 ? 300000 : sizes[i];
      p[i] = malloc(n);
      if (!p[i]) return (void *)1;
      fill(p[i], n, id + (unsigned)i);
    }
    for (size_t i = 0; i < N_SIZES; i++) {
      size_t n = sizes[i] > 300000 ? 300000 : sizes[i];
      if (!intact(p[i], n, id + (unsigned)i)) return (void *)2;
      free(p[i]);
    }
  }
  return NULL;
}

int main(void) {
  hm_stats_t s0, s1, s2;
  hm_stats_get(&s0);

  /* every tier, through every entry point */
  void *blocks[N_SIZES][4];
  for (size_t i = 0; i < N_SIZES; i++) {
    size_t n = sizes[i];
    blocks[i][0] = malloc(n);
    blocks[i][1] = calloc(1, n);
    blocks[i][2] = realloc(NULL, n);
    blocks[i][3] = NULL;
    CHECK(posix_memalign(&blocks[i][3], 4096, n) == 0, "posix_memalign(4096, %zu)", n);
    for (int k = 0; k < 4; k++) {
      CHECK(blocks[i][k] != NULL, "allocation of %zu bytes (entry %d) failed", n, k);
      if (!blocks[i][k]) return 1;
      CHECK(((uintptr_t)blocks[i][k] & 15) == 0, "%p not 16-byte aligned", blocks[i][k]);
      CHECK(malloc_usable_size(blocks[i][k]) >= n, "usable size %zu < %zu",
            malloc_usable_size(blocks[i][k]), n);
    }
    CHECK(((uintptr_t)blocks[i][3] & 4095) == 0, "posix_memalign(4096) gave %p", blocks[i][3]);
    for (size_t b = 0; b < n; b++)
      if (((unsigned char *)blocks[i][1])[b]) {
        CHECK(0, "calloc(1, %zu) byte %zu not zero", n, b);
        break;
      }
    for (int k = 0; k < 4; k++) fill(blocks[i][k], n, (unsigned)(i * 4 + (size_t)k));
  }
  for (size_t i = 0; i < N_SIZES; i++)
    for (int k = 0; k < 4; k++)
      CHECK(intact(blocks[i][k], sizes[i], (unsigned)(i * 4 + (size_t)k)), "block %zu/%d corrupted",
            sizes[i], k);
  hm_stats_get(&s1);
  CHECK(s1.malloc_count >= s0.malloc_count + 4 * N_SIZES, "malloc_count %llu -> %llu",
        (unsigned long long)s0.malloc_count, (unsigned long long)s1.malloc_count);
  CHECK(s1.large_count >= s0.large_count + 4, "large_count %zu -> %zu", s0.large_count,
        s1.large_count);
  CHECK(s1.allocated >= s0.allocated + 4 * (1 << 20), "allocated %zu -> %zu", s0.allocated,
        s1.allocated);
  CHECK(hm_heap_check() == 0, "hm_heap_check failed");

  /* realloc through the tiers */
  unsigned char *r = malloc(1);
  size_t cur = 1;
  fill(r, cur, 9);
  for (size_t n = 16; n <= (8u << 20); n *= 4) {
    r = realloc(r, n);
    CHECK(r != NULL, "realloc to %zu failed", n);
    if (!r) return 1;
    CHECK(intact(r, cur, 9), "realloc %zu -> %zu lost contents", cur, n);
    fill(r, n, 9);
    cur = n;
  }
  free(r);
  for (size_t i = 0; i < N_SIZES; i++)
    for (int k = 0; k < 4; k++) free(blocks[i][k]);

  /* libc's own allocations (stdio buffers, strdup) */
  char *d = strdup("static hmalloc");
  CHECK(d && hm_malloc_usable_size(d) >= 15, "strdup");
  free(d);

  /* threads */
  enum { T = 4 };
  pthread_t th[T];
  for (int i = 0; i < T; i++)
    CHECK(pthread_create(&th[i], NULL, thread_main, (void *)(uintptr_t)i) == 0, "pthread_create");
  for (int i = 0; i < T; i++) {
    void *ret = (void *)3;
    pthread_join(th[i], &ret);
    CHECK(ret == NULL, "thread %d reported %p", i, ret);
  }

  /* overflow behaves */
  errno = 0;
  void *bad = calloc(SIZE_MAX / 2, 4);
  CHECK(bad == NULL && errno == ENOMEM, "calloc overflow gave %p errno %d", bad, errno);

  hm_stats_get(&s2);
  CHECK(s2.malloc_count >= s1.malloc_count + T * 200 * N_SIZES, "threads' mallocs not counted: %llu -> %llu",
        (unsigned long long)s1.malloc_count, (unsigned long long)s2.malloc_count);
  CHECK(s2.free_count >= s0.free_count + 4 * N_SIZES + T * 200 * N_SIZES,
        "free_count %llu -> %llu", (unsigned long long)s0.free_count,
        (unsigned long long)s2.free_count);
  CHECK(s2.large_count == s0.large_count, "large_count %zu at start, %zu at end", s0.large_count,
        s2.large_count);
  CHECK(hm_heap_check() == 0, "hm_heap_check failed at the end");

  printf("static hmalloc: malloc_count %llu -> %llu, free_count %llu -> %llu, mapped %zu\n",
         (unsigned long long)s0.malloc_count, (unsigned long long)s2.malloc_count,
         (unsigned long long)s0.free_count, (unsigned long long)s2.free_count, s2.mapped);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("ok\n");
  return 0;
}
