/* stats_report.c - the machine-readable reports: hm_stats_json (one JSON object) and glibc's
 * malloc_info (XML in glibc's shape).  Both are formatted with hmi_fmt into the caller's
 * buffer or a stack buffer: nothing here allocates from the heap it describes.  malloc_info
 * writes to the caller's FILE with fputs; the stream may allocate its own buffer, which is
 * the caller's business. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "stats_internal.h"

/* ---- JSON ---- */
#define U(v) ((unsigned long long)(v))

size_t hmi_stats_json_snap(const hms_snap_t *s, char *buf, size_t len) {
  hms_out_t o = {buf, len, 0};
  const hm_stats_t *c = &s->core;
  HMS_PUT(&o, "{\"version\":\"%s\",\"pid\":%d", HM_VERSION_STRING, (int)getpid());
  HMS_PUT(&o, ",\"allocated\":%llu,\"peak_allocated\":%llu,\"mapped\":%llu,\"peak_mapped\":%llu",
          U(c->allocated), U(c->peak_allocated), U(c->mapped), U(c->peak_mapped));
  HMS_PUT(&o, ",\"heap_free\":%llu,\"cached\":%llu,\"large_count\":%llu,\"large_bytes\":%llu,"
              "\"large_cached\":%llu",
          U(c->heap_free), U(c->cached), U(c->large_count), U(c->large_bytes),
          U(c->large_cached));
  HMS_PUT(&o, ",\"malloc_count\":%llu,\"free_count\":%llu,\"realloc_count\":%llu",
          U(c->malloc_count), U(c->free_count), U(c->realloc_count));
  HMS_PUT(&o, ",\"mmap_count\":%llu,\"munmap_count\":%llu,\"mremap_count\":%llu",
          U(c->mmap_count), U(c->munmap_count), U(s->mremap_calls));
  HMS_PUT(&o, ",\"brk_grow_count\":%llu,\"brk_trim_count\":%llu,\"splits\":%llu,"
              "\"coalesces\":%llu,\"searches\":%llu",
          U(c->brk_grow_count), U(c->brk_trim_count), U(c->splits), U(c->coalesces),
          U(s->ar.searches));
  HMS_PUT(&o, ",\"refills\":%llu,\"flushes\":%llu,\"rss\":%llu", U(s->threads.refills),
          U(s->threads.flushes), U(hmi_stats_rss()));

  /* tiers: in use and free bytes inside the heap, bytes mapped, system calls, heap work */
  HMS_PUT(&o, ",\"tiers\":{\"small\":{\"in_use\":%llu,\"free\":%llu,\"mapped\":%llu,"
              "\"mmap\":0,\"munmap\":0,\"brk_grow\":0,\"brk_trim\":0,\"splits\":0,"
              "\"coalesces\":0,\"searches\":0,\"spans\":%llu,\"free_objects\":%llu}",
          U(s->small_in_use), U(s->small_free), U(s->span_bytes), U(s->spans),
          U(s->small_free_objects));
  HMS_PUT(&o, ",\"medium\":{\"in_use\":%llu,\"free\":%llu,\"mapped\":%llu,\"peak_mapped\":%llu,"
              "\"mmap\":%llu,\"munmap\":%llu,\"brk_grow\":%llu,\"brk_trim\":%llu,",
          U(s->medium_in_use), U(s->ar.free_bytes), U(s->ar.mapped), U(s->ar.peak_mapped),
          U(s->ar.seg_maps), U(s->ar.seg_unmaps), U(s->ar.brk_grows), U(s->ar.brk_trims));
  HMS_PUT(&o, "\"splits\":%llu,\"coalesces\":%llu,\"searches\":%llu,\"free_chunks\":%llu,"
              "\"in_use_chunks\":%llu,\"keepcost\":%llu}",
          U(s->ar.splits), U(s->ar.coalesces), U(s->ar.searches), U(s->ar.free_chunks),
          U(s->ar.in_use_chunks), U(s->arena[0].top_free));
  HMS_PUT(&o, ",\"large\":{\"in_use\":%llu,\"free\":%llu,\"mapped\":%llu,\"blocks\":%llu,"
              "\"peak_blocks\":%llu,\"peak_mapped\":%llu,\"mmap\":%llu,\"munmap\":%llu,"
              "\"cached\":%llu,\"brk_grow\":0,\"brk_trim\":0,\"splits\":0,\"coalesces\":0,"
              "\"searches\":0}}",
          U(s->large_usable), U(s->large_bytes - s->large_usable + s->large_cached),
          U(s->large_bytes + s->large_cached),
          U(s->large_count), U(s->large_max_count), U(s->large_max_bytes), U(s->large_maps),
          U(s->large_unmaps), U(s->large_cached));
  HMS_PUT(&o, ",\"os\":{\"mmap\":%llu,\"munmap\":%llu,\"mremap\":%llu}", U(s->mmap_calls),
          U(s->munmap_calls), U(s->mremap_calls));

  HMS_PUT(&o, ",\"arenas\":[");
  for (unsigned i = 0; i < s->arena_count; i++) {
    const hms_arena_t *a = &s->arena[i];
    HMS_PUT(&o, "%s{\"index\":%u,\"brk\":%s,\"in_use\":%llu,\"free\":%llu,\"mapped\":%llu,"
                "\"peak_mapped\":%llu,\"free_chunks\":%llu,\"in_use_chunks\":%llu,",
            i ? "," : "", i, i == 0 && !a->brk_failed ? "true" : "false", U(a->in_use),
            U(a->free_bytes), U(a->mapped), U(a->peak_mapped), U(a->free_chunks),
            U(a->in_use_chunks));
    HMS_PUT(&o, "\"mmap\":%llu,\"munmap\":%llu,\"brk_grow\":%llu,\"brk_trim\":%llu,"
                "\"splits\":%llu,\"coalesces\":%llu,\"searches\":%llu}",
            U(a->seg_maps), U(a->seg_unmaps), U(a->brk_grows), U(a->brk_trims), U(a->splits),
            U(a->coalesces), U(a->searches));
  }
  HMS_PUT(&o, "],\"classes_exact\":%s,\"classes\":[", s->classes_exact ? "true" : "false");
  for (unsigned k = 0; k < HM_CLASSES; k++) {
    const hms_class_t *x = &s->cls[k];
    HMS_PUT(&o, "%s{\"class\":%u,\"size\":%u,\"in_use\":%llu,\"bytes\":%llu,\"cached\":%llu,"
                "\"free_slots\":%llu,\"spans\":%llu,\"spans_made\":%llu,\"spans_released\":%llu,"
                "\"mallocs\":%llu,\"frees\":%llu,\"cache_hits\":%llu,\"cache_misses\":%llu,"
                "\"flushes\":%llu}",
            k ? "," : "", k, (unsigned)hmi_class_size[k], U(x->in_use),
            U(x->in_use) * hmi_class_size[k], U(x->cached), U(x->free_slots), U(x->spans),
            U(x->made), U(x->released), U(x->mallocs), U(x->frees),
            U(x->mallocs > x->misses ? x->mallocs - x->misses : 0), U(x->misses),
            U(x->flushes));
  }
  HMS_PUT(&o, "]}");
  return o.pos;
}

