/* stats.c - counters and reports: hm_stats_get, hm_stats_reset_peaks, hm_stats_print,
 * mallinfo2, mallinfo, malloc_stats, and the HMALLOC_STATS* variables.  The JSON report and
 * malloc_info are in stats_report.c, the background sampler in stats_sampler.c.
 *
 * Fast-path counters are per thread (hm_tcache_t.stats) and summed on read; a thread that
 * exits adds its counters to hmi_global_stats.  Tier counters live with the tier, under its
 * lock.  `allocated` is computed, not counted, so it costs the fast paths nothing:
 *   small  = per class, (objects out of the spans - objects in thread caches) * class size;
 *            objects out of a class's spans = spans * capacity - free slots
 *   medium = bytes of in-use chunks - their headers - the chunks that are spans
 *   large  = usable bytes of the live mappings
 * so after malloc(n) it has grown by exactly malloc_usable_size(p), and a free takes it back.
 * Reading takes each lock briefly, one at a time: with other threads running the figures of
 * different tiers are from slightly different moments; once they are quiet the sums are exact.
 *
 * Peaks: peak_mapped and peak_allocated are raised whenever a snapshot is taken (every
 * hm_stats_get, report, sample) and whenever memory is taken from the OS
 * (hmi_stats_note_mapped, called by the tiers): there no lock may be taken (the caller holds
 * an arena or central lock), so `allocated` is computed from racy reads of the same counters. */
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stats_internal.h"

uint64_t hmi_global_stats[5]; /* malloc, free, realloc, refills, flushes of dead threads (and of
                              * frees by threads not set up, tcache.c) */
static size_t peak_mapped, peak_allocated;
static size_t last_cached_bytes; /* thread-cache bytes at the last reading */

void hmi_stats_fold(const hm_tstats_t *t) {
  const uint64_t v[5] = {t->malloc_count, t->free_count, t->realloc_count, t->refills, t->flushes};
  for (int i = 0; i < 5; i++) /* only the non-zero ones: a thread folding one free adds one */
    if (v[i] != 0) __atomic_fetch_add(&hmi_global_stats[i], v[i], __ATOMIC_RELAXED);
}

static inline uint32_t class_capacity(unsigned c) {
  return (uint32_t)((HM_SPAN_SIZE - HM_CHUNK_HEADER) / hmi_class_size[c]);
}

