/* check_mode.c - HMALLOC_CHECK=1: a debugging mode that finds overflows and writes after free.
 *
 * Chosen at start-up, before the first block exists, and then fixed.  In this mode:
 *  - thread caches are off (limits 0), and the pages of small spans carry the page-map tag
 *    HM_PM_CHECKED instead of HM_PM_SMALL, so every malloc and free of every tier reaches the
 *    slow paths, which call into this file; the fast paths are the same code as ever;
 *  - each block gets HM_CHECK_EXTRA more bytes than asked: canary bytes from the requested
 *    size up to the last word, and in the last word the requested size XOR the secret.
 *    free and realloc verify both; malloc_usable_size reports the requested size;
 *  - a freed small block is filled with HM_FREE_FILL and its last word set to a "freed"
 *    value; when it is handed out again, or its span goes back to the medium heap, the fill
 *    is verified (the first 16 bytes hold the free-list link and mark and are not checked),
 *    and a span going back is wiped, so the "freed" word is only ever found in a span's own
 *    freed objects;
 *  - a freed medium block is filled too and held in a quarantine (FIFO, QUARANTINE_BYTES at
 *    most) before it goes back to its arena; the fill is verified when it leaves, so a write
 *    after free within that window is reported (its bytes would move once chunks coalesce);
 *  - a large block is followed by an inaccessible guard page, and unmapped on free, so an
 *    overrun or a write after free faults at once. */
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

int hmi_check_mode;

/* Quarantine of freed medium blocks: a ring, under quarantine_lock (a leaf lock: nothing
 * else is taken while it is held; fork takes it, see init.c). */
#define QUARANTINE_SLOTS 1024
#define QUARANTINE_BYTES ((size_t)16 << 20)
hm_lock_t hmi_quarantine_lock = HM_LOCK_INIT;
static struct {
  void *p;
  size_t usable;
} quarantine[QUARANTINE_SLOTS];
static unsigned q_head, q_count;
static size_t q_bytes;

#define HM_CHECK_EXTRA 16
#define CANARY 0xCB
#define HM_FREE_FILL 0xDF
#define FREED_WORD(p) ((uintptr_t)(p) ^ hmi_secret ^ 0xF4EEF4EEF4EEF4EEull)

/* Raw usable size of a block in check mode and its tier. */
static size_t raw_usable(void *p, hm_pmentry_t e) {
  if ((e & 127) == HM_PM_CHECKED) {
    const hm_span_t *s = HM_PM_PTR(e);
    return hmi_class_size[s->cls];
  }
  if (e & HM_PM_MEDIUM) return hmi_arena_usable(p);
  return hmi_large_usable(hmi_large_of(p, e));
}

static size_t *trailer(void *p, size_t usable) {
  return (size_t *)((char *)p + usable - sizeof(size_t));
}

/* The requested size of a valid block, after checking its canary. */
static size_t verify(void *p, hm_pmentry_t e, const char *caller) {
  size_t usable = raw_usable(p, e);
  size_t size = *trailer(p, usable) ^ hmi_secret;
  if (size > usable - HM_CHECK_EXTRA) {
    if (*trailer(p, usable) == FREED_WORD(p))
      hmi_fatal("hmalloc: %s(): double free %p\n", caller, p);
    hmi_fatal("hmalloc: %s(): buffer overflow after block %p (size unknown: its trailer "
              "was overwritten)\n", caller, p);
  }
  const unsigned char *c = (const unsigned char *)p;
  for (size_t i = size; i < usable - sizeof(size_t); i++)
    if (c[i] != CANARY)
      hmi_fatal("hmalloc: %s(): buffer overflow after block %p of size %zu (byte %zu "
                "written)\n", caller, p, size, i);
  return size;
}

void *hmi_check_alloc(size_t size, size_t align) {
  if (size > PTRDIFF_MAX - HM_CHECK_EXTRA - align) return NULL;
  size_t n = size + HM_CHECK_EXTRA;
  void *p;
  if (n <= HM_SMALL_MAX && align <= HM_PAGE) {
    unsigned cls = hmi_size_class(n > align ? n : align);
    while (hmi_class_size[cls] % align != 0) cls++;
    p = hmi_tcache_alloc_slow(cls);
  } else if (n + align < hmi_options.mmap_threshold) {
    p = hmi_arena_alloc(hmi_arena_pick(), n, align);
  } else {
    p = hmi_large_alloc_guarded(n, align);
  }
  if (p == NULL) return NULL;
  hm_pmentry_t e = hmi_pagemap_get((uintptr_t)p);
  size_t usable = raw_usable(p, e);
  unsigned char *c = p;
  if ((e & 127) == HM_PM_CHECKED && *trailer(p, usable) == FREED_WORD(p)) {
    for (size_t i = 16; i < usable - sizeof(size_t); i++)
      if (c[i] != HM_FREE_FILL)
        hmi_fatal("hmalloc: malloc(): write after free in block %p of size %zu (byte %zu)\n",
                  p, usable, i);
  }
  memset(c + size, CANARY, usable - sizeof(size_t) - size);
  *trailer(p, usable) = size ^ hmi_secret;
  HM_RACY_ADD(hmi_tcache.stats.malloc_count, 1);
  return p;
}

