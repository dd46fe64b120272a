/* vg.h - valgrind client requests (build option -Dvalgrind=true), so memcheck sees hmalloc's
 * blocks as heap blocks: leaks, reads of uninitialised bytes, accesses past the requested size
 * and (for small and large blocks) accesses after free.  Without the option every macro is
 * empty and the code is exactly the same as without this file.
 * A freed block is marked free, then the words the allocator itself keeps in it are made
 * accessible again: the first 16 bytes of a small object (list link and free mark), the whole
 * of a medium block (links and footers move as chunks coalesce).  The bytes between the
 * requested size and the usable size are made inaccessible, so overruns show.
 * Run programs with valgrind --soname-synonyms=somalloc=nouserintercepts, or memcheck
 * replaces hmalloc's malloc with its own. */
#ifndef HM_VG_H
#define HM_VG_H

#ifdef HM_VALGRIND
#include <valgrind/memcheck.h>
void hmi_vg_alloc(void *p, size_t size, int zeroed);
#define HM_VG_ALLOC(p, size, zeroed)                   \
  do {                                                 \
    if ((p) != NULL) hmi_vg_alloc((p), (size), (zeroed)); \
  } while (0)
void hmi_vg_free(void *p);
void hmi_vg_resized(void *old, void *p, size_t keep, size_t size);
#define HM_VG_FREE(p)                 \
  do {                                \
    if ((p) != NULL) hmi_vg_free(p);  \
  } while (0)
#define HM_VG_RESIZED(old, p, keep, size) hmi_vg_resized((old), (p), (keep), (size))
/* Bytes the allocator is about to use for its own header, in memory that may have been part
 * of a freed (inaccessible) block: a kept large mapping is split and reused at any page. */
#define HM_VG_OWN(p, size) VALGRIND_MAKE_MEM_UNDEFINED((p), (size))
/* A statement that may read a block's bytes past its request (a copy of the usable size). */
#define HM_VG_QUIET(stmt)                                           \
  do {                                                              \
    VALGRIND_DISABLE_ERROR_REPORTING;                               \
    stmt;                                                           \
    VALGRIND_ENABLE_ERROR_REPORTING;                                \
  } while (0)
#else
#define HM_VG_ALLOC(p, size, zeroed) ((void)0)
#define HM_VG_FREE(p) ((void)0)
#define HM_VG_RESIZED(old, p, keep, size) ((void)0)
#define HM_VG_OWN(p, size) ((void)0)
#define HM_VG_QUIET(stmt) \
  do {                    \
    stmt;                 \
  } while (0)
#endif

#endif
