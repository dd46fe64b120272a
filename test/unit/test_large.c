/* Large tier: own mapping, unmapped on free, mremap on realloc (grows without copying),
 * over-aligned blocks with trimmed head and tail, usable size, counters, mallopt threshold. */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/mman.h>

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "hmalloc.h"
#include "internal.h"

static bool mapped(void *p) {
  unsigned char v;
  return mincore((void *)hm_page_floor((uintptr_t)p), HM_PAGE, &v) == 0;
}

Test(large, own_mapping_cached_on_free_and_unmapped_by_trim) {
  hmi_ensure_init();
  size_t count = hmi_large_count;
  char *p = malloc(1 << 20);
  cr_assert_not_null(p);
  cr_assert_eq((uintptr_t)p % 64, 0);
  cr_assert_eq(hmi_large_count, count + 1);
  cr_assert_geq(malloc_usable_size(p), 1 << 20);
  memset(p, 1, malloc_usable_size(p));
  free(p);
  cr_assert_eq(hmi_large_count, count);
  cr_assert(mapped(p), "a freed mapping is kept for reuse");
  cr_assert_geq(hmi_large_cached_bytes, 1 << 20);
  cr_assert_eq(malloc_trim(0), 1);
  cr_assert_eq(hmi_large_cached_bytes, 0);
  cr_assert_not(mapped(p), "malloc_trim unmapped the kept mapping");
}

Test(large, freed_mapping_is_reused_and_calloc_still_zeroes_it) {
  hmi_ensure_init();
  unsigned char *p = malloc(600000);
  memset(p, 0xee, 600000);
  free(p);
  uint64_t mmaps = hmi_os_mmap_calls;
  unsigned char *q = calloc(1, 590000); /* fits the kept mapping with little to spare */
  cr_assert_eq(q, p, "the kept mapping was reused");
  cr_assert_eq(hmi_os_mmap_calls, mmaps, "without a new mmap");
  for (size_t i = 0; i < 590000; i += 997) cr_assert_eq(q[i], 0, "byte %zu not zeroed", i);
  free(q);
  void *big = malloc(8 << 20); /* far bigger than anything kept: a new mapping */
  cr_assert_neq(big, p);
  free(big);
  malloc_trim(0);
}

Test(large, threshold_boundary_and_mallopt) {
  hmi_ensure_init();
  size_t count = hmi_large_count;
  void *below = malloc(HM_DEFAULT_MMAP_THRESHOLD - 1);
  void *at = malloc(HM_DEFAULT_MMAP_THRESHOLD);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)below) & 7, HM_PM_MEDIUM);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)at) & 7, HM_PM_LARGE);
  cr_assert_eq(hmi_large_count, count + 1);
  cr_assert_eq(mallopt(M_MMAP_THRESHOLD, 64 * 1024), 1);
  void *now_large = malloc(80000);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)now_large) & 7, HM_PM_LARGE);
  cr_assert_eq(mallopt(M_MMAP_THRESHOLD, 64 << 20), 0, "above glibc's maximum: refused");
  free(below);
  free(at);
  free(now_large);
}

Test(large, realloc_uses_mremap_without_copy) {
  hmi_ensure_init();
  size_t n = 4 << 20;
  unsigned char *p = malloc(n);
  for (size_t i = 0; i < n; i += 4096) p[i] = (unsigned char)(i >> 12);
  uint64_t mremaps = hmi_os_mremap_calls, munmaps = hmi_os_munmap_calls;
  unsigned char *q = realloc(p, 64 << 20);
  cr_assert_not_null(q);
  /* one mremap in place, or a failed one and a move into a reserved range */
  cr_assert(hmi_os_mremap_calls == mremaps + 1 || hmi_os_mremap_calls == mremaps + 2,
            "the block was resized by mremap");
  cr_assert_eq(hmi_os_munmap_calls, munmaps, "and not copied to a new mapping");
  for (size_t i = 0; i < n; i += 4096) cr_assert_eq(q[i], (unsigned char)(i >> 12));
  memset(q, 3, 64 << 20);
  unsigned char *r = realloc(q, 2 << 20); /* shrink in place */
  cr_assert_eq(r, q);
  cr_assert_eq(r[(2 << 20) - 1], 3);
  cr_assert_eq(hm_heap_check(), 0);
  free(r);
}

Test(large, over_aligned_blocks) {
  for (size_t align = 4096; align <= ((size_t)1 << 24); align <<= 1) {
    void *p = NULL;
    cr_assert_eq(posix_memalign(&p, align, 300000), 0);
    cr_assert_eq((uintptr_t)p % align, 0, "align %zu", align);
    cr_assert_geq(malloc_usable_size(p), 300000);
    memset(p, 0x5a, 300000);
    cr_assert_eq(hm_heap_check(), 0);
    /* realloc of an over-aligned block moves it (mremap could lose the alignment) */
    void *q = realloc(p, 600000);
    cr_assert_not_null(q);
    cr_assert_eq(((unsigned char *)q)[299999], 0x5a);
    free(q);
  }
}

Test(large, interior_pointer_is_not_a_block) {
  char *p = malloc(1 << 20);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)p + 8192), 0);
  cr_assert_null(hmi_large_of(p + 64, hmi_pagemap_get((uintptr_t)p)));
  free(p);
}

Test(large, growth_by_small_steps_calls_mremap_rarely) {
  hmi_ensure_init();
  size_t n = 200000;
  char *p = malloc(n);
  uint64_t mremaps = hmi_os_mremap_calls;
  for (int i = 0; i < 400; i++) { /* 400 appends of 4 KiB: 1.6 MB more */
    n += 4096;
    p = realloc(p, n);
    cr_assert_not_null(p);
    p[n - 1] = 1;
  }
  cr_assert_lt(hmi_os_mremap_calls - mremaps, 40, "%llu mremaps for 400 page-sized appends",
               (unsigned long long)(hmi_os_mremap_calls - mremaps));
  cr_assert_geq(malloc_usable_size(p), n);
  char *q = realloc(p, n - 100000); /* a small shrink keeps the block */
  cr_assert_eq(q, p);
  free(q);
}

Test(large, empty_over_aligned_blocks_own_their_page) {
  /* found by the fuzzer: memalign(256 KiB, 0) ended its mapping where its pointer began, so
   * the next mapping could be placed there and the two blocks shared a page-map entry */
  void *p[16];
  for (int i = 0; i < 16; i++) {
    size_t volatile zero = 0;
    p[i] = memalign((size_t)256 << 10, zero);
    cr_assert_not_null(p[i]);
    cr_assert_geq(malloc_usable_size(p[i]), 1);
    ((char *)p[i])[0] = 1; /* the page is ours */
    void *big = malloc(300000);
    cr_assert_eq(hm_heap_check(), 0);
    free(big);
  }
  for (int i = 0; i < 16; i++) free(p[i]);
  cr_assert_eq(hm_heap_check(), 0);
}