static void raise_peak(size_t *peak, size_t v) {
  size_t old = __atomic_load_n(peak, __ATOMIC_RELAXED);
  while (v > old &&
         !__atomic_compare_exchange_n(peak, &old, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

/* Objects per class in thread caches.  Exact when tcache.c provides the sum; otherwise the
 * registry is walked from the calling thread's own cache (a live cache is always on it). */
static bool class_cached(size_t counts[HM_CLASSES]) {
  memset(counts, 0, sizeof(size_t) * HM_CLASSES);
  hmi_tcache_class_counts(counts);
  return true;
}

static size_t arena_peaks[HM_MAX_ARENAS];

void hmi_stats_snapshot(hms_snap_t *s) {
  hmi_ensure_init();
  memset(s, 0, sizeof *s);
  /* thread caches first: objects move from caches to spans, so reading the caches before
   * the spans can only make a moving object look in use for a moment, never free */
  size_t counts[HM_CLASSES];
  hmi_tcache_sum(&s->threads, &s->cached_bytes);
  s->classes_exact = class_cached(counts);
  s->threads.malloc_count += __atomic_load_n(&hmi_global_stats[0], __ATOMIC_RELAXED);
  s->threads.free_count += __atomic_load_n(&hmi_global_stats[1], __ATOMIC_RELAXED);
  s->threads.realloc_count += __atomic_load_n(&hmi_global_stats[2], __ATOMIC_RELAXED);
  s->threads.refills += __atomic_load_n(&hmi_global_stats[3], __ATOMIC_RELAXED);
  s->threads.flushes += __atomic_load_n(&hmi_global_stats[4], __ATOMIC_RELAXED);
  if (s->classes_exact) {
    size_t bytes = 0;
    for (unsigned c = 0; c < HM_CLASSES; c++) bytes += counts[c] * hmi_class_size[c];
    s->cached_bytes = bytes;
  }

  uint64_t mallocs[HM_CLASSES] = {0}, frees[HM_CLASSES] = {0}, misses[HM_CLASSES] = {0},
           flushes[HM_CLASSES] = {0};
  hmi_tcache_class_stats(mallocs, frees, misses, flushes);
  size_t out_bytes = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    hm_central_t *cc = &hmi_central[c];
    s->cls[c].mallocs = mallocs[c];
    s->cls[c].frees = frees[c];
    s->cls[c].misses = misses[c];
    s->cls[c].flushes = flushes[c];
    hms_class_t *k = &s->cls[c];
    hm_lock(&cc->lock);
    k->spans = cc->span_count;
    k->free_slots = cc->free_slots;
    k->made = cc->spans_made;
    k->released = cc->spans_released;
    hm_unlock(&cc->lock);
    size_t slots = k->spans * class_capacity(c);
    size_t out = slots > k->free_slots ? slots - k->free_slots : 0;
    k->cached = s->classes_exact ? counts[c] : 0;
    k->in_use = out > k->cached ? out - k->cached : 0;
    out_bytes += out * hmi_class_size[c];
    s->spans += k->spans;
    s->small_free_objects += k->free_slots + k->cached;
    s->small_free += (k->free_slots + k->cached) * hmi_class_size[c];
  }
  if (s->classes_exact) {
    for (unsigned c = 0; c < HM_CLASSES; c++) s->small_in_use += s->cls[c].in_use * hmi_class_size[c];
  } else {
    s->small_in_use = out_bytes > s->cached_bytes ? out_bytes - s->cached_bytes : 0;
    s->small_free += s->cached_bytes;
  }
  s->span_bytes = s->spans * HM_SPAN_SIZE;

  s->arena_count = hmi_arena_count;
  for (unsigned i = 0; i < s->arena_count; i++) {
    hm_arena_t *a = hmi_arena_if_given(i);
    if (a == NULL) continue; /* all zero */
    hms_arena_t *r = &s->arena[i];
    r->top_free = i == 0 ? hmi_arena_top_free(a) : 0; /* takes the lock itself */
    hm_lock(&a->lock);
    r->mapped = a->mapped;
    r->free_bytes = a->free_bytes;
    r->free_chunks = a->free_chunks;
    r->in_use = a->in_use;
    r->in_use_chunks = a->in_use_chunks;
    r->splits = a->splits;
    r->coalesces = a->coalesces;
    r->searches = a->searches;
    r->brk_grows = a->brk_grows;
    r->brk_trims = a->brk_trims;
    r->seg_maps = a->seg_maps;
    r->seg_unmaps = a->seg_unmaps;
    r->brk_failed = a->brk_failed;
    r->segments = a->segment_count;
    hm_unlock(&a->lock);
    raise_peak(&arena_peaks[i], r->mapped);
    r->peak_mapped = __atomic_load_n(&arena_peaks[i], __ATOMIC_RELAXED);
    s->ar.mapped += r->mapped;
    s->ar.free_bytes += r->free_bytes;
    s->ar.free_chunks += r->free_chunks;
    s->ar.in_use += r->in_use;
    s->ar.in_use_chunks += r->in_use_chunks;
    s->ar.top_free += r->top_free;
    s->ar.splits += r->splits;
    s->ar.coalesces += r->coalesces;
    s->ar.searches += r->searches;
    s->ar.brk_grows += r->brk_grows;
    s->ar.brk_trims += r->brk_trims;
    s->ar.seg_maps += r->seg_maps;
    s->ar.seg_unmaps += r->seg_unmaps;
    s->ar.peak_mapped += r->peak_mapped;
  }
  size_t span_chunks = s->spans * HM_SPAN_SIZE;
  span_chunks = __atomic_load_n(&hmi_span_chunk_bytes, __ATOMIC_RELAXED);
  size_t overhead = s->ar.in_use_chunks * HM_CHUNK_HEADER + span_chunks - s->spans * HM_CHUNK_HEADER;
  size_t mcached = hmi_tcache_medium_cached(); /* kept whole by thread caches */
  overhead += mcached;
  s->medium_in_use = s->ar.in_use > overhead ? s->ar.in_use - overhead : 0;
  s->medium_cached = mcached;

  hm_lock(&hmi_large_lock);
  s->large_count = hmi_large_count;
  s->large_bytes = hmi_large_bytes;
  s->large_max_count = hmi_large_max_count;
  s->large_max_bytes = hmi_large_max_bytes;
  s->large_usable = hmi_large_usable_bytes;
  s->large_cached = hmi_large_cached_bytes;
  s->large_maps = __atomic_load_n(&hmi_large_maps, __ATOMIC_RELAXED);
  s->large_unmaps = __atomic_load_n(&hmi_large_unmaps, __ATOMIC_RELAXED);
  hm_unlock(&hmi_large_lock);

  s->mmap_calls = __atomic_load_n(&hmi_os_mmap_calls, __ATOMIC_RELAXED);
  s->munmap_calls = __atomic_load_n(&hmi_os_munmap_calls, __ATOMIC_RELAXED);
  s->mremap_calls = __atomic_load_n(&hmi_os_mremap_calls, __ATOMIC_RELAXED);

  hm_stats_t *o = &s->core;
  o->allocated = s->small_in_use + s->medium_in_use + s->large_usable;
  o->mapped = s->ar.mapped + s->large_bytes + s->large_cached;
  o->large_cached = s->large_cached;
  o->heap_free = s->ar.free_bytes;
  o->cached = s->small_free + s->medium_cached;
  o->large_count = s->large_count;
  o->large_bytes = s->large_bytes;
  o->malloc_count = s->threads.malloc_count;
  o->free_count = s->threads.free_count;
  o->realloc_count = s->threads.realloc_count;
  o->mmap_count = s->mmap_calls;
  o->munmap_count = s->munmap_calls;
  o->brk_grow_count = s->ar.brk_grows;
  o->brk_trim_count = s->ar.brk_trims;
  o->splits = s->ar.splits;
  o->coalesces = s->ar.coalesces;
  __atomic_store_n(&last_cached_bytes, s->cached_bytes, __ATOMIC_RELAXED);
  raise_peak(&peak_allocated, o->allocated);
  raise_peak(&peak_mapped, o->mapped);
  o->peak_allocated = __atomic_load_n(&peak_allocated, __ATOMIC_RELAXED);
  o->peak_mapped = __atomic_load_n(&peak_mapped, __ATOMIC_RELAXED);
}

HM_API void hm_stats_get(hm_stats_t *out) {
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  *out = s.core;
}

/* The peaks start again from the current readings (and so do glibc's "max mmap" figures). */
HM_API void hm_stats_reset_peaks(void) {
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  __atomic_store_n(&peak_allocated, s.core.allocated, __ATOMIC_RELAXED);
  __atomic_store_n(&peak_mapped, s.core.mapped, __ATOMIC_RELAXED);
  for (unsigned i = 0; i < s.arena_count; i++)
    __atomic_store_n(&arena_peaks[i], s.arena[i].mapped, __ATOMIC_RELAXED);
  hm_lock(&hmi_large_lock);
  hmi_large_max_count = hmi_large_count;
  hmi_large_max_bytes = hmi_large_bytes;
  hm_unlock(&hmi_large_lock);
}

/* `allocated` from racy reads, without any lock: for hmi_stats_note_mapped, whose caller
 * holds an arena lock (and maybe a central lock).  Each term is clamped so that a counter
 * caught in the middle of an update cannot make the sum wrap. */
static size_t allocated_racy(void) {
  size_t cached = __atomic_load_n(&last_cached_bytes, __ATOMIC_RELAXED);
  /* The registry lock comes first in the lock order: only try it, and walk the registry
   * from this thread's own cache (a live cache is always on it). */
  if (hmi_tcache.state == HM_TC_LIVE && hm_trylock(&hmi_registry_lock)) {
    hm_tcache_t *tc = &hmi_tcache;
    while (tc->prev != NULL) tc = tc->prev;
    cached = 0;
    for (; tc != NULL; tc = tc->next)
      for (unsigned c = 0; c < HM_CLASSES; c++)
        cached += (size_t)HM_BIN_COUNT_RACY(tc, c) * hmi_class_size[c];
    hm_unlock(&hmi_registry_lock);
    for (unsigned c = 0; c < HM_CLASSES; c++) /* transfer caches hold cached objects too */
      cached += __atomic_load_n(&hmi_central[c].xfer_objects, __ATOMIC_RELAXED) * hmi_class_size[c];
    __atomic_store_n(&last_cached_bytes, cached, __ATOMIC_RELAXED);
  }
  size_t small = 0, spans = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    size_t n = __atomic_load_n(&hmi_central[c].span_count, __ATOMIC_RELAXED);
    size_t f = __atomic_load_n(&hmi_central[c].free_slots, __ATOMIC_RELAXED);
    size_t slots = n * class_capacity(c);
    if (slots > f) small += (slots - f) * hmi_class_size[c];
    spans += n;
  }
  small = small > cached ? small - cached : 0;
  size_t in_use = 0, chunks = 0;
  for (unsigned i = 0; i < hmi_arena_count; i++) {
    const hm_arena_t *a = hmi_arena_if_given(i);
    if (a == NULL) continue;
    in_use += __atomic_load_n(&a->in_use, __ATOMIC_RELAXED);
    chunks += __atomic_load_n(&a->in_use_chunks, __ATOMIC_RELAXED);
  }
  size_t span_chunks = spans * HM_SPAN_SIZE;
  span_chunks = __atomic_load_n(&hmi_span_chunk_bytes, __ATOMIC_RELAXED);
  size_t overhead = chunks * HM_CHUNK_HEADER + span_chunks - spans * HM_CHUNK_HEADER;
  size_t medium = in_use > overhead ? in_use - overhead : 0;
  size_t large = __atomic_load_n(&hmi_large_usable_bytes, __ATOMIC_RELAXED);
  return small + medium + large;
}

/* Called by the tiers when memory is taken from the OS (possibly under an arena or central
 * lock): raise both peaks. */
void hmi_stats_note_mapped(void) {
  size_t mapped = 0;
  for (unsigned i = 0; i < hmi_arena_count; i++) {
    const hm_arena_t *a = hmi_arena_if_given(i);
    if (a == NULL) continue;
    size_t m = __atomic_load_n(&a->mapped, __ATOMIC_RELAXED);
    raise_peak(&arena_peaks[i], m);
    mapped += m;
  }
  mapped += __atomic_load_n(&hmi_large_bytes, __ATOMIC_RELAXED);
  mapped += __atomic_load_n(&hmi_large_cached_bytes, __ATOMIC_RELAXED);
  raise_peak(&peak_mapped, mapped);
  raise_peak(&peak_allocated, allocated_racy());
}

/* ---- small helpers shared by the reports ---- */
bool hmi_stats_write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    buf += w;
    n -= (size_t)w;
  }
  return true;
}

