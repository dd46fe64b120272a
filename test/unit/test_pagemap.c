/* Page map: unknown addresses map to 0; set/get round trips across leaf boundaries; every
 * tier's pointers map to the right kind of entry; addresses above 47 bits are refused. */
#include <criterion/criterion.h>
#include <sys/mman.h>

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "hmalloc.h"
#include "internal.h"

Test(pagemap, unknown_addresses_are_zero) {
  int local;
  static int global;
  cr_assert_eq(hmi_pagemap_get((uintptr_t)&local), 0);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)&global), 0);
  cr_assert_eq(hmi_pagemap_get(0), 0);
  cr_assert_eq(hmi_pagemap_get(~(uintptr_t)0), 0);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)1 << 47), 0);
}

Test(pagemap, set_and_get_across_a_leaf_boundary) {
  /* 1 GiB of address space per leaf: straddle the boundary at 5 GiB. */
  uintptr_t base = ((uintptr_t)5 << 30) - 3 * HM_PAGE;
  cr_assert(hmi_pagemap_set(base, 6, 0x1280 | HM_PM_MEDIUM));
  for (int i = 0; i < 6; i++)
    cr_assert_eq(hmi_pagemap_get(base + i * HM_PAGE + 123), 0x1280 | HM_PM_MEDIUM);
  cr_assert_eq(hmi_pagemap_get(base - 1), 0);
  cr_assert_eq(hmi_pagemap_get(base + 6 * HM_PAGE), 0);
  cr_assert(hmi_pagemap_set(base, 6, 0));
  for (int i = 0; i < 6; i++) cr_assert_eq(hmi_pagemap_get(base + i * HM_PAGE), 0);
  cr_assert_not(hmi_pagemap_set((uintptr_t)1 << 47, 1, 2));
}

Test(pagemap, each_tier_maps_to_its_kind) {
  void *s = malloc(24), *m = malloc(20000), *l = malloc(1 << 20);
  hm_pmentry_t es = hmi_pagemap_get((uintptr_t)s);
  hm_pmentry_t em = hmi_pagemap_get((uintptr_t)m);
  hm_pmentry_t el = hmi_pagemap_get((uintptr_t)l);
  cr_assert(es & HM_PM_SMALL);
  cr_assert_eq(es & 127, HM_PM_SMALL);
  cr_assert_eq(HM_PM_SPAN(es)->cls, hmi_size_class(24));
  cr_assert_eq(em & 7, HM_PM_MEDIUM);
  cr_assert_eq(el & 7, HM_PM_LARGE);
  /* a large block has one entry: the page of its user pointer */
  cr_assert_eq(hmi_pagemap_get((uintptr_t)l + 2 * HM_PAGE), 0);
  free(s);
  free(m);
  free(l);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)l), HM_PM_FREED_LARGE,
               "a freed large block leaves a tombstone");
}

Test(pagemap, foreign_mapping_is_not_ours) {
  void *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(p, MAP_FAILED);
  cr_assert_eq(hmi_pagemap_get((uintptr_t)p), 0);
  munmap(p, 1 << 16);
}
