/* large.c - the large tier: one mmap per block, mremap on realloc, and a cache of freed
 * mappings (kept resident, split, assembled into bigger blocks, taken back on regrowth).
 *
 * Layout: the header (hm_large_t) sits HM_LARGE_HEADER bytes before the user pointer, inside
 * the mapping; for an over-aligned block the mapping's unused head and tail are unmapped, so
 * the header is not necessarily at the mapping's start.  Only the page holding the user
 * pointer is entered in the page map (one entry however big the block): a free of any other
 * address inside the block finds no entry and is refused.  The header's check word ties it to
 * its own address and size, so user data cannot pass for a header.
 * Counters are under hmi_large_lock, which is never held across a system call. */
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"
#include "vg.h"

hm_lock_t hmi_large_lock = HM_LOCK_INIT;
size_t hmi_large_count, hmi_large_bytes;
size_t hmi_large_max_count, hmi_large_max_bytes;
size_t hmi_large_usable_bytes; /* sum of hmi_large_usable over live blocks (stats) */

static inline uintptr_t large_check(const hm_large_t *h) {
  return (uintptr_t)h ^ h->map_size ^ hmi_secret;
}

static hm_large_t *live; /* list of live blocks, for the checker and reports */
static uint64_t serials;  /* the last serial given to a block (never 0) */
static size_t live_peak;  /* decaying maximum of hmi_large_bytes (cache_bound) */

static size_t vma_cuts; /* cuts recorded in live blocks and kept mappings (VMAs added) */
static size_t heap_growth; /* heap growth since the last large malloc (hmi_large_cache_release) */

/* Link h as live; true if that takes the tier's live bytes above their highest since the
 * last hm_stats_reset_peaks. */
static bool link_live(hm_large_t *h) {
  bool new_high = false;
  hm_lock(&hmi_large_lock);
  if (h->serial == 0) h->serial = ++serials; /* a block mapped afresh (large_alloc) */
  vma_cuts += h->vmas.n;
  heap_growth = 0; /* the cache is serving a program that still asks for large blocks */
  h->prev = NULL;
  h->next = live;
  if (live) live->prev = h;
  live = h;
  HM_RACY_ADD(hmi_large_count, 1);
  HM_RACY_ADD(hmi_large_bytes, h->map_size);
  HM_RACY_ADD(hmi_large_usable_bytes, hmi_large_usable(h));
  if (hmi_large_count > hmi_large_max_count) hmi_large_max_count = hmi_large_count;
  if (hmi_large_bytes > hmi_large_max_bytes) hmi_large_max_bytes = hmi_large_bytes, new_high = true;
  if (hmi_large_bytes > live_peak) live_peak = hmi_large_bytes;
  hm_unlock(&hmi_large_lock);
  return new_high;
}