size_t hmi_stats_rss(void) {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char *p = buf;
  while (*p >= '0' && *p <= '9') p++; /* total program size */
  while (*p == ' ') p++;
  size_t pages = 0;
  for (; *p >= '0' && *p <= '9'; p++) pages = pages * 10 + (size_t)(*p - '0');
  long page = sysconf(_SC_PAGESIZE);
  return pages * (size_t)(page > 0 ? page : 4096);
}

bool hmi_stats_path(const char *in, char *out, size_t len) {
  hms_out_t o = {out, len, 0};
  for (const char *p = in; *p; p++) {
    if (p[0] == '%' && p[1] == 'p') {
      HMS_PUT(&o, "%d", (int)getpid());
      p++;
    } else {
      HMS_PUT(&o, "%c", *p);
    }
  }
  return o.pos < len;
}

/* ---- the readable report: hm_stats_print ----
 * hmi_fmt has no field widths: columns are padded here. */
typedef struct line_s {
  int fd;
  char buf[2048];
  hms_out_t o;
} line_t;

static void line_flush(line_t *l) {
  size_t n = l->o.pos < l->o.len ? l->o.pos : l->o.len - 1;
  hmi_stats_write_all(l->fd, l->buf, n);
  l->o.pos = 0;
}
static void line_maybe_flush(line_t *l) {
  if (l->o.pos + 256 > l->o.len) line_flush(l);
}
/* right-aligned number in `width` columns, preceded by one space */
static void col_u(line_t *l, unsigned long long v, int width) {
  char tmp[32];
  int n = (int)hmi_fmt(tmp, sizeof tmp, "%llu", v);
  HMS_PUT(&l->o, " ");
  for (int i = n; i < width; i++) HMS_PUT(&l->o, " ");
  HMS_PUT(&l->o, "%s", tmp);
}
/* left-aligned text in `width` columns */
static void col_s(line_t *l, const char *s, int width) {
  int n = (int)strlen(s);
  HMS_PUT(&l->o, "%s", s);
  for (int i = n; i < width; i++) HMS_PUT(&l->o, " ");
}
static void col_r(line_t *l, const char *s, int width) {
  int n = (int)strlen(s);
  HMS_PUT(&l->o, " ");
  for (int i = n; i < width; i++) HMS_PUT(&l->o, " ");
  HMS_PUT(&l->o, "%s", s);
}
static void kv(line_t *l, const char *name, unsigned long long v) {
  HMS_PUT(&l->o, "  ");
  col_s(l, name, 16);
  col_u(l, v, 14);
}

