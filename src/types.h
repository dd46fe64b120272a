/* types.h - every internal data structure of hmalloc, with what each field holds.
 *
 * Tiers, by request size n (after alignment is taken into account):
 *   small   n <= HM_SMALL_MAX          size classes; objects in 64 KiB spans, no header
 *   medium  HM_SMALL_MAX < n < mmap threshold   boundary-tagged chunks in arena segments
 *   large   n >= mmap threshold        one mmap per block
 * The page map (pagemap.c) maps every 4 KiB page hmalloc owns to what lives there. */
#ifndef HM_TYPES_H
#define HM_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "lock.h"

/* Words written by one thread (or under a lock) and read by statistics without that lock.
 * A plain aligned word store is what every supported target does anyway; under
 * ThreadSanitizer the store is a relaxed atomic so the tool sees what the code relies on.
 * Normal builds compile exactly as plain code. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) /* clang */
#define HM_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) /* gcc */
#define HM_TSAN 1
#endif
#ifdef HM_TSAN
#define HM_RACY_SET(lv, v) __atomic_store_n(&(lv), (v), __ATOMIC_RELAXED)
#else
#define HM_RACY_SET(lv, v) ((lv) = (v))
#endif
#define HM_RACY_ADD(lv, n) HM_RACY_SET(lv, (lv) + (n))

#define HM_PAGE_SHIFT 12
#define HM_PAGE ((size_t)1 << HM_PAGE_SHIFT)
#define HM_ALIGN 16                     /* every pointer handed out is 16-byte aligned */
#define HM_SMALL_MAX 4096               /* largest small-tier request */
#define HM_CLASSES 51                   /* number of small size classes */
#define HM_SPAN_SIZE ((size_t)64 << 10) /* bytes of objects in one span */
#define HM_SPAN_PAGES (HM_SPAN_SIZE >> HM_PAGE_SHIFT)
#define HM_LARGE_HEADER 256             /* bytes before a large block's user pointer */
#define HM_DEFAULT_MMAP_THRESHOLD ((size_t)128 << 10)
#define HM_DEFAULT_TRIM_THRESHOLD ((size_t)128 << 10)
#define HM_MAX_MMAP_THRESHOLD ((size_t)32 << 20)
#define HM_DEFAULT_TCACHE_MAX ((size_t)1 << 20) /* a cache starts at a quarter of it */
#define HM_XFER_SLOTS 4                 /* batches a class's transfer cache holds */
#define HM_MCACHE_MAX ((size_t)128 << 10) /* medium blocks up to this size are cached per thread */
#define HM_MCLASSES 40                  /* their classes: 8 per power of two, 4 KiB to 128 KiB */
#define HM_MCACHE_DEPTH 4               /* blocks one medium class may hold per thread */

/* ---- page map entries -------------------------------------------------------------------
 * 0                        not hmalloc's page
 * span | 1                a page of a small span (span descriptors are 128-byte aligned);
 *                          nothing else in the word, so free reaches the span's fields at
 *                          small offsets from the entry itself, with no masking
 * segment | 2              a page of a medium segment
 * large header | 4         the page holding a large block's user pointer
 * 8                        the same page after the large block was freed (a tombstone, so a
 *                          second free is named a double free; overwritten when reused)
 * span | 16                a page of a small span in HMALLOC_CHECK mode: not SMALL, so free
 *                          skips its fast path (check_mode.c) */
typedef uintptr_t hm_pmentry_t;
#define HM_PM_SMALL 1u
#define HM_PM_MEDIUM 2u
#define HM_PM_LARGE 4u
#define HM_PM_FREED_LARGE 8u
#define HM_PM_CHECKED 16u /* span | 16: a small span in HMALLOC_CHECK mode (check_mode.c) */
#define HM_PM_PTR(e) ((void *)((e) & ~(uintptr_t)127))
/* The span of a small-tier entry (e & HM_PM_SMALL): the entry less its flag, which the
 * compiler folds into the displacement of each field load. */
#define HM_PM_SPAN(e) ((const hm_span_t *)((e) - HM_PM_SMALL))

/* ---- small tier -------------------------------------------------------------------------- */

