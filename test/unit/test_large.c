/* Large tier: own mapping, unmapped on free, mremap on realloc (grows without copying),
 * over-aligned blocks with trimmed head and tail, usable size, counters, mallopt threshold. */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

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
  malloc_trim(0); /* a fresh mapping, not one assembled from kept ones (tested below) */
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

/* Minor page faults of this process so far. */
#include <sys/resource.h>
static long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

/* Kernel mappings (lines of /proc/self/maps) that overlap [p, p + n). */
#include <stdio.h>
static int vmas_over(const void *p, size_t n) {
  FILE *f = fopen("/proc/self/maps", "r");
  cr_assert_not_null(f);
  unsigned long lo, hi, a = (unsigned long)p, b = a + n;
  int count = 0;
  char line[512];
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo < b && hi > a) count++;
  fclose(f);
  return count;
}

/* Kept mappings keep their pages resident: a block built from them, by splitting a bigger
 * one or by moving several smaller ones next to each other, faults (almost) no page when
 * touched again, and its contents are the block's own (recycled: calloc still zeroes). */
Test(large, kept_mappings_are_split_and_assembled_without_new_faults) {
  hmi_ensure_init();
  malloc_trim(0); /* an empty cache to start from */
  const size_t MiB = 1 << 20, pages_per_mib = MiB / HM_PAGE;
  /* split: one 8 MiB block freed, then 2 MiB and 5 MiB taken out of it */
  char *big = malloc(8 * MiB);
  cr_assert_not_null(big);
  memset(big, 1, 8 * MiB);
  free(big);
  long before = minor_faults();
  char *a = malloc(2 * MiB), *b = malloc(5 * MiB);
  cr_assert(a && b);
  memset(a, 2, 2 * MiB);
  memset(b, 3, 5 * MiB);
  long faults = minor_faults() - before;
  cr_expect_lt(faults, (long)pages_per_mib / 4, "%ld faults touching 7 MiB carved from a kept 8 MiB", faults);
  free(a);
  free(b);
  /* assembly: three blocks mapped with 1 MiB each freed, then one mapped with 3 MiB */
  malloc_trim(0);
  char *q[3];
  for (int i = 0; i < 3; i++) {
    q[i] = malloc(MiB - 4096);
    cr_assert_not_null(q[i]);
    memset(q[i], 4, MiB - 4096);
  }
  for (int i = 0; i < 3; i++) free(q[i]);
  before = minor_faults();
  size_t n = 3 * MiB - 4096;
  char *whole = calloc(1, n);
  cr_assert_not_null(whole);
  for (size_t i = 0; i < n; i += 512)
    cr_assert_eq(whole[i], 0, "calloc of a recycled block is not zero at %zu", i);
  memset(whole, 5, n);
  faults = minor_faults() - before;
  cr_expect_lt(faults, (long)pages_per_mib / 4, "%ld faults touching 3 MiB assembled from kept 1 MiB mappings", faults);
  /* the block records the kernel mappings it is made of, at most HM_LARGE_MAX_VMAS */
  hm_large_t *h = (hm_large_t *)((uintptr_t)whole - HM_LARGE_HEADER);
  cr_expect_leq(vmas_over(whole, n), (int)h->vmas.n + 1);
  cr_expect_leq(h->vmas.n + 1, HM_LARGE_MAX_VMAS);
  cr_expect_eq(hm_heap_check(), 0);
  /* an assembled block spans several kernel mappings, which mremap cannot resize: realloc
   * moves it to one fresh mapping, contents intact, and resizes that one by mremap after */
  char *grown = realloc(whole, 8 * MiB);
  cr_assert_not_null(grown);
  for (size_t i = 0; i < n; i += 4096) cr_assert_eq(grown[i], 5, "realloc lost byte %zu", i);
  memset(grown, 6, 8 * MiB);
  uint64_t mremaps = hmi_os_mremap_calls;
  whole = realloc(grown, 32 * MiB);
  cr_assert_not_null(whole);
  cr_expect_gt(hmi_os_mremap_calls, mremaps, "the moved block is resized by mremap");
  for (size_t i = 0; i < 8 * MiB; i += 4096) cr_assert_eq(whole[i], 6, "realloc lost byte %zu", i);
  cr_expect_eq(hm_heap_check(), 0);
  free(whole);
  malloc_trim(0);
  cr_expect_eq(hmi_large_cached_bytes, 0);
}