static void print_snapshot(int fd, const hms_snap_t *s, size_t rss) {
  line_t l;
  l.fd = fd;
  l.o.buf = l.buf;
  l.o.len = sizeof l.buf;
  l.o.pos = 0;
  const hm_stats_t *c = &s->core;
  HMS_PUT(&l.o, "hmalloc stats (pid %d, %s)\n", (int)getpid(), program_invocation_short_name);
  kv(&l, "allocated", c->allocated);
  HMS_PUT(&l.o, " bytes   peak");
  col_u(&l, c->peak_allocated, 14);
  HMS_PUT(&l.o, "\n");
  kv(&l, "mapped", c->mapped);
  HMS_PUT(&l.o, " bytes   peak");
  col_u(&l, c->peak_mapped, 14);
  HMS_PUT(&l.o, "\n");
  kv(&l, "heap free", c->heap_free);
  HMS_PUT(&l.o, " bytes\n");
  kv(&l, "cached", c->cached);
  HMS_PUT(&l.o, " bytes\n");
  kv(&l, "large blocks", c->large_count);
  HMS_PUT(&l.o, "         (%zu bytes mapped)\n", c->large_bytes);
  if (rss != 0) {
    kv(&l, "rss", rss);
    HMS_PUT(&l.o, " bytes\n");
  }
  HMS_PUT(&l.o, "  calls            malloc %llu, free %llu, realloc %llu\n",
          (unsigned long long)c->malloc_count, (unsigned long long)c->free_count,
          (unsigned long long)c->realloc_count);
  HMS_PUT(&l.o, "  os               mmap %llu, munmap %llu, mremap %llu, brk grow %llu, brk trim %llu\n",
          (unsigned long long)s->mmap_calls, (unsigned long long)s->munmap_calls,
          (unsigned long long)s->mremap_calls, (unsigned long long)c->brk_grow_count,
          (unsigned long long)c->brk_trim_count);
  HMS_PUT(&l.o, "  thread caches    refills %llu, flushes %llu\n",
          (unsigned long long)s->threads.refills, (unsigned long long)s->threads.flushes);
  line_flush(&l);

  /* per tier */
  HMS_PUT(&l.o, "\n");
  col_s(&l, "tier", 8);
  static const char *const th[] = {"in use", "free", "mapped", "mmap", "munmap",
                                   "brk grow", "brk trim", "splits", "coalesces", "searches"};
  static const int tw[] = {14, 14, 14, 8, 8, 8, 8, 10, 10, 10};
  for (unsigned i = 0; i < 10; i++) col_r(&l, th[i], tw[i]);
  HMS_PUT(&l.o, "\n");
  unsigned long long rows[3][10] = {
      {s->small_in_use, s->small_free, s->span_bytes, 0, 0, 0, 0, 0, 0, 0},
      {s->medium_in_use, s->ar.free_bytes, s->ar.mapped, s->ar.seg_maps, s->ar.seg_unmaps,
       s->ar.brk_grows, s->ar.brk_trims, s->ar.splits, s->ar.coalesces, s->ar.searches},
      {s->large_usable, s->large_bytes - s->large_usable + s->large_cached,
       s->large_bytes + s->large_cached, s->large_maps, s->large_unmaps, 0, 0, 0, 0, 0},
  };
  static const char *const names[] = {"small", "medium", "large"};
  for (unsigned t = 0; t < 3; t++) {
    col_s(&l, names[t], 8);
    for (unsigned i = 0; i < 10; i++) {
      if (i >= 3 && (t != 1)) col_r(&l, "-", tw[i]);
      else col_u(&l, rows[t][i], tw[i]);
    }
    HMS_PUT(&l.o, "\n");
  }
  HMS_PUT(&l.o, "  (small spans are carved from the medium heap: their bytes are part of medium's mapped)\n");
  line_flush(&l);

  /* per arena, when there is more than one */
  if (s->arena_count > 1) {
    HMS_PUT(&l.o, "\n");
    col_s(&l, "arena", 8);
    static const char *const ah[] = {"in use", "free", "mapped", "peak mapped", "segments"};
    static const int aw[] = {14, 14, 14, 14, 10};
    for (unsigned i = 0; i < 5; i++) col_r(&l, ah[i], aw[i]);
    HMS_PUT(&l.o, "\n");
    for (unsigned i = 0; i < s->arena_count; i++) {
      const hms_arena_t *a = &s->arena[i];
      char name[16];
      hmi_fmt(name, sizeof name, "%u", i);
      col_s(&l, name, 8);
      col_u(&l, a->in_use, aw[0]);
      col_u(&l, a->free_bytes, aw[1]);
      col_u(&l, a->mapped, aw[2]);
      col_u(&l, a->peak_mapped, aw[3]);
      col_u(&l, a->segments, aw[4]);
      HMS_PUT(&l.o, "\n");
      line_maybe_flush(&l);
    }
    line_flush(&l);
  }

  /* per size class, those that ever had a span */
  HMS_PUT(&l.o, "\n");
  col_s(&l, "class", 6);
  static const char *const ch[] = {"size", "in use", "bytes", "cached", "free slots",
                                   "spans", "made", "released", "mallocs", "hits", "misses",
                                   "flushes"};
  static const int cw[] = {6, 10, 12, 8, 10, 7, 8, 8, 12, 12, 9, 9};
  for (unsigned i = 0; i < 12; i++) col_r(&l, ch[i], cw[i]);
  HMS_PUT(&l.o, "\n");
  unsigned shown = 0;
  for (unsigned k = 0; k < HM_CLASSES; k++) {
    const hms_class_t *x = &s->cls[k];
    if (x->made == 0 && x->spans == 0) continue;
    char name[16];
    hmi_fmt(name, sizeof name, "%u", k);
    col_s(&l, name, 6);
    col_u(&l, hmi_class_size[k], cw[0]);
    col_u(&l, x->in_use, cw[1]);
    col_u(&l, (unsigned long long)x->in_use * hmi_class_size[k], cw[2]);
    col_u(&l, x->cached, cw[3]);
    col_u(&l, x->free_slots, cw[4]);
    col_u(&l, x->spans, cw[5]);
    col_u(&l, x->made, cw[6]);
    col_u(&l, x->released, cw[7]);
    col_u(&l, x->mallocs, cw[8]);
    col_u(&l, x->mallocs > x->misses ? x->mallocs - x->misses : 0, cw[9]);
    col_u(&l, x->misses, cw[10]);
    col_u(&l, x->flushes, cw[11]);
    HMS_PUT(&l.o, "\n");
    line_maybe_flush(&l);
    shown++;
  }
  if (shown == 0) HMS_PUT(&l.o, "  (no small objects yet)\n");
  if (!s->classes_exact)
    HMS_PUT(&l.o, "  (in use per class includes objects held in thread caches: %zu bytes in all)\n",
            s->cached_bytes);
  line_flush(&l);
}

