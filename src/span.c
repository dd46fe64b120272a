/* span.c - the small tier's shared state: spans of equal-size objects and, per size class,
 * the central list of spans that still have free slots.  Also the metadata pool that holds
 * span and segment descriptors away from user memory.
 *
 * A span is a medium chunk of exactly HM_SPAN_SIZE bytes whose user area starts on a page:
 * its objects occupy [start, start + HM_SPAN_SIZE - 16) (the last 16 bytes are the next
 * chunk's header), and each of its 16 pages maps to the span in the page map.  Objects carry
 * no header.  An object given back to its span sets its bit in the span's free map (in its
 * descriptor, away from user memory); the object itself is not written.
 * Invariants (under the class's central lock): used + free slots == capacity, where free
 * slots are the free map's set bits (all below bump) plus the never-touched objects [bump,
 * capacity); a span is on the partial list iff it has a free slot and is not the class's
 * kept empty span; a span whose objects are all back is either kept as `empty` (one per
 * class, against churn) or returned to its arena, where it coalesces with its free
 * neighbours.
 * Lock order: central lock, then arena lock, then the metadata lock. */
#include <stddef.h>
#include <string.h>

#include "internal.h"

hm_central_t hmi_central[HM_CLASSES];
size_t hmi_span_chunk_bytes; /* bytes of all span chunks, headers included (stats) */

/* ---- metadata pool ---------------------------------------------------------------------
 * Descriptors take 128 bytes, or a few times that (a span's with a long free map: up to 640);
 * blocks of 64 KiB are mmap'ed and carved.  Freed descriptors go on a free list per 128-byte
 * multiple.  Under hmi_meta_lock. */
#define META_UNIT 128
#define META_CLASSES 8
#define META_BLOCK ((size_t)64 << 10)
hm_lock_t hmi_meta_lock = HM_LOCK_INIT;
static void *meta_free[META_CLASSES];
static uintptr_t meta_bump, meta_end;

void *hmi_meta_alloc(size_t size) {
  size_t units = (size + META_UNIT - 1) / META_UNIT;
  if (units == 0 || units > META_CLASSES) return NULL;
  void *p = NULL;
  hm_lock(&hmi_meta_lock);
  if (meta_free[units - 1] != NULL) {
    p = meta_free[units - 1];
    meta_free[units - 1] = *(void **)p;
  } else {
    if (meta_bump + units * META_UNIT > meta_end) {
      void *block = hmi_os_mmap(META_BLOCK);
      if (block != NULL) {
        meta_bump = (uintptr_t)block;
        meta_end = meta_bump + META_BLOCK;
      }
    }
    if (meta_bump + units * META_UNIT <= meta_end) {
      p = (void *)meta_bump;
      meta_bump += units * META_UNIT;
    }
  }
  hm_unlock(&hmi_meta_lock);
  if (p != NULL) memset(p, 0, units * META_UNIT);
  return p;
}

void hmi_meta_free(void *p, size_t size) {
  size_t units = (size + META_UNIT - 1) / META_UNIT;
  hm_lock(&hmi_meta_lock);
  *(void **)p = meta_free[units - 1];
  meta_free[units - 1] = p;
  hm_unlock(&hmi_meta_lock);
}

/* ---- spans ---- */
static uint32_t span_capacity(unsigned cls) {
  return (uint32_t)((HM_SPAN_SIZE - HM_CHUNK_HEADER) / hmi_class_size[cls]);
}

/* Words of a span's free map, and the bytes of its descriptor with the map. */
static size_t map_words(uint32_t capacity) { return (capacity + 63u) / 64u; }
static size_t span_meta_bytes(uint32_t capacity) {
  size_t bytes = offsetof(hm_span_t, free_map) + map_words(capacity) * sizeof(uint64_t);
  return bytes > sizeof(hm_span_t) ? bytes : sizeof(hm_span_t);
}

static void partial_push(hm_central_t *c, hm_span_t *s) {
  s->prev = NULL;
  s->next = c->partial;
  if (c->partial) c->partial->prev = s;
  c->partial = s;
  s->listed = 1;
}

static void partial_remove(hm_central_t *c, hm_span_t *s) {
  if (s->prev) s->prev->next = s->next;
  else c->partial = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
  s->listed = 0;
}

