/* arena.c - the medium tier: boundary-tagged chunks in segments, TLSF-style free bins.
 *
 * Invariants (checked by hmi_arena_check):
 *  - A segment is a run of chunks from seg->start to a zero-size in-use sentinel header at
 *    seg->end - 16.  Chunk sizes are multiples of 16 and at least HM_CHUNK_MIN.
 *  - Every header carries check == address ^ hmi_secret, so a pointer into user data is never
 *    mistaken for a chunk.  HM_CH_PREV_INUSE of a chunk mirrors HM_CH_INUSE of its
 *    predecessor; a free chunk's last word (footer) repeats its size.
 *  - No two free chunks are adjacent: free() merges with both neighbours.
 *  - Every free chunk is on exactly the bin list mapping(size) names, and the bitmaps have a
 *    bit set exactly for the non-empty lists.
 *  - The user area of the first chunk of every segment is page aligned, and so is every span
 *    (spans are 64 KiB chunks whose user area starts on a page), which lets spans pack
 *    back to back without gaps.
 * Locking: everything in an arena is under arena->lock.  The segment list is only changed
 * under it too.  The page map entries of a segment's pages are written by whoever adds or
 * removes the segment, under the lock.
 * Growth: the main arena grows its brk segment with sbrk in steps of at least HM_GROW_MIN;
 * if sbrk fails (something mapped above the break, or RLIMIT_DATA), it carries on with
 * mmap'ed segments, as do the other arenas.  The free top of the brk heap is given back with
 * sbrk(-n) when it passes the trim threshold; an mmap'ed segment that becomes entirely free is
 * unmapped. */
#include <string.h>

#include "internal.h"

/* The brk heap grows by the request plus a pad, and automatic trimming keeps the pad free at
 * the top: since the pad is at least the largest medium request, a malloc/free pair at the
 * top of the heap never makes it grow and shrink in turn.  A program that frees and
 * allocates more than that in turn (a batch of small objects: its spans go back to the heap
 * and come out again) would still trim and regrow the heap at every turn, every page
 * faulting in again: so the pad doubles each time the heap grows after a trim, up to
 * HM_TOP_PAD_MAX, and malloc_trim resets it.  1000 256-byte objects took 17.4 ns per call
 * that way, now 3.6 (mimalloc 2.3); 2000 of 2 KiB 77 ns, now 7.5 (a ceiling of 256 KiB left
 * them at 66).  What the pad keeps is the cost: `large` took 7% more peak RSS (153.6 MB, as
 * glibc) in 0.97x the time. */
#define HM_TOP_PAD ((size_t)128 << 10)
#define HM_TOP_PAD_MAX ((size_t)4 << 20)
static size_t top_pad(const hm_arena_t *a) { return a->top_pad ? a->top_pad : HM_TOP_PAD; }
#define HM_SEGMENT_MIN ((size_t)1 << 20)  /* smallest mmap'ed segment */
#define HM_BEST_FIT_SCAN 16               /* list entries examined by best fit per bin */

hm_arena_t hmi_main_arena;

/* ---- chunk helpers ---- */
static inline size_t csize(const hm_chunk_t *c) { return c->size_flags & ~HM_CH_FLAGS; }
static inline bool cinuse(const hm_chunk_t *c) { return (c->size_flags & HM_CH_INUSE) != 0; }
static inline bool cprev_inuse(const hm_chunk_t *c) {
  return (c->size_flags & HM_CH_PREV_INUSE) != 0;
}
static inline hm_chunk_t *cat(uintptr_t a) { return (hm_chunk_t *)a; }
static inline hm_chunk_t *cnext(hm_chunk_t *c) { return cat((uintptr_t)c + csize(c)); }
static inline size_t *cfooter(hm_chunk_t *c) {
  return (size_t *)((uintptr_t)c + csize(c) - sizeof(size_t));
}
static inline uintptr_t ccheck(const hm_chunk_t *c) { return (uintptr_t)c ^ hmi_secret; }

/* Write a header keeping the PREV_INUSE bit given. */
static inline void cset(hm_chunk_t *c, size_t size, bool inuse, bool prev_inuse) {
  HM_RACY_SET(c->size_flags, size | (inuse ? HM_CH_INUSE : 0) | (prev_inuse ? HM_CH_PREV_INUSE : 0));
  HM_RACY_SET(c->check, ccheck(c));
  if (!inuse && size >= HM_CHUNK_MIN) *cfooter(c) = size;
}
/* The header word of an in-use chunk is read without the lock (usable size, validation);
 * its size never changes then, only this bit, written by neighbours' operations. */
static inline void set_prev_inuse(hm_chunk_t *c, bool v) {
  HM_RACY_SET(c->size_flags, v ? c->size_flags | HM_CH_PREV_INUSE : c->size_flags & ~HM_CH_PREV_INUSE);
}

HM_COLD static void corrupt(const char *what, void *where) {
  hmi_fatal("hmalloc: heap corruption: %s at %p\n", what, where);
}

/* A chunk reached through a neighbour's size or footer must look like a chunk; otherwise a
 * user overflow has rewritten a boundary tag and following it would spread the damage. */
static inline void verify_header(hm_chunk_t *c, const char *what) {
  if (HM_UNLIKELY(c->check != ccheck(c))) corrupt(what, c);
}

/* The free chunk before c, found by its footer (c's previous-in-use bit is clear).  The size
 * is checked as a distance within seg: a forged one above c's address would otherwise wrap
 * round to an address above the segment. */
