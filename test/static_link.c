/* static_link.c - an executable linked with libhmalloc.a (link_whole) really uses hmalloc:
 * malloc and friends resolve inside the executable, not in libc, and plain calls to the
 * standard names, from this program and from inside libc, are counted by hm_stats_get. */
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>

#include "hm_test.h"

TestSuite(static_link, .timeout = 60);

/* The path of the mapping that holds addr, from /proc/self/maps ("" if anonymous). */
static void mapping_of(const void *addr, char *path, size_t len) {
  FILE *f = fopen("/proc/self/maps", "r");
  cr_assert_not_null(f);
  char line[4096];
  path[0] = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx", &lo, &hi) != 2) continue;
    if ((uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
      char *slash = strchr(line, '/');
      if (slash) {
        slash[strcspn(slash, "\n")] = 0;
        snprintf(path, len, "%s", slash);
      }
      break;
    }
  }
  fclose(f);
}

Test(static_link, standard_names_resolve_into_the_executable) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  cr_assert_gt(n, 0);
  exe[n] = 0;
  struct {
    const char *name;
    void *addr;
  } fns[] = {
      {"malloc", (void *)&malloc},
      {"free", (void *)&free},
      {"calloc", (void *)&calloc},
      {"realloc", (void *)&realloc},
      {"posix_memalign", (void *)&posix_memalign},
      {"aligned_alloc", (void *)&aligned_alloc},
      {"malloc_usable_size", (void *)&malloc_usable_size},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    char path[PATH_MAX];
    mapping_of(fns[i].addr, path, sizeof path);
    cr_assert_str_eq(path, exe, "%s is at %p in %s, not in the executable %s", fns[i].name,
                     fns[i].addr, path, exe);
    /* what the dynamic linker hands to libraries (libc included) is the same function */
    void *dyn = dlsym(RTLD_DEFAULT, fns[i].name);
    cr_assert_eq(dyn, fns[i].addr, "dlsym(RTLD_DEFAULT, \"%s\") = %p, &%s = %p: libraries would "
                 "not use hmalloc", fns[i].name, dyn, fns[i].name, fns[i].addr);
    Dl_info info;
    cr_assert_neq(dladdr(fns[i].addr, &info), 0);
    cr_assert(info.dli_fname == NULL || strstr(info.dli_fname, "libc.so") == NULL,
              "dladdr says %s is in %s", fns[i].name, info.dli_fname);
  }
}

Test(static_link, plain_malloc_is_counted) {
  hm_stats_t s0 = stats_now();
  void *p[100];
  for (int i = 0; i < 100; i++) {
    p[i] = malloc(opaque(32 + (size_t)i * 100));
    cr_assert_not_null(p[i]);
  }
  hm_stats_t s1 = stats_now();
  cr_assert_geq(s1.malloc_count, s0.malloc_count + 100, "malloc_count %llu -> %llu",
                (unsigned long long)s0.malloc_count, (unsigned long long)s1.malloc_count);
  for (int i = 0; i < 100; i++) {
    cr_assert_geq(hm_malloc_usable_size(p[i]), 32 + (size_t)i * 100);
    free(p[i]);
  }
  hm_stats_t s2 = stats_now();
  cr_assert_geq(s2.free_count, s1.free_count + 100);
}

Test(static_link, libc_internal_allocations_use_hmalloc) {
  /* strdup and open_memstream allocate inside libc: their memory comes from hmalloc and is
   * freed by hm_free */
  hm_stats_t s0 = stats_now();
  char *d = strdup("hello, hmalloc, this is a string");
  cr_assert_not_null(d);
  hm_stats_t s1 = stats_now();
  cr_assert_geq(s1.malloc_count, s0.malloc_count + 1, "strdup did not call hmalloc's malloc");
  cr_assert_geq(hm_malloc_usable_size(d), strlen(d) + 1);
  hm_free(d);

  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert_not_null(f);
  for (int i = 0; i < 20000; i++) fprintf(f, "line %d\n", i);
  fclose(f);
  cr_assert_gt(len, 100000);
  cr_assert_geq(hm_malloc_usable_size(buf), len + 1);
  hm_stats_t s2 = stats_now();
  cr_assert_geq(s2.realloc_count, s1.realloc_count + 1,
                "open_memstream's growth did not go through hmalloc's realloc");
  hm_free(buf);
  assert_heap_ok();
}

Test(static_link, standard_and_hm_names_mix) {
  /* the same allocator behind both names: allocate with one, free with the other */
  for (size_t t = 0; t < N_TIER_SIZES; t++) {
    size_t n = tier_sizes[t];
    void *a = malloc(opaque(n));
    void *b = hm_malloc(opaque(n));
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    cr_assert_eq(malloc_usable_size(a), hm_malloc_usable_size(a));
    fill_pattern(a, n, 1);
    fill_pattern(b, n, 2);
    void *a2 = hm_realloc(a, opaque(n + 100));
    void *b2 = realloc(b, opaque(n + 100));
    cr_assert_not_null(a2);
    cr_assert_not_null(b2);
    cr_assert_eq(check_pattern_at(a2, (uintptr_t)a, n, 1), (size_t)-1);
    cr_assert_eq(check_pattern_at(b2, (uintptr_t)b, n, 2), (size_t)-1);
    hm_free(a2);
    free(b2);
  }
  assert_heap_ok();
}
