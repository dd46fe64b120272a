/* internal.h - functions shared between hmalloc's source files (prefix hmi_), and the small
 * inline helpers of the hot paths.  Nothing here is exported from the library. */
#ifndef HM_INTERNAL_H
#define HM_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "types.h"

#define HM_API __attribute__((visibility("default")))
#define HM_LIKELY(x) __builtin_expect(!!(x), 1)
#define HM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define HM_NOINLINE __attribute__((noinline))
#define HM_COLD __attribute__((cold, noinline))

#ifdef HM_DEBUG
#define hm_assert(cond) ((cond) ? (void)0 : hmi_assert_fail(#cond, __FILE__, __LINE__))
#else
#define hm_assert(cond) ((void)0)
#endif

static inline size_t hm_align_up(size_t n, size_t a) { return (n + a - 1) & ~(a - 1); }
static inline uintptr_t hm_page_floor(uintptr_t p) { return p & ~(uintptr_t)(HM_PAGE - 1); }

/* ---- globals (init.c) ---- */
extern hm_options_t hmi_options;   /* written at init and by mallopt; read racily (words) */
extern uintptr_t hmi_secret;       /* per-process random key, set once at init */
extern int hmi_ready;              /* 1 once init finished */
extern hm_arena_t hmi_main_arena;
void hmi_init(void);
void hmi_options_load(void);
bool hmi_parse_size(const char *s, size_t *out);
const char *hmi_getenv(const char *name);
static inline void hmi_ensure_init(void) {
  if (HM_UNLIKELY(!hmi_ready)) hmi_init();
}

/* ---- os.c: the only file that talks to the kernel about memory ---- */
void *hmi_os_mmap(size_t size);               /* NULL on failure */
void hmi_os_munmap(void *p, size_t size);
void *hmi_os_mremap(void *p, size_t old_size, size_t new_size); /* NULL on failure */
void *hmi_os_mremap_inplace(void *p, size_t old_size, size_t new_size); /* never moves */
void *hmi_os_mremap_to(void *p, size_t old_size, size_t new_size, void *dst); /* moves to dst */
void *hmi_os_sbrk(intptr_t increment);        /* NULL on failure (never (void*)-1) */
void hmi_os_release(void *p, size_t size);    /* madvise(DONTNEED) on whole pages */
uint64_t hmi_os_random(void);
extern int hmi_os_brk_disabled;               /* tests: pretend sbrk always fails */
extern uint64_t hmi_os_mmap_calls, hmi_os_munmap_calls, hmi_os_mremap_calls; /* atomic */

/* ---- format.c: messages without stdio ---- */
void hmi_write(int fd, const char *s);
size_t hmi_fmt(char *buf, size_t len, const char *fmt, ...); /* %s %d %u %zu %llu %p %x */
void hmi_dprintf(int fd, const char *fmt, ...);
HM_COLD __attribute__((noreturn)) void hmi_fatal(const char *fmt, ...);
HM_COLD __attribute__((noreturn)) void hmi_assert_fail(const char *cond, const char *file,
                                                       int line);
void hmi_warn(const char *fmt, ...);

/* ---- pagemap.c ---- */
extern hm_pmentry_t *hmi_pagemap_root[];
#define HM_PM_LEAF_BITS 18
#define HM_PM_ROOT_BITS 17  /* 12 + 18 + 17 = 47 bits of user address space */
/* The entry of addr's page, without a range test, for free's fast path: an address at or
 * above 2^47 gets the entry of the address 2^47 (or a multiple) below it, so the caller must
 * refuse such an address by a test on all its bits before trusting the entry (hm_free_raw's
 * 64-bit object test does), and hand hmi_free_slow nothing it has not checked (hmi_free_slow
 * re-reads). */