static void unlink_live(hm_large_t *h) {
  hm_lock(&hmi_large_lock);
  vma_cuts -= h->vmas.n;
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
 * each time (mimalloc#447).  Up to CACHE_SLOTS freed mappings (or pieces of them),
 * CACHE_BYTES in all, are kept with their pages resident, and a request is served from them
 * with as few new page faults as possible:
 *   - the smallest kept mapping that fits is used; one more than twice the request is split
 *     and its tail kept as a mapping of its own (its pages stay resident for a later
 *     request); a smaller one is handed out whole, its rest the block's spare;
 *   - if none fits, the block is assembled from kept mappings moved next to each other with
 *     mremap (the kernel moves page tables, nothing is copied); only the rest faults.
 * So memory that a program frees and allocates again in other sizes stays resident, bounded
 * above what is live by CACHE_BYTES, by the program's recent peak and by two of its biggest
 * blocks (below).
 * The oldest go first when the cache is full, and malloc_trim (or a failed mmap, os.c)
 * empties it.
 * An assembled block spans several kernel mappings (VMAs: moved pages do not merge with
 * their new neighbours).  mremap resizes one VMA only, and a process may have only
 * vm.max_map_count of them, so each block and kept mapping records where its VMAs begin
 * (hm_vmas_t): assembly stops at HM_LARGE_MAX_VMAS per block and at VMA_BUDGET added VMAs
 * in all, and realloc moves a block of several VMAs to a fresh mapping once
 * (hmi_large_realloc).
 * The slots are under hmi_large_lock; no system call is made while holding it. */
#define CACHE_SLOTS 64
#define CACHE_BYTES ((size_t)256 << 20) /* the most ever kept */
#define CACHE_FLOOR ((size_t)2 << 20)   /* the least the bound below ever is */
/* The bytes kept are bounded so that the large tier's footprint (live + kept) stays under
 * the recent peak of its live bytes, plus CACHE_SLACK times the biggest block freed or
 * shrunk lately.  Both are maxima that decay at each such event, the peak by 1/PEAK_DECAY
 * and the biggest block by 1/CACHE_DECAY (pieces put back by splits and assembly do not
 * count), so a program whose blocks get fewer or smaller gives the memory back.  Memory the
 * program had live lately is memory it needs again; kept, it comes back without faults:
 *   - large (20 live blocks of 64 KiB-16 MiB, replaced at random; 7-9 interleaved runs):
 *     0.58 s -> 0.41 s, peak RSS 129 -> 136 MB (glibc 150 MB).  The previous bound, six
 *     times the biggest block, evicted 535 MB over the run that then faulted back in.
 *   - realloc_heavy: same time, peak RSS 19.5 -> 17.4 MB.
 * The slots matter as much: with 32, most evictions were for want of a slot (pieces split
 * off blocks fill them), and large took 0.51 s; 128 gave nothing more.
 * Measured trade-off: a slack of one block made large as slow as before, six kept 160 MB;
 * a peak decay of 1/1024 per event gave 0.45 s at 132 MB, 1/4096 0.40 s at 142 MB.
 * Later, on a faster machine (5 interleaved runs of each case): a decay of 1/8192 instead of
 * 1/2048 took large from 0.209 s at 140.4 MB to 0.190 s at 145.1 MB (glibc 150 MB,
 * mimalloc 0.13 s at 161 MB) and realloc_heavy from 0.441 s at 18.7 MB to 0.431 s at
 * 18.9 MB (glibc 20 MB); python3, redis, gcc, sqlite3, fragment and alloc_test the same
 * within 1% of RSS.  A slack of three blocks gave 0.177 s at 148 MB. */
#define CACHE_SLACK 2
#define CACHE_DECAY 128
#define PEAK_DECAY 8192
static size_t recent_big; /* under hmi_large_lock */
static size_t cache_bound(void) {
  size_t bound = recent_big * CACHE_SLACK;
  if (live_peak > hmi_large_bytes) bound += live_peak - hmi_large_bytes;
  if (bound < CACHE_FLOOR) bound = CACHE_FLOOR;
  return bound < CACHE_BYTES ? bound : CACHE_BYTES;
}
/* VMAs that assembly may add, all blocks and kept mappings together: far below the
 * kernel's default vm.max_map_count of 65530, whatever the program maps itself. */
#define VMA_BUDGET 4096
static struct {
  uintptr_t map;
  size_t size;
  uint64_t age;
  hm_vmas_t vmas;
  uint64_t tail_of; /* serial of the block this continues in one VMA (cut off it), or 0 */
} cache[CACHE_SLOTS];
/* Bit i set iff slot i holds a mapping: the loops below visit only those.  A slot is 224
 * bytes, so a scan of all 64 read 64 cache lines: with one mapping kept, a malloc(1 MiB) +
 * free loop spent a third of its time there (126-171 -> 66 ns per pair; the micro
 * benchmark's malloc_free/1048576 288 -> 66 ns with the sampling change in large_alloc). */
static uint64_t cache_used;
_Static_assert(CACHE_SLOTS == 64, "one bit per slot in cache_used");
#define FOR_EACH_KEPT(i)                                                                     \
  for (uint64_t m_ = cache_used, i; m_ != 0 && ((i = (uint64_t)__builtin_ctzll(m_)), 1);     \
       m_ &= m_ - 1)
static uint64_t cache_clock;
_Static_assert(sizeof(hm_large_t) <= HM_LARGE_HEADER, "the header fits before the block");
_Static_assert((HM_LARGE_HEADER & (HM_LARGE_HEADER - 1)) == 0, "a power of two: it is the least alignment");
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

/* Copy a VMA record: its count and the cuts in use only.  Whole records are 192 bytes,
 * nearly always with no cut in them: zeroed and copied whole (and read back in 16-byte
 * pieces just after a 4-byte store into them, which stalls), they and an atomic add for
 * the block's serial (now given under the cache's lock) made a malloc(1 MiB)+free pair take
 * 44 ns, against 30 ns. */
static void vmas_copy(hm_vmas_t *to, const hm_vmas_t *from) {
  uint32_t n = from->n;
  for (uint32_t i = 0; i < n; i++) to->cut[i] = from->cut[i];
  to->n = n;
}

/* The VMAs of a mapping cut in two at page offset `at`. */
static void vmas_split(const hm_vmas_t *all, uint32_t at, hm_vmas_t *head, hm_vmas_t *tail) {
  hm_vmas_t h, t;
  h.n = t.n = 0;
  for (uint32_t i = 0; i < all->n; i++) {
    if (all->cut[i] < at) h.cut[h.n++] = all->cut[i];
    else if (all->cut[i] > at) t.cut[t.n++] = all->cut[i] - at;
  }
  vmas_copy(head, &h);
  vmas_copy(tail, &t);
}

/* Remove slot i from the cache (caller holds the lock). */
static uintptr_t slot_take(uint64_t i, size_t *size, hm_vmas_t *vmas) {
  uintptr_t map = cache[i].map;
  *size = cache[i].size;
  vmas_copy(vmas, &cache[i].vmas);
  cache[i].map = 0;
  cache_used &= ~((uint64_t)1 << i);
  vma_cuts -= vmas->n;
  HM_RACY_ADD(hmi_large_cached_bytes, -*size);
  return map;
}

/* Keep a freed mapping; false if it is too big to keep (the caller unmaps it).  block_size:
 * the size of the block it was freed or shrunk off, which feeds the bound; 0 for pieces put
 * back by splits and assembly, which say nothing new about the program's blocks. */
static bool cache_put(uintptr_t map, size_t size, const hm_vmas_t *vmas, size_t block_size,
                      uint64_t tail_of) {
  struct { uintptr_t map; size_t size; } evicted[CACHE_SLOTS];
  int n_evicted = 0;
  hm_lock(&hmi_large_lock);
  if (block_size != 0) {
    size_t decayed = recent_big - recent_big / CACHE_DECAY;
    recent_big = block_size > decayed ? block_size : decayed;
    live_peak -= live_peak / PEAK_DECAY;
  }
  size_t bound = cache_bound();
  if (size > bound / 2) {
    hm_unlock(&hmi_large_lock);
    return false;
  }
  for (;;) {
    int free_slot = ~cache_used != 0 ? __builtin_ctzll(~cache_used) : -1, oldest = -1;
    FOR_EACH_KEPT(i) {
      if (oldest < 0 || cache[i].age < cache[oldest].age) oldest = (int)i;
    }
    if (free_slot >= 0 && hmi_large_cached_bytes + size <= bound) {
      cache_used |= (uint64_t)1 << free_slot;
      cache[free_slot].map = map;
      cache[free_slot].size = size;
      vmas_copy(&cache[free_slot].vmas, vmas);
      vma_cuts += vmas->n;
      cache[free_slot].tail_of = tail_of;
      cache[free_slot].age = ++cache_clock;
      HM_RACY_ADD(hmi_large_cached_bytes, size);
      break;
    }
    hm_vmas_t unused;
    evicted[n_evicted].map = slot_take(oldest, &evicted[n_evicted].size, &unused);
    n_evicted++;
  }
  hm_unlock(&hmi_large_lock);
  for (int i = 0; i < n_evicted; i++) large_munmap((void *)evicted[i].map, evicted[i].size);
  return true;
}

static void keep_or_unmap(uintptr_t map, size_t size, const hm_vmas_t *vmas) {
  if (!cache_put(map, size, vmas, 0, 0)) large_munmap((void *)map, size);
}

/* Take a kept mapping for a block of `need` bytes (a multiple of the page size): its start,
 * with *got set to its size (at least need) and *vmas to its VMAs, or 0 if the cache cannot
 * serve it.  *serial is set to the block's new serial (even on failure), so that a tail
 * split off stays known as its continuation (take_back_tail). */
static uintptr_t cache_take(size_t need, size_t *got, hm_vmas_t *vmas, uint64_t *serial,
                            bool assemble) {
  int fit = -1;
  hm_lock(&hmi_large_lock);
  *serial = ++serials; /* here, under the lock it takes anyway: an atomic add cost 5 ns */
  FOR_EACH_KEPT(i) {
    if (cache[i].size >= need && (fit < 0 || cache[i].size < cache[fit].size)) fit = (int)i;
  }
  uintptr_t map = 0;
  size_t size = 0;
  if (fit >= 0) map = slot_take(fit, &size, vmas);
  hm_unlock(&hmi_large_lock);
  if (map != 0) {
    /* A mapping up to twice the request is handed out whole, the rest as the block's spare
     * (large_alloc).  Splitting off every tail beyond an eighth, as this did, cut the cache
     * into ever smaller pieces that big requests then had to be assembled from (mremap) or
     * could not use (evicted, faulted in again): in `large` (7 interleaved runs) 0.40 s ->
     * 0.21 s, mremap calls 1795 -> 662, munmap 461 -> 25, page faults 99k -> 57k, peak RSS
     * 136 -> 141 MB (glibc 150 MB); realloc_heavy 17.3 -> 18.5 MB (glibc 20 MB) in the same
     * time.  The spare's pages were resident already; kept apart they would be too.
     * Splitting only beyond three times the request gave 0.19 s at 150 MB, beyond half the
     * request 0.29 s at 142 MB. */
    if (size - need > need && size - need >= ((size_t)64 << 10)) {
      /* split: the tail stays kept, resident, for a later request, or for this block to
       * grow into (unless a VMA starts right at the cut) */
      uint32_t at = (uint32_t)(need / HM_PAGE);
      bool one_vma = true;
      for (uint32_t i = 0; i < vmas->n; i++)
        if (vmas->cut[i] == at) one_vma = false;
      hm_vmas_t tail;
      vmas_split(vmas, at, vmas, &tail);
      if (!cache_put(map + need, size - need, &tail, 0, one_vma ? *serial : 0))
        large_munmap((void *)(map + need), size - need);
      size = need;
    }
    *got = size;
    return map;
  }
  if (!assemble) return 0;
  /* None fits alone: assemble the block from kept pieces.  Map the range, then move the
   * biggest pieces that still fit into it, one after another, while the block stays within
   * HM_LARGE_MAX_VMAS (one cut where each piece starts, its own cuts, and one where the
   * fresh rest begins); only that rest faults when touched.  A piece of several VMAs moves
   * only on kernels that allow it (6.17 and later); elsewhere it stays kept. */
  uintptr_t block = 0;
  size_t filled = 0;
  hm_vmas_t v;
  v.n = 0;
  for (;;) {
    /* cuts left for the piece's own: minus its start's and the fresh rest's, within the
     * block's record and the process-wide budget */
    int room = (HM_LARGE_MAX_VMAS - 1) - (int)v.n - (filled > 0) - 1;
    if (room < 0) break;
    hm_lock(&hmi_large_lock);
    if (vma_cuts + v.n + 2 + (size_t)room > VMA_BUDGET)
      room = vma_cuts + v.n + 2 < VMA_BUDGET ? (int)(VMA_BUDGET - vma_cuts - v.n - 2) : -1;
    int take = -1;
    FOR_EACH_KEPT(i) {
      if (cache[i].size <= need - filled && (int)cache[i].vmas.n <= room &&
          (take < 0 || cache[i].size > cache[take].size))
        take = (int)i;
    }
    size_t piece_size = 0;
    hm_vmas_t pv;
    uintptr_t piece = take >= 0 ? slot_take(take, &piece_size, &pv) : 0;
    hm_unlock(&hmi_large_lock);
    if (piece == 0) break;
    if (block == 0 && (block = (uintptr_t)large_mmap(need)) == 0) {
      keep_or_unmap(piece, piece_size, &pv);
      return 0;
    }
    if (hmi_os_mremap_to((void *)piece, piece_size, piece_size, (void *)(block + filled)) == NULL) {
      keep_or_unmap(piece, piece_size, &pv);
      break;
    }
    uint32_t at = (uint32_t)(filled / HM_PAGE);
    if (filled > 0) v.cut[v.n++] = at;
    for (uint32_t i = 0; i < pv.n; i++) v.cut[v.n++] = at + pv.cut[i];
    filled += piece_size;
    if (need - filled < HM_PAGE) break;
  }
  if (block == 0) return 0;
  if (filled < need) v.cut[v.n++] = (uint32_t)(filled / HM_PAGE);
  vmas_copy(vmas, &v);
  *got = need;
  return block;
}

/* ---- idle release ----
 * Kept mappings serve a program that goes on allocating large blocks.  One whose big phase
 * is over must not keep up to CACHE_BYTES resident for the rest of its life, and the bound
 * above only decays at large frees: so when no large block has been allocated, resized or
 * freed for IDLE_NS, a tick (hmi_large_idle_tick, from the other tiers' slow paths) unmaps
 * every kept mapping, as malloc_trim would.
 * Large calls only count themselves; the ticks read the clock (the coarse one, from the vDSO:
 * no system call, no allocation) and note when they first saw the count as it is.  Reading
 * the clock at every large call instead took 4 of the 30 ns of a malloc(1 MiB)+free pair.
 * So the release comes IDLE_NS after the first tick that followed the last large call. */
#define IDLE_NS ((uint64_t)1000000000)
static uint64_t activity;      /* large mallocs, resizes and frees (racy: any change will do) */
static uint64_t seen_activity; /* `activity` at the tick that first saw it so, ... */
static uint64_t seen_at;       /* ... and coarse_ns() then */

static uint64_t coarse_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* No atomic add: two threads that both store n + 1 still change the count, which is all a
 * tick needs to see. */
static void note_activity(void) {
  __atomic_store_n(&activity, __atomic_load_n(&activity, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

void hmi_large_idle_tick(void) {
  if (__atomic_load_n(&hmi_large_cached_bytes, __ATOMIC_RELAXED) == 0) return;
  uint64_t now = coarse_ns(), count = __atomic_load_n(&activity, __ATOMIC_RELAXED);
  if (count != __atomic_load_n(&seen_activity, __ATOMIC_RELAXED)) {
    __atomic_store_n(&seen_activity, count, __ATOMIC_RELAXED);
    __atomic_store_n(&seen_at, now, __ATOMIC_RELAXED);
  } else if (now - __atomic_load_n(&seen_at, __ATOMIC_RELAXED) >= IDLE_NS) {
    hmi_large_cache_flush();
  }
}

/* The medium heap has grown by `bytes` past the most it ever mapped: memory the program now
 * wants in the heap should not come on top of large blocks it freed and the cache keeps.
 * Growth is counted up from the last large malloc (no further than what is kept), and each
 * time it covers the smallest kept mapping, that mapping is unmapped: sqlite3 frees a 2 MiB
 * buffer, then sorts in the heap, and kept, the buffer was 2 MB of its peak RSS.  Unmapping
 * the oldest mapping at every such growth dropped 16 MiB mappings for 200 KB of heap in the
 * large case (0.187 -> 0.205 s); counting growth across large mallocs too still took it from
 * 145 to 148.6 MB (its cache refilled with fresh mappings). */
void hmi_large_cache_release(size_t bytes) {
  for (;;) {
    uintptr_t map = 0;
    size_t size = 0;
    hm_lock(&hmi_large_lock);
    heap_growth += bytes;
    bytes = 0;
    if (heap_growth > hmi_large_cached_bytes) heap_growth = hmi_large_cached_bytes;
    int smallest = -1;
    FOR_EACH_KEPT(i) {
      if (smallest < 0 || cache[i].size < cache[smallest].size) smallest = (int)i;
    }
    hm_vmas_t unused;
    if (smallest >= 0 && cache[smallest].size <= heap_growth) {
      map = slot_take((uint64_t)smallest, &size, &unused);
      heap_growth -= size;
    }
    hm_unlock(&hmi_large_lock);
    if (map == 0) return;
    large_munmap((void *)map, size);
  }
}

/* malloc_trim: unmap every cached mapping, and forget the peak the cache was bounded by
 * (the program says it is done with it).  Returns true if there was any. */
bool hmi_large_cache_flush(void) {
  bool any = false;
  hm_lock(&hmi_large_lock);
  live_peak = hmi_large_bytes;
  hm_unlock(&hmi_large_lock);
  for (;;) {
    uintptr_t map = 0;
    size_t size = 0;
    hm_lock(&hmi_large_lock);
    hm_vmas_t unused;
    if (cache_used != 0) map = slot_take((uint64_t)__builtin_ctzll(cache_used), &size, &unused);
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

/* guard: one more page after the block, made inaccessible (HMALLOC_CHECK).  kept_only: from
 * one kept mapping, whose pages are resident, or not at all. */
static void *large_alloc(size_t size, size_t align, bool guard, bool kept_only) {
  if (align < HM_LARGE_HEADER) align = HM_LARGE_HEADER;
  /* Even an empty block owns the page its pointer is on (an over-aligned empty block would
   * otherwise end where its pointer starts, and that page could go to another block). */
  if (size == 0) size = 1;
  if (size > PTRDIFF_MAX - HM_LARGE_HEADER - align - HM_PAGE) return NULL;
  size_t extra = align > HM_LARGE_HEADER ? align : 0;
  size_t map_size = hm_align_up(size + HM_LARGE_HEADER + extra, HM_PAGE) + (guard ? HM_PAGE : 0);
  uintptr_t map = 0;
  size_t spare = 0;
  bool recycled = false;
  hm_vmas_t vmas;
  vmas.n = 0;
  uint64_t serial = 0; /* given by cache_take, or else by link_live */
  note_activity();
  if (!guard && !extra) {
    size_t got;
    map = cache_take(map_size, &got, &vmas, &serial, !kept_only);
    if (map != 0) spare = got - map_size, map_size = got, recycled = true;
  }
  if (map == 0 && kept_only) return NULL;
  if (map == 0) map = (uintptr_t)large_mmap(map_size);
  if (map == 0) return NULL;
  uintptr_t user = hm_align_up(map + HM_LARGE_HEADER, align);
  if (guard && !extra) /* end the block on the guard page: overruns fault at once */
    user = (map + map_size - HM_PAGE - size) & ~(uintptr_t)(align - 1);
  if (guard && extra) user = hm_align_up(map + HM_LARGE_HEADER, align);
  hm_large_t *h = (hm_large_t *)(user - HM_LARGE_HEADER);
  HM_VG_OWN(h, HM_LARGE_HEADER);
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
  h->spare = spare;
  h->recycled = recycled;
  vmas_copy(&h->vmas, &vmas);
  h->serial = serial;
  h->check = large_check(h);
  if (guard) mprotect((void *)(map + map_size - HM_PAGE), HM_PAGE, PROT_NONE);
  if (!publish(h)) {
    large_munmap((void *)map, map_size);
    return NULL;
  }
  /* The peaks are sampled when memory comes from the OS (hm_stats_t): a kept mapping did not,
   * but the large tier reaching a new high is sampled too, so that its peak is never missed.
   * Sampling at every block, as this did, summed every thread cache's lists and took 44% of a
   * malloc(1 MiB)+free loop: 238 -> 126-171 ns per pair (66 ns with cache_used as well). */
  if (link_live(h) || !recycled) hmi_stats_note_mapped();
  return (void *)user;
}

void *hmi_large_alloc(size_t size, size_t align) { return large_alloc(size, align, false, false); }
void *hmi_large_alloc_guarded(size_t size, size_t align) {
  return large_alloc(size, align, true, false);
}

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
  hm_vmas_t vmas;
  vmas_copy(&vmas, &h->vmas);
  note_activity();
  if (!keep || !cache_put(map, map_size, &vmas, map_size, 0)) large_munmap((void *)map, map_size);
}

size_t hmi_large_usable(hm_large_t *h) {
  return h->map + h->map_size - h->guard - h->spare - ((uintptr_t)h + HM_LARGE_HEADER);
}

/* Blocks below this size grow by a copy to another block, bigger ones by mremap (below). */
#define COPY_GROWTH_MAX ((size_t)2 << 20)

/* Copy block h, `keep` bytes of it, into a new block of new_size bytes (kept_only: from one
 * kept mapping, or not at all), and keep or unmap h's mapping as a free would: NULL if no
 * block could be had. */
static void *realloc_by_copy(hm_large_t *h, size_t keep, size_t new_size, bool kept_only) {
  void *q = large_alloc(new_size - HM_LARGE_HEADER, HM_ALIGN, false, kept_only);
  if (q == NULL) return NULL;
  HM_VG_QUIET(memcpy(q, (char *)h + HM_LARGE_HEADER, keep));
  hmi_large_free(h);
  return q;
}

/* A block assembled from several kept mappings cannot be resized by mremap (one VMA at a
 * time): copy its `keep` bytes to a kept mapping, or else a fresh one, of new_size once, and
 * keep the old one.  A block that grows by copies anyway (below COPY_GROWTH_MAX) may be
 * assembled again: in realloc_heavy, copying such blocks to fresh mappings instead took
 * 48k page faults and 0.39 s against 8.6k and 0.33 s. */
static void *realloc_to_fresh(hm_large_t *h, size_t keep, size_t new_size) {
  void *kept = realloc_by_copy(h, keep, new_size, hmi_large_usable(h) >= COPY_GROWTH_MAX);
  if (kept != NULL) return kept;
  hm_large_t *nh = large_mmap(new_size);
  if (nh == NULL) return NULL;
  nh->map = (uintptr_t)nh;
  nh->map_size = new_size;
  nh->guard = 0;
  nh->spare = 0;
  nh->recycled = 0;
  nh->vmas.n = 0;
  nh->serial = 0; /* link_live gives it one */
  nh->check = large_check(nh);
  if (!publish(nh)) {
    large_munmap(nh, new_size);
    return NULL;
  }
  HM_VG_QUIET(memcpy((char *)nh + HM_LARGE_HEADER, (char *)h + HM_LARGE_HEADER, keep));
  link_live(nh);
  hmi_large_free(h);
  hmi_stats_note_mapped();
  return (char *)nh + HM_LARGE_HEADER;
}

/* Growing block h: if a tail cut off it (by a shrink, or split off the kept mapping it came
 * from) is still kept, right after it and in its VMA (the serial tells this block from a
 * later one mapped at the same address), take it back (no system call, its pages still
 * resident), keeping any excess beyond new_size.  True if the block grew.  (A buffer that
 * crosses into the large tier gets a piece of a freed mapping and grows into the rest.) */
static bool take_back_tail(hm_large_t *h, size_t new_size) {
  uintptr_t end = h->map + h->map_size, map = 0;
  size_t size = 0;
  hm_vmas_t vmas;
  hm_lock(&hmi_large_lock);
  FOR_EACH_KEPT(i) {
    if (cache[i].map == end && cache[i].tail_of == h->serial && cache[i].vmas.n == 0) {
      map = slot_take(i, &size, &vmas);
      break;
    }
  }
  hm_unlock(&hmi_large_lock);
  if (map == 0) return false;
  size_t grow = size;
  if (h->map_size + size > new_size + ((size_t)64 << 10)) { /* keep the excess kept */
    grow = new_size - h->map_size;
    if (!cache_put(map + grow, size - grow, &vmas, 0, h->serial))
      large_munmap((void *)(map + grow), size - grow);
  }
  unlink_live(h);
  h->map_size += grow;
  h->check = large_check(h);
  link_live(h);
  return true;
}

/* Resize with mremap: no copy, the kernel moves page tables.  Only for blocks whose header is
 * at the start of their mapping (not over-aligned: mremap may move it to any page).
 * Returns the new user pointer, or NULL when the caller must allocate, copy and free. */
void *hmi_large_realloc(hm_large_t *h, size_t size) {
  if (h->map != (uintptr_t)h || h->guard || size > PTRDIFF_MAX - HM_LARGE_HEADER - HM_PAGE)
    return NULL;
  note_activity();
  if (h->spare != 0) {
    size_t usable = hmi_large_usable(h);
    /* a small shrink stays as it is (as below), the spare too */
    if (size <= usable && size >= usable / 2) return (void *)((uintptr_t)h + HM_LARGE_HEADER);
    unlink_live(h);
    if (size > usable && size <= usable + h->spare) { /* into the spare: no system call */
      h->spare = h->map + h->map_size - hm_align_up((uintptr_t)h + HM_LARGE_HEADER + size, HM_PAGE);
      link_live(h);
      return (void *)((uintptr_t)h + HM_LARGE_HEADER);
    }
    h->spare = 0; /* part of the block again, as below expects */
    link_live(h);
  }
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
  if (h->vmas.n > 0) return realloc_to_fresh(h, size < usable ? size : usable, new_size);
  if (new_size < old_size && old_size - new_size >= ((size_t)64 << 10)) {
    /* Shrink without a system call: the tail becomes a kept mapping, its pages resident for
     * the next large request (a buffer shrunk and grown again, as parsers and vectors do,
     * would otherwise fault them all in again).  Both halves stay in one VMA. */
    unlink_live(h);
    h->map_size = new_size;
    h->check = large_check(h);
    link_live(h);
    hm_vmas_t single;
    single.n = 0;
    if (!cache_put(h->map + new_size, old_size - new_size, &single, old_size, h->serial))
      large_munmap((void *)(h->map + new_size), old_size - new_size);
    return (void *)((uintptr_t)h + HM_LARGE_HEADER);
  }
  if (new_size > old_size && take_back_tail(h, new_size)) {
    if (h->map_size >= new_size) return (void *)((uintptr_t)h + HM_LARGE_HEADER);
    old_size = h->map_size; /* grown by the tail; mremap does the rest */
  }
  /* Growth by mremap, in place or not, faults in every added page when it is first touched
   * (and the kernel zeroes it).  Copying the block to another one, whose pages are resident
   * if kept, can cost less, and the block's own pages are kept in turn for the next block
   * that grows, as with jemalloc and mimalloc (they never use mremap):
   *   - Growing by half or more, into one kept mapping: in realloc_heavy, whose buffers
   *     double, this and taking back split-off tails cut page faults from 228k to 104k and
   *     the time from 0.85 s to 0.70 s (medians of 5), peak RSS unchanged.
   *   - A block below COPY_GROWTH_MAX that cannot grow in place (another mapping follows
   *     it) while the cache keeps at least the new size, into kept mappings (one, or
   *     pieces moved together): realloc_heavy (256 buffers of up to 1 MiB grown a quarter
   *     at a time) took 73k page faults and 0.41 s, now 8.6k and 0.33 s (5 interleaved
   *     runs; mimalloc 0.29 s, jemalloc 0.32 s), peak RSS the same.  Its kept mappings
   *     rarely fit a block whole: taking one only when it did, it still took 51k faults.
   * Copying costs more than it saves when the cache does not feed it: a lone buffer grown
   * by appends to 1 MiB, each growth copied (into fresh mappings while nothing is kept),
   * took 1.46 times as long and 1.5 times the memory; to 16 MiB, 2.6 times the memory.
   * So in place first, then a move by mremap when too little is kept, and bigger blocks
   * never copy. */
  if (new_size > old_size && (new_size - old_size) * 2 >= old_size) {
    void *q = realloc_by_copy(h, usable, new_size, true);
    if (q != NULL) return q;
  }
  unlink_live(h);
  void *q = hmi_os_mremap_inplace(h, old_size, new_size);
  if (q == NULL && new_size > old_size && usable < COPY_GROWTH_MAX &&
      __atomic_load_n(&hmi_large_cached_bytes, __ATOMIC_RELAXED) >= new_size) {
    link_live(h);
    void *copy = realloc_by_copy(h, usable, new_size, false);
    if (copy != NULL) return copy;
    unlink_live(h);
  }
  /* Otherwise move the pages (no copy) to a range reserved first and whose page-map leaf
   * exists, so that nothing can fail once the block has moved (a page-map leaf that cannot
   * be mapped under RLIMIT_AS must mean ENOMEM, not an abort). */
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
  size_t cuts = 0;
  for (hm_large_t *h = live; h; h = h->next) cuts += h->vmas.n;
  for (int i = 0; i < CACHE_SLOTS; i++) {
    if ((cache[i].map != 0) != ((cache_used >> i) & 1)) { /* the mask says which slots hold one */
      hmi_dprintf(2, "hmalloc: heap check: kept mapping slot %d not as recorded\n", i);
      bad = 1;
    }
    if (cache[i].map) cuts += cache[i].vmas.n;
  }
  if (!bad && cuts != vma_cuts) {
    hmi_dprintf(2, "hmalloc: heap check: %zu VMA cuts recorded, %zu counted\n", vma_cuts, cuts);
    bad = 1;
  }
  if (!bad && (count != hmi_large_count || bytes != hmi_large_bytes)) {
    hmi_dprintf(2, "hmalloc: heap check: large block counters disagree\n");
    bad = 1;
  }
  hm_unlock(&hmi_large_lock);
  return bad ? -1 : 0;
}