static hm_chunk_t *prev_by_footer(const hm_segment_t *seg, hm_chunk_t *c, const char *what) {
  size_t psize = *((size_t *)c - 1);
  if (HM_UNLIKELY(psize < HM_CHUNK_MIN || psize > (uintptr_t)c - seg->start)) corrupt(what, c);
  return cat((uintptr_t)c - psize);
}

/* ---- bins ---- */
static inline void mapping(size_t size, unsigned *fl, unsigned *sl) {
  unsigned f = 63u - (unsigned)__builtin_clzl(size);
  *fl = f;
  *sl = (unsigned)(size >> (f - HM_SL_BITS)) & (HM_SL_COUNT - 1);
}

static void bin_insert(hm_arena_t *a, hm_chunk_t *c) {
  hm_assert(csize(c) >= HM_CHUNK_MIN && (csize(c) & (HM_ALIGN - 1)) == 0 && !cinuse(c));
  hm_assert(*cfooter(c) == csize(c));
  unsigned fl, sl;
  mapping(csize(c), &fl, &sl);
  hm_chunk_t *head = a->bins[fl][sl];
  c->next_free = head;
  c->prev_free = NULL;
  if (head) head->prev_free = c;
  a->bins[fl][sl] = c;
  a->fl_bitmap |= (uint64_t)1 << fl;
  a->sl_bitmap[fl] |= 1u << sl;
  a->free_bytes += csize(c);
  a->free_chunks++;
}

static void bin_remove(hm_arena_t *a, hm_chunk_t *c) {
  unsigned fl, sl;
  mapping(csize(c), &fl, &sl);
  hm_chunk_t *n = c->next_free, *p = c->prev_free;
  if (HM_UNLIKELY((n && n->prev_free != c) || (p && p->next_free != c) ||
                  (!p && a->bins[fl][sl] != c)))
    corrupt("free list links broken", c);
  if (n) n->prev_free = p;
  if (p) p->next_free = n;
  else {
    a->bins[fl][sl] = n;
    if (n == NULL) {
      a->sl_bitmap[fl] &= ~(1u << sl);
      if (a->sl_bitmap[fl] == 0) a->fl_bitmap &= ~((uint64_t)1 << fl);
    }
  }
  a->free_bytes -= csize(c);
  a->free_chunks--;
}

/* First non-empty list at or above (fl, sl). */
static hm_chunk_t *bin_find(hm_arena_t *a, unsigned fl, unsigned sl) {
  if (fl >= HM_FL_COUNT) return NULL;
  uint32_t slmap = sl < 32 ? a->sl_bitmap[fl] & (~0u << sl) : 0;
  if (slmap == 0) {
    if (fl + 1 >= HM_FL_COUNT) return NULL;
    uint64_t flmap = a->fl_bitmap & (~(uint64_t)0 << (fl + 1));
    if (flmap == 0) return NULL;
    fl = (unsigned)__builtin_ctzll(flmap);
    slmap = a->sl_bitmap[fl];
  }
  return a->bins[fl][__builtin_ctz(slmap)];
}

/* Smallest chunk >= need among the first HM_BEST_FIT_SCAN entries of a list. */
static hm_chunk_t *best_in_list(hm_chunk_t *c, size_t need) {
  hm_chunk_t *best = NULL;
  for (int i = 0; c != NULL && i < HM_BEST_FIT_SCAN; c = c->next_free, i++) {
    size_t s = csize(c);
    if (s >= need && (best == NULL || s < csize(best))) {
      best = c;
      if (s == need) break;
    }
  }
  return best;
}

/* Find a free chunk of at least `need` bytes; bounded work whatever the heap holds.
 * first fit: the head of the first list all of whose chunks fit (TLSF's good fit, O(1)).
 * best fit: the smallest fitting chunk among the first entries of the request's own list,
 * else of the first non-empty list above it. */
static hm_chunk_t *search(hm_arena_t *a, size_t need) {
  unsigned fl, sl;
  a->searches++;
  if (hmi_options.fit == HM_FIT_BEST) {
    mapping(need, &fl, &sl);
    hm_chunk_t *c = best_in_list(a->bins[fl][sl], need);
    if (c) return c;
    if (++sl == HM_SL_COUNT) { sl = 0; fl++; }
    c = bin_find(a, fl, sl);
    return c ? best_in_list(c, need) : NULL;
  }
  size_t rounded = need + ((size_t)1 << (63u - (unsigned)__builtin_clzl(need) - HM_SL_BITS)) - 1;
  mapping(rounded, &fl, &sl);
  return bin_find(a, fl, sl);
}

/* Does c hold `need` bytes with the user area on an `align` boundary?  A front piece cut off
 * to reach the boundary must be a chunk of its own (hmi_arena_alloc). */
static bool fits_aligned(const hm_chunk_t *c, size_t need, size_t align) {
  uintptr_t user = (uintptr_t)c + HM_CHUNK_HEADER;
  size_t front = (user & (align - 1)) == 0 ? 0 : hm_align_up(user + HM_CHUNK_MIN, align) - user;
  return csize(c) >= front + need;
}

/* An aligned request: search(need + align + HM_CHUNK_MIN) always fits, but it rules out every
 * chunk of about the request's size, which are exactly the holes freed spans leave (64 KiB,
 * already aligned).  Without this a heap whose spans come and go by class (the shuffle
 * workload) grows past its holes: measured, 322 MB mapped where 266 MB sufficed.  So first
 * look at the non-empty lists from need's up to that bound, HM_BEST_FIT_SCAN entries each,
 * for a chunk that fits as it lies. */
