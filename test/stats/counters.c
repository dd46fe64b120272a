/* counters.c - consistency of hmalloc's statistics: hm_stats_get against
 * malloc_usable_size in every tier, single- and multi-threaded; peaks; per-class and per-tier
 * figures; hm_stats_json (length query, truncation, parsed back by python3); mallinfo2,
 * mallinfo; malloc_stats; malloc_info's XML (parsed by python3); hm_stats_print's table.
 * Linked with the whole of libhmalloc.a: malloc here is hmalloc. */
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>

#include "hmalloc.h"
#include "stats_test.h"

TestSuite(stats, .timeout = 120);

static hm_stats_t now(void) {
  hm_stats_t s;
  hm_stats_get(&s);
  return s;
}

static size_t opaque(size_t n) {
  volatile size_t v = n;
  return v;
}

static const size_t sizes[] = {1, 16, 17, 100, 1000, 4096,           /* small */
                               4097, 5000, 50000, 100000, 131071,     /* medium */
                               131072, 200000, 3 << 20, (8 << 20) + 5}; /* large */
#define N_SIZES (sizeof sizes / sizeof sizes[0])

Test(stats, allocated_moves_by_usable_size_in_every_tier) {
  for (size_t i = 0; i < N_SIZES; i++) {
    for (int round = 0; round < 3; round++) {
      hm_stats_t a = now();
      void *p = malloc(opaque(sizes[i]));
      hm_stats_t b = now();
      cr_assert_not_null(p);
      size_t usable = malloc_usable_size(p);
      cr_assert_eq(b.allocated - a.allocated, usable,
                   "malloc(%zu): allocated %zu -> %zu (+%zu), usable size %zu", sizes[i],
                   a.allocated, b.allocated, b.allocated - a.allocated, usable);
      cr_assert_eq(b.malloc_count, a.malloc_count + 1);
      cr_assert_geq(b.peak_allocated, b.allocated);
      free(p);
      hm_stats_t c = now();
      cr_assert_eq(c.allocated, a.allocated, "free(malloc(%zu)): allocated %zu -> %zu", sizes[i],
                   a.allocated, c.allocated);
      cr_assert_eq(c.free_count, b.free_count + 1);
    }
  }
}

Test(stats, calloc_realloc_aligned_keep_allocated_exact) {
  hm_stats_t a = now();
  void *p = calloc(opaque(10), opaque(1000));
  void *q = realloc(NULL, opaque(50000));
  q = realloc(q, opaque(70000));
  void *r = memalign(64, opaque(3000));
  void *s = aligned_alloc(4096, opaque(20000));
  hm_stats_t b = now();
  size_t sum = malloc_usable_size(p) + malloc_usable_size(q) + malloc_usable_size(r) +
               malloc_usable_size(s);
  cr_assert_eq(b.allocated - a.allocated, sum, "allocated +%zu, usable sizes %zu",
               b.allocated - a.allocated, sum);
  free(p);
  free(q);
  free(r);
  free(s);
  cr_assert_eq(now().allocated, a.allocated);
}

/* Objects move between thread caches and spans in batches: many of them. */
Test(stats, many_small_objects_every_class) {
  enum { N = 5000 };
  static void *p[N];
  hm_stats_t a = now();
  size_t sum = 0;
  for (int i = 0; i < N; i++) {
    p[i] = malloc(opaque((size_t)(i * 37) % 4096 + 1));
    sum += malloc_usable_size(p[i]);
  }
  hm_stats_t b = now();
  cr_assert_eq(b.allocated - a.allocated, sum);
  for (int i = 0; i < N; i += 2) free(p[i]);
  for (int i = 1; i < N; i += 2) free(p[i]);
  cr_assert_eq(now().allocated, a.allocated);
}

