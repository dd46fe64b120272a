/* large.c - the large tier: one mmap per block, munmap on free, mremap on realloc.
 *
 * Layout: the header (hm_large_t) sits HM_LARGE_HEADER bytes before the user pointer, inside
 * the mapping; for an over-aligned block the mapping's unused head and tail are unmapped, so
 * the header is not necessarily at the mapping's start.  Only the page holding the user
 * pointer is entered in the page map (one entry however big the block): a free of any other
 * address inside the block finds no entry and is refused.  The header's check word ties it to
 * its own address and size, so user data cannot pass for a header.
 * Counters are under hmi_large_lock, which is never held across a system call. */
#include <sys/mman.h>

#include "internal.h"

hm_lock_t hmi_large_lock = HM_LOCK_INIT;
size_t hmi_large_count, hmi_large_bytes;
size_t hmi_large_max_count, hmi_large_max_bytes;
size_t hmi_large_usable_bytes; /* sum of hmi_large_usable over live blocks (stats) */

static inline uintptr_t large_check(const hm_large_t *h) {
  return (uintptr_t)h ^ h->map_size ^ hmi_secret;
}

static hm_large_t *live; /* list of live blocks, for the checker and reports */

static void link_live(hm_large_t *h) {
  hm_lock(&hmi_large_lock);
  h->prev = NULL;
  h->next = live;
  if (live) live->prev = h;
  live = h;
  HM_RACY_ADD(hmi_large_count, 1);
  HM_RACY_ADD(hmi_large_bytes, h->map_size);
  HM_RACY_ADD(hmi_large_usable_bytes, hmi_large_usable(h));
  if (hmi_large_count > hmi_large_max_count) hmi_large_max_count = hmi_large_count;
  if (hmi_large_bytes > hmi_large_max_bytes) hmi_large_max_bytes = hmi_large_bytes;
  hm_unlock(&hmi_large_lock);
}

static void unlink_live(hm_large_t *h) {
  hm_lock(&hmi_large_lock);
  if (h->prev) h->prev->next = h->next;
  else live = h->next;
  if (h->next) h->next->prev = h->prev;
  HM_RACY_ADD(hmi_large_count, -1);
  HM_RACY_ADD(hmi_large_bytes, -h->map_size);
  HM_RACY_ADD(hmi_large_usable_bytes, -hmi_large_usable(h));
  hm_unlock(&hmi_large_lock);
}

/* ---- cache of freed mappings ----
 * An mmap and munmap per block cost microseconds, and every page of a fresh mapping faults
 * when first touched: a program that allocates and frees large buffers in a loop pays that
 * each time (mimalloc#447).  Up to CACHE_SLOTS freed mappings, CACHE_BYTES in all, are kept;
 * a later request takes the smallest that fits and gives back (munmap) any tail beyond an
 * eighth to spare: a syscall, but no page faults for the pages it keeps.  The oldest go
 * first when the cache is full, and malloc_trim empties it.  Under hmi_large_lock. */
#define CACHE_SLOTS 16
#define CACHE_BYTES ((size_t)64 << 20)
static struct {
  uintptr_t map;
  size_t size;
  uint64_t age;
} cache[CACHE_SLOTS];
static uint64_t cache_clock;
size_t hmi_large_cached_bytes;
uint64_t hmi_large_maps, hmi_large_unmaps; /* system calls made for large blocks (stats) */

static void *large_mmap(size_t size) {
  __atomic_fetch_add(&hmi_large_maps, 1, __ATOMIC_RELAXED);
  return hmi_os_mmap(size);
}

static void large_munmap(void *p, size_t size) {
  __atomic_fetch_add(&hmi_large_unmaps, 1, __ATOMIC_RELAXED);
  hmi_os_munmap(p, size);
}

static uintptr_t cache_take(size_t need, size_t *got) {
  int best = -1;
  hm_lock(&hmi_large_lock);
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (cache[i].map && cache[i].size >= need && (best < 0 || cache[i].size < cache[best].size))
      best = i;
  uintptr_t map = 0;
  if (best >= 0) {
    map = cache[best].map;
    *got = cache[best].size;
    cache[best].map = 0;
    HM_RACY_ADD(hmi_large_cached_bytes, -*got);
  }
  hm_unlock(&hmi_large_lock);
  if (map != 0 && *got - need > need / 8 && *got - need >= ((size_t)64 << 10)) {
    large_munmap((void *)(map + need), *got - need);
    *got = need;
  }
  return map;
}