/* Carve a new span for cls from the medium heap.  Caller holds the central lock.
 * From the calling thread's arena, where spans and medium blocks share the free space.
 * Carving every span from the main arena instead (so that spans, which outlive threads,
 * never keep a thread's segments mapped) was measured and dropped: 20,000 threads, 16 at a
 * time, grew mapped by 1-2 MB instead of 0-4 MB past a warm-up, but alloc_test with 64
 * threads peaked at 51-60 MB RSS instead of 23-61 MB (median 56 against 37): spans and
 * medium blocks then peak separately. */
static hm_span_t *span_make(unsigned cls) {
  uint32_t capacity = span_capacity(cls);
  hm_span_t *s = hmi_meta_alloc(span_meta_bytes(capacity)); /* zeroed: an empty map */
  if (s == NULL) return NULL;
  hm_arena_t *a = hmi_arena_pick();
  void *mem = hmi_arena_alloc(a, HM_SPAN_SIZE - HM_CHUNK_HEADER, HM_PAGE);
  if (mem == NULL) { hmi_meta_free(s, span_meta_bytes(capacity)); return NULL; }
  __atomic_fetch_add(&hmi_span_chunk_bytes, hmi_arena_usable(mem) + HM_CHUNK_HEADER,
                     __ATOMIC_RELAXED);
  hm_pmentry_t seg_entry = hmi_pagemap_get((uintptr_t)mem);
  s->segment = HM_PM_PTR(seg_entry);
  s->start = (uintptr_t)mem;
  s->capacity = capacity;
  s->cls = (uint16_t)cls;
  s->minv = hmi_class_minv[cls];
  s->shift = hmi_class_shift[cls];
  /* The pages were mapped (their leaf exists) as the segment's: this cannot fail. */
  hmi_pagemap_set(s->start, HM_SPAN_PAGES,
                  hmi_check_mode ? (uintptr_t)s | HM_PM_CHECKED
                                 : (uintptr_t)s | HM_PM_SMALL);
  hm_central_t *c = &hmi_central[cls];
  HM_RACY_ADD(c->span_count, 1);
  HM_RACY_ADD(c->free_slots, s->capacity);
  c->spans_made++;
  return s;
}

/* Give an empty span's chunk back to its arena.  Caller holds the central lock. */
static void span_release(hm_central_t *c, hm_span_t *s) {
  hm_segment_t *seg = s->segment;
  if (hmi_check_mode) hmi_check_span_released(s);
  hmi_pagemap_set(s->start, HM_SPAN_PAGES, (uintptr_t)seg | HM_PM_MEDIUM);
  HM_RACY_ADD(c->span_count, -1);
  HM_RACY_ADD(c->free_slots, -(size_t)s->capacity);
  c->spans_released++;
  __atomic_fetch_sub(&hmi_span_chunk_bytes, hmi_arena_usable((void *)s->start) + HM_CHUNK_HEADER,
                     __ATOMIC_RELAXED);
  hmi_arena_free((void *)s->start, seg);
  hmi_meta_free(s, span_meta_bytes(s->capacity));
}