HM_API void hm_stats_print(int fd) {
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  print_snapshot(fd, &s, hmi_stats_rss());
}

/* ---- glibc's reports ---- */
HM_API struct mallinfo2 hm_mallinfo2(void) {
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  struct mallinfo2 mi;
  memset(&mi, 0, sizeof mi);
  mi.arena = s.ar.mapped;              /* bytes of the heap: brk and mmap'ed segments */
  mi.ordblks = s.ar.free_chunks;       /* free medium chunks */
  mi.smblks = s.small_free_objects;    /* free small objects (thread caches, span slots) */
  mi.hblks = s.large_count;            /* mmap'ed blocks */
  mi.hblkhd = s.large_bytes;           /* bytes in mmap'ed blocks */
  mi.usmblks = 0;                      /* always 0, as in glibc */
  mi.fsmblks = s.small_free;           /* bytes in free small objects */
  mi.fordblks = s.ar.free_bytes + s.small_free + s.medium_cached; /* free inside the heap */
  /* everything else in the heap is in use (headers and span tails included), so that
   * arena == uordblks + fordblks as in glibc */
  mi.uordblks = mi.arena > mi.fordblks ? mi.arena - mi.fordblks : 0;
  mi.keepcost = s.arena[0].top_free;   /* releasable top of the brk heap */
  return mi;
}

