/* override.c - the standard C allocation names, so hmalloc replaces malloc when preloaded
 * (LD_PRELOAD=libhmalloc.so) or linked (libhmalloc.a).  malloc and free inline the fast
 * paths; the rest forward to the hm_ API.  The __libc_* names are glibc's internal entry
 * points: defining them too means a fully static link never pulls glibc's malloc.o in
 * (it would clash with these definitions). */
#include <malloc.h>

#include "alloc_inline.h"
#include "hmalloc.h"

#pragma GCC diagnostic ignored "-Wmissing-attributes" /* aliases need not repeat them */
#define ALIAS(name) __attribute__((alias(#name), used, visibility("default")))

/* malloc and free start on a 64-byte boundary, so their fast paths sit the same way in cache
 * lines and in the decoded-instruction cache whatever code precedes them.  Left at the
 * compiler's 16-byte alignment, a change elsewhere that moved free from offset 32 to 16 of
 * its line made shuffle 1.25x slower (0.90 -> 1.13 s, three 5-run comparisons; same
 * instructions, same refills): A/B comparisons measured where code happened to fall. */
#define HOT_ENTRY __attribute__((aligned(64)))

HM_API HOT_ENTRY void *malloc(size_t size) { return hm_alloc_inline(size); }
HM_API HOT_ENTRY void free(void *p) { hm_free_inline(p, "free"); }
HM_API void *calloc(size_t n, size_t size) { return hm_calloc(n, size); }
HM_API void *realloc(void *p, size_t size) { return hm_realloc(p, size); }
HM_API void *reallocarray(void *p, size_t n, size_t size) { return hm_reallocarray(p, n, size); }
HM_API int posix_memalign(void **out, size_t alignment, size_t size) {
  return hm_posix_memalign(out, alignment, size);
}
HM_API void *aligned_alloc(size_t alignment, size_t size) {
  return hm_aligned_alloc(alignment, size);
}
HM_API void *memalign(size_t alignment, size_t size) { return hm_memalign(alignment, size); }
HM_API void *valloc(size_t size) { return hm_valloc(size); }
HM_API void *pvalloc(size_t size) { return hm_pvalloc(size); }
HM_API size_t malloc_usable_size(void *p) { return hm_malloc_usable_size(p); }
HM_API void cfree(void *p) { hm_free_inline(p, "free"); }
HM_API int malloc_trim(size_t pad) { return hm_malloc_trim(pad); }
HM_API struct mallinfo2 mallinfo2(void) { return hm_mallinfo2(); }
HM_API struct mallinfo mallinfo(void) { return hm_mallinfo(); }
HM_API void malloc_stats(void) { hm_malloc_stats(); }
HM_API int mallopt(int param, int value) { return hm_mallopt(param, value); }

/* glibc's internal names */
void *__libc_malloc(size_t size) ALIAS(malloc);
void __libc_free(void *p) ALIAS(free);
void *__libc_calloc(size_t n, size_t size) ALIAS(calloc);
void *__libc_realloc(void *p, size_t size) ALIAS(realloc);
void *__libc_memalign(size_t alignment, size_t size) ALIAS(memalign);
void *__libc_valloc(size_t size) ALIAS(valloc);
void *__libc_pvalloc(size_t size) ALIAS(pvalloc);
int __posix_memalign(void **out, size_t alignment, size_t size) ALIAS(posix_memalign);
struct mallinfo __libc_mallinfo(void) ALIAS(mallinfo);
struct mallinfo2 __libc_mallinfo2(void) ALIAS(mallinfo2);
int __libc_mallopt(int param, int value) ALIAS(mallopt);
int __malloc_trim(size_t pad) ALIAS(malloc_trim);
size_t __malloc_usable_size(void *p) ALIAS(malloc_usable_size);