/* A block is assembled from as many as 24 kept mappings (a program that frees many
 * mid-sized buffers, then needs one big one): all their pages are reused, none faults. */
Test(large, assembly_uses_up_to_two_dozen_kept_mappings) {
  hmi_ensure_init();
  const size_t MiB = 1 << 20, pages_per_mib = MiB / HM_PAGE;
  enum { PIECES = 24 };
  /* a big block freed first lets the cache keep all the pieces (its bound follows the
   * biggest recent block); malloc_trim then empties the cache */
  free(malloc(16 * MiB));
  malloc_trim(0);
  char *q[PIECES];
  for (int i = 0; i < PIECES; i++) {
    q[i] = malloc(MiB / 2 - 4096);
    cr_assert_not_null(q[i]);
    memset(q[i], 4, MiB / 2 - 4096);
  }
  for (int i = 0; i < PIECES; i++) free(q[i]);
  cr_assert_geq(hmi_large_cached_bytes, PIECES * MiB / 2, "every piece is kept");
  long before = minor_faults();
  size_t n = PIECES * MiB / 2 - 4096;
  char *whole = malloc(n);
  cr_assert_not_null(whole);
  memset(whole, 5, n);
  long faults = minor_faults() - before;
  cr_expect_lt(faults, (long)pages_per_mib / 4, "%ld faults touching %zu bytes assembled from %d kept mappings", faults, n, (int)PIECES);
  hm_large_t *h = (hm_large_t *)((uintptr_t)whole - HM_LARGE_HEADER);
  cr_expect_leq(vmas_over(whole, n), (int)h->vmas.n + 1);
  cr_expect_eq(hm_heap_check(), 0);
  free(whole);
}

/* Many frees and allocations of mixed large sizes: every live block stays within
 * HM_LARGE_MAX_VMAS kernel mappings, as its record says, and the contents survive. */
Test(large, assembled_blocks_stay_within_their_vma_bound) {
  hmi_ensure_init();
  enum { LIVE = 12 };
  char *p[LIVE] = {0};
  size_t n[LIVE] = {0};
  unsigned seed = 7;
  for (int step = 0; step < 3000; step++) {
    seed = seed * 1103515245u + 12345u;
    int i = (int)((seed >> 8) % LIVE);
    if (p[i]) {
      cr_assert_eq(p[i][0], (char)i);
      cr_assert_eq(p[i][n[i] - 1], (char)i);
      free(p[i]);
    }
    seed = seed * 1103515245u + 12345u;
    n[i] = ((size_t)128 << 10) + (seed >> 4) % ((size_t)6 << 20);
    p[i] = malloc(n[i]);
    cr_assert_not_null(p[i]);
    p[i][0] = p[i][n[i] - 1] = (char)i;
    if (step % 100 == 0)
      for (int k = 0; k < LIVE; k++) {
        if (!p[k]) continue;
        hm_large_t *h = (hm_large_t *)((uintptr_t)p[k] - HM_LARGE_HEADER);
        cr_assert_leq(h->vmas.n + 1, HM_LARGE_MAX_VMAS);
        cr_assert_leq(vmas_over(p[k], n[k]), (int)h->vmas.n + 1, "block %p: more VMAs than recorded", p[k]);
      }
  }
  cr_expect_eq(hm_heap_check(), 0);
  for (int i = 0; i < LIVE; i++) free(p[i]);
}

/* With no kept mapping (malloc_trim), a block of n bytes whose every page is touched. */
static char *touched_after_trim(size_t n, int byte) {
  hmi_ensure_init();
  malloc_trim(0);
  char *p = malloc(n);
  cr_assert_not_null(p);
  memset(p, byte, n);
  return p;
}

/* realloc shrinking a large block keeps the cut-off tail resident, with no system call, and
 * growing it again takes the tail back in place: same address, no mremap, no page faults. */