/* One span: HM_SPAN_SIZE bytes of equal-size objects, page aligned, carved from a medium
 * chunk.  Its descriptor lives outside the span (metadata pool) so that no user overflow can
 * reach it.  Owned by the central list of its class: every field is under that class's lock. */
typedef struct hm_span_s {
  struct hm_span_s *next, *prev; /* in the class's list of spans with free slots */
  uintptr_t start;               /* address of object 0 (page aligned) */
  /* Objects [0, bump) have been handed out at least once.  64 bits: free compares a 64-bit
   * object index with it straight from memory (one instruction less than widening it). */
  uint64_t bump;
  uint32_t capacity;             /* objects in the span */
  uint32_t used;                 /* objects out of the span (in thread caches or in use) */
  uint16_t cls;                  /* size class */
  uint8_t listed;                /* on the class's partial list */
  uint8_t shift;                 /* hmi_class_shift[cls], kept here for free's fast path */
  uint32_t map_from;             /* free_map words below this one are all zero */
  uint64_t minv;                 /* hmi_class_minv[cls], likewise */
  struct hm_segment_s *segment;  /* medium segment whose chunk holds the span */
  /* Bit i set iff object i (below bump) is back in the span.  In the descriptor's padding
   * when it fits (classes of 176 bytes and up), else running on after it. */
  uint64_t free_map[];
} __attribute__((aligned(128))) hm_span_t;

/* Central state of one size class: spans that still have free slots. */
typedef struct hm_central_s {
  hm_lock_t lock;
  uint32_t span_count;    /* spans of this class alive */
  size_t free_slots;      /* objects in those spans not handed out (free list + bump) */
  hm_span_t *partial;     /* spans with at least one free slot (free_map or bump) */
  hm_span_t *empty;       /* one fully free span kept to avoid span churn (or NULL) */
  uint64_t spans_made;    /* spans carved for this class, ever */
  uint64_t spans_released;/* spans given back to the medium heap, ever */
  /* Transfer cache: whole batches flushed by one thread, handed as they are to the next
   * refill, so neither side walks the objects (they are cold, often in another core's
   * cache).  Objects here count as used by their spans and as cached in the statistics. */
  uint32_t xfer_n;                /* batches held */
  size_t xfer_objects;            /* objects in them */
  void *xfer_head[HM_XFER_SLOTS]; /* safe-linked lists, NULL-terminated */
  uint32_t xfer_count[HM_XFER_SLOTS];
} __attribute__((aligned(64))) hm_central_t;

/* Per-thread, per-class free lists (in hm_tcache_t, as three arrays indexed by class so the
 * fast paths address each word straight off the thread pointer): popped and pushed with no
 * lock and no atomic.  List c holds limit[c] - space[c] objects; a push that takes space[c]
 * below 0 goes to the slow path (one decrement and one sign test on the fast path).  All
 * zero before set-up. */
#define hm_bin_count(tc, c) ((uint32_t)((int64_t)(tc)->limit[c] - (tc)->space[c]))
/* The same, read from another thread (stats): each word is read once, atomically. */
static inline uint32_t hm_bin_count_racy(const int64_t *space, const uint32_t *limit) {
  int64_t n = (int64_t)__atomic_load_n(limit, __ATOMIC_RELAXED) - __atomic_load_n(space, __ATOMIC_RELAXED);
  return n > 0 ? (uint32_t)n : 0;
}
#define HM_BIN_COUNT_RACY(tc, c) hm_bin_count_racy(&(tc)->space[c], &(tc)->limit[c])

/* Per-thread counters, summed on read; written only by their thread.  Small-tier calls are
 * counted per class (the fast path adds to class_malloc[cls] where it would otherwise add
 * to a single counter: the same one instruction); malloc_count and free_count count the
 * other calls.  hmi_tcache_sum reports the totals. */
typedef struct hm_tstats_s {
  uint64_t malloc_count, free_count, realloc_count;
  uint64_t refills, flushes;
  uint64_t class_malloc[HM_CLASSES];  /* small allocations (cache hits + misses) */
  uint64_t class_free[HM_CLASSES];    /* small frees */
  uint64_t class_refill[HM_CLASSES];  /* cache misses: batches taken from the central list */
  uint64_t class_flush[HM_CLASSES];   /* batches given back to the central list */
} hm_tstats_t;