uint32_t hmi_span_take(unsigned cls, uint32_t want, void **head) {
  hm_central_t *c = &hmi_central[cls];
  size_t size = hmi_class_size[cls];
  void *list = NULL;
  uint32_t n = 0;
  hm_lock(&c->lock);
  if (want > 1 && c->xfer_n > 0) { /* a whole batch some thread gave back */
    unsigned i = --c->xfer_n;
    n = c->xfer_count[i];
    *head = c->xfer_head[i]; /* before unlocking: the slot is free for others after */
    HM_RACY_ADD(c->xfer_objects, -(size_t)n);
    hm_unlock(&c->lock);
    return n;
  }
  while (n < want) {
    hm_span_t *s = c->partial;
    if (s == NULL) {
      if (c->empty != NULL) {
        s = c->empty;
        c->empty = NULL;
      } else if ((s = span_make(cls)) == NULL) {
        break;
      }
      partial_push(c, s);
    }
    /* Objects given back to the span first, lowest address first: their bits are read
     * from the free map, and each object is written once, to link it (the writes do not
     * wait on one another).  The free lists this replaced were linked through the objects
     * themselves, freed long ago in any order: a refill walked them one cache miss after
     * another (14% of fragment's samples even with four lists walked at once). */
    if (s->bump > s->used) {
      void *first = NULL, *last = NULL;
      uint32_t got = 0, words = (uint32_t)map_words((uint32_t)s->bump);
      uint32_t i = s->map_from;
      for (; i < words && n + got < want; i++) {
        uint64_t w = s->free_map[i];
        while (w != 0 && n + got < want) {
          void *p = (void *)(s->start + ((size_t)i * 64u + (unsigned)__builtin_ctzll(w)) * size);
          w &= w - 1;
          if (last != NULL) *(void **)last = hmi_link(p, last);
          else first = p;
          last = p;
          got++;
        }
        s->free_map[i] = w;
        if (w != 0) break;
      }
      s->map_from = i;
      hm_assert(got > 0); /* bump - used bits are set, none below map_from */
      if (last != NULL) {
        *(void **)last = hmi_link(list, last);
        list = first;
      }
      s->used += got;
      n += got;
    }
    if (n < want && s->bump < s->capacity) {
      uint32_t k = want - n;
      if (k > s->capacity - s->bump) k = s->capacity - s->bump;
      /* Linked from the last down, so that they are handed out in ascending address order
       * (pushing each on the list as it was carved handed out each batch backwards).  A
       * program's objects allocated one after another, then walked in that order (Python's
       * garbage collector, a list of records), are then met in the order the hardware
       * prefetcher expects: python3 0.90x (7 interleaved runs), larson-t1 0.98x, alloc_test-t2
       * 0.96x, shuffle, fragment and xmalloc within 2%. */
      for (uint32_t j = k; j-- > 0;) {
        void *p = (void *)(s->start + (size_t)(s->bump + j) * size);
        *(void **)p = hmi_link(list, p);
        list = p;
      }
      /* free() reads bump without the lock to accept only handed-out objects */
      __atomic_store_n(&s->bump, s->bump + k, __ATOMIC_RELAXED);
      n += k;
      s->used += k;
    }
    hm_assert(s->used <= s->capacity && s->bump <= s->capacity);
    if (s->used == s->capacity) partial_remove(c, s);
  }
  HM_RACY_ADD(c->free_slots, -(size_t)n);
  hm_unlock(&c->lock);
  *head = list;
  return n;
}

/* Put a batch back into its spans.  Caller holds the central lock. */
static void give_to_spans(hm_central_t *c, unsigned cls, void *head, uint32_t n) {
  HM_RACY_ADD(c->free_slots, (size_t)n);
  const size_t span_bytes = (size_t)span_capacity(cls) * hmi_class_size[cls];
  hm_span_t *s = NULL;
  while (head != NULL) {
    void *p = head;
    head = hmi_next_checked(p);
    /* Neighbours in a batch are often of one span (handed out together, freed together):
     * the page map is read only for an object outside the previous one's span.  python3
     * 0.98-0.99x, fragment 0.97-0.99x, shuffle 0.96x (5-9 interleaved runs). */
    if (s == NULL || (uintptr_t)p - s->start >= span_bytes)
      s = HM_PM_PTR(hmi_pagemap_get((uintptr_t)p));
    hm_assert(s->cls == cls && s->used > 0 && (uintptr_t)p - s->start < HM_SPAN_SIZE);
    uint32_t idx = hmi_class_index((uint32_t)((uintptr_t)p - s->start), cls);
    hm_assert(idx < s->bump);
    uint64_t bit = (uint64_t)1 << (idx % 64);
    /* Back in its span already: freed twice, its free mark overwritten in between (a write
     * after free), which free's own check cannot see.  Counted twice, the span would be
     * handed back to the heap with this object still in use. */
    if (HM_UNLIKELY(s->free_map[idx / 64] & bit))
      hmi_fatal("hmalloc: free(): double free %p\n", p);
    s->free_map[idx / 64] |= bit;
    if (idx / 64 < s->map_from) s->map_from = idx / 64;
    s->used--;
    if (s->used == 0) {
      if (s->listed) partial_remove(c, s);
      if (c->empty == NULL) {
        /* every object is free again: restart from a clean bump */
        memset(s->free_map, 0, map_words((uint32_t)s->bump) * sizeof(uint64_t));
        s->map_from = 0;
        __atomic_store_n(&s->bump, 0, __ATOMIC_RELAXED);
        c->empty = s;
      } else {
        span_release(c, s);
        s = NULL;
      }
    } else if (!s->listed) {
      partial_push(c, s);
    }
  }
}