static hm_chunk_t *search_aligned(hm_arena_t *a, size_t need, size_t want, size_t align) {
  unsigned fl, sl, top_fl, top_sl;
  mapping(need, &fl, &sl);
  mapping(want, &top_fl, &top_sl);
  for (;;) {
    uint32_t slmap = a->sl_bitmap[fl] & (~0u << sl);
    if (slmap == 0) {
      uint64_t flmap = fl + 1 < HM_FL_COUNT ? a->fl_bitmap & (~(uint64_t)0 << (fl + 1)) : 0;
      if (flmap == 0) return NULL;
      fl = (unsigned)__builtin_ctzll(flmap);
      slmap = a->sl_bitmap[fl];
    }
    sl = (unsigned)__builtin_ctz(slmap);
    if (fl > top_fl || (fl == top_fl && sl > top_sl)) return NULL;
    hm_chunk_t *c = a->bins[fl][sl];
    for (int i = 0; c != NULL && i < HM_BEST_FIT_SCAN; c = c->next_free, i++)
      if (fits_aligned(c, need, align)) return c;
    if (++sl == HM_SL_COUNT) {
      if (++fl >= HM_FL_COUNT) return NULL;
      sl = 0;
    }
  }
}

/* ---- segments ---- */
static void segment_link(hm_arena_t *a, hm_segment_t *s) {
  s->arena = a;
  s->prev = NULL;
  s->next = a->segments;
  if (a->segments) a->segments->prev = s;
  a->segments = s;
  a->segment_count++;
}

static void segment_unlink(hm_arena_t *a, hm_segment_t *s) {
  if (s->prev) s->prev->next = s->next;
  else a->segments = s->next;
  if (s->next) s->next->prev = s->prev;
  a->segment_count--;
}

/* Lay out [start, end) as one free chunk plus the sentinel and insert the chunk. */
static void segment_format(hm_arena_t *a, hm_segment_t *s) {
  hm_chunk_t *c = cat(s->start);
  size_t size = s->end - HM_CHUNK_HEADER - s->start;
  cset(c, size, false, true);
  cset(cat(s->end - HM_CHUNK_HEADER), 0, true, false);
  bin_insert(a, c);
}

static bool segment_map_pages(hm_segment_t *s, uintptr_t from, uintptr_t to) {
  uintptr_t p0 = hm_page_floor(from), p1 = hm_align_up(to, HM_PAGE);
  return hmi_pagemap_set(p0, (p1 - p0) >> HM_PAGE_SHIFT, (uintptr_t)s | HM_PM_MEDIUM);
}

/* A new mmap'ed segment big enough for a chunk of `need` bytes (alignment slack included). */
static bool grow_mmap(hm_arena_t *a, size_t need) {
  size_t size = hm_align_up(need + 2 * HM_PAGE, (size_t)64 << 10);
  if (size < HM_SEGMENT_MIN) size = HM_SEGMENT_MIN;
  void *map = hmi_os_mmap(size);
  if (map == NULL) return false;
  hm_segment_t *s = hmi_meta_alloc(sizeof *s);
  if (s == NULL) { hmi_os_munmap(map, size); return false; }
  /* First user area on the second page boundary: spans then pack from the start. */
  s->start = (uintptr_t)map + HM_PAGE - HM_CHUNK_HEADER;
  s->end = (uintptr_t)map + size;
  s->is_brk = 0;
  if (!segment_map_pages(s, (uintptr_t)map, s->end)) {
    hmi_os_munmap(map, size);
    hmi_meta_free(s, sizeof *s);
    return false;
  }
  segment_link(a, s);
  segment_format(a, s);
  HM_RACY_ADD(a->mapped, size);
  a->seg_maps++;
  return true;
}

static void segment_unmap(hm_arena_t *a, hm_segment_t *s) {
  uintptr_t map = s->start - (HM_PAGE - HM_CHUNK_HEADER);
  size_t size = s->end - map;
  hmi_pagemap_set(map, size >> HM_PAGE_SHIFT, 0);
  segment_unlink(a, s);
  HM_RACY_ADD(a->mapped, -size);
  a->seg_unmaps++;
  hmi_os_munmap((void *)map, size);
  hmi_meta_free(s, sizeof *s);
}

static hm_segment_t *brk_top_segment(hm_arena_t *a) {
  for (hm_segment_t *s = a->segments; s; s = s->next)
    if (s->is_brk && s->end == (uintptr_t)hmi_os_sbrk(0)) return s;
  return NULL;
}

/* Grow the brk heap by at least `need` bytes of chunk space.  The new memory extends the
 * segment at the top of the break when it is contiguous with it; if something else moved the
 * break it starts a new brk segment. */