#define HM_PM_ADDR_BITS (HM_PAGE_SHIFT + HM_PM_LEAF_BITS + HM_PM_ROOT_BITS)
static inline hm_pmentry_t hmi_pagemap_get_wrapped(uintptr_t addr) {
  uintptr_t page = addr >> HM_PAGE_SHIFT;
  uintptr_t hi = (page >> HM_PM_LEAF_BITS) & (((uintptr_t)1 << HM_PM_ROOT_BITS) - 1);
  hm_pmentry_t *leaf = __atomic_load_n(&hmi_pagemap_root[hi], __ATOMIC_ACQUIRE);
  if (HM_UNLIKELY(leaf == NULL)) return 0;
  return __atomic_load_n(&leaf[page & (((uintptr_t)1 << HM_PM_LEAF_BITS) - 1)], __ATOMIC_RELAXED);
}
/* The entry of addr's page; 0 for an address outside the map. */
static inline hm_pmentry_t hmi_pagemap_get(uintptr_t addr) {
  if (HM_UNLIKELY(addr >> HM_PM_ADDR_BITS)) return 0;
  return hmi_pagemap_get_wrapped(addr);
}
/* Set `pages` entries from addr; returns false if a leaf could not be mapped. */
bool hmi_pagemap_set(uintptr_t addr, size_t pages, hm_pmentry_t value);

/* ---- size_class.c ---- */
extern const uint32_t hmi_class_size[HM_CLASSES];
extern const uint8_t hmi_class_of[(HM_SMALL_MAX >> 4) + 1]; /* (size+15)>>4 -> class */
extern const uint64_t hmi_class_minv[HM_CLASSES];
extern const uint8_t hmi_class_shift[HM_CLASSES];
static inline unsigned hmi_size_class(size_t size) { return hmi_class_of[(size + 15) >> 4]; }
/* offset / size when offset is a multiple of the class size; something above any span's
 * capacity otherwise (see size_class.c). */
static inline uint32_t hmi_class_index(uint32_t offset, unsigned cls) {
  uint32_t x = offset * (uint32_t)hmi_class_minv[cls];
  unsigned k = hmi_class_shift[cls];
  return (x >> k) | (x << ((32u - k) & 31u));
}

/* ---- free-list links (safe-linking) ----
 * A free object's first word holds the next object's address XOR (the word's own address >>
 * 12) XOR a per-process random key, so a use-after-free write cannot point malloc at an
 * address of the attacker's choosing, and a stray value decodes to garbage that fails the
 * alignment check.  Its second word holds hmi_free_mark while it is free: a free of an object
 * carrying the mark is checked for a double free (tcache.c). */
extern uintptr_t hmi_list_key, hmi_free_mark;
#ifndef HM_NO_HARDENING
static inline void *hmi_link_k(void *next, void *at, uintptr_t key) {
  return (void *)((uintptr_t)next ^ ((uintptr_t)at >> 12) ^ key);
}
#define HM_FREE_MARK(tc) ((tc)->free_mark)
#else /* -Dhardening=false: plain links, no free mark (only to measure what they cost) */
static inline void *hmi_link_k(void *next, void *at, uintptr_t key) {
  (void)at, (void)key;
  return next;
}
#define HM_FREE_MARK(tc) ((uintptr_t)0xF5EEF5EEF5EEF5EEull) /* never stored */
#endif
static inline void *hmi_link(void *next, void *at) { return hmi_link_k(next, at, hmi_list_key); }
static inline void *hmi_unlink_next(void *at) { return hmi_link(*(void **)at, at); }
HM_COLD __attribute__((noreturn)) void hmi_corrupt_list(void *at);
static inline void *hmi_next_checked_k(void *at, uintptr_t key) {
  void *next = hmi_link_k(*(void **)at, at, key);
#ifndef HM_NO_HARDENING
  /* The test as one instruction on the register that holds next: GCC 12 copies next to
   * %rax first, to test %al (one instruction more on malloc's fast path). */
  bool misaligned;
  __asm__("testb %2, %b1" : "=@ccnz"(misaligned) : "q"(next), "i"(HM_ALIGN - 1));
  if (HM_UNLIKELY(misaligned)) hmi_corrupt_list(at);
#endif
  return next;
}
static inline void *hmi_next_checked(void *at) { return hmi_next_checked_k(at, hmi_list_key); }