static int sat(size_t v) { return v > INT_MAX ? INT_MAX : (int)v; }

HM_API struct mallinfo hm_mallinfo(void) {
  struct mallinfo2 m = hm_mallinfo2();
  struct mallinfo r;
  r.arena = sat(m.arena);
  r.ordblks = sat(m.ordblks);
  r.smblks = sat(m.smblks);
  r.hblks = sat(m.hblks);
  r.hblkhd = sat(m.hblkhd);
  r.usmblks = sat(m.usmblks);
  r.fsmblks = sat(m.fsmblks);
  r.uordblks = sat(m.uordblks);
  r.fordblks = sat(m.fordblks);
  r.keepcost = sat(m.keepcost);
  return r;
}

/* "%10zu" by hand: hmi_fmt has no widths. */
static void put10(hms_out_t *o, const char *label, size_t v) {
  char tmp[32];
  size_t n = hmi_fmt(tmp, sizeof tmp, "%zu", v);
  HMS_PUT(o, "%s = ", label);
  for (size_t i = n; i < 10; i++) HMS_PUT(o, " ");
  HMS_PUT(o, "%s\n", tmp);
}

/* glibc's malloc_stats layout: one block per arena, then the totals, on stderr. */
HM_API void hm_malloc_stats(void) {
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  char buf[512];
  size_t system = 0, in_use = 0;
  for (unsigned i = 0; i < s.arena_count; i++) {
    hms_out_t o = {buf, sizeof buf, 0};
    /* in use: the arena's bytes not in free chunks; arena 0 also owns the small tier's
     * free slots and caches, which glibc would count as free (fastbins, tcache) */
    size_t used = s.arena[i].mapped - s.arena[i].free_bytes;
    if (i == 0) used = used > s.small_free ? used - s.small_free : 0;
    HMS_PUT(&o, "Arena %u:\n", i);
    put10(&o, "system bytes    ", s.arena[i].mapped);
    put10(&o, "in use bytes    ", used);
    hmi_write(2, buf);
    system += s.arena[i].mapped;
    in_use += used;
  }
  hms_out_t o = {buf, sizeof buf, 0};
  HMS_PUT(&o, "Total (incl. mmap):\n");
  put10(&o, "system bytes    ", system + s.large_bytes);
  put10(&o, "in use bytes    ", in_use + s.large_bytes);
  put10(&o, "max mmap regions", s.large_max_count);
  put10(&o, "max mmap bytes  ", s.large_max_bytes);
  hmi_write(2, buf);
}