static bool grow_brk(hm_arena_t *a, size_t need) {
  if (a->trimmed) { /* regrowing after a trim: keep more next time */
    a->trimmed = 0;
    a->top_pad = top_pad(a) < HM_TOP_PAD_MAX ? 2 * top_pad(a) : HM_TOP_PAD_MAX;
  }
  size_t incr = hm_align_up(need + HM_PAGE + top_pad(a), HM_PAGE);
  if ((intptr_t)incr < 0) return false;
  hm_segment_t *top = brk_top_segment(a);
  void *old = hmi_os_sbrk((intptr_t)incr);
  if (old == NULL) return false;
  uintptr_t base = (uintptr_t)old, end = base + incr;
  if (top != NULL && top->end == base) {
    /* The old sentinel becomes the header of the new free space. */
    hm_chunk_t *c = cat(top->end - HM_CHUNK_HEADER);
    bool prev_inuse = cprev_inuse(c);
    if (!segment_map_pages(top, base, end)) { hmi_os_sbrk(-(intptr_t)incr); return false; }
    HM_RACY_SET(top->end, end);
    size_t size = end - HM_CHUNK_HEADER - (uintptr_t)c;
    if (!prev_inuse) { /* merge with the free chunk before the old sentinel */
      hm_chunk_t *p = prev_by_footer(top, c, "bad footer before heap top");
      verify_header(p, "bad footer before heap top");
      bin_remove(a, p);
      size += csize(p);
      c = p;
      prev_inuse = cprev_inuse(p);
      a->coalesces++;
    }
    cset(c, size, false, prev_inuse);
    cset(cat(end - HM_CHUNK_HEADER), 0, true, false);
    bin_insert(a, c);
  } else {
    uintptr_t start = hm_align_up(base + HM_CHUNK_HEADER, HM_PAGE) - HM_CHUNK_HEADER;
    if (end - start < HM_CHUNK_MIN + HM_CHUNK_HEADER + need) { /* sbrk gave too little */
      hmi_os_sbrk(-(intptr_t)incr);
      return false;
    }
    hm_segment_t *s = hmi_meta_alloc(sizeof *s);
    if (s == NULL) { hmi_os_sbrk(-(intptr_t)incr); return false; }
    s->start = start;
    s->end = end;
    s->is_brk = 1;
    if (!segment_map_pages(s, start, end)) {
      hmi_meta_free(s, sizeof *s);
      hmi_os_sbrk(-(intptr_t)incr);
      return false;
    }
    segment_link(a, s);
    segment_format(a, s);
  }
  HM_RACY_ADD(a->mapped, incr);
  a->brk_grows++;
  return true;
}

/* A growth that takes the arena past the most it ever mapped is memory the program wants in
 * the heap now: the large tier gives back as much of what it keeps idle (freed mappings,
 * still resident), so that the footprint moves rather than adds up (hmi_large_cache_release).
 * Only past the high mark: doing it at every growth took the large case, whose heap trims
 * and regrows in turn, 2.2x the time. */
static bool grow(hm_arena_t *a, size_t need) {
  bool ok = false;
  if (a->use_brk && !a->brk_failed) {
    ok = grow_brk(a, need);
    if (!ok) a->brk_failed = 1; /* from now on: mmap'ed segments */
  }
  if (!ok) ok = grow_mmap(a, need);
  if (ok && a->mapped > a->mapped_high) {
    size_t beyond = a->mapped - a->mapped_high;
    a->mapped_high = a->mapped;
    if (__atomic_load_n(&hmi_large_cached_bytes, __ATOMIC_RELAXED) != 0)
      hmi_large_cache_release(beyond); /* lock order: arena, then large (as fork_prepare) */
  }
  return ok;
}

/* Give back the free top of the brk heap beyond `keep` bytes.  Caller holds the lock. */
static bool trim_top(hm_arena_t *a, size_t keep) {
  hm_segment_t *s = brk_top_segment(a);
  if (s == NULL) return false;
  hm_chunk_t *sentinel = cat(s->end - HM_CHUNK_HEADER);
  if (cprev_inuse(sentinel)) return false;
  hm_chunk_t *top = cat((uintptr_t)sentinel - *((size_t *)sentinel - 1));
  verify_header(top, "bad footer at heap top");
  size_t size = csize(top);
  if (size < keep + HM_CHUNK_MIN + HM_PAGE) return false;
  uintptr_t new_end = hm_page_floor((uintptr_t)top + HM_CHUNK_MIN + keep + HM_CHUNK_HEADER +
                                    HM_PAGE - 1);
  if (new_end < (uintptr_t)top + HM_CHUNK_MIN + HM_CHUNK_HEADER) new_end += HM_PAGE;
  if (new_end >= s->end) return false;
  size_t release = s->end - new_end;
  bin_remove(a, top);
  if (hmi_os_sbrk(-(intptr_t)release) == NULL) { bin_insert(a, top); return false; }
  hmi_pagemap_set(hm_align_up(new_end, HM_PAGE), release >> HM_PAGE_SHIFT, 0);
  HM_RACY_SET(s->end, new_end);
  cset(top, new_end - HM_CHUNK_HEADER - (uintptr_t)top, false, cprev_inuse(top));
  cset(cat(new_end - HM_CHUNK_HEADER), 0, true, false);
  bin_insert(a, top);
  HM_RACY_ADD(a->mapped, -release);
  a->brk_trims++;
  return true;
}

static int check_arena_locked(hm_arena_t *a);

/* Debug builds (-Ddebug_checks=true) walk the whole arena every 256 operations. */
static inline void debug_walk(hm_arena_t *a) {
#ifdef HM_DEBUG
  static unsigned ops;
  if ((++ops & 255) == 0 && check_arena_locked(a) != 0)
    hmi_fatal("hmalloc: debug heap check failed\n");
#else
  (void)a;
#endif
}

