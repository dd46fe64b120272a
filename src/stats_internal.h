/* stats_internal.h - what the statistics files (stats.c, stats_report.c, stats_sampler.c)
 * share: one snapshot of every counter of every tier, taken with each lock held briefly in
 * turn, and the figures derived from it.  Nothing here is exported from the library. */
#ifndef HM_STATS_INTERNAL_H
#define HM_STATS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hmalloc.h"
#include "internal.h"

typedef struct hms_class_s {
  size_t spans;         /* live spans of the class */
  size_t free_slots;    /* slots of those spans not handed out (free list + never used) */
  size_t cached;        /* objects of the class in thread caches */
  size_t in_use;        /* objects handed to the program and not freed */
  uint64_t made, released;
  uint64_t mallocs, frees; /* calls served in this class, every thread, ever */
  uint64_t misses;         /* mallocs that found the thread cache empty (refills) */
  uint64_t flushes;        /* batches given back to the central list */
} hms_class_t;

typedef struct hms_arena_s {
  size_t mapped, free_bytes, free_chunks, in_use, in_use_chunks, top_free;
  uint64_t splits, coalesces, searches, brk_grows, brk_trims, seg_maps, seg_unmaps;
  size_t peak_mapped;   /* highest `mapped` seen by the statistics code */
  int brk_failed;
  size_t segments;      /* segments of the arena (brk and mmap'ed) */
} hms_arena_t;

typedef struct hms_snap_s {
  hms_class_t cls[HM_CLASSES];
  bool classes_exact;   /* per-class `cached` known (else class in_use includes the caches) */
  unsigned arena_count;
  hms_arena_t arena[HM_MAX_ARENAS];
  hms_arena_t ar;       /* all arenas summed */
  size_t large_count, large_bytes, large_usable, large_max_count, large_max_bytes;
  size_t large_cached;  /* freed mappings kept for reuse */
  uint64_t large_maps, large_unmaps; /* mmap and munmap calls of the large tier */
  hm_tstats_t threads;  /* live threads + dead threads */
  size_t cached_bytes;  /* bytes in thread caches */
  uint64_t mmap_calls, munmap_calls, mremap_calls;
  /* derived */
  size_t spans, span_bytes;
  size_t small_in_use, small_free, small_free_objects;
  size_t medium_in_use;
  size_t medium_cached; /* medium blocks held by thread caches */
  hm_stats_t core;      /* what hm_stats_get returns (peaks updated) */
} hms_snap_t;

/* Take a snapshot (locks each structure briefly) and raise the peaks with it. */
void hmi_stats_snapshot(hms_snap_t *s);
/* Resident set size in bytes from /proc/self/statm (open/read, no stdio); 0 if unknown. */
size_t hmi_stats_rss(void);
/* Write all of buf[0..n) to fd; false on error. */
bool hmi_stats_write_all(int fd, const char *buf, size_t n);
/* Format the JSON report of snapshot s (hm_stats_json's body). */
size_t hmi_stats_json_snap(const hms_snap_t *s, char *buf, size_t len);
/* Expand "%p" in a path to the pid into out; false if it does not fit. */
bool hmi_stats_path(const char *in, char *out, size_t len);

/* stats_sampler.c */
void hmi_stats_sampler_start(int interval_ms, const char *path);
void hmi_stats_sampler_final(void);
extern __thread int hmi_stats_in_sampler; /* 1 in the sampler thread: it must never allocate */

/* A small writer into a caller's buffer that counts what did not fit, like snprintf. */
typedef struct hms_out_s {
  char *buf;
  size_t len, pos;
} hms_out_t;
static inline char *hms_ptr(const hms_out_t *o) { return o->pos < o->len ? o->buf + o->pos : NULL; }
static inline size_t hms_room(const hms_out_t *o) { return o->pos < o->len ? o->len - o->pos : 0; }
#define HMS_PUT(o, ...) ((o)->pos += hmi_fmt(hms_ptr(o), hms_room(o), __VA_ARGS__))

#endif
