/* check.c - hm_heap_check: every invariant of every tier, for tests and debugging.
 * Takes each lock in turn; the heap must not change meanwhile in ways the locks do not
 * cover (it never does: every structure checked is under the lock taken for it). */
#include "hmalloc.h"
#include "internal.h"

HM_API int hm_heap_check(void) {
  hmi_ensure_init();
  for (unsigned i = 0; i < hmi_arena_count; i++)
    if (hmi_arena_if_given(i) && hmi_arena_check(hmi_arenas[i]) != 0) return -1;
  if (hmi_span_check() != 0) return -1;
  if (hmi_large_check() != 0) return -1;
  return 0;
}