/* ---- allocation ---- */
static inline size_t chunk_need(size_t size) {
  size_t need = hm_align_up(size + HM_CHUNK_HEADER, HM_ALIGN);
  return need < HM_CHUNK_MIN ? HM_CHUNK_MIN : need;
}

/* Cut c (in use, `need` bytes wanted) down to `need`, freeing the tail if it is big enough. */
static void split_tail(hm_arena_t *a, hm_chunk_t *c, size_t need) {
  size_t size = csize(c);
  if (size - need < HM_CHUNK_MIN) return;
  hm_chunk_t *rest = cat((uintptr_t)c + need);
  size_t rest_size = size - need;
  hm_chunk_t *after = cnext(c);
  HM_RACY_SET(c->size_flags, need | (c->size_flags & HM_CH_FLAGS));
  if (!cinuse(after)) { /* keep the no-adjacent-free invariant */
    verify_header(after, "bad next chunk header");
    bin_remove(a, after);
    rest_size += csize(after);
    after = cat((uintptr_t)rest + rest_size);
    a->coalesces++;
  }
  cset(rest, rest_size, false, true);
  set_prev_inuse(after, false);
  bin_insert(a, rest);
  a->splits++;
}

void *hmi_arena_alloc(hm_arena_t *a, size_t size, size_t align) {
  if (size > ((size_t)1 << 46)) return NULL;
  size_t need = chunk_need(size);
  size_t want = align > HM_ALIGN ? need + align + HM_CHUNK_MIN : need;
  hm_lock(&a->lock);
  hm_chunk_t *c = want != need ? search_aligned(a, need, want, align) : NULL;
  if (c == NULL) c = search(a, want);
  bool grew = false;
  if (c == NULL) {
    if (!grow(a, want) || (c = search(a, want)) == NULL) {
      hm_unlock(&a->lock);
      return NULL;
    }
    grew = true;
  }
  bin_remove(a, c);
  if (a->spare != NULL && (uintptr_t)c == a->spare->start) a->spare = NULL;
  uintptr_t user = (uintptr_t)c + HM_CHUNK_HEADER;
  if (align > HM_ALIGN && (user & (align - 1)) != 0) {
    /* Free a front piece so that the user area lands on the boundary. */
    uintptr_t aligned = hm_align_up(user + HM_CHUNK_MIN, align);
    size_t front = aligned - user;
    hm_chunk_t *ac = cat((uintptr_t)c + front);
    cset(ac, csize(c) - front, true, false);
    cset(c, front, false, cprev_inuse(c));
    bin_insert(a, c);
    a->splits++;
    c = ac;
  } else {
    HM_RACY_SET(c->size_flags, c->size_flags | HM_CH_INUSE);
  }
  set_prev_inuse(cnext(c), true);
  split_tail(a, c, need);
  HM_RACY_ADD(a->in_use, csize(c));
  HM_RACY_ADD(a->in_use_chunks, 1);
  if (grew) hmi_stats_note_mapped(); /* peaks move only when the OS gives memory; no lock */
  hm_assert(((uintptr_t)c + HM_CHUNK_HEADER) % (align > HM_ALIGN ? align : HM_ALIGN) == 0);
  hm_assert(csize(c) >= need && cinuse(c) && cprev_inuse(cnext(c)));
  debug_walk(a);
  hm_unlock(&a->lock);
  /* The second word is where a freed block keeps the free mark (tcache.c); memory that held
   * freed blocks before (merged chunks, released spans) may still have it there. */
  ((uintptr_t *)((uintptr_t)c + HM_CHUNK_HEADER))[1] = 0;
  return (void *)((uintptr_t)c + HM_CHUNK_HEADER);
}

/* Called with or without the arena lock (free takes it; usable size and realloc's
 * validation do not): every word is read once, atomically. */
hm_chunk_t *hmi_arena_chunk_of(void *p, hm_segment_t *seg) {
  uintptr_t u = (uintptr_t)p;
  if ((u & (HM_ALIGN - 1)) != 0) return NULL;
  uintptr_t c = u - HM_CHUNK_HEADER;
  uintptr_t end = __atomic_load_n(&seg->end, __ATOMIC_RELAXED);
  if (c < seg->start || c >= end - HM_CHUNK_HEADER) return NULL;
  hm_chunk_t *ch = cat(c);
  if (__atomic_load_n(&ch->check, __ATOMIC_RELAXED) != ccheck(ch)) return NULL;
  size_t s = __atomic_load_n(&ch->size_flags, __ATOMIC_RELAXED) & ~HM_CH_FLAGS;
  if (s < HM_CHUNK_MIN || s > end - HM_CHUNK_HEADER - c) return NULL;
  return ch;
}

