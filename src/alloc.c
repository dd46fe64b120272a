/* alloc.c - the hm_ API: dispatch of every request to its tier, the slow paths behind the
 * inline fast paths, realloc, the aligned family, calloc, usable size.
 *
 * Semantics follow glibc: malloc(0) is a unique 16-byte block; sizes above PTRDIFF_MAX and
 * overflowing products give NULL with errno ENOMEM; bad alignments give EINVAL;
 * realloc(p, 0) frees p and returns NULL; a failed realloc leaves the block as it was;
 * free preserves errno. */
#include <string.h>
#include <unistd.h>

#include "alloc_inline.h"
#include "hmalloc.h"

/* ---- slow paths ---- */
void hmi_invalid_pointer(const char *caller, void *p) {
  hmi_fatal("hmalloc: %s(): invalid pointer %p\n", caller, p);
}

void hmi_corrupt_list(void *at) {
  hmi_fatal("hmalloc: heap corruption: free list link of %p overwritten\n", at);
}

void *hmi_alloc_small_slow(size_t size) {
  unsigned cls = hmi_size_class(size);
  void *p;
  /* Options first: the process's first allocation lands here (the cache is the empty
   * sentinel), and if it comes before the library constructor (from another library's
   * constructor: libselinux's fopen in ls), HMALLOC_CHECK must already be known, or the block
   * is handed out without its canary and its free is reported as an overflow. */
  hmi_ensure_init();
  if (HM_UNLIKELY(hmi_check_mode)) {
    p = hmi_check_alloc(size, HM_ALIGN); /* counts it */
  } else {
    p = hmi_tcache_alloc_slow(cls);
    if (p != NULL) HM_RACY_ADD(hmi_tcache.stats.class_malloc[cls], 1);
  }
  if (HM_UNLIKELY(p == NULL)) {
    errno = ENOMEM;
    return NULL;
  }
  if (HM_UNLIKELY(hmi_hooks_on)) hmi_hook_alloc(p, size);
  hmi_tcache_settle_alloc();
  return p;
}

void *hmi_alloc_big(size_t size) {
  hmi_ensure_init();
  void *p = NULL;
  if (HM_UNLIKELY(size > PTRDIFF_MAX)) goto fail;
  if (HM_UNLIKELY(hmi_check_mode)) p = hmi_check_alloc(size, HM_ALIGN);
  else if (size >= hmi_options.mmap_threshold) p = hmi_large_alloc(size, HM_ALIGN);
  else if (size > HM_MCACHE_MAX) p = hmi_arena_alloc(hmi_arena_pick(), size, HM_ALIGN);
  /* up to HM_MCACHE_MAX: this thread's medium cache first (no lock), else a block of the
   * size class, so that it can be cached whole when freed */
  else if ((p = hmi_mcache_pop(size)) == NULL)
    p = hmi_arena_alloc(hmi_arena_pick(), hmi_mclass_size(hmi_mclass(size)), HM_ALIGN);
  if (p == NULL) goto fail;
  HM_RACY_ADD(hmi_tcache.stats.malloc_count, 1);
  if ((hmi_tcache.stats.malloc_count & 1023) == 0) hmi_large_idle_tick();
  if (HM_UNLIKELY(hmi_hooks_on)) hmi_hook_alloc(p, size);
  hmi_tcache_settle_alloc();
  return p;
fail:
  errno = ENOMEM;
  return NULL;
}