HM_API size_t hm_stats_json(char *buf, size_t len) {
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  if (buf == NULL) len = 0;
  return hmi_stats_json_snap(&s, buf, len);
}

/* ---- malloc_info ----
 * glibc's shape: one <heap> per arena (free chunks by size, totals, system bytes), then the
 * totals over all heaps, the mmap'ed blocks, and the address space.  The small tier's free
 * objects (thread caches and free span slots) play the part of glibc's fast bins and are
 * shown in heap 0, whose brk heap holds the spans of single-threaded programs. */
#define LINE(fp, ...)                                   \
  do {                                                  \
    char line_[256];                                    \
    hmi_fmt(line_, sizeof line_, __VA_ARGS__);          \
    fputs(line_, fp);                                   \
  } while (0)

/* One <size> line per non-empty bin of the arena.  The arena lock is held only while one
 * list is walked, never across fputs (which may allocate). */
static void heap_sizes(FILE *fp, hm_arena_t *a) {
  for (unsigned fl = 0; fl < HM_FL_COUNT; fl++) {
    for (unsigned sl = 0; sl < HM_SL_COUNT; sl++) {
      size_t count = 0, total = 0, lo = SIZE_MAX, hi = 0;
      hm_lock(&a->lock);
      for (hm_chunk_t *c = a->bins[fl][sl]; c != NULL; c = c->next_free) {
        size_t size = c->size_flags & ~HM_CH_FLAGS;
        count++;
        total += size;
        if (size < lo) lo = size;
        if (size > hi) hi = size;
      }
      hm_unlock(&a->lock);
      if (count != 0)
        LINE(fp, "<size from=\"%zu\" to=\"%zu\" total=\"%zu\" count=\"%zu\"/>\n", lo, hi, total,
             count);
    }
  }
}

HM_API int hm_malloc_info(int options, FILE *fp) {
  if (options != 0 || fp == NULL) return EINVAL;
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  fputs("<malloc version=\"1\">\n", fp);
  for (unsigned i = 0; i < s.arena_count; i++) {
    const hms_arena_t *a = &s.arena[i];
    LINE(fp, "<heap nr=\"%u\">\n<sizes>\n", i);
    if (hmi_arena_if_given(i)) heap_sizes(fp, hmi_arenas[i]); /* else no chunk at all */
    LINE(fp, "</sizes>\n<total type=\"fast\" count=\"%zu\" size=\"%zu\"/>\n",
         i == 0 ? s.small_free_objects : 0, i == 0 ? s.small_free : 0);
    LINE(fp, "<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>\n", a->free_chunks,
         a->free_bytes);
    LINE(fp, "<system type=\"current\" size=\"%zu\"/>\n<system type=\"max\" size=\"%zu\"/>\n",
         a->mapped, a->peak_mapped);
    LINE(fp, "<aspace type=\"total\" size=\"%zu\"/>\n<aspace type=\"mprotect\" size=\"%zu\"/>\n",
         a->mapped, a->mapped);
    fputs("</heap>\n", fp);
  }
  LINE(fp, "<total type=\"fast\" count=\"%zu\" size=\"%zu\"/>\n", s.small_free_objects,
       s.small_free);
  LINE(fp, "<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>\n", s.ar.free_chunks,
       s.ar.free_bytes);
  LINE(fp, "<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>\n", s.large_count, s.large_bytes);
  LINE(fp, "<system type=\"current\" size=\"%zu\"/>\n<system type=\"max\" size=\"%zu\"/>\n",
       s.ar.mapped, s.ar.peak_mapped);
  LINE(fp, "<aspace type=\"total\" size=\"%zu\"/>\n<aspace type=\"mprotect\" size=\"%zu\"/>\n",
       s.ar.mapped, s.ar.mapped);
  fputs("</malloc>\n", fp);
  return 0;
}

/* The standard name lives here rather than in override.c (see the report to the lead). */
HM_API int malloc_info(int options, FILE *fp) { return hm_malloc_info(options, fp); }
