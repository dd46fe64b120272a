/* options.c - HMALLOC_* environment options, read once at start-up.
 *
 * hmi_getenv only walks environ (it never allocates), so it is safe during init.  A malformed or
 * out-of-range value prints one warning line naming the variable and the default used, and
 * the program carries on.  Sizes take K, M or G suffixes (powers of 1024). */
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

hm_options_t hmi_options = {
    .mmap_threshold = HM_DEFAULT_MMAP_THRESHOLD,
    .trim_threshold = HM_DEFAULT_TRIM_THRESHOLD,
    .tcache_max = HM_DEFAULT_TCACHE_MAX,
    .fit = HM_FIT_BEST,
    .arenas = 1,
};

/* getenv's job without libc's getenv: its code sits in a page of libc that programs rarely
 * touch otherwise, and each such page costs up to 64 KiB of file-backed RSS once the kernel
 * maps its neighbours too (fault-around). */
const char *hmi_getenv(const char *name) {
  for (char **e = environ; e != NULL && *e != NULL; e++) {
    const char *a = *e, *b = name;
    while (*b != '\0' && *a == *b) a++, b++;
    if (*b == '\0' && *a == '=') return a + 1;
  }
  return NULL;
}

/* Parse "123", "64K", "2m", "1G"; false if malformed or overflowing. */
bool hmi_parse_size(const char *s, size_t *out) {
  if (s == NULL || *s < '0' || *s > '9') return false;
  size_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (__builtin_mul_overflow(v, (size_t)10, &v) ||
        __builtin_add_overflow(v, (size_t)(*s - '0'), &v))
      return false;
  }
  unsigned shift = 0;
  switch (*s) {
    case 'k': case 'K': shift = 10; s++; break;
    case 'm': case 'M': shift = 20; s++; break;
    case 'g': case 'G': shift = 30; s++; break;
    default: break;
  }
  if (*s != '\0') return false;
  if (shift && v > (SIZE_MAX >> shift)) return false;
  *out = v << shift;
  return true;
}

static void warn_bad(const char *name, const char *value, const char *expect,
                     const char *dflt) {
  hmi_warn("hmalloc: warning: %s=%s is not valid (%s); using the default %s\n", name, value,
           expect, dflt);
}

static void size_option(const char *name, size_t *target, size_t min, size_t max,
                        const char *expect) {
  const char *v = hmi_getenv(name);
  if (v == NULL) return;
  size_t n;
  if (!hmi_parse_size(v, &n) || n < min || n > max) {
    char dflt[32];
    hmi_fmt(dflt, sizeof dflt, "%zu", *target);
    warn_bad(name, v, expect, dflt);
    return;
  }
  *target = n;
}

/* The system call rather than libc's sched_getaffinity + CPU_COUNT, whose code would be one
 * more rarely used page of libc to map (see hmi_getenv). */
static unsigned cpu_count(void) {
  unsigned long mask[16]; /* 1024 CPUs, as cpu_set_t */
  long got = syscall(SYS_sched_getaffinity, 0, sizeof mask, mask);
  if (got <= 0) return 1;
  unsigned n = 0;
  for (long i = 0; i < got / (long)sizeof mask[0]; i++) n += (unsigned)__builtin_popcountl(mask[i]);
  return n > 0 ? n : 1;
}

void hmi_options_load(void) {
  unsigned cpus = cpu_count();
  hmi_options.cpus = cpus;
  /* Four arenas per CPU: with more threads than CPUs, a thread preempted inside an arena's
   * lock stalls every thread of that arena; measured on 2 CPUs, alloc_test with 64 threads
   * ran 0.50 s with 2 arenas and 0.35 s with 8 (1 or 2 threads: no change).  At most 16:
   * each arena keeps its own free memory, the per-thread-arena bloat of glibc. */
  hmi_options.arenas = cpus * 4 > 16 ? 16 : cpus * 4;
  size_option("HMALLOC_MMAP_THRESHOLD", &hmi_options.mmap_threshold, HM_PAGE,
              HM_MAX_MMAP_THRESHOLD, "a size from 4K to 32M");
  size_option("HMALLOC_TRIM_THRESHOLD", &hmi_options.trim_threshold, 0, (size_t)1 << 40,
              "a size up to 1024G");
  size_option("HMALLOC_TCACHE_MAX", &hmi_options.tcache_max, 0, (size_t)64 << 20,
              "a size up to 64M");
  size_t arenas = hmi_options.arenas;
  size_option("HMALLOC_ARENAS", &arenas, 1, HM_MAX_ARENAS, "a number from 1 to 64");
  hmi_options.arenas = (unsigned)arenas;
  const char *check = hmi_getenv("HMALLOC_CHECK");
  if (check != NULL) {
    if (strcmp(check, "1") == 0) hmi_check_mode = 1;
    else if (strcmp(check, "0") != 0) warn_bad("HMALLOC_CHECK", check, "0 or 1", "0");
  }
  const char *fit = hmi_getenv("HMALLOC_FIT");
  if (fit != NULL) {
    if (strcmp(fit, "best") == 0) hmi_options.fit = HM_FIT_BEST;
    else if (strcmp(fit, "first") == 0) hmi_options.fit = HM_FIT_FIRST;
    else warn_bad("HMALLOC_FIT", fit, "best or first", "best");
  }
}
