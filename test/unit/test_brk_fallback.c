/* brk-to-mmap fallback: when something is mapped right above the program break, sbrk fails
 * and the main arena carries on with mmap'ed segments; when sbrk is refused outright the
 * same; allocations keep working and the heap stays consistent. */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/mman.h>

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "hmalloc.h"
#include "internal.h"

static void allocate_a_lot(void) {
  enum { N = 400 };
  static char *blocks[N];
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(20000 + (size_t)i * 100); /* 12 MB of medium blocks */
    cr_assert_not_null(blocks[i]);
    memset(blocks[i], i & 0xff, 20000);
  }
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < 20000; j += 997) cr_assert_eq((unsigned char)blocks[i][j], i & 0xff);
    free(blocks[i]);
  }
  cr_assert_eq(hm_heap_check(), 0);
}

Test(brk_fallback, mapping_above_the_break) {
  hmi_ensure_init();
  free(malloc(20000)); /* the heap exists */
  uintptr_t brk_now = hm_align_up((uintptr_t)sbrk(0), HM_PAGE);
  /* Occupy the addresses right above the break, as a library mapped there would. */
  void *block = mmap((void *)brk_now, 64 << 20, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  cr_assert_neq(block, MAP_FAILED);
  cr_assert_eq((uintptr_t)block, brk_now);
  uint64_t maps = hmi_main_arena.seg_maps;
  allocate_a_lot();
  cr_assert(hmi_main_arena.brk_failed, "sbrk failed and was noted");
  cr_assert_gt(hmi_main_arena.seg_maps, maps, "mmap'ed segments took over");
}

Test(brk_fallback, sbrk_refused) {
  hmi_ensure_init();
  hmi_os_brk_disabled = 1;
  allocate_a_lot();
  cr_assert(hmi_main_arena.brk_failed);
}
