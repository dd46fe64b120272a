/* stats.c - counters and reports: hm_stats_get, hm_stats_print, mallinfo2, mallinfo,
 * malloc_stats.
 *
 * Fast-path counters are per thread (hm_tcache_t.stats) and summed on read; a thread that
 * exits adds its counters to hmi_global_stats.  Tier counters live with the tier, under its
 * lock.  `allocated` is computed, not counted: small = objects out of spans minus objects in
 * thread caches, times their class size; medium = in-use chunk bytes minus headers and spans;
 * large = usable bytes of live mappings.  Reading takes each lock briefly, one at a time. */
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "hmalloc.h"
#include "internal.h"

uint64_t hmi_global_stats[5]; /* malloc, free, realloc, refills, flushes of dead threads */
static size_t peak_mapped, peak_allocated;

void hmi_stats_fold(const hm_tstats_t *t) {
  __atomic_fetch_add(&hmi_global_stats[0], t->malloc_count, __ATOMIC_RELAXED);
  __atomic_fetch_add(&hmi_global_stats[1], t->free_count, __ATOMIC_RELAXED);
  __atomic_fetch_add(&hmi_global_stats[2], t->realloc_count, __ATOMIC_RELAXED);
  __atomic_fetch_add(&hmi_global_stats[3], t->refills, __ATOMIC_RELAXED);
  __atomic_fetch_add(&hmi_global_stats[4], t->flushes, __ATOMIC_RELAXED);
}

typedef struct tiers_s {
  size_t arena_mapped, arena_free, arena_free_chunks, arena_in_use, arena_chunks;
  uint64_t splits, coalesces, brk_grows, brk_trims, searches;
  size_t span_bytes, span_free_bytes, small_out_bytes;
  size_t large_count, large_bytes, large_usable;
  size_t cached;
  hm_tstats_t threads;
} tiers_t;

static void collect(tiers_t *t) {
  memset(t, 0, sizeof *t);
  for (unsigned i = 0; i < hmi_arena_count; i++) {
    hm_arena_t *a = hmi_arenas[i];
    hm_lock(&a->lock);
    t->arena_mapped += a->mapped;
    t->arena_free += a->free_bytes;
    t->arena_free_chunks += a->free_chunks;
    t->arena_in_use += a->in_use;
    t->arena_chunks += a->in_use_chunks;
    t->splits += a->splits;
    t->coalesces += a->coalesces;
    t->brk_grows += a->brk_grows;
    t->brk_trims += a->brk_trims;
    t->searches += a->searches;
    hm_unlock(&a->lock);
  }
  t->span_free_bytes = hmi_span_free_bytes(&t->span_bytes);
  hm_lock(&hmi_large_lock);
  t->large_count = hmi_large_count;
  t->large_bytes = hmi_large_bytes;
  hm_unlock(&hmi_large_lock);
  t->large_usable = t->large_bytes - t->large_count * HM_LARGE_HEADER;
  hmi_tcache_sum(&t->threads, &t->cached);
  size_t spans = t->span_bytes / HM_SPAN_SIZE;
  size_t span_usable = spans * (HM_SPAN_SIZE - HM_CHUNK_HEADER);
  t->small_out_bytes = span_usable - t->span_free_bytes;
}

/* Objects of a span never handed out because they do not fit: counted per class. */
static size_t span_tail_slack(void) {
  size_t slack = 0;
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    size_t cap = (HM_SPAN_SIZE - HM_CHUNK_HEADER) / hmi_class_size[c];
    size_t tail = HM_SPAN_SIZE - HM_CHUNK_HEADER - cap * hmi_class_size[c];
    slack += tail * __atomic_load_n(&hmi_central[c].span_count, __ATOMIC_RELAXED);
  }
  return slack;
}

HM_API void hm_stats_get(hm_stats_t *out) {
  hmi_ensure_init();
  tiers_t t;
  collect(&t);
  memset(out, 0, sizeof *out);
  size_t small = t.small_out_bytes - span_tail_slack() - t.cached;
  size_t spans_chunk_usable = (t.span_bytes / HM_SPAN_SIZE) * (HM_SPAN_SIZE - HM_CHUNK_HEADER);
  size_t medium = t.arena_in_use - t.arena_chunks * HM_CHUNK_HEADER - spans_chunk_usable;
  out->allocated = small + medium + t.large_usable;
  out->mapped = t.arena_mapped + t.large_bytes;
  out->heap_free = t.arena_free;
  out->cached = t.cached + t.span_free_bytes;
  out->large_count = t.large_count;
  out->large_bytes = t.large_bytes;
  out->malloc_count = t.threads.malloc_count + hmi_global_stats[0];
  out->free_count = t.threads.free_count + hmi_global_stats[1];
  out->realloc_count = t.threads.realloc_count + hmi_global_stats[2];
  out->mmap_count = __atomic_load_n(&hmi_os_mmap_calls, __ATOMIC_RELAXED);
  out->munmap_count = __atomic_load_n(&hmi_os_munmap_calls, __ATOMIC_RELAXED);
  out->brk_grow_count = t.brk_grows;
  out->brk_trim_count = t.brk_trims;
  out->splits = t.splits;
  out->coalesces = t.coalesces;
  if (out->allocated > peak_allocated) peak_allocated = out->allocated;
  if (out->mapped > peak_mapped) peak_mapped = out->mapped;
  out->peak_allocated = peak_allocated;
  out->peak_mapped = peak_mapped;
}

