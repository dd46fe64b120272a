/* alloc_inline.h - the fast paths of malloc and free, inlined into both the hm_ API
 * (alloc.c) and the standard names (override.c) so neither pays an extra call.
 *
 * malloc of a small size: size class from a constant table, pop the thread's list.
 * free: one page-map lookup names the tier; a small object is checked to be an object start
 * of its span (so interior and foreign pointers never enter a free list) and pushed on the
 * thread's list.  Everything else goes to the out-of-line slow paths in alloc.c. */
#ifndef HM_ALLOC_INLINE_H
#define HM_ALLOC_INLINE_H

#include "internal.h"

void *hmi_alloc_small_slow(unsigned cls);
void *hmi_alloc_big(size_t size);
void hmi_free_slow(void *p, hm_pmentry_t e, const char *caller);

static inline __attribute__((always_inline)) void *hm_alloc_inline(size_t size) {
  if (HM_LIKELY(size <= HM_SMALL_MAX)) {
    unsigned cls = hmi_size_class(size);
    hm_tcache_t *tc = &hmi_tcache;
    hm_bin_t *b = &tc->bins[cls];
    void *p = b->head;
    if (HM_LIKELY(p != NULL)) {
      b->head = *(void **)p;
      b->count--;
      tc->stats.malloc_count++;
      return p;
    }
    return hmi_alloc_small_slow(cls);
  }
  return hmi_alloc_big(size);
}

static inline __attribute__((always_inline)) void hm_free_inline(void *p, const char *caller) {
  if (HM_UNLIKELY(p == NULL)) return;
  hm_pmentry_t e = hmi_pagemap_get((uintptr_t)p);
  if (HM_LIKELY(e & HM_PM_SMALL)) {
    const hm_span_t *s = HM_PM_PTR(e);
    unsigned cls = HM_PM_CLASS(e);
    uint32_t off = (uint32_t)((uintptr_t)p - s->start);
    uint32_t idx = hmi_class_div(off, cls);
    if (HM_LIKELY(idx * hmi_class_size[cls] == off && idx < s->capacity)) {
      hm_tcache_t *tc = &hmi_tcache;
      hm_bin_t *b = &tc->bins[cls];
      *(void **)p = b->head;
      b->head = p;
      tc->stats.free_count++;
      if (HM_LIKELY(++b->count <= b->limit)) return;
      hmi_tcache_free_slow(p, cls);
      return;
    }
  }
  hmi_free_slow(p, e, caller);
}

#endif