Test(stats, peaks) {
  malloc_trim(0); /* no kept large mappings: the big block below is all taken from the OS */
  hm_stats_reset_peaks();
  hm_stats_t a = now();
  cr_assert_eq(a.peak_allocated, a.allocated);
  cr_assert_eq(a.peak_mapped, a.mapped);
  /* taken from the OS and given back with no reading in between: the peak still saw it */
  void *p = malloc(opaque(160 << 20)); /* above what the large tier keeps for reuse (half of
                                        * its most, 256 MiB) */
  size_t usable = malloc_usable_size(p);
  free(p);
  hm_stats_t b = now();
  cr_assert_geq(b.peak_allocated, a.allocated + usable, "peak %zu < %zu + %zu",
                b.peak_allocated, a.allocated, usable);
  cr_assert_geq(b.peak_mapped, a.mapped + usable);
  cr_assert_lt(b.mapped, b.peak_mapped);
  /* a reading sees the peak */
  void *q = malloc(opaque(300000));
  hm_stats_t c = now();
  free(q);
  cr_assert_geq(c.peak_allocated, c.allocated);
  hm_stats_reset_peaks();
  hm_stats_t d = now();
  cr_assert_eq(d.peak_allocated, d.allocated);
  cr_assert_lt(d.peak_allocated, b.peak_allocated);
}

Test(stats, peak_sees_a_kept_mapping_reused_above_the_large_tiers_high) {
  malloc_trim(0);
  void *p = malloc(opaque(8 << 20));
  cr_assert_not_null(p);
  free(p); /* kept: the next block of this size takes nothing from the OS */
  hm_stats_reset_peaks();
  hm_stats_t a = now();
  void *q = malloc(opaque(8 << 20));
  cr_assert_not_null(q);
  size_t usable = malloc_usable_size(q);
  free(q);
  hm_stats_t b = now();
  cr_assert_eq(b.mmap_count, a.mmap_count, "the block came from the kept mapping");
  cr_assert_geq(b.peak_allocated, a.allocated + usable, "peak %zu < %zu + %zu", b.peak_allocated,
                a.allocated, usable);
  malloc_trim(0);
}

/* ---- threads ---- */
enum { THREADS = 4, PER_THREAD = 3000 };
static void *blocks[THREADS][PER_THREAD];
static size_t thread_usable[THREADS];
static pthread_barrier_t barrier;

static void *worker(void *arg) {
  int t = (int)(intptr_t)arg;
  size_t sum = 0;
  for (int i = 0; i < PER_THREAD; i++) {
    size_t size = (i % 50 == 0) ? 20000 + (size_t)i : (i % 500 == 1) ? 150000 : (size_t)(i % 700) + 1;
    blocks[t][i] = malloc(size);
    sum += malloc_usable_size(blocks[t][i]);
    if (i % 3 == 0) { /* some churn */
      sum -= malloc_usable_size(blocks[t][i]);
      free(blocks[t][i]);
      blocks[t][i] = malloc(size);
      sum += malloc_usable_size(blocks[t][i]);
    }
  }
  thread_usable[t] = sum;
  pthread_barrier_wait(&barrier); /* all allocated */
  pthread_barrier_wait(&barrier); /* main has read the stats */
  /* free half of another thread's blocks (cross-thread) and half of our own */
  int other = (t + 1) % THREADS;
  for (int i = 0; i < PER_THREAD / 2; i++) free(blocks[other][i]);
  for (int i = PER_THREAD / 2; i < PER_THREAD; i++) free(blocks[t][i]);
  return NULL;
}

static void *idle(void *arg) { return arg; }