void hmi_arena_free(void *p, hm_segment_t *seg) {
  hm_arena_t *a = seg->arena;
  hm_lock(&a->lock);
  hm_chunk_t *c = hmi_arena_chunk_of(p, seg);
  if (c == NULL) { hm_unlock(&a->lock); hmi_invalid_pointer("free", p); }
  if (!cinuse(c)) {
    hm_unlock(&a->lock);
    hmi_fatal("hmalloc: free(): double free %p\n", p);
  }
  size_t size = csize(c);
  HM_RACY_ADD(a->in_use, -size);
  HM_RACY_ADD(a->in_use_chunks, -1);
  hm_chunk_t *next = cnext(c);
  verify_header(next, "bad next chunk header");
  if (!cinuse(next)) {
    bin_remove(a, next);
    size += csize(next);
    a->coalesces++;
  }
  bool prev_inuse = cprev_inuse(c);
  if (!prev_inuse) {
    hm_chunk_t *prev = prev_by_footer(seg, c, "bad footer before chunk");
    size_t psize = (uintptr_t)c - (uintptr_t)prev;
    verify_header(prev, "bad previous chunk header");
    if (HM_UNLIKELY(csize(prev) != psize || cinuse(prev))) corrupt("footer mismatch", c);
    bin_remove(a, prev);
    size += psize;
    c = prev;
    prev_inuse = cprev_inuse(prev);
    a->coalesces++;
  }
  cset(c, size, false, prev_inuse);
  set_prev_inuse(cnext(c), false);
  bin_insert(a, c);
  /* An mmap'ed segment that is entirely free goes back to the OS, except one per arena kept
   * as a spare: that avoids map/unmap churn when a thread allocates and frees a block in a
   * loop.  (An allocation from the spare makes it an ordinary segment again.) */
  if (!seg->is_brk && (uintptr_t)c == seg->start &&
      (uintptr_t)c + size == seg->end - HM_CHUNK_HEADER) {
    if (a->spare == NULL) {
      a->spare = seg;
    } else {
      bin_remove(a, c);
      segment_unmap(a, seg);
    }
  } else if (seg->is_brk && (uintptr_t)c + size == seg->end - HM_CHUNK_HEADER) {
    /* (the second bound is trim_top's own: testing it here first spares the sbrk(0) that
     * finding the top segment costs when a block freed at the top leaves nothing to give
     * back, as in a malloc/free pair there: 71 of its 750 instructions) */
    if (size >= hmi_options.trim_threshold && size >= top_pad(a) + HM_CHUNK_MIN + HM_PAGE &&
        trim_top(a, top_pad(a)))
      a->trimmed = 1;
  } else if (size >= 4 * hmi_options.trim_threshold) {
    /* A big free chunk that is not at the top: blocks kept in medium caches above it may be
     * all that stops the heap from shrinking or the segment from going back.  This thread
     * empties its own at the end of the call (hmi_free_slow). */
    hmi_tcache.mcache_flush_wanted = 1;
  }
  debug_walk(a);
  hm_unlock(&a->lock);
}

bool hmi_arena_resize(void *p, hm_segment_t *seg, size_t size) {
  if (size > ((size_t)1 << 46)) return false;
  hm_arena_t *a = seg->arena;
  size_t need = chunk_need(size);
  hm_lock(&a->lock);
  hm_chunk_t *c = hmi_arena_chunk_of(p, seg);
  if (c == NULL || !cinuse(c)) { hm_unlock(&a->lock); hmi_invalid_pointer("realloc", p); }
  size_t old = csize(c);
  /* A block resized once is likely to be resized again the same way (a buffer grown by
   * appends): it keeps up to a quarter of its size as headroom, so the next appends fit in
   * place.  Trimmed to the exact size, as it was, its freed tail went to the next malloc
   * that fit, and realloc_heavy moved (copied) 64k medium buffers, 1.6 GB.  A shrink by
   * more than that quarter gives the rest back as before. */
  size_t keep = hm_align_up(need + need / 4, HM_ALIGN); /* size <= 2^46: no overflow */
  bool ok = true;
  if (need > old) {
    hm_chunk_t *next = cnext(c);
    verify_header(next, "bad next chunk header");
    if (!cinuse(next) && old + csize(next) >= need) {
      bin_remove(a, next);
      HM_RACY_SET(c->size_flags, c->size_flags + csize(next));
      set_prev_inuse(cnext(c), true);
      a->coalesces++;
    } else {
      ok = false;
    }
  }
  if (ok) {
    if (csize(c) > keep) split_tail(a, c, keep);
    HM_RACY_ADD(a->in_use, csize(c) - old);
  }
  hm_unlock(&a->lock);
  return ok;
}

size_t hmi_arena_usable(void *p) {
  hm_chunk_t *c = cat((uintptr_t)p - HM_CHUNK_HEADER);
  return (__atomic_load_n(&c->size_flags, __ATOMIC_RELAXED) & ~HM_CH_FLAGS) - HM_CHUNK_HEADER;
}

/* Size of the free chunk at the top of the brk heap (what trimming could give back). */
size_t hmi_arena_top_free(hm_arena_t *a) {
  size_t size = 0;
  hm_lock(&a->lock);
  hm_segment_t *s = brk_top_segment(a);
  if (s != NULL) {
    hm_chunk_t *sentinel = cat(s->end - HM_CHUNK_HEADER);
    if (!cprev_inuse(sentinel)) size = *((size_t *)sentinel - 1);
  }
  hm_unlock(&a->lock);
  return size;
}

/* malloc_trim: the top of the brk heap down to `pad`, then (if asked) every whole free page
 * inside free chunks (their header, links and footer stay). */
int hmi_arena_trim(hm_arena_t *a, size_t pad, bool release_inside) {
  int released = 0;
  hm_lock(&a->lock);
  a->top_pad = 0; /* the program says it is done: forget what its churn made the pad */
  a->trimmed = 0;
  if (trim_top(a, pad)) released = 1;
  if (release_inside) {
    for (unsigned fl = 0; fl < HM_FL_COUNT; fl++)
      for (unsigned sl = 0; sl < HM_SL_COUNT; sl++)
        for (hm_chunk_t *c = a->bins[fl][sl]; c; c = c->next_free) {
          uintptr_t from = hm_align_up((uintptr_t)c + sizeof(hm_chunk_t), HM_PAGE);
          uintptr_t to = hm_page_floor((uintptr_t)c + csize(c) - sizeof(size_t));
          if (to > from) {
            hmi_os_release((void *)from, to - from);
            released = 1;
          }
        }
  }
  hm_unlock(&a->lock);
  return released;
}