/* ---- arena.c: the medium tier ---- */
void hmi_arena_init(hm_arena_t *a, unsigned index, bool use_brk);
/* Returns a user pointer of at least `size` usable bytes aligned to `align` (power of two,
 * >= 16), or NULL when the OS refuses memory. */
void *hmi_arena_alloc(hm_arena_t *a, size_t size, size_t align);
void hmi_arena_free(void *p, hm_segment_t *seg);
/* Try to resize in place to at least `size` usable bytes; true on success. */
bool hmi_arena_resize(void *p, hm_segment_t *seg, size_t size);
size_t hmi_arena_usable(void *p);
/* Validate p as an in-use chunk's user pointer of seg; returns its chunk or NULL. */
hm_chunk_t *hmi_arena_chunk_of(void *p, hm_segment_t *seg);
int hmi_arena_trim(hm_arena_t *a, size_t pad, bool release_inside);
int hmi_arena_check(hm_arena_t *a); /* 0 if consistent */
size_t hmi_arena_top_free(hm_arena_t *a);
void hmi_arena_lock_all(void);
void hmi_arena_unlock_all(void);
void hmi_arena_reset_locks(void);
#define HM_MAX_ARENAS 64
extern hm_arena_t *hmi_arenas[HM_MAX_ARENAS];
void hmi_arenas_init(unsigned count);
extern unsigned hmi_arena_count;
hm_arena_t *hmi_arena_pick(void);
hm_arena_t *hmi_arena_if_given(unsigned i);
unsigned hmi_arena_assign(void);
void hmi_arena_unassign(unsigned index);
void hmi_arena_threads_after_fork(unsigned self);

/* ---- span.c: the small tier's central lists ---- */
extern hm_central_t hmi_central[HM_CLASSES];
/* Take up to `want` objects of class cls; links them through their first word; returns count
 * (0 only when the OS refuses memory).  *head receives the list. */
uint32_t hmi_span_take(unsigned cls, uint32_t want, void **head);
/* Give back a list of `n` objects of class cls. */
/* A list of n objects back to class cls: kept whole in the transfer cache if n <= xfer_max
 * and a slot is free, else returned to the objects' spans. */
void hmi_span_give(unsigned cls, void *head, uint32_t n, uint32_t xfer_max);
int hmi_span_check(void);
void hmi_span_release_empty(void);
extern size_t hmi_span_chunk_bytes; /* atomic */
void *hmi_meta_alloc(size_t size);   /* metadata pool: 64-byte aligned, zeroed */
void hmi_meta_free(void *p, size_t size);
extern hm_lock_t hmi_meta_lock;
/* Objects still held by spans but not handed out (free slots), in bytes. */
size_t hmi_span_free_bytes(size_t *span_bytes);

/* ---- tcache.c ---- */
extern __thread hm_tcache_t hmi_tcache __attribute__((tls_model("initial-exec")));
void *hmi_tcache_alloc_slow(unsigned cls);
void hmi_tcache_free_slow(void *p, unsigned cls);
void hmi_tcache_settle_slow(bool set_up);
/* At the end of every slow path: a thread past its cache's teardown, or not set up yet,
 * folds its counters into the totals (tcache.c). */
static inline void hmi_tcache_settle(void) {
  if (HM_UNLIKELY(hmi_tcache.state != HM_TC_LIVE)) hmi_tcache_settle_slow(false);
}
/* The same at the end of an allocation's slow path, which also sets up a cache not set up
 * yet (a thread whose first calls are medium or large; tcache.c). */
static inline void hmi_tcache_settle_alloc(void) {
  if (HM_UNLIKELY(hmi_tcache.state != HM_TC_LIVE)) hmi_tcache_settle_slow(true);
}
void hmi_tcache_init_process(void);
void hmi_tcache_sum(hm_tstats_t *out, size_t *cached_bytes);
void hmi_tcache_class_counts(size_t counts[HM_CLASSES]);
/* Medium cache (tcache.c): a request of size (HM_SMALL_MAX, HM_MCACHE_MAX] is rounded up to a
 * medium class so its block can be reused whole. */
