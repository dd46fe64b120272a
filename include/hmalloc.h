/* hmalloc.h - the whole public API of hmalloc.
 *
 * hmalloc replaces malloc: linked in (libhmalloc.a) or preloaded (LD_PRELOAD=libhmalloc.so)
 * it provides the standard names (malloc, free, ...).  The same functions are available
 * under the hm_ prefix declared here, so a program can call hmalloc explicitly without
 * interposing anything.  Every function has the semantics of its glibc namesake. */
#ifndef HMALLOC_H
#define HMALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <malloc.h> /* struct mallinfo, struct mallinfo2 */

#ifdef __cplusplus
extern "C" {
#endif

#define HM_VERSION_MAJOR 0
#define HM_VERSION_MINOR 1
#define HM_VERSION_PATCH 0
#define HM_VERSION_STRING "0.1.0"

/* ---- the C allocation API ------------------------------------------------------------- */
void  *hm_malloc(size_t size);
void   hm_free(void *ptr);
void  *hm_calloc(size_t count, size_t size);
void  *hm_realloc(void *ptr, size_t size);
void  *hm_reallocarray(void *ptr, size_t count, size_t size);
int    hm_posix_memalign(void **out, size_t alignment, size_t size);
void  *hm_aligned_alloc(size_t alignment, size_t size);
void  *hm_memalign(size_t alignment, size_t size);
void  *hm_valloc(size_t size);
void  *hm_pvalloc(size_t size);
size_t hm_malloc_usable_size(void *ptr);

/* ---- glibc's malloc control and reports ---------------------------------------------- */
/* Release free memory to the OS: the free top of the brk heap beyond `pad` bytes, and with
 * it every whole free page inside the heap (madvise).  Returns 1 if memory was released. */
int    hm_malloc_trim(size_t pad);
struct mallinfo2 hm_mallinfo2(void);
struct mallinfo  hm_mallinfo(void);   /* fields saturate at INT_MAX instead of wrapping */
void   hm_malloc_stats(void);         /* glibc-style report on stderr */
/* M_MMAP_THRESHOLD and M_TRIM_THRESHOLD are honoured; M_ARENA_MAX, M_TOP_PAD, M_MMAP_MAX
 * and the other glibc parameters are accepted and ignored (return 1), unknown ones give 0. */
int    hm_mallopt(int param, int value);

/* ---- statistics ---------------------------------------------------------------------- */
typedef struct hm_stats_s {
  size_t allocated;        /* usable bytes handed out and not yet freed */
  size_t peak_allocated;   /* highest `allocated` seen (sampled when memory is taken from the OS) */
  size_t mapped;           /* bytes taken from the OS and not given back: brk heap + mmaps */
  size_t peak_mapped;      /* highest `mapped` */
  size_t heap_free;        /* bytes in free chunks of the medium heap */
  size_t cached;           /* bytes in thread caches and free span slots (small tier) */
  size_t large_count;      /* live large (mmap) blocks */
  size_t large_bytes;      /* bytes mapped for live large blocks */
  uint64_t malloc_count;   /* successful allocations, every entry point counted */
  uint64_t free_count;     /* frees of non-NULL pointers (realloc's frees included) */
  uint64_t realloc_count;  /* calls to realloc with a non-NULL pointer */
  uint64_t mmap_count;     /* mmap calls made (large blocks, segments, metadata) */
  uint64_t munmap_count;   /* munmap calls made */
  uint64_t brk_grow_count; /* times the brk heap grew */
  uint64_t brk_trim_count; /* times the brk heap was trimmed */
  uint64_t splits;         /* medium chunks split */
  uint64_t coalesces;      /* medium chunks merged with a free neighbour */
  size_t large_cached;     /* freed large mappings kept for reuse (counted in mapped) */
} hm_stats_t;

/* Fill *out with the current counters (summed over all threads). */
void hm_stats_get(hm_stats_t *out);
/* Write a readable report to file descriptor fd (no stdio is used). */
void hm_stats_print(int fd);
/* The same figures as one JSON object (no trailing newline), formatted like snprintf: at most
 * len bytes are written, NUL included, and the length the whole object needs (NUL excluded)
 * is returned; buf may be NULL with len 0 to ask for the length.  Besides the fields of
 * hm_stats_t it holds per tier ("tiers": small, medium, large: in use, free, mapped, system
 * calls, splits, coalesces, fit searches), per arena ("arenas") and per size class
 * ("classes": objects and bytes in use, cached, free slots, spans).  The figures move with
 * every allocation: a buffer sized by a first call should have some slack. */
size_t hm_stats_json(char *buf, size_t len);
/* Start peak_allocated, peak_mapped (and malloc_stats' "max mmap" figures) again from the
 * current readings. */
void hm_stats_reset_peaks(void);
/* glibc's malloc_info: an XML report in glibc's shape on fp.  options must be 0 (else
 * EINVAL).  Returns 0.  Also exported as malloc_info. */
int hm_malloc_info(int options, FILE *fp);

/* ---- checking ------------------------------------------------------------------------ */
/* Walk every heap structure (medium segments, free bins, spans, large blocks) and verify its
 * invariants.  Returns 0 when the heap is consistent; otherwise writes one line naming the
 * first broken invariant to stderr and returns -1. */
int hm_heap_check(void);

/* ---- hooks ---------------------------------------------------------------------------
 * Callbacks for tracers and heap profilers.  `requested` is the size asked for (for aligned
 * small requests: the size class used), `usable` what malloc_usable_size reports.  realloc
 * reports one on_realloc (old_ptr NULL never: realloc(NULL, n) is an allocation; a realloc to
 * 0 is a free).  A hook may call malloc and free: those calls are not reported to it.
 * Hooks cost nothing while none is set: a thread enters "hooked" mode, in which its cache is
 * bypassed, on its next slow-path operation after hm_set_hooks (immediately for the calling
 * thread and for threads started afterwards).  Set hooks at start-up to see every call. */
typedef struct hm_hooks_s {
  void (*on_alloc)(void *ptr, size_t requested, size_t usable, void *arg);
  void (*on_free)(void *ptr, size_t usable, void *arg);
  void (*on_realloc)(void *old_ptr, void *new_ptr, size_t requested, size_t usable, void *arg);
} hm_hooks_t;
/* Install hooks (copied; any member may be NULL) with the argument passed to each; NULL
 * removes them. */
void hm_set_hooks(const hm_hooks_t *hooks, void *arg);

#ifdef __cplusplus
}
#endif
#endif /* HMALLOC_H */