void hmi_arena_init(hm_arena_t *a, unsigned index, bool use_brk) {
  memset(a, 0, sizeof *a);
  a->index = index;
  a->use_brk = use_brk;
}

/* ---- consistency check ---- */
/* An arena's number: its place in hmi_arenas, or the index a unit test gave it. */
static unsigned arena_number(const hm_arena_t *a) {
  for (unsigned i = 0; i < hmi_arena_count; i++)
    if (hmi_arenas[i] == a) return i;
  return a->index;
}

#define FAIL(msg, at)                                                            \
  do {                                                                           \
    hmi_dprintf(2, "hmalloc: heap check: %s at %p (arena %u)\n", msg, (void *)(uintptr_t)(at), arena_number(a)); \
    return -1;                                                                   \
  } while (0)

static int check_arena_locked(hm_arena_t *a) {
  size_t walked_free = 0, walked_free_bytes = 0, walked_inuse = 0, mapped = 0;
  for (hm_segment_t *s = a->segments; s; s = s->next) {
    if (s->arena != a) FAIL("segment of another arena", s);
    mapped += s->is_brk ? 0 : s->end - (s->start - (HM_PAGE - HM_CHUNK_HEADER));
    bool prev_inuse = true, prev_free = false;
    uintptr_t at = s->start;
    for (;;) {
      hm_chunk_t *c = cat(at);
      if (at > s->end - HM_CHUNK_HEADER) FAIL("chunk runs past segment end", c);
      if (c->check != ccheck(c)) FAIL("bad check word", c);
      if (cprev_inuse(c) != prev_inuse) FAIL("PREV_INUSE disagrees with predecessor", c);
      if (at == s->end - HM_CHUNK_HEADER) {
        if (csize(c) != 0 || !cinuse(c)) FAIL("bad sentinel", c);
        break;
      }
      size_t sz = csize(c);
      if (sz < HM_CHUNK_MIN || (sz & (HM_ALIGN - 1)) != 0) FAIL("bad chunk size", c);
      if (!cinuse(c)) {
        if (prev_free) FAIL("two adjacent free chunks", c);
        if (*cfooter(c) != sz) FAIL("footer differs from size", c);
        unsigned fl, sl;
        mapping(sz, &fl, &sl);
        hm_chunk_t *x = a->bins[fl][sl];
        int steps = 0;
        while (x && x != c && steps++ < 1000000) x = x->next_free;
        if (x != c) FAIL("free chunk not on its bin list", c);
        walked_free++;
        walked_free_bytes += sz;
      } else {
        walked_inuse += sz;
      }
      prev_inuse = cinuse(c);
      prev_free = !prev_inuse;
      at += sz;
    }
  }
  size_t listed = 0;
  for (unsigned fl = 0; fl < HM_FL_COUNT; fl++) {
    if (((a->fl_bitmap >> fl) & 1) != (a->sl_bitmap[fl] != 0)) FAIL("first-level bitmap", fl);
    for (unsigned sl = 0; sl < HM_SL_COUNT; sl++) {
      hm_chunk_t *c = a->bins[fl][sl];
      if (((a->sl_bitmap[fl] >> sl) & 1) != (c != NULL)) FAIL("second-level bitmap", c);
      hm_chunk_t *prev = NULL;
      for (; c; prev = c, c = c->next_free) {
        unsigned f2, s2;
        mapping(csize(c), &f2, &s2);
        if (f2 != fl || s2 != sl) FAIL("chunk in the wrong bin", c);
        if (cinuse(c)) FAIL("in-use chunk on a free list", c);
        if (c->prev_free != prev) FAIL("broken back link", c);
        if (++listed > walked_free) FAIL("more listed than free chunks", c);
      }
    }
  }
  if (listed != walked_free || listed != a->free_chunks) FAIL("free chunk count", listed);
  if (walked_free_bytes != a->free_bytes) FAIL("free byte count", walked_free_bytes);
  if (walked_inuse != a->in_use) FAIL("in-use byte count", walked_inuse);
  (void)mapped;
  return 0;
}
#undef FAIL

int hmi_arena_check(hm_arena_t *a) {
  hm_lock(&a->lock);
  int r = check_arena_locked(a);
  hm_unlock(&a->lock);
  return r;
}

/* ---- the set of arenas ----
 * hmi_arenas[0] is the main arena (brk heap); the others, if configured, use mmap'ed
 * segments.  The array is filled at init and never shrinks. */
hm_arena_t *hmi_arenas[HM_MAX_ARENAS];
unsigned hmi_arena_count;

/* Zeroed memory is an empty arena (unlocked, no segments, empty bins), and both homes are
 * zero already: .bss for the main arena, one fresh mapping for the others.  So nothing is
 * written to an arena until a thread uses it (their index is their place here, arena_number):
 * writing each descriptor (about 6.5 KiB) at start-up put 14 pages in every process's RSS,
 * 56 KiB for the 7 arenas that a single-threaded program never uses. */