/* ---- HMALLOC_STATS, HMALLOC_STATS_INTERVAL, HMALLOC_STATS_FILE ----
 * HMALLOC_STATS: a comma-separated list of
 *   1 or text       the readable report on stderr at exit
 *   text:PATH       the readable report written to PATH at exit
 *   json:PATH       the JSON report written to PATH at exit
 * ("0" or empty: nothing).  In PATH, %p is replaced by the process id.  The report to stderr
 * goes to a duplicate of fd 2 taken at start-up, because some programs close fd 2 in their
 * own exit handlers (coreutils do) before library destructors run.  Relative paths are made
 * absolute at start-up, against the directory the program started in.
 * HMALLOC_STATS_INTERVAL=MS with HMALLOC_STATS_FILE=PATH: every MS milliseconds a background
 * thread appends one line of counters to PATH (stats_sampler.c); without a file, the lines
 * go to stderr. */
#define STATS_PATH_MAX 1024
static int report_fd = -1;
static char text_path[STATS_PATH_MAX], json_path[STATS_PATH_MAX], sample_path[STATS_PATH_MAX];
static int sample_ms;

static void warn_bad(const char *name, const char *value, const char *expect, const char *dflt) {
  hmi_warn("hmalloc: warning: %s=%s is not valid (%s); using the default %s\n", name, value,
           expect, dflt);
}

/* An absolute version of path (relative to the current directory) in out. */
static bool absolute(const char *path, size_t n, char *out) {
  size_t at = 0;
  if (path[0] != '/') {
    if (getcwd(out, STATS_PATH_MAX) == NULL) return false;
    at = strlen(out);
    if (at + 1 >= STATS_PATH_MAX) return false;
    if (at == 0 || out[at - 1] != '/') out[at++] = '/';
  }
  if (n == 0 || at + n >= STATS_PATH_MAX) return false;
  memcpy(out + at, path, n);
  out[at + n] = '\0';
  return true;
}