void hmi_span_give(unsigned cls, void *head, uint32_t n, uint32_t xfer_max) {
  hm_central_t *c = &hmi_central[cls];
  hm_lock(&c->lock);
  if (n > 1 && n <= xfer_max && c->xfer_n < HM_XFER_SLOTS) {
    c->xfer_head[c->xfer_n] = head;
    c->xfer_count[c->xfer_n++] = n;
    HM_RACY_ADD(c->xfer_objects, (size_t)n);
  } else {
    give_to_spans(c, cls, head, n);
  }
  hm_unlock(&c->lock);
}

/* Empty every transfer cache into the spans (malloc_trim: lets empty spans go back). */
static void drain_transfers(hm_central_t *c, unsigned cls) {
  while (c->xfer_n > 0) {
    unsigned i = --c->xfer_n;
    HM_RACY_ADD(c->xfer_objects, -(size_t)c->xfer_count[i]);
    give_to_spans(c, cls, c->xfer_head[i], c->xfer_count[i]);
  }
}

/* malloc_trim: give every kept empty span back to the medium heap. */
void hmi_span_release_empty(void) {
  for (unsigned cls = 0; cls < HM_CLASSES; cls++) {
    hm_central_t *c = &hmi_central[cls];
    hm_lock(&c->lock);
    drain_transfers(c, cls);
    if (c->empty != NULL) {
      hm_span_t *s = c->empty;
      c->empty = NULL;
      span_release(c, s);
    }
    hm_unlock(&c->lock);
  }
}

size_t hmi_span_free_bytes(size_t *span_bytes) {
  size_t free_bytes = 0, spans = 0;
  for (unsigned cls = 0; cls < HM_CLASSES; cls++) {
    hm_central_t *c = &hmi_central[cls];
    free_bytes += (size_t)__atomic_load_n(&c->free_slots, __ATOMIC_RELAXED) * hmi_class_size[cls];
    spans += __atomic_load_n(&c->span_count, __ATOMIC_RELAXED);
  }
  if (span_bytes) *span_bytes = spans * HM_SPAN_SIZE;
  return free_bytes;
}

/* Each listed span: its free map marks only objects below bump, none below map_from, and the
 * counts add up. */
int hmi_span_check(void) {
  for (unsigned cls = 0; cls < HM_CLASSES; cls++) {
    hm_central_t *c = &hmi_central[cls];
    hm_lock(&c->lock);
    for (hm_span_t *s = c->partial;; s = s->next) {
      if (s == NULL) {
        if (c->empty == NULL) break;
        s = c->empty; /* checked last */
      }
      uint32_t free_count = 0;
      bool map_ok = s->bump <= s->capacity;
      for (uint32_t i = 0; map_ok && i < map_words(s->capacity); i++) {
        uint64_t w = s->free_map[i];
        uint64_t highest = (uint64_t)i * 64 + 63 - (uint64_t)__builtin_clzll(w | 1);
        if (w != 0 && (i < s->map_from || highest >= s->bump)) map_ok = false;
        free_count += (uint32_t)__builtin_popcountll(w);
      }
      if (!map_ok) {
        hm_unlock(&c->lock);
        hmi_dprintf(2, "hmalloc: heap check: bad free map in span %p (class %u)\n",
                    (void *)s->start, cls);
        return -1;
      }
      hm_pmentry_t e = hmi_pagemap_get(s->start);
      if (s->cls != cls || HM_PM_PTR(e) != s ||
          !((e & HM_PM_SMALL) || (e & 127) == HM_PM_CHECKED) ||
          s->used + free_count + (s->capacity - s->bump) != s->capacity) {
        hm_unlock(&c->lock);
        hmi_dprintf(2, "hmalloc: heap check: span %p of class %u inconsistent\n",
                    (void *)s->start, cls);
        return -1;
      }
      if (s == c->empty) break;
    }
    hm_unlock(&c->lock);
  }
  return 0;
}