void hmi_arenas_init(unsigned count) {
  hmi_main_arena.use_brk = 1;
  hmi_arenas[0] = &hmi_main_arena;
  hmi_arena_count = 1;
  if (count > HM_MAX_ARENAS) count = HM_MAX_ARENAS;
  if (count < 2) return;
  hm_arena_t *more = hmi_os_mmap(hm_align_up((count - 1) * sizeof *more, HM_PAGE));
  if (more == NULL) return; /* the main arena serves every thread */
  for (unsigned i = 1; i < count; i++) hmi_arenas[i] = &more[i - 1];
  hmi_arena_count = count;
}

/* A thread's arena is chosen when its cache is set up (tcache.c, hmi_arena_assign); a thread
 * without a cache (before set-up, after exit) uses the main arena. */
hm_arena_t *hmi_arena_pick(void) {
  unsigned i = hmi_tcache.arena_index;
  return i < hmi_arena_count ? hmi_arenas[i] : &hmi_main_arena;
}

/* Threads are spread over the first hmi_options.arenas arenas (mallopt(M_ARENA_MAX) may
 * lower that at run time; it cannot exceed those created at start-up): a new thread takes the
 * arena the fewest live threads use, the lowest first.  So a program that starts threads one
 * after another reuses the arena (and the free memory) of those that exited, as glibc does,
 * instead of spreading over every arena: thread_churn (2 threads at a time, 12,000 in all)
 * peaked at 7.6 MB RSS with round-robin and at 5.5 MB with this (glibc 2.4 MB; the rest is
 * mostly a 64 KiB span for each of the (then 48) classes), in the same time.  No lock: the count of
 * the arena picked is bumped by compare-and-swap, so threads starting together cannot all
 * pile onto the same one. */
static unsigned arena_threads[HM_MAX_ARENAS]; /* live threads using each arena */
/* Bit i: arena i has been given to a thread.  Set under hmi_registry_lock (the caller's), which
 * fork_prepare holds while it locks the arenas: so the arenas it leaves alone stay unused
 * through the fork (hmi_arena_lock_all). */
static uint64_t arenas_given = 1; /* the main arena serves threads without a cache */

/* Arena i, or NULL if no thread was ever given it: such an arena is all zero (no segment, no
 * chunk, nothing counted), so the whole-heap walks (stats, malloc_trim, the heap check) and
 * fork leave it unread and unlocked, and its pages stay out of memory (hmi_arenas_init). */
hm_arena_t *hmi_arena_if_given(unsigned i) {
  return i < hmi_arena_count && ((__atomic_load_n(&arenas_given, __ATOMIC_RELAXED) >> i) & 1)
             ? hmi_arenas[i]
             : NULL;
}

/* Caller holds hmi_registry_lock. */
unsigned hmi_arena_assign(void) {
  unsigned n = __atomic_load_n(&hmi_options.arenas, __ATOMIC_RELAXED);
  if (n == 0 || n > hmi_arena_count) n = hmi_arena_count;
  for (;;) {
    unsigned best = 0, best_count = ~0u;
    for (unsigned i = 0; i < n; i++) {
      unsigned count = __atomic_load_n(&arena_threads[i], __ATOMIC_RELAXED);
      if (count < best_count) {
        best = i;
        best_count = count;
      }
    }
    /* if another thread took it meanwhile, look again */
    if (__atomic_compare_exchange_n(&arena_threads[best], &best_count, best_count + 1, false,
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      __atomic_fetch_or(&arenas_given, (uint64_t)1 << best, __ATOMIC_RELAXED);
      return best;
    }
  }
}

/* The thread that held arena i has exited (its cache is torn down).  When it was the last
 * one, the spare segment kept against churn has nobody left to serve: unmap it. */
void hmi_arena_unassign(unsigned i) {
  if (i >= hmi_arena_count || __atomic_sub_fetch(&arena_threads[i], 1, __ATOMIC_RELAXED) != 0)
    return;
  hm_arena_t *a = hmi_arenas[i];
  hm_lock(&a->lock);
  hm_segment_t *spare = a->spare;
  if (spare != NULL) {
    a->spare = NULL;
    bin_remove(a, cat(spare->start));
    segment_unmap(a, spare);
  }
  hm_unlock(&a->lock);
}

/* In a fork child only the forking thread lives: self is its arena, or HM_MAX_ARENAS. */
void hmi_arena_threads_after_fork(unsigned self) {
  for (unsigned i = 0; i < HM_MAX_ARENAS; i++) arena_threads[i] = i == self;
}

/* Around fork (the caller holds hmi_registry_lock, so no thread is given a new arena until
 * fork_parent or fork_child release it): the arenas given to threads.  No one takes the lock
 * of another (hmi_arena_if_given), and locking it would write its page: 7 pages in each
 * forking process, for arenas most never use. */
void hmi_arena_lock_all(void) {
  for (unsigned i = 0; i < hmi_arena_count; i++)
    if (hmi_arena_if_given(i)) hm_lock(&hmi_arenas[i]->lock);
}
void hmi_arena_unlock_all(void) {
  for (unsigned i = hmi_arena_count; i-- > 0;)
    if (hmi_arena_if_given(i)) hm_unlock(&hmi_arenas[i]->lock);
}
void hmi_arena_reset_locks(void) {
  for (unsigned i = 0; i < hmi_arena_count; i++)
    if (hmi_arena_if_given(i)) hm_lock_reset(&hmi_arenas[i]->lock);
}