void hmi_free_slow(void *p, hm_pmentry_t e, const char *caller) {
  if (p == NULL) return;
  /* e came from hmi_pagemap_get_wrapped: above the map's range it is another page's. */
  if (HM_UNLIKELY((uintptr_t)p >> HM_PM_ADDR_BITS)) e = 0;
  if (e & HM_PM_SMALL) hmi_invalid_pointer(caller, p); /* inside a span, not an object start */
  int saved = errno; /* munmap, madvise and brk may set it; free must not */
  if (HM_UNLIKELY(hmi_check_mode)) {
    if (!hmi_check_valid(p, e)) hmi_invalid_pointer(caller, p);
    if (HM_UNLIKELY(hmi_hooks_on)) hmi_hook_free(p, hmi_check_usable(p, e, caller));
    hmi_check_free(p, e, caller);
    hmi_tcache_settle();
    errno = saved;
    return;
  }
  if (HM_UNLIKELY(hmi_hooks_on) && (e & (HM_PM_MEDIUM | HM_PM_LARGE)))
    hmi_hook_free(p, hmi_usable(p, caller));
  if (e & HM_PM_MEDIUM) {
    if (!hmi_mcache_push(p, HM_PM_PTR(e))) hmi_arena_free(p, HM_PM_PTR(e));
    if (HM_UNLIKELY(hmi_tcache.mcache_flush_wanted)) {
      hmi_tcache.mcache_flush_wanted = 0;
      hmi_mcache_flush(&hmi_tcache);
    }
  } else if (e & HM_PM_LARGE) {
    hm_large_t *h = hmi_large_of(p, e);
    if (h == NULL) hmi_invalid_pointer(caller, p);
    hmi_large_free(h);
  } else if (e == HM_PM_FREED_LARGE && ((uintptr_t)p & (HM_PAGE - 1)) <= HM_LARGE_HEADER) {
    hmi_fatal("hmalloc: %s(): double free %p\n", caller, p);
  } else {
    hmi_invalid_pointer(caller, p);
  }
  HM_RACY_ADD(hmi_tcache.stats.free_count, 1);
  hmi_tcache_settle();
  errno = saved;
}

/* Usable size of a block known to be valid; aborts on a pointer hmalloc did not hand out. */
size_t hmi_usable(void *p, const char *caller) {
  hm_pmentry_t e = hmi_pagemap_get((uintptr_t)p);
  if (HM_UNLIKELY(hmi_check_mode)) {
    if (!hmi_check_valid(p, e)) hmi_invalid_pointer(caller, p);
    return hmi_check_usable(p, e, caller);
  }
  if (e & HM_PM_SMALL) {
    const hm_span_t *s = HM_PM_SPAN(e);
    unsigned cls = s->cls;
    uint32_t off = (uint32_t)((uintptr_t)p - s->start);
    if (hmi_class_index(off, cls) >= __atomic_load_n(&s->bump, __ATOMIC_RELAXED))
      hmi_invalid_pointer(caller, p);
    return hmi_class_size[cls];
  }
  if (e & HM_PM_MEDIUM) {
    hm_chunk_t *c = hmi_arena_chunk_of(p, HM_PM_PTR(e));
    if (c == NULL || !(__atomic_load_n(&c->size_flags, __ATOMIC_RELAXED) & HM_CH_INUSE))
      hmi_invalid_pointer(caller, p);
    return hmi_arena_usable(p);
  }
  if (e & HM_PM_LARGE) {
    hm_large_t *h = hmi_large_of(p, e);
    if (h == NULL) hmi_invalid_pointer(caller, p);
    return hmi_large_usable(h);
  }
  hmi_invalid_pointer(caller, p);
}