Test(large, shrink_keeps_the_tail_and_regrowth_takes_it_back) {
  const size_t MiB = 1 << 20;
  char *p = touched_after_trim(4 * MiB, 7);
  uint64_t mremaps = hmi_os_mremap_calls, munmaps = hmi_os_munmap_calls;
  char *q = realloc(p, MiB);
  cr_assert_eq(q, p, "shrinking stays in place");
  cr_expect_eq(hmi_os_munmap_calls, munmaps, "no munmap to shrink");
  cr_expect_eq(hmi_os_mremap_calls, mremaps, "no mremap to shrink");
  cr_expect_geq(hmi_large_cached_bytes, 2 * MiB, "the tail is kept");
  cr_expect_eq(hm_heap_check(), 0);
  long before = minor_faults();
  char *r = realloc(q, 4 * MiB - 4096);
  cr_assert_eq(r, p, "regrowth takes the kept tail back in place");
  cr_expect_eq(hmi_os_mremap_calls, mremaps, "without mremap");
  for (size_t i = 0; i < MiB; i += 4096) cr_assert_eq(r[i], 7, "byte %zu lost", i);
  memset(r, 8, 4 * MiB - 4096);
  long faults = minor_faults() - before;
  cr_expect_lt(faults, 64, "%ld page faults touching the regrown block", faults);
  cr_expect_eq(hm_heap_check(), 0);
  /* growing beyond the tail: mremap does the rest, contents intact */
  char *s = realloc(r, 16 * MiB);
  cr_assert_not_null(s);
  for (size_t i = 0; i < 4 * MiB - 4096; i += 4096) cr_assert_eq(s[i], 8, "byte %zu lost", i);
  cr_expect_eq(hm_heap_check(), 0);
  free(s);
}

/* The bytes kept follow the recent peak of live large blocks: all of 16 blocks of 1 MiB
 * live at once are kept when freed (the bound of six times the biggest block before kept 6
 * MiB of them), live + kept never goes above that peak by more than two of the biggest
 * blocks, and once the program keeps only 4 blocks live the peak decays and kept bytes
 * leave. */
Test(large, kept_bytes_follow_the_recent_peak_of_live_blocks) {
  hmi_ensure_init();
  malloc_trim(0);
  const size_t MiB = 1 << 20;
  enum { PEAK = 16, STEADY = 4 };
  char *p[PEAK];
  size_t base = hmi_large_bytes; /* blocks other tests left live, if any */
  for (int i = 0; i < PEAK; i++) {
    p[i] = malloc(MiB);
    cr_assert_not_null(p[i]);
    memset(p[i], 1, MiB);
  }
  size_t peak = hmi_large_bytes;
  for (int i = 0; i < PEAK; i++) free(p[i]);
  cr_expect_geq(hmi_large_cached_bytes, PEAK * MiB, "%zu bytes kept", hmi_large_cached_bytes);
  size_t most = 0;
  for (int round = 0; round < 4000; round++) {
    for (int i = 0; i < STEADY; i++) {
      p[i] = malloc(MiB);
      cr_assert_not_null(p[i]);
    }
    for (int i = 0; i < STEADY; i++) free(p[i]);
    size_t footprint = hmi_large_bytes + hmi_large_cached_bytes;
    if (footprint > most) most = footprint;
  }
  cr_expect_leq(most, peak + 2 * (MiB + HM_PAGE), "live + kept reached %zu bytes (peak %zu)", most, peak);
  /* 16000 frees: the peak decays to (1 - 1/8192)^16000 of itself, about 2.3 MiB here */
  cr_expect_leq(hmi_large_cached_bytes, 6 * MiB, "%zu bytes still kept", hmi_large_cached_bytes);
  cr_expect_geq(hmi_large_cached_bytes, STEADY * MiB, "the steady blocks' mappings stay");
  cr_expect_eq(hmi_large_bytes, base);
  cr_expect_eq(hm_heap_check(), 0);
}

/* A block carved from a kept mapping grows into the rest of it in place (the tail split off
 * is known as its continuation): no system call, no page faults. */