/* Keep a freed mapping; false if it is too big to keep (the caller unmaps it). */
static bool cache_put(uintptr_t map, size_t size) {
  if (size > CACHE_BYTES / 2) return false;
  struct { uintptr_t map; size_t size; } evicted[CACHE_SLOTS];
  int n_evicted = 0;
  hm_lock(&hmi_large_lock);
  for (;;) {
    int free_slot = -1, oldest = -1;
    for (int i = 0; i < CACHE_SLOTS; i++) {
      if (cache[i].map == 0) free_slot = i;
      else if (oldest < 0 || cache[i].age < cache[oldest].age) oldest = i;
    }
    if (free_slot >= 0 && hmi_large_cached_bytes + size <= CACHE_BYTES) {
      cache[free_slot].map = map;
      cache[free_slot].size = size;
      cache[free_slot].age = ++cache_clock;
      HM_RACY_ADD(hmi_large_cached_bytes, size);
      break;
    }
    evicted[n_evicted].map = cache[oldest].map;
    evicted[n_evicted++].size = cache[oldest].size;
    HM_RACY_ADD(hmi_large_cached_bytes, -cache[oldest].size);
    cache[oldest].map = 0;
  }
  hm_unlock(&hmi_large_lock);
  for (int i = 0; i < n_evicted; i++) large_munmap((void *)evicted[i].map, evicted[i].size);
  return true;
}

/* malloc_trim: unmap every cached mapping.  Returns true if there was any. */
bool hmi_large_cache_flush(void) {
  bool any = false;
  for (;;) {
    uintptr_t map = 0;
    size_t size = 0;
    hm_lock(&hmi_large_lock);
    for (int i = 0; i < CACHE_SLOTS && map == 0; i++)
      if (cache[i].map) {
        map = cache[i].map;
        size = cache[i].size;
        cache[i].map = 0;
        HM_RACY_ADD(hmi_large_cached_bytes, -size);
      }
    hm_unlock(&hmi_large_lock);
    if (map == 0) return any;
    large_munmap((void *)map, size);
    any = true;
  }
}

static bool publish(hm_large_t *h) {
  uintptr_t user = (uintptr_t)h + HM_LARGE_HEADER;
  return hmi_pagemap_set(hm_page_floor(user), 1, (uintptr_t)h | HM_PM_LARGE);
}

/* guard: one more page after the block, made inaccessible (HMALLOC_CHECK). */
static void *large_alloc(size_t size, size_t align, bool guard) {
  if (align < HM_LARGE_HEADER) align = HM_LARGE_HEADER;
  /* Even an empty block owns the page its pointer is on (an over-aligned empty block would
   * otherwise end where its pointer starts, and that page could go to another block). */
  if (size == 0) size = 1;
  if (size > PTRDIFF_MAX - HM_LARGE_HEADER - align - HM_PAGE) return NULL;
  size_t extra = align > HM_LARGE_HEADER ? align : 0;
  size_t map_size = hm_align_up(size + HM_LARGE_HEADER + extra, HM_PAGE) + (guard ? HM_PAGE : 0);
  uintptr_t map = 0;
  bool recycled = false;
  if (!guard && !extra) {
    size_t got;
    map = cache_take(map_size, &got);
    if (map != 0) map_size = got, recycled = true;
  }
  if (map == 0) map = (uintptr_t)large_mmap(map_size);
  if (map == 0) return NULL;
  uintptr_t user = hm_align_up(map + HM_LARGE_HEADER, align);
  if (guard && !extra) /* end the block on the guard page: overruns fault at once */
    user = (map + map_size - HM_PAGE - size) & ~(uintptr_t)(align - 1);
  if (guard && extra) user = hm_align_up(map + HM_LARGE_HEADER, align);
  hm_large_t *h = (hm_large_t *)(user - HM_LARGE_HEADER);
  if (extra) { /* give back the head and tail that alignment did not need */
    uintptr_t keep_start = hm_page_floor((uintptr_t)h);
    uintptr_t keep_end = hm_align_up(user + size, HM_PAGE) + (guard ? HM_PAGE : 0);
    if (keep_start > map) large_munmap((void *)map, keep_start - map);
    if (map + map_size > keep_end) large_munmap((void *)keep_end, map + map_size - keep_end);
    map = keep_start;
    map_size = keep_end - keep_start;
  }
  h->map = map;
  h->map_size = map_size;
  h->guard = guard ? HM_PAGE : 0;
  h->recycled = recycled;
  h->check = large_check(h);
  if (guard) mprotect((void *)(map + map_size - HM_PAGE), HM_PAGE, PROT_NONE);
  if (!publish(h)) {
    large_munmap((void *)map, map_size);
    return NULL;
  }
  link_live(h);
  hmi_stats_note_mapped();
  return (void *)user;
}

void *hmi_large_alloc(size_t size, size_t align) { return large_alloc(size, align, false); }
void *hmi_large_alloc_guarded(size_t size, size_t align) { return large_alloc(size, align, true); }