/* ---- aligned allocation ---- */
/* alignment: a power of two. */
static void *alloc_aligned(size_t alignment, size_t size) {
  if (alignment <= HM_ALIGN) return hm_alloc_inline(size);
  hmi_ensure_init();
  if (size > PTRDIFF_MAX || alignment > PTRDIFF_MAX / 2 || size > PTRDIFF_MAX - alignment) {
    errno = ENOMEM;
    return NULL;
  }
  void *p;
  if (HM_UNLIKELY(hmi_check_mode)) {
    p = hmi_check_alloc(size, alignment);
    if (p == NULL) errno = ENOMEM;
    else if (HM_UNLIKELY(hmi_hooks_on)) hmi_hook_alloc(p, size);
    return p;
  }
  if (size <= HM_SMALL_MAX && alignment <= HM_PAGE) {
    /* Spans start on a page and objects sit at multiples of the class size, so a class whose
     * size is a multiple of the alignment gives aligned objects. */
    unsigned cls = hmi_size_class(size > alignment ? size : alignment);
    while (hmi_class_size[cls] % alignment != 0) cls++;
    return hm_alloc_inline(hmi_class_size[cls]);
  }
  if (size + alignment < hmi_options.mmap_threshold && alignment <= ((size_t)1 << 20))
    p = hmi_arena_alloc(hmi_arena_pick(), size, alignment);
  else
    p = hmi_large_alloc(size, alignment);
  if (p == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  HM_RACY_ADD(hmi_tcache.stats.malloc_count, 1);
  HM_VG_ALLOC(p, size, 0);
  if (HM_UNLIKELY(hmi_hooks_on)) hmi_hook_alloc(p, size);
  hmi_tcache_settle_alloc();
  return p;
}

static inline bool is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

/* ---- the API ---- */
HM_API void *hm_malloc(size_t size) { return hm_alloc_inline(size); }

HM_API void hm_free(void *p) { hm_free_inline(p, "free"); }

HM_API void *hm_calloc(size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = hm_alloc_inline(total);
  if (p == NULL) return NULL;
  if (HM_UNLIKELY(hmi_check_mode)) return memset(p, 0, total);
  hm_pmentry_t e = hmi_pagemap_get((uintptr_t)p);
  /* A fresh large mapping is already zero; a recycled one and everything else may not be. */
  if ((e & 7) == HM_PM_LARGE && hmi_large_fresh(hmi_large_of(p, e))) return p;
  return memset(p, 0, total); /* what was asked; bytes past it are not promised */
}

/* Allocate, copy, free: the move that realloc falls back to. */
static void *realloc_move(void *p, size_t old_usable, size_t size) {
  void *q = hm_alloc_inline(size);
  if (q == NULL) return NULL; /* the old block stays as it was */
#ifdef HM_VALGRIND
  /* Bytes past the old request are inaccessible to memcheck; copying them is ours to do. */
  VALGRIND_DISABLE_ERROR_REPORTING;
#endif
  memcpy(q, p, old_usable < size ? old_usable : size);
#ifdef HM_VALGRIND
  VALGRIND_ENABLE_ERROR_REPORTING;
#endif
  hm_free_inline(p, "realloc");
  return q;
}

static void *realloc_impl(void *p, size_t size);

HM_API void *hm_realloc(void *p, size_t size) {
  if (HM_UNLIKELY(hmi_hooks_on) && p != NULL && size != 0)
    return hmi_hooked_realloc(realloc_impl, p, size);
  void *q = realloc_impl(p, size);
  hmi_tcache_settle();
  return q;
}

static void *realloc_impl(void *p, size_t size) {
  if (p == NULL) return hm_alloc_inline(size);
  if (size == 0) {
    hm_free_inline(p, "realloc");
    return NULL;
  }
  HM_RACY_ADD(hmi_tcache.stats.realloc_count, 1);
  if (size > PTRDIFF_MAX) {
    hmi_usable(p, "realloc"); /* still refuse a bad pointer */
    errno = ENOMEM;
    return NULL;
  }
  hm_pmentry_t e = hmi_pagemap_get((uintptr_t)p);
  size_t usable = hmi_usable(p, "realloc");
  if (HM_UNLIKELY(hmi_check_mode)) return realloc_move(p, usable, size);
  if (e & HM_PM_SMALL) {
    /* Same class: nothing to do.  Another class: move (a shrink then frees memory). */
    if (size <= HM_SMALL_MAX && hmi_size_class(size) == HM_PM_SPAN(e)->cls) {
      HM_VG_RESIZED(p, p, usable, size);
      return p;
    }
    return realloc_move(p, usable, size);
  }
  /* A medium or large block that holds the new size with no more than a quarter to spare
   * stays as it is: its tier would change nothing (hmi_arena_resize keeps that much
   * headroom, hmi_large_realloc half), and asking it takes the arena's lock or the page of
   * the large header.  A string grown by 64-byte appends to 256 KiB: 11.7 -> 8.5 ns per
   * realloc. */
  if (size <= usable && usable - size <= size / 4) {
    HM_VG_RESIZED(p, p, usable, size);
    return p;
  }
  if (e & HM_PM_MEDIUM) {
    if (size > HM_SMALL_MAX && size < hmi_options.mmap_threshold &&
        hmi_arena_resize(p, HM_PM_PTR(e), size)) {
      HM_VG_RESIZED(p, p, usable, size);
      return p;
    }
    return realloc_move(p, usable, size);
  }
  /* large */
  if (size >= hmi_options.mmap_threshold) {
    void *q = hmi_large_realloc(hmi_large_of(p, e), size);
    if (q != NULL) {
      HM_VG_RESIZED(p, q, usable, size); /* mremap may have moved it */
      return q;
    }
  }
  return realloc_move(p, usable, size);
}

HM_API void *hm_reallocarray(void *p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return hm_realloc(p, total);
}

HM_API int hm_posix_memalign(void **out, size_t alignment, size_t size) {
  if (!is_pow2(alignment) || alignment % sizeof(void *) != 0) return EINVAL;
  int saved = errno;
  void *p = alloc_aligned(alignment, size);
  if (p == NULL) {
    errno = saved;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

HM_API void *hm_aligned_alloc(size_t alignment, size_t size) {
  if (!is_pow2(alignment)) {
    errno = EINVAL;
    return NULL;
  }
  return alloc_aligned(alignment, size);
}

HM_API void *hm_memalign(size_t alignment, size_t size) {
  /* An alignment that is not a power of two is refused with EINVAL, as aligned_alloc does
   * (glibc 2.36 silently rounds it up; a caller asking for one has a bug worth seeing).
   * 0 asks for no particular alignment. */
  if (alignment == 0) return hm_alloc_inline(size);
  if (!is_pow2(alignment)) {
    errno = EINVAL;
    return NULL;
  }
  return alloc_aligned(alignment, size);
}

HM_API void *hm_valloc(size_t size) { return alloc_aligned(HM_PAGE, size); }

HM_API void *hm_pvalloc(size_t size) {
  if (size > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  size_t rounded = size == 0 ? HM_PAGE : hm_align_up(size, HM_PAGE);
  return alloc_aligned(HM_PAGE, rounded);
}

HM_API size_t hm_malloc_usable_size(void *p) {
  if (p == NULL) return 0;
  return hmi_usable(p, "malloc_usable_size");
}

HM_API int hm_malloc_trim(size_t pad) {
  hmi_ensure_init();
  if (hmi_tcache.state == HM_TC_LIVE) hmi_mcache_flush(&hmi_tcache);
  if (hmi_check_mode) hmi_check_drain();
  hmi_span_release_empty();
  int released = hmi_large_cache_flush() ? 1 : 0;
  for (unsigned i = 0; i < hmi_arena_count; i++)
    if (hmi_arena_if_given(i)) released |= hmi_arena_trim(hmi_arenas[i], pad, true);
  return released;
}

HM_API int hm_mallopt(int param, int value) {
  hmi_ensure_init();
  switch (param) {
    case M_MMAP_THRESHOLD:
      /* glibc refuses values above its maximum (32 MiB on 64-bit) */
      if (value < 0 || (size_t)value > HM_MAX_MMAP_THRESHOLD) return 0;
      hmi_options.mmap_threshold = (size_t)value < HM_PAGE ? HM_PAGE : (size_t)value;
      return 1;
    case M_TRIM_THRESHOLD:
      hmi_options.trim_threshold = value < 0 ? SIZE_MAX : (size_t)value;
      return 1;
    case M_ARENA_MAX: /* arenas threads started from now on are spread over */
      if (value < 1) return 0;
      __atomic_store_n(&hmi_options.arenas,
                       (unsigned)value < hmi_arena_count ? (unsigned)value : hmi_arena_count,
                       __ATOMIC_RELAXED);
      return 1;
    case M_TOP_PAD: case M_MMAP_MAX: case M_ARENA_TEST:
    case M_PERTURB: case M_CHECK_ACTION: case M_MXFAST:
      return 1; /* accepted for compatibility; hmalloc has no such knob */
    default:
      return 0;
  }
}

#ifdef HM_VALGRIND
void hmi_vg_alloc(void *p, size_t size, int zeroed) {
  VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, zeroed);
  size_t usable = hmi_usable(p, "malloc");
  if (usable > size) VALGRIND_MAKE_MEM_NOACCESS((char *)p + size, usable - size);
}

/* A block that stays at p (or moved there by mremap) with new size: free the old record,
 * record the new block, and keep the preserved bytes defined. */
void hmi_vg_resized(void *old, void *p, size_t keep, size_t size) {
  VALGRIND_FREELIKE_BLOCK(old, 0);
  hmi_vg_alloc(p, size, 0);
  VALGRIND_MAKE_MEM_DEFINED(p, keep < size ? keep : size);
}

void hmi_vg_free(void *p) {
  hm_pmentry_t e = hmi_pagemap_get((uintptr_t)p);
  if (e & HM_PM_SMALL) {
    VALGRIND_FREELIKE_BLOCK(p, 0);
    VALGRIND_MAKE_MEM_DEFINED(p, 16);
    /* the rest stays inaccessible until the object is handed out again */
  } else if (e & HM_PM_MEDIUM) {
    hm_chunk_t *c = hmi_arena_chunk_of(p, HM_PM_PTR(e));
    if (c == NULL) return; /* not a block: free() reports it */
    VALGRIND_FREELIKE_BLOCK(p, 0);
    VALGRIND_MAKE_MEM_DEFINED(p, hmi_arena_usable(p));
  } else if (e & HM_PM_LARGE) {
    VALGRIND_FREELIKE_BLOCK(p, 0);
  }
}
#endif