static bool parse_stats(const char *v, bool *text, char *tpath, char *jpath) {
  *text = false;
  tpath[0] = jpath[0] = '\0';
  if (strcmp(v, "0") == 0 || v[0] == '\0') return true;
  const char *p = v;
  for (;;) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if ((n == 1 && p[0] == '1') || (n == 4 && memcmp(p, "text", 4) == 0)) {
      *text = true;
    } else if (n > 5 && memcmp(p, "text:", 5) == 0) {
      if (!absolute(p + 5, n - 5, tpath)) return false;
    } else if (n > 5 && memcmp(p, "json:", 5) == 0) {
      if (!absolute(p + 5, n - 5, jpath)) return false;
    } else {
      return false;
    }
    if (end == NULL) return true;
    p = end + 1;
  }
}

static bool parse_ms(const char *v, int *out) {
  if (v[0] < '0' || v[0] > '9') return false;
  long n = 0;
  for (; *v >= '0' && *v <= '9'; v++) {
    n = n * 10 + (*v - '0');
    if (n > 3600000) return false;
  }
  if (*v != '\0' || n < 1) return false;
  *out = (int)n;
  return true;
}

/* Called by hmi_init (under the init lock: nothing here allocates). */
void hmi_stats_init(void) {
  const char *v = hmi_getenv("HMALLOC_STATS");
  if (v != NULL) {
    bool text;
    if (!parse_stats(v, &text, text_path, json_path)) {
      text_path[0] = json_path[0] = '\0';
      warn_bad("HMALLOC_STATS", v, "0, 1, text, text:PATH, json:PATH, or a comma-separated list",
               "0");
    } else if (text) {
      report_fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
    }
  }
  const char *iv = hmi_getenv("HMALLOC_STATS_INTERVAL");
  if (iv != NULL && iv[0] != '\0' && strcmp(iv, "0") != 0) {
    if (!parse_ms(iv, &sample_ms)) {
      sample_ms = 0;
      warn_bad("HMALLOC_STATS_INTERVAL", iv, "milliseconds from 1 to 3600000", "0 (no sampling)");
    }
  }
  const char *fv = hmi_getenv("HMALLOC_STATS_FILE");
  if (fv != NULL) {
    if (fv[0] == '\0' || !absolute(fv, strlen(fv), sample_path)) {
      sample_path[0] = '\0';
      warn_bad("HMALLOC_STATS_FILE", fv, "a file path", "stderr");
    } else if (sample_ms == 0 && iv == NULL) {
      hmi_warn("hmalloc: warning: HMALLOC_STATS_FILE is set without HMALLOC_STATS_INTERVAL; "
               "using the default 0 (no sampling)\n");
    }
  }
}

/* The sampler thread is started once init is complete, outside every allocator lock. */
__attribute__((constructor)) static void stats_start(void) {
  hmi_ensure_init();
  if (sample_ms > 0) hmi_stats_sampler_start(sample_ms, sample_path[0] ? sample_path : NULL);
}

/* The JSON report into a private mapping (not the heap being measured), then to fd. */
static void write_json(int fd, const hms_snap_t *s) {
  size_t need = hmi_stats_json_snap(s, NULL, 0) + 1;
  size_t size = hm_align_up(need, HM_PAGE);
  char *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) return;
  size_t n = hmi_stats_json_snap(s, buf, size);
  if (n < size) {
    buf[n] = '\n';
    hmi_stats_write_all(fd, buf, n + 1);
  }
  munmap(buf, size);
}

static int open_out(const char *pattern) {
  char path[STATS_PATH_MAX];
  if (!hmi_stats_path(pattern, path, sizeof path)) return -1;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) hmi_warn("hmalloc: warning: cannot write the statistics to %s\n", path);
  return fd;
}

__attribute__((destructor)) static void stats_at_exit(void) {
  if (report_fd < 0 && text_path[0] == '\0' && json_path[0] == '\0' && sample_ms == 0) return;
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  size_t rss = hmi_stats_rss();
  if (sample_ms > 0) hmi_stats_sampler_final();
  if (report_fd >= 0) print_snapshot(report_fd, &s, rss);
  if (text_path[0] != '\0') {
    int fd = open_out(text_path);
    if (fd >= 0) {
      print_snapshot(fd, &s, rss);
      close(fd);
    }
  }
  if (json_path[0] != '\0') {
    int fd = open_out(json_path);
    if (fd >= 0) {
      write_json(fd, &s);
      close(fd);
    }
  }
}