Test(stats, threads_sums_match_when_quiet) {
  /* glibc allocates per-thread data (the TLS vector) when it makes a thread stack and keeps
   * it with the stack for reuse: make those stacks first, so the measure holds only ours */
  pthread_t th[THREADS];
  for (int t = 0; t < THREADS; t++) cr_assert_eq(pthread_create(&th[t], NULL, idle, NULL), 0);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  pthread_barrier_init(&barrier, NULL, THREADS + 1);
  hm_stats_t a = now();
  for (int t = 0; t < THREADS; t++)
    cr_assert_eq(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t), 0);
  pthread_barrier_wait(&barrier);
  hm_stats_t b = now();
  size_t expect = 0;
  for (int t = 0; t < THREADS; t++) expect += thread_usable[t];
  pthread_barrier_wait(&barrier);
  cr_assert_eq(b.allocated - a.allocated, expect, "threads hold %zu usable bytes, allocated +%zu",
               expect, b.allocated - a.allocated);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  hm_stats_t c = now();
  cr_assert_eq(c.allocated, a.allocated, "after every free: allocated %zu, was %zu", c.allocated,
               a.allocated);
  /* every thread made PER_THREAD + PER_THREAD/3 (rounded up) mallocs and as many frees */
  uint64_t per = PER_THREAD + (PER_THREAD + 2) / 3;
  cr_assert_eq(c.malloc_count - a.malloc_count, THREADS * per);
  cr_assert_eq(c.free_count - a.free_count, THREADS * per);
  pthread_barrier_destroy(&barrier);
}

/* ---- JSON ---- */
static char *json_now(size_t *len_out) {
  size_t len = hm_stats_json(NULL, 0);
  cr_assert_gt(len, 100);
  char *buf = malloc(len + 4096);
  size_t n = hm_stats_json(buf, len + 4096);
  cr_assert_eq(strlen(buf), n);
  if (len_out) *len_out = n;
  return buf;
}

Test(stats, json_length_query_and_truncation) {
  size_t need = hm_stats_json(NULL, 0);
  char small[64];
  memset(small, 'x', sizeof small);
  size_t n = hm_stats_json(small, sizeof small);
  cr_assert_gt(n, sizeof small);
  cr_assert_eq(small[sizeof small - 1], '\0');
  cr_assert_eq(strlen(small), sizeof small - 1);
  cr_assert_eq(strncmp(small, "{\"version\":\"", 12), 0, "starts %.20s", small);
  char one[1] = {'x'};
  hm_stats_json(one, 1);
  cr_assert_eq(one[0], '\0');
  cr_assert_lt(need > n ? need - n : n - need, 200);
}

static const char json_check[] =
    "import json,sys\n"
    "d=json.load(sys.stdin)\n"
    "t=d['tiers']\n"
    "assert d['allocated']==t['small']['in_use']+t['medium']['in_use']+t['large']['in_use'], 'tiers'\n"
    "assert d['peak_allocated']>=d['allocated']\n"
    "assert d['mapped']==t['medium']['mapped']+t['large']['mapped']\n"
    "assert len(d['classes'])>=40\n"
    "if d['classes_exact']:\n"
    "  assert sum(c['bytes'] for c in d['classes'])==t['small']['in_use'], 'classes'\n"
    "  assert all(c['bytes']==c['in_use']*c['size'] for c in d['classes'])\n"
    "assert sum(a['mapped'] for a in d['arenas'])==t['medium']['mapped']\n"
    "assert sum(c['spans'] for c in d['classes'])==t['small']['spans']\n"
    "for k in ('in_use','free','mapped','mmap','munmap','brk_grow','brk_trim','splits','coalesces','searches'):\n"
    "  for n in ('small','medium','large'): assert k in t[n], (n,k)\n"
    "for k in ('malloc_count','free_count','realloc_count','mmap_count','munmap_count','heap_free','cached','large_count','large_bytes','peak_mapped','rss'):\n"
    "  assert isinstance(d[k],int), k\n"
    "print('ok', d['allocated'])\n";