Test(large, block_grows_into_the_rest_of_its_kept_mapping) {
  hmi_ensure_init();
  malloc_trim(0);
  const size_t KiB = 1024, MiB = 1 << 20;
  char *k = malloc(2 * MiB);
  cr_assert_not_null(k);
  memset(k, 1, 2 * MiB);
  free(k); /* kept, resident */
  char *p = malloc(300 * KiB);
  cr_assert_eq(p, k, "served from the kept mapping");
  memset(p, 2, 300 * KiB);
  uint64_t mremaps = hmi_os_mremap_calls, maps = hmi_large_maps;
  long before = minor_faults();
  char *q = realloc(p, MiB);
  cr_assert_eq(q, p, "grown in place into the kept rest");
  memset(q + 300 * KiB, 3, MiB - 300 * KiB);
  long faults = minor_faults() - before;
  cr_expect_eq(hmi_os_mremap_calls, mremaps, "no mremap");
  cr_expect_eq(hmi_large_maps, maps, "no mmap");
  cr_expect_lt(faults, 32, "%ld page faults touching the grown block", faults);
  for (size_t i = 0; i < 300 * KiB; i += 4096) cr_assert_eq(q[i], 2, "byte %zu lost", i);
  cr_expect_eq(hm_heap_check(), 0);
  free(q);
}

/* A 300 KiB block of 2s in a mapping of its own (*p), and a 2 MiB mapping kept, resident,
 * with nothing else (returned: its address). */
static char *block_and_kept_mapping(char **p) {
  hmi_ensure_init();
  malloc_trim(0);
  char *k = malloc(2 << 20);
  *p = malloc(300 << 10); /* a mapping of its own: the cache is empty */
  cr_assert(k && *p);
  memset(k, 1, 2 << 20);
  memset(*p, 2, 300 << 10);
  free(k);
  return k;
}

/* A block that grows by half or more moves into a kept mapping (resident) rather than
 * growing by mremap into fresh pages that fault when touched. */
Test(large, big_growth_moves_into_a_kept_mapping) {
  const size_t KiB = 1024;
  char *p;
  char *k = block_and_kept_mapping(&p);
  long before = minor_faults();
  char *q = realloc(p, 700 * KiB);
  cr_assert_not_null(q);
  memset(q + 300 * KiB, 3, 400 * KiB);
  long faults = minor_faults() - before;
  cr_expect_eq(q, k, "moved into the kept mapping");
  cr_expect_lt(faults, 32, "%ld page faults touching the grown block", faults);
  for (size_t i = 0; i < 300 * KiB; i += 4096) cr_assert_eq(q[i], 2, "byte %zu lost", i);
  cr_expect_eq(hm_heap_check(), 0);
  free(q);
}

/* Makes sure block p (usable bytes from p) cannot grow in place: the page after its mapping is
 * taken, by a mapping of this test's own unless something is there already. */
static void *block_the_page_after(char *p, size_t usable) {
  void *after = (void *)hm_align_up((uintptr_t)p + usable, HM_PAGE);
  void *m = mmap(after, HM_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                 -1, 0);
  return m == after ? m : NULL;
}

/* A block below COPY_GROWTH_MAX that cannot grow in place, while the cache keeps enough for
 * it, is copied into kept memory (resident) instead of being moved by mremap and growing
 * into fresh pages; its own mapping is kept in turn. */
Test(large, growth_that_cannot_stay_in_place_copies_into_kept_memory) {
  const size_t KiB = 1024;
  char *p;
  char *k = block_and_kept_mapping(&p);
  void *blocker = block_the_page_after(p, malloc_usable_size(p));
  uint64_t maps = hmi_large_maps;
  long before = minor_faults();
  char *q = realloc(p, 400 * KiB); /* a third more: not enough for the rule above */
  cr_assert_not_null(q);
  memset(q + 300 * KiB, 3, 100 * KiB);
  long faults = minor_faults() - before;
  cr_expect_eq(q, k, "copied into the kept mapping");
  cr_expect_eq(hmi_large_maps, maps, "no mmap");
  cr_expect_lt(faults, 16, "%ld page faults touching the grown block", faults);
  cr_expect(mapped(p), "the old mapping is kept");
  for (size_t i = 0; i < 300 * KiB; i += 4096) cr_assert_eq(q[i], 2, "byte %zu lost", i);
  cr_expect_eq(hm_heap_check(), 0);
  free(q);
  if (blocker) munmap(blocker, HM_PAGE);
}