hm_large_t *hmi_large_of(void *p, hm_pmentry_t e) {
  hm_large_t *h = HM_PM_PTR(e);
  if ((uintptr_t)h + HM_LARGE_HEADER != (uintptr_t)p) return NULL;
  if (h->check != large_check(h)) return NULL;
  return h;
}

void hmi_large_free(hm_large_t *h) {
  uintptr_t map = h->map;
  size_t map_size = h->map_size;
  unlink_live(h);
  bool keep = h->guard == 0;
  h->check = 0; /* a stale copy of the pointer no longer validates */
  hmi_pagemap_set(hm_page_floor((uintptr_t)h + HM_LARGE_HEADER), 1, HM_PM_FREED_LARGE);
  if (!keep || !cache_put(map, map_size)) large_munmap((void *)map, map_size);
}

size_t hmi_large_usable(hm_large_t *h) {
  return h->map + h->map_size - h->guard - ((uintptr_t)h + HM_LARGE_HEADER);
}

/* Resize with mremap: no copy, the kernel moves page tables.  Only for blocks whose header is
 * at the start of their mapping (not over-aligned: mremap may move it to any page).
 * Returns the new user pointer, or NULL when the caller must allocate, copy and free. */
void *hmi_large_realloc(hm_large_t *h, size_t size) {
  if (h->map != (uintptr_t)h || h->guard || size > PTRDIFF_MAX - HM_LARGE_HEADER - HM_PAGE)
    return NULL;
  size_t old_size = h->map_size;
  size_t usable = hmi_large_usable(h);
  /* A block that shrinks by less than half stays as it is; one that grows gets a quarter more
   * than asked, so a buffer grown by small appends calls mremap O(log n) times, not once per
   * page.  Pages the program never touches cost no memory. */
  if (size <= usable && size >= usable / 2) return (void *)((uintptr_t)h + HM_LARGE_HEADER);
  size_t new_size = hm_align_up(size + HM_LARGE_HEADER, HM_PAGE);
  if (size > usable && new_size < old_size + old_size / 4)
    new_size = hm_align_up(old_size + old_size / 4, HM_PAGE);
  if (new_size == old_size) return (void *)((uintptr_t)h + HM_LARGE_HEADER);
  uintptr_t old_user_page = hm_page_floor((uintptr_t)h + HM_LARGE_HEADER);
  unlink_live(h);
  /* In place if the kernel can; otherwise move the pages (no copy) to a range reserved first
   * and whose page-map leaf exists, so that nothing can fail once the block has moved (a
   * page-map leaf that cannot be mapped under RLIMIT_AS must mean ENOMEM, not an abort). */
  void *q = hmi_os_mremap_inplace(h, old_size, new_size);
  if (q == NULL) {
    void *dst = large_mmap(new_size);
    if (dst != NULL && !hmi_pagemap_set(hm_page_floor((uintptr_t)dst + HM_LARGE_HEADER), 1, 0)) {
      large_munmap(dst, new_size);
      dst = NULL;
    }
    if (dst != NULL && (q = hmi_os_mremap_to(h, old_size, new_size, dst)) == NULL)
      large_munmap(dst, new_size);
    if (q == NULL) {
      link_live(h);
      return NULL;
    }
  }
  hm_large_t *nh = q;
  nh->map = (uintptr_t)nh;
  nh->map_size = new_size;
  nh->guard = 0;
  nh->check = large_check(nh);
  if (nh != h) {
    hmi_pagemap_set(old_user_page, 1, 0);
    publish(nh); /* its leaf was made before the move: cannot fail */
  }
  link_live(nh);
  hmi_stats_note_mapped();
  return (void *)((uintptr_t)nh + HM_LARGE_HEADER);
}

/* Every live block: header check word, page map entry, and the counters add up. */
int hmi_large_check(void) {
  size_t count = 0, bytes = 0;
  int bad = 0;
  hm_lock(&hmi_large_lock);
  for (hm_large_t *h = live; h && !bad; h = h->next) {
    hm_pmentry_t e = hmi_pagemap_get((uintptr_t)h + HM_LARGE_HEADER);
    if (h->check != large_check(h) || hmi_large_of((char *)h + HM_LARGE_HEADER, e) != h ||
        (e & 7) != HM_PM_LARGE || (uintptr_t)h < h->map ||
        (uintptr_t)h + HM_LARGE_HEADER > h->map + h->map_size) {
      hmi_dprintf(2, "hmalloc: heap check: large block %p inconsistent\n", (void *)h);
      bad = 1;
    }
    count++;
    bytes += h->map_size;
  }
  if (!bad && (count != hmi_large_count || bytes != hmi_large_bytes)) {
    hmi_dprintf(2, "hmalloc: heap check: large block counters disagree\n");
    bad = 1;
  }
  hm_unlock(&hmi_large_lock);
  return bad ? -1 : 0;
}