Test(stats, json_parses_and_adds_up) {
  void *keep[100];
  for (int i = 0; i < 100; i++) keep[i] = malloc(opaque((size_t)i * 97 + 1));
  void *big = malloc(opaque(1 << 20));
  hm_stats_t s = now();
  char *j = json_now(NULL);
  static run_t r;
  int st = python_check(json_check, j, &r);
  cr_assert_eq(st, 0, "python3 rejected the JSON: %s\n%.300s", r.err, j);
  /* the figures are those of hm_stats_get */
  char want[64];
  /* json_now allocates its buffer after the length query: one malloc more */
  snprintf(want, sizeof want, "\"malloc_count\":%llu", (unsigned long long)s.malloc_count + 1);
  cr_assert_not_null(strstr(j, want), "%s not in the JSON", want);
  snprintf(want, sizeof want, "\"large_count\":%zu", s.large_count);
  cr_assert_not_null(strstr(j, want), "%s not in the JSON", want);
  free(j);
  for (int i = 0; i < 100; i++) free(keep[i]);
  free(big);
}

/* ---- glibc's reports ---- */
Test(stats, mallinfo2_fields) {
  void *small = malloc(opaque(100)), *medium = malloc(opaque(40000)), *large = malloc(opaque(1 << 20));
  struct mallinfo2 m = mallinfo2();
  hm_stats_t s = now();
  cr_assert_eq(m.arena, s.mapped - s.large_bytes - s.large_cached, "arena %zu, heap mapped %zu", m.arena,
               s.mapped - s.large_bytes);
  cr_assert_eq(m.uordblks + m.fordblks, m.arena, "uordblks %zu + fordblks %zu != arena %zu",
               m.uordblks, m.fordblks, m.arena);
  cr_assert_eq(m.hblks, s.large_count);
  cr_assert_eq(m.hblkhd, s.large_bytes);
  cr_assert_eq(m.fordblks, s.heap_free + s.cached);
  cr_assert_eq(m.fsmblks, s.cached);
  cr_assert_geq(m.uordblks, s.allocated - (malloc_usable_size(large)));
  cr_assert_leq(m.keepcost, m.fordblks);
  cr_assert_eq(m.usmblks, 0);
  cr_assert_geq(m.ordblks, m.keepcost > 0 ? 1u : 0u);
  free(large);
  struct mallinfo2 m2 = mallinfo2();
  cr_assert_eq(m2.hblks, m.hblks - 1);
  cr_assert_eq(m2.hblkhd + ((1 << 20) + 4096), m.hblkhd);
  free(small);
  free(medium);
}

Test(stats, mallinfo_saturates) {
  void *p[3];
  for (int i = 0; i < 3; i++) cr_assert_not_null(p[i] = malloc(opaque((size_t)1 << 30)));
  struct mallinfo2 m2 = mallinfo2();
  struct mallinfo m = mallinfo();
  cr_assert_gt(m2.hblkhd, (size_t)INT_MAX);
  cr_assert_eq(m.hblkhd, INT_MAX, "hblkhd %d, not saturated", m.hblkhd);
  cr_assert_eq((size_t)m.hblks, m2.hblks);
  cr_assert_eq((size_t)m.arena, m2.arena);
  for (int i = 0; i < 3; i++) free(p[i]);
}

static size_t capture(int fd, void (*fn)(void), char *out, size_t len) {
  int pfd[2];
  cr_assert_eq(pipe(pfd), 0);
  int saved = dup(fd);
  dup2(pfd[1], fd);
  close(pfd[1]);
  fn();
  dup2(saved, fd);
  close(saved);
  size_t n = 0;
  ssize_t k;
  while (n + 1 < len && (k = read(pfd[0], out + n, len - 1 - n)) > 0) n += (size_t)k;
  close(pfd[0]);
  out[n] = '\0';
  return n;
}

static void do_malloc_stats(void) { malloc_stats(); }
static void do_print(void) { hm_stats_print(1); }