/* A thread's cache.  Lives in initial-exec TLS, zero at thread start: all lists empty, all
 * limits zero, so the first malloc and the first free fall into the slow path, which sets
 * the cache up.  No "initialised?" test is needed on the fast path. */
typedef struct hm_tcache_s {
  void *head[HM_CLASSES];    /* free lists, linked through each object's first word; first
                              * in the struct so the fast path indexes it with no offset */
  uint8_t class_of[(HM_SMALL_MAX >> 4) + 1]; /* hmi_class_of, copied into every thread's
                              * cache by its TLS image (class_table.h): one address less to
                              * load on malloc's fast path */
  /* Pushes left before list c is over its limit.  64 bits, like head and the class
   * counters: free then addresses all three off one register (one instruction less). */
  int64_t space[HM_CLASSES];
  uint32_t limit[HM_CLASSES]; /* objects list c may hold; 0 before set-up and after exit */
  uintptr_t list_key;  /* copies of hmi_list_key and hmi_free_mark, reachable from the */
  uintptr_t free_mark; /* thread pointer without a global load; 0 until set-up */
  hm_tstats_t stats;
  /* Medium blocks of up to HM_MCACHE_MAX bytes, kept whole per thread (still in use for
   * their arena), so a malloc/free pair of a medium size takes no lock.  Linked like the
   * small lists (safe-linking, free mark in the second word). */
  void *mcache[HM_MCLASSES];
  uint8_t mcache_count[HM_MCLASSES];
  uint8_t overflows[HM_CLASSES]; /* flushes of list c since its last refill (tcache.c) */
  uint8_t warmup[HM_CLASSES];    /* refills of class c so far, counted up to 3 (tcache.c) */
  size_t mcache_bytes;           /* usable bytes held in mcache */
  uint8_t state;                 /* HM_TC_NEW, HM_TC_LIVE, HM_TC_DEAD */
  uint8_t hooked;                /* limits held at 0 so every call reaches the hooks */
  uint8_t in_hook;               /* inside a hook (or realloc): report nothing */
  uint8_t mcache_flush_wanted;   /* a free left a big free chunk the heap cannot give back */
  unsigned arena_index;          /* medium arena of this thread (hmi_arena_pick) */
  size_t bytes_cap;              /* bytes the small lists may hold now (tcache.c: start_cap) */
  size_t bytes_max;              /* HMALLOC_TCACHE_MAX at set-up: bytes_cap grows up to it */
  uint64_t trimmed;              /* bit c (HM_CLASSES <= 64): the cap halved list c, which has not overflowed or
                                  * been refilled since */
  struct hm_tcache_s *next, *prev; /* registry of live caches (for stats), under registry lock */
} hm_tcache_t;
#define HM_TC_NEW 0
#define HM_TC_LIVE 1
#define HM_TC_DEAD 2

/* ---- medium tier -------------------------------------------------------------------------
 * A chunk: 16-byte header, then the user area.  Free chunks also hold list links after the
 * header and a copy of their size in their last word (the footer), so the next chunk can find
 * its free predecessor.  Sizes include the header and are multiples of 16. */
typedef struct hm_chunk_s {
  size_t size_flags;  /* size | HM_CH_INUSE | HM_CH_PREV_INUSE */
  uintptr_t check;    /* (address of the chunk) ^ hmi_secret: tells a real header from data */
  struct hm_chunk_s *next_free, *prev_free; /* only while free */
} hm_chunk_t;
#define HM_CH_INUSE ((size_t)1)
#define HM_CH_PREV_INUSE ((size_t)2)
#define HM_CH_FLAGS ((size_t)15)
#define HM_CHUNK_HEADER 16
#define HM_CHUNK_MIN 48 /* header + two links + footer, rounded to 16 */

/* A contiguous region of medium chunks: the first chunk starts at `start`; a zero-size in-use
 * sentinel header sits at end - 16 so that walking and coalescing stop there. */
typedef struct hm_segment_s {
  uintptr_t start, end;
  struct hm_segment_s *next, *prev; /* arena's segments */
  struct hm_arena_s *arena;
  uint8_t is_brk;                   /* carved from the brk heap (else mmap) */
} __attribute__((aligned(128))) hm_segment_t;