/* Called when memory is taken from the OS: the peaks only move then (mapped), and sampling
 * allocated there keeps its peak close without a counter on the fast path. */
void hmi_stats_note_mapped(void) {
  size_t mapped = 0;
  for (unsigned i = 0; i < hmi_arena_count; i++)
    mapped += __atomic_load_n(&hmi_arenas[i]->mapped, __ATOMIC_RELAXED);
  mapped += __atomic_load_n(&hmi_large_bytes, __ATOMIC_RELAXED);
  size_t old = __atomic_load_n(&peak_mapped, __ATOMIC_RELAXED);
  while (mapped > old &&
         !__atomic_compare_exchange_n(&peak_mapped, &old, mapped, 1, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
}

HM_API void hm_stats_print(int fd) {
  hm_stats_t s;
  hm_stats_get(&s);
  hmi_dprintf(fd,
              "hmalloc stats\n"
              "  allocated       %zu bytes (peak %zu)\n"
              "  mapped          %zu bytes (peak %zu)\n"
              "  heap free       %zu bytes\n"
              "  cached          %zu bytes\n"
              "  large blocks    %zu (%zu bytes mapped)\n",
              s.allocated, s.peak_allocated, s.mapped, s.peak_mapped, s.heap_free, s.cached,
              s.large_count, s.large_bytes);
  hmi_dprintf(fd,
              "  calls           malloc %llu, free %llu, realloc %llu\n"
              "  os              mmap %llu, munmap %llu, brk grow %llu, brk trim %llu\n"
              "  medium tier     splits %llu, coalesces %llu\n",
              (unsigned long long)s.malloc_count, (unsigned long long)s.free_count,
              (unsigned long long)s.realloc_count, (unsigned long long)s.mmap_count,
              (unsigned long long)s.munmap_count, (unsigned long long)s.brk_grow_count,
              (unsigned long long)s.brk_trim_count, (unsigned long long)s.splits,
              (unsigned long long)s.coalesces);
}

HM_API struct mallinfo2 hm_mallinfo2(void) {
  hmi_ensure_init();
  tiers_t t;
  collect(&t);
  hm_stats_t s;
  hm_stats_get(&s);
  struct mallinfo2 mi;
  memset(&mi, 0, sizeof mi);
  mi.arena = t.arena_mapped;               /* bytes of the heap (brk and segments) */
  mi.ordblks = t.arena_free_chunks;        /* free chunks */
  mi.smblks = 0;
  mi.hblks = t.large_count;                /* mmap'ed blocks */
  mi.hblkhd = t.large_bytes;
  mi.usmblks = 0;
  mi.fsmblks = t.cached + t.span_free_bytes; /* free small objects */
  mi.uordblks = s.allocated - t.large_usable; /* in use in the heap */
  mi.fordblks = t.arena_free + mi.fsmblks;   /* free in the heap */
  mi.keepcost = hmi_arena_top_free(&hmi_main_arena); /* releasable top of the brk heap */
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

/* glibc's malloc_stats layout, one block per arena, then totals. */
HM_API void hm_malloc_stats(void) {
  hmi_ensure_init();
  hm_stats_t s;
  hm_stats_get(&s);
  size_t system = 0, in_use = 0;
  for (unsigned i = 0; i < hmi_arena_count; i++) {
    hm_arena_t *a = hmi_arenas[i];
    hm_lock(&a->lock);
    size_t mapped = a->mapped, used = a->in_use;
    hm_unlock(&a->lock);
    hmi_dprintf(2, "Arena %u:\nsystem bytes     = %10zu\nin use bytes     = %10zu\n", i, mapped,
                used);
    system += mapped;
    in_use += used;
  }
  hmi_dprintf(2,
              "Total (incl. mmap):\nsystem bytes     = %10zu\nin use bytes     = %10zu\n"
              "max mmap regions = %10zu\nmax mmap bytes   = %10zu\n",
              system + s.large_bytes, in_use + s.large_bytes, hmi_large_max_count,
              hmi_large_max_bytes);
}

/* ---- report at exit: HMALLOC_STATS=1 ----
 * The report goes to a duplicate of stderr taken at start-up, because some programs close
 * fd 2 in their own exit handlers (coreutils do) before library destructors run. */
static int report_fd = -1;

void hmi_stats_init(void) {
  const char *v = getenv("HMALLOC_STATS");
  if (v == NULL || v[0] == '\0' || (v[0] == '0' && v[1] == '\0')) return;
  if (v[0] == '1' && v[1] == '\0') {
    report_fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
    return;
  }
  hmi_warn("hmalloc: warning: HMALLOC_STATS=%s is not valid (0 or 1); using the default 0\n", v);
}

__attribute__((destructor)) static void stats_at_exit(void) {
  if (report_fd >= 0) hm_stats_print(report_fd);
}