Test(stats, malloc_stats_glibc_layout) {
  static char out[1 << 14];
  capture(2, do_malloc_stats, out, sizeof out);
  cr_assert_not_null(strstr(out, "Arena 0:\nsystem bytes     = "), "%s", out);
  cr_assert_not_null(strstr(out, "Total (incl. mmap):\n"), "%s", out);
  cr_assert_not_null(strstr(out, "max mmap regions = "), "%s", out);
  cr_assert_null(strchr(out, '%'), "unformatted directive in: %s", out);
  /* numbers right-aligned in 10 columns, as glibc's %10u */
  const char *line = strstr(out, "in use bytes     = ");
  cr_assert_not_null(line);
  const char *num = line + strlen("in use bytes     = ");
  const char *eol = strchr(num, '\n');
  cr_assert_geq(eol - num, 10, "%.40s", line);
}

Test(stats, print_has_tier_and_class_tables) {
  void *p = malloc(opaque(100));
  static char out[1 << 16];
  capture(1, do_print, out, sizeof out);
  free(p);
  cr_assert_not_null(strstr(out, "hmalloc stats"), "%s", out);
  const char *tier = strstr(out, "\ntier ");
  cr_assert_not_null(tier, "%s", out);
  cr_assert_not_null(strstr(tier, "\nsmall "));
  cr_assert_not_null(strstr(tier, "\nmedium "));
  cr_assert_not_null(strstr(tier, "\nlarge "));
  cr_assert_not_null(strstr(out, "\nclass "), "%s", out);
  cr_assert_null(strchr(out, '%'));
  /* aligned: every row of the tier table is as long as its header */
  const char *h_end = strchr(tier + 1, '\n');
  size_t width = (size_t)(h_end - (tier + 1));
  const char *row = h_end + 1;
  for (int i = 0; i < 3; i++) {
    const char *e = strchr(row, '\n');
    cr_assert_eq((size_t)(e - row), width, "row %.*s", (int)(e - row), row);
    row = e + 1;
  }
}

static const char xml_check[] =
    "import sys,xml.dom.minidom as m\n"
    "d=m.parseString(sys.stdin.read())\n"
    "r=d.documentElement\n"
    "assert r.tagName=='malloc' and r.getAttribute('version')=='1'\n"
    "h=r.getElementsByTagName('heap')\n"
    "assert len(h)>=1 and h[0].getAttribute('nr')=='0'\n"
    "assert h[0].getElementsByTagName('sizes')\n"
    "tot=[e for e in r.childNodes if e.nodeType==1 and e.tagName=='total']\n"
    "assert {e.getAttribute('type') for e in tot}=={'fast','rest','mmap'}, tot\n"
    "mm=[e for e in tot if e.getAttribute('type')=='mmap'][0]\n"
    "print(mm.getAttribute('count'), mm.getAttribute('size'))\n"
    "assert [e for e in r.childNodes if e.nodeType==1 and e.tagName=='system']\n"
    "assert [e for e in r.childNodes if e.nodeType==1 and e.tagName=='aspace']\n";

Test(stats, malloc_info_xml) {
  void *big = malloc(opaque(1 << 20));
  void *holes[20];
  for (int i = 0; i < 20; i++) holes[i] = malloc(opaque(20000));
  for (int i = 0; i < 20; i += 2) free(holes[i]); /* free chunks in the bins */
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  cr_assert_eq(malloc_info(0, f), 0);
  fclose(f);
  cr_assert_eq(malloc_info(1, stdout), EINVAL);
  cr_assert_not_null(strstr(text, "<size from=\""), "%s", text);
  static run_t r;
  cr_assert_eq(python_check(xml_check, text, &r), 0, "python3: %s\n%s", r.err, text);
  hm_stats_t s = now();
  char want[64];
  snprintf(want, sizeof want, "%zu %zu\n", s.large_count, s.large_bytes);
  cr_assert_str_eq(r.out, want);
  free(text);
  free(big);
  for (int i = 1; i < 20; i += 2) free(holes[i]);
  cr_assert_eq(hm_malloc_info(0, NULL), EINVAL);
}
