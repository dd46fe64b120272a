/* alloc_inline.h - the fast paths of malloc and free, inlined into both the hm_ API
 * (alloc.c) and the standard names (override.c) so neither pays an extra call.
 *
 * malloc of a small size: size class from a constant table, pop the thread's list.
 * free: one page-map lookup names the tier; a small object is checked to be an object start
 * its span has handed out (so interior and foreign pointers never enter a free list), and one
 * that still carries the free mark is checked for a double free; then it is pushed on the
 * thread's list, its link encoded (safe-linking, internal.h).  Everything else goes to the out-of-line slow paths in alloc.c. */
#ifndef HM_ALLOC_INLINE_H
#define HM_ALLOC_INLINE_H

#include "internal.h"
#include "vg.h"

void *hmi_alloc_small_slow(size_t size);
void *hmi_alloc_big(size_t size);
void hmi_free_slow(void *p, hm_pmentry_t e, const char *caller);
void hmi_free_marked(void *p, unsigned cls);

/* The calling thread's cache through one plain register.  Left to itself the compiler
 * addresses every word %fs-relative with an index, which saves about 4 instructions per
 * malloc+free pair but makes each load slower in the pop/push dependency chain: measured,
 * malloc_free/16 took 12.5 ns that way against 9.1 ns this way (78 instructions against 74
 * under callgrind).  The empty asm only hides where the pointer comes from. */
static inline __attribute__((always_inline)) hm_tcache_t *hm_tcache_self(void) {
  hm_tcache_t *tc = &hmi_tcache;
  __asm__("" : "+r"(tc));
  return tc;
}

/* x < *bound, the bound read as a relaxed atomic load folded into the compare.  Written
 * as an atomic load GCC 12 loads it into a register first: one instruction more per free. */
static inline __attribute__((always_inline)) bool hm_below(uint64_t x, const uint64_t *bound) {
  bool below;
  __asm__("cmpq %2, %1" : "=@ccb"(below) : "r"(x), "m"(*bound));
  return below;
}

static inline __attribute__((always_inline)) void *hm_alloc_raw(size_t size) {
  if (HM_LIKELY(size <= HM_SMALL_MAX)) {
    hm_tcache_t *tc = hm_tcache_self();
    size_t cls = tc->class_of[(size + 15) >> 4]; /* size_t: GCC then indexes with it as it is */
    void *p = tc->head[cls];
    if (HM_LIKELY(p != NULL)) {
      tc->head[cls] = hmi_next_checked_k(p, tc->list_key);
#ifndef HM_NO_HARDENING
      ((uintptr_t *)p)[1] = 0; /* no longer marked free */
#endif
      HM_RACY_ADD(tc->space[cls], 1);
      HM_RACY_ADD(tc->stats.class_malloc[cls], 1);
      return p;
    }
    return hmi_alloc_small_slow(size); /* not cls: kept live here, it costs a move */
  }
  return hmi_alloc_big(size);
}

static inline __attribute__((always_inline)) void hm_free_raw(void *p, const char *caller) {
  /* free(NULL) needs no test here: page 0 is never hmalloc's, so its entry is 0 and NULL
   * goes to the slow path, which returns at once. */
  hm_pmentry_t e = hmi_pagemap_get_wrapped((uintptr_t)p);
  if (HM_LIKELY(e & HM_PM_SMALL)) {
    const hm_span_t *s = HM_PM_SPAN(e);
    /* hmi_class_index in 64 bits: an offset that is a multiple of the class size gives its
     * object index; any other offset, including that of an address 2^47 or more away
     * (hmi_pagemap_get_wrapped), gives something far above any span's bump. */
    uint64_t x = ((uintptr_t)p - s->start) * s->minv;
    uint64_t idx = (x >> s->shift) | (x << ((64u - s->shift) & 63u));
    /* An object start that the span has handed out at least once. */
    if (HM_LIKELY(hm_below(idx, &s->bump))) {
      unsigned cls = s->cls;
      hm_tcache_t *tc = hm_tcache_self();
#ifndef HM_NO_HARDENING
      /* One load of the mark: the stores through p below could alias it otherwise. */
      uintptr_t mark = tc->free_mark;
      if (HM_UNLIKELY(((uintptr_t *)p)[1] == mark)) {
        hmi_free_marked(p, cls); /* a double free, or a thread whose cache is not set up */
        return;                  /* yet (mark 0) */
      }
#endif
      *(void **)p = hmi_link_k(tc->head[cls], p, tc->list_key);
#ifndef HM_NO_HARDENING
      ((uintptr_t *)p)[1] = mark;
#endif
      tc->head[cls] = p;
      HM_RACY_ADD(tc->stats.class_free[cls], 1);
      int64_t space = tc->space[cls] - 1;
      HM_RACY_SET(tc->space[cls], space);
      if (HM_LIKELY(space >= 0)) return;
      hmi_tcache_free_slow(p, cls);
      return;
    }
  }
  hmi_free_slow(p, e, caller);
}

/* With -Dvalgrind=true these tell memcheck about each block; otherwise they are the raw
 * paths exactly. */
static inline __attribute__((always_inline)) void *hm_alloc_inline(size_t size) {
  void *p = hm_alloc_raw(size);
  HM_VG_ALLOC(p, size, 0);
  return p;
}

static inline __attribute__((always_inline)) void hm_free_inline(void *p, const char *caller) {
  HM_VG_FREE(p);
  hm_free_raw(p, caller);
}

#endif