/* TLSF-style segregated free lists: first level = highest set bit of the size, second level
 * = the next HM_SL_BITS bits.  A bitmap per level finds a non-empty list in two ffs. */
#define HM_SL_BITS 4
#define HM_SL_COUNT (1 << HM_SL_BITS)
#define HM_FL_COUNT 48

typedef enum { HM_FIT_BEST = 0, HM_FIT_FIRST = 1 } hm_fit_t;

/* An arena: medium chunks with one lock.  Every field is under `lock`. */
typedef struct hm_arena_s {
  hm_lock_t lock;
  unsigned index;       /* set by hmi_arena_init (unit tests); the set's arenas keep 0 (arena_number) */
  uint8_t use_brk;      /* may grow with sbrk (only the main arena) */
  uint8_t brk_failed;   /* sbrk refused once: carry on with mmap segments */
  uint8_t trimmed;      /* the brk heap was trimmed and has not grown since */
  size_t top_pad;       /* free bytes growth adds and trimming keeps at the brk top (0: the
                           default, HM_TOP_PAD); doubles when the heap regrows after a trim */
  uint64_t fl_bitmap;
  uint32_t sl_bitmap[HM_FL_COUNT];
  hm_chunk_t *bins[HM_FL_COUNT][HM_SL_COUNT];
  hm_segment_t *segments;
  size_t segment_count; /* segments on the list, brk and mmap'ed */
  hm_segment_t *spare;  /* an entirely free mmap'ed segment kept against churn, or NULL */
  /* counters */
  size_t mapped;        /* bytes of all segments */
  size_t mapped_high;   /* the most bytes it ever had mapped (grow) */
  size_t free_bytes;    /* bytes in free chunks */
  size_t free_chunks;
  size_t in_use;        /* bytes in in-use chunks (spans included), headers included */
  size_t in_use_chunks; /* in-use chunks (spans included) */
  uint64_t splits, coalesces, searches, brk_grows, brk_trims, seg_maps, seg_unmaps;
} hm_arena_t;

/* ---- large tier --------------------------------------------------------------------------
 * Sits HM_LARGE_HEADER bytes before the user pointer, inside the mapping. */
/* Where a large mapping's pages change kernel mapping (VMA): a block assembled from kept
 * mappings (large.c) is several VMAs, which mremap cannot resize as one.  cut[0..n-1] are
 * the page offsets, ascending, at which a new VMA begins; n == 0 for a single VMA.  An upper
 * bound: the kernel may merge neighbours.  48 VMAs fill a 256-byte header (docs/design.md
 * has what 16, 48 and 112 measured). */
#define HM_LARGE_MAX_VMAS 48
typedef struct hm_vmas_s {
  uint32_t n;
  uint32_t cut[HM_LARGE_MAX_VMAS - 1];
} hm_vmas_t;

typedef struct hm_large_s {
  uintptr_t map;       /* start of the mapping */
  size_t map_size;     /* bytes mapped */
  uintptr_t check;     /* address of this header ^ map_size ^ hmi_secret */
  struct hm_large_s *next, *prev; /* every live large block, under hmi_large_lock */
  uint32_t guard;      /* bytes of PROT_NONE guard at the end of the mapping (HMALLOC_CHECK) */
  uint32_t recycled;   /* the mapping came from the cache of freed ones: not zero-filled */
  size_t spare;        /* bytes at the end of the mapping beyond the block: the rest of a kept
                        * mapping handed out whole (large.c); resident, not usable */
  hm_vmas_t vmas;      /* the kernel mappings (VMAs) it is made of (large.c) */
  uint64_t serial;     /* unique to this block (large.c: its kept tail knows it by this) */
} hm_large_t;

/* ---- options (options.c) ---------------------------------------------------------------- */
typedef struct hm_options_s {
  size_t mmap_threshold;
  size_t trim_threshold;
  size_t tcache_max;
  hm_fit_t fit;
  unsigned arenas;
  unsigned cpus;   /* CPUs this process may run on, at start-up */
} hm_options_t;

#endif