/* With nothing kept, the same growth moves the block's pages by mremap (no copy into a fresh
 * mapping, which would fault as much and copy too) and keeps nothing behind. */
Test(large, growth_that_cannot_stay_in_place_moves_when_nothing_is_kept) {
  hmi_ensure_init();
  malloc_trim(0);
  const size_t KiB = 1024;
  char *p = malloc(300 * KiB);
  cr_assert_not_null(p);
  memset(p, 2, 300 * KiB);
  void *blocker = block_the_page_after(p, malloc_usable_size(p));
  cr_assert_eq(hmi_large_cached_bytes, 0);
  uint64_t remaps = hmi_os_mremap_calls;
  char *q = realloc(p, 400 * KiB);
  cr_assert_not_null(q);
  cr_expect_eq(hmi_os_mremap_calls, remaps + 2, "a failed mremap in place, then a move");
  cr_expect_eq(hmi_large_cached_bytes, 0, "the pages moved: nothing is kept");
  for (size_t i = 0; i < 300 * KiB; i += 4096) cr_assert_eq(q[i], 2, "byte %zu lost", i);
  cr_expect_eq(hm_heap_check(), 0);
  free(q);
  if (blocker) munmap(blocker, HM_PAGE);
}

/* At least 256 refills of this thread's cache: 40,000 16-byte blocks taken, then freed. */
static void small_refills(void) {
  enum { N = 40000 };
  static void *q[N];
  for (int i = 0; i < N; i++) cr_assert_not_null(q[i] = malloc(16));
  for (int i = 0; i < N; i++) free(q[i]);
}

/* A program whose large blocks are gone and that makes no large call for a second gets its
 * kept mappings unmapped: its other allocations notice the idle time (the bound on kept
 * bytes only moves at large frees).  While large calls are recent, they stay. */
Test(large, kept_mappings_are_unmapped_after_a_second_without_large_calls) {
  const size_t MiB = 1 << 20;
  char *p = touched_after_trim(4 * MiB, 1);
  free(p);
  cr_assert_geq(hmi_large_cached_bytes, 4 * MiB);
  small_refills();
  cr_expect_geq(hmi_large_cached_bytes, 4 * MiB, "kept while the last large call is recent");
  cr_expect(mapped(p));
  struct timespec pause = {1, 100 * 1000 * 1000};
  nanosleep(&pause, NULL);
  small_refills();
  cr_expect_eq(hmi_large_cached_bytes, 0, "%zu bytes still kept after 1.1 s without a large call",
               hmi_large_cached_bytes);
  cr_expect_not(mapped(p), "the kept mapping was unmapped");
  cr_expect_eq(hm_heap_check(), 0);
}

/* Serials tell a block from a later one at the same address (take_back_tail): each block has
 * its own, never 0, whether it came from a kept mapping (given with the cache's lock), a
 * fresh mapping or an over-aligned one (given when the block is linked). */
Test(large, every_block_has_its_own_nonzero_serial) {
  const size_t KiB = 1024;
  malloc_trim(0);
  void *fresh = malloc(600 * KiB);
  void *gone = malloc(600 * KiB);
  free(gone);
  void *kept = malloc(590 * KiB); /* from gone's kept mapping */
  void *aligned = memalign(64 * KiB, 300 * KiB);
  cr_assert(fresh && kept && aligned);
  cr_assert_eq(kept, gone, "the kept mapping was reused");
  void *blocks[] = {fresh, kept, aligned};
  uint64_t serial[3];
  for (int i = 0; i < 3; i++) {
    serial[i] = ((hm_large_t *)((char *)blocks[i] - HM_LARGE_HEADER))->serial;
    cr_expect_neq(serial[i], 0, "block %d has serial 0", i);
    for (int j = 0; j < i; j++) cr_expect_neq(serial[i], serial[j], "blocks %d and %d", j, i);
  }
  for (int i = 0; i < 3; i++) free(blocks[i]);
  malloc_trim(0);
}