/* A span going back to the medium heap (span.c), all its objects free.  Each object a free
 * left its "freed" last word in must still hold its fill, so a write after free is reported
 * here even if no malloc reused the block (a span that emptied restarted its bump, so the
 * objects handed out are those with that word).  Then the span is wiped.  Unwiped, memory
 * that is the heap's for a while (free chunks split and merged over it, their headers and
 * links written into it) and then a span of the same class at the same address again showed
 * objects whose last word said "freed" with other bytes changed, reported as writes after
 * free when handed out: Python's own test suite (test_pickle, test_os, test_ast, ...)
 * aborted in seven modules so.  Only small frees write that word, so after the wipe no other
 * span's memory holds one but for its own frees. */
void hmi_check_span_released(const hm_span_t *s) {
  size_t usable = hmi_class_size[s->cls];
  for (uint32_t i = 0; i < s->capacity; i++) {
    unsigned char *p = (unsigned char *)s->start + (size_t)i * usable;
    if (*trailer(p, usable) != FREED_WORD(p)) continue;
    for (size_t k = 16; k < usable - sizeof(size_t); k++)
      if (p[k] != HM_FREE_FILL)
        hmi_fatal("hmalloc: free(): write after free in block %p of size %zu (byte %zu)\n",
                  p, usable, k);
  }
  memset((void *)s->start, 0, (size_t)s->capacity * usable);
}

size_t hmi_check_usable(void *p, hm_pmentry_t e, const char *caller) {
  return verify(p, e, caller);
}

/* Check a block leaving the quarantine and give it back to its arena. */
static void release(void *p, size_t usable) {
  const unsigned char *c = p;
  for (size_t i = 0; i < usable; i++)
    if (c[i] != HM_FREE_FILL)
      hmi_fatal("hmalloc: free(): write after free in block %p of size %zu (byte %zu)\n", p,
                usable, i);
  hmi_arena_free(p, HM_PM_PTR(hmi_pagemap_get((uintptr_t)p)));
}

static void quarantine_add(void *p, size_t usable) {
  void *out[8];
  size_t out_usable[8];
  unsigned n_out = 0;
  hm_lock(&hmi_quarantine_lock);
  quarantine[(q_head + q_count) % QUARANTINE_SLOTS].p = p;
  quarantine[(q_head + q_count) % QUARANTINE_SLOTS].usable = usable;
  q_count++;
  q_bytes += usable;
  while (n_out < 8 && (q_count == QUARANTINE_SLOTS || q_bytes > QUARANTINE_BYTES)) {
    out[n_out] = quarantine[q_head].p;
    out_usable[n_out++] = quarantine[q_head].usable;
    q_bytes -= quarantine[q_head].usable;
    q_head = (q_head + 1) % QUARANTINE_SLOTS;
    q_count--;
  }
  hm_unlock(&hmi_quarantine_lock);
  for (unsigned i = 0; i < n_out; i++) release(out[i], out_usable[i]);
}

/* malloc_trim and exit checks: verify and release everything in quarantine. */
void hmi_check_drain(void) {
  for (;;) {
    hm_lock(&hmi_quarantine_lock);
    if (q_count == 0) {
      hm_unlock(&hmi_quarantine_lock);
      return;
    }
    void *p = quarantine[q_head].p;
    size_t usable = quarantine[q_head].usable;
    q_bytes -= usable;
    q_head = (q_head + 1) % QUARANTINE_SLOTS;
    q_count--;
    hm_unlock(&hmi_quarantine_lock);
    release(p, usable);
  }
}

void hmi_check_free(void *p, hm_pmentry_t e, const char *caller) {
  verify(p, e, caller);
  size_t usable = raw_usable(p, e);
  if ((e & 127) == HM_PM_CHECKED) {
    const hm_span_t *s = HM_PM_PTR(e);
    memset(p, HM_FREE_FILL, usable);
    *trailer(p, usable) = FREED_WORD(p);
    *(void **)p = hmi_link(NULL, p);
    hmi_span_give(s->cls, p, 1, 1);
  } else if (e & HM_PM_MEDIUM) {
    memset(p, HM_FREE_FILL, usable);
    quarantine_add(p, usable);
  } else {
    hmi_large_free(hmi_large_of(p, e));
  }
  HM_RACY_ADD(hmi_tcache.stats.free_count, 1);
}

/* Is p a block start in check mode?  (The tests of free's fast path, done here.) */
bool hmi_check_valid(void *p, hm_pmentry_t e) {
  if ((e & 127) == HM_PM_CHECKED) {
    const hm_span_t *s = HM_PM_PTR(e);
    uint32_t off = (uint32_t)((uintptr_t)p - s->start);
    return hmi_class_index(off, s->cls) < __atomic_load_n(&s->bump, __ATOMIC_RELAXED);
  }
  if (e & HM_PM_MEDIUM) {
    hm_chunk_t *c = hmi_arena_chunk_of(p, HM_PM_PTR(e));
    if (c == NULL) return false;
    if (!(c->size_flags & HM_CH_INUSE)) hmi_fatal("hmalloc: free(): double free %p\n", p);
    return true;
  }
  if (e & HM_PM_LARGE) return hmi_large_of(p, e) != NULL;
  if (e == HM_PM_FREED_LARGE && ((uintptr_t)p & (HM_PAGE - 1)) <= HM_LARGE_HEADER)
    hmi_fatal("hmalloc: free(): double free %p\n", p);
  return false;
}