static inline unsigned hmi_mclass(size_t size) {
  unsigned lg = 63u - (unsigned)__builtin_clzl(size - 1); /* 12 .. 16 */
  return (lg - 12u) * 8u + ((unsigned)((size - 1) >> (lg - 3)) & 7u);
}
static inline size_t hmi_mclass_size(unsigned m) {
  return (size_t)(9u + (m & 7u)) << (m / 8u + 9u);
}
void *hmi_mcache_pop(size_t size);
bool hmi_mcache_push(void *p, hm_segment_t *seg);
void hmi_mcache_flush(hm_tcache_t *tc);
size_t hmi_tcache_medium_cached(void);
void hmi_tcache_class_stats(uint64_t mallocs[HM_CLASSES], uint64_t frees[HM_CLASSES],
                            uint64_t refills[HM_CLASSES], uint64_t flushes[HM_CLASSES]);
extern hm_lock_t hmi_registry_lock;

/* ---- large.c ---- */
void *hmi_large_alloc(size_t size, size_t align);
void *hmi_large_alloc_guarded(size_t size, size_t align); /* + a PROT_NONE page after */
void hmi_large_free(hm_large_t *h);
void *hmi_large_realloc(hm_large_t *h, size_t size); /* NULL: caller must move */
size_t hmi_large_usable(hm_large_t *h);
hm_large_t *hmi_large_of(void *p, hm_pmentry_t e);   /* validated header or NULL */
extern hm_lock_t hmi_large_lock;
extern size_t hmi_large_count, hmi_large_bytes;      /* under hmi_large_lock */
extern size_t hmi_large_max_count, hmi_large_max_bytes; /* peaks, under hmi_large_lock */
extern size_t hmi_large_usable_bytes;                 /* under hmi_large_lock */
extern size_t hmi_large_cached_bytes;                 /* freed mappings kept for reuse */
extern uint64_t hmi_large_maps, hmi_large_unmaps;     /* atomic */
bool hmi_large_cache_flush(void);
void hmi_large_cache_release(size_t bytes);
void hmi_large_idle_tick(void); /* unmaps kept mappings after a second without large calls */
/* A large block whose memory is known to be zero (a fresh mapping). */
static inline bool hmi_large_fresh(const hm_large_t *h) { return !h->recycled; }
int hmi_large_check(void);

/* ---- check_mode.c ---- */
extern int hmi_check_mode; /* HMALLOC_CHECK=1, fixed at init */
void *hmi_check_alloc(size_t size, size_t align);
void hmi_check_free(void *p, hm_pmentry_t e, const char *caller);
size_t hmi_check_usable(void *p, hm_pmentry_t e, const char *caller);
bool hmi_check_valid(void *p, hm_pmentry_t e);
void hmi_check_drain(void);
void hmi_check_span_released(const hm_span_t *s);
extern hm_lock_t hmi_quarantine_lock;

/* ---- hooks.c ---- */
extern int hmi_hooks_on; /* nonzero while a hook is set; read by slow paths only */
void hmi_hook_alloc(void *p, size_t requested);
void hmi_hook_free(void *p, size_t usable);
void *hmi_hooked_realloc(void *(*impl)(void *, size_t), void *p, size_t size);
void hmi_tcache_sync_hooks(void);

/* ---- alloc.c ---- */
void *hmi_alloc(size_t size);
void hmi_free(void *p, const char *caller);
size_t hmi_usable(void *p, const char *caller);
HM_COLD __attribute__((noreturn)) void hmi_invalid_pointer(const char *caller, void *p);

/* ---- stats.c ---- */
extern uint64_t hmi_global_stats[5]; /* counters of dead threads, atomically added */
void hmi_stats_fold(const hm_tstats_t *t);
void hmi_stats_note_mapped(void);

#endif