/* A kept mapping up to twice the request is handed out whole (the rest is the block's spare,
 * not usable and not kept apart), and the block grows into its spare in place with no system
 * call; one of more than twice the request is still split and its tail kept. */
Test(large, kept_mapping_up_to_twice_the_request_is_handed_out_whole) {
  const size_t MiB = 1 << 20;
  char *p = touched_after_trim(4 * MiB, 3);
  free(p);
  cr_assert_geq(hmi_large_cached_bytes, 4 * MiB);
  uint64_t maps = hmi_os_mmap_calls, remaps = hmi_os_mremap_calls, unmaps = hmi_os_munmap_calls;
  char *q = malloc(5 * MiB / 2);
  cr_assert_eq(q, p, "the kept mapping was reused");
  cr_expect_eq(hmi_large_cached_bytes, 0, "%zu bytes split off and kept", hmi_large_cached_bytes);
  cr_expect_leq(malloc_usable_size(q), 5 * MiB / 2 + HM_PAGE, "usable %zu", malloc_usable_size(q));
  char *q2 = realloc(q, 12 * MiB / 5); /* a small shrink: in place, the spare still apart */
  cr_assert_eq(q2, q);
  cr_expect_leq(malloc_usable_size(q), 5 * MiB / 2 + HM_PAGE, "usable %zu", malloc_usable_size(q));
  char *r = realloc(q, 7 * MiB / 2);
  cr_assert_eq(r, q, "grown into its spare in place");
  cr_expect_geq(malloc_usable_size(r), 7 * MiB / 2);
  memset(r, 4, 7 * MiB / 2);
  cr_expect_eq(hmi_os_mmap_calls, maps);
  cr_expect_eq(hmi_os_mremap_calls, remaps);
  cr_expect_eq(hmi_os_munmap_calls, unmaps);
  cr_expect_eq(hm_heap_check(), 0);
  free(r);
  cr_expect_geq(hmi_large_cached_bytes, 4 * MiB, "the whole mapping is kept again");
  char *s = malloc(MiB + MiB / 2); /* less than half of it: split */
  cr_assert_eq(s, p);
  cr_expect_geq(hmi_large_cached_bytes, 2 * MiB, "the tail was kept apart");
  cr_expect_eq(hm_heap_check(), 0);
  free(s);
}

/* Medium blocks of 64 KiB, `n` of them, kept in m[] (the heap grows by about n * 64 KiB). */
static void medium_blocks(void **m, int n) {
  for (int i = 0; i < n; i++) {
    m[i] = malloc(64 << 10);
    cr_assert_not_null(m[i]);
    memset(m[i], 2, 64 << 10);
  }
}

/* sqlite3 frees a 2 MiB buffer, then sorts in the heap: the heap growing past the most it
 * ever mapped unmaps the kept mapping, so the footprint moves rather than adds up. */
Test(large, heap_growth_past_its_high_mark_unmaps_kept_mappings) {
  hmi_ensure_init();
  char *p = malloc(1 << 20);
  memset(p, 1, 1 << 20);
  free(p);
  cr_assert(mapped(p), "a freed mapping is kept for reuse");
  void *m[48];
  medium_blocks(m, 48);
  cr_assert_eq(hmi_large_cached_bytes, 0);
  cr_assert_not(mapped(p), "3 MiB of new heap unmapped the kept 1 MiB mapping");
  for (int i = 0; i < 48; i++) free(m[i]);
}

/* A heap that trims and regrows below its high mark (the large case) keeps the cache. */
Test(large, heap_regrowth_below_its_high_mark_keeps_kept_mappings) {
  hmi_ensure_init();
  void *m[48];
  medium_blocks(m, 48);
  for (int i = 48; i-- > 0;) free(m[i]);
  malloc_trim(0);
  char *p = malloc(1 << 20);
  memset(p, 1, 1 << 20);
  free(p);
  medium_blocks(m, 32);
  cr_assert(mapped(p), "regrowth below the high mark kept the mapping");
  cr_assert_geq(hmi_large_cached_bytes, 1 << 20);
  for (int i = 0; i < 32; i++) free(m[i]);
}
