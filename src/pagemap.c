/* pagemap.c - the page map: from any address to what hmalloc keeps at its 4 KiB page.
 *
 * A two-level radix tree over the 47-bit user address space: the root (static, 1 MiB of
 * address space that costs memory only where touched) holds 2^17 pointers to leaves of 2^18
 * entries (2 MiB each, mmap'ed on first use, each covering 1 GiB of addresses).
 * Readers never lock: a leaf, once published, is never freed, and an entry is one word.
 * Writers set entries only for memory they own (a span being made or released, a segment
 * being added, a large block being mapped), so two writers never write the same entry;
 * only publishing a new leaf needs `leaf_lock`.  Encoding of entries: types.h. */
#include "internal.h"

hm_pmentry_t *hmi_pagemap_root[(size_t)1 << HM_PM_ROOT_BITS];
static hm_lock_t leaf_lock = HM_LOCK_INIT;

#define LEAF_ENTRIES ((size_t)1 << HM_PM_LEAF_BITS)

static hm_pmentry_t *leaf_for(uintptr_t hi) {
  hm_pmentry_t *leaf = __atomic_load_n(&hmi_pagemap_root[hi], __ATOMIC_ACQUIRE);
  if (leaf != NULL) return leaf;
  hm_lock(&leaf_lock);
  leaf = hmi_pagemap_root[hi];
  if (leaf == NULL) {
    leaf = hmi_os_mmap(LEAF_ENTRIES * sizeof(hm_pmentry_t));
    if (leaf != NULL) __atomic_store_n(&hmi_pagemap_root[hi], leaf, __ATOMIC_RELEASE);
  }
  hm_unlock(&leaf_lock);
  return leaf;
}

bool hmi_pagemap_set(uintptr_t addr, size_t pages, hm_pmentry_t value) {
  uintptr_t page = addr >> HM_PAGE_SHIFT;
  while (pages > 0) {
    uintptr_t hi = page >> HM_PM_LEAF_BITS;
    if (hi >= ((uintptr_t)1 << HM_PM_ROOT_BITS)) return false;
    hm_pmentry_t *leaf = leaf_for(hi);
    if (leaf == NULL) return false;
    size_t idx = page & (LEAF_ENTRIES - 1);
    size_t n = LEAF_ENTRIES - idx;
    if (n > pages) n = pages;
    for (size_t i = 0; i < n; i++) __atomic_store_n(&leaf[idx + i], value, __ATOMIC_RELEASE);
    page += n;
    pages -= n;
  }
  return true;
}

/* fork (init.c): the leaf lock is the last in the lock order. */
void hmi_pagemap_lock(void) { hm_lock(&leaf_lock); }
void hmi_pagemap_unlock(void) { hm_unlock(&leaf_lock); }
void hmi_pagemap_reset_lock(void) { hm_lock_reset(&leaf_lock); }
