/* Size classes: monotone, 16-byte multiples, smallest fitting class, bounded rounding waste,
 * and the exact division used to validate object starts. */
#include <criterion/criterion.h>

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "hmalloc.h"
#include "internal.h"

Test(size_class, table_is_increasing_and_aligned) {
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    cr_assert_eq(hmi_class_size[c] % 16, 0, "class %u size %u", c, hmi_class_size[c]);
    if (c > 0) cr_assert_gt(hmi_class_size[c], hmi_class_size[c - 1]);
  }
  cr_assert_eq(hmi_class_size[HM_CLASSES - 1], HM_SMALL_MAX);
}

Test(size_class, smallest_fitting_class_for_every_size) {
  for (size_t n = 0; n <= HM_SMALL_MAX; n++) {
    unsigned c = hmi_size_class(n);
    cr_assert_lt(c, HM_CLASSES);
    cr_assert_geq(hmi_class_size[c], n, "size %zu got class %u", n, c);
    if (c > 0) cr_assert_lt(hmi_class_size[c - 1], n == 0 ? 1 : n, "size %zu not tightest", n);
  }
}

Test(size_class, rounding_waste_at_most_one_eighth_above_128) {
  for (size_t n = 129; n <= HM_SMALL_MAX; n++) {
    size_t got = hmi_class_size[hmi_size_class(n)];
    cr_assert_leq((got - n) * 8, n, "size %zu rounds to %zu", n, got);
  }
  for (size_t n = 1; n <= 128; n++) cr_assert_lt(hmi_class_size[hmi_size_class(n)] - n, 16);
}

Test(size_class, object_index_divides_and_rejects_interior_offsets) {
  for (unsigned c = 0; c < HM_CLASSES; c++) {
    uint32_t size = hmi_class_size[c], capacity = (HM_SPAN_SIZE - 16) / size;
    for (uint32_t off = 0; off < HM_SPAN_SIZE; off++) {
      uint32_t idx = hmi_class_index(off, c);
      if (off % size == 0) cr_assert_eq(idx, off / size);
      else cr_assert_gt(idx, capacity, "class %u offset %u passes as object %u", c, off, idx);
    }
  }
}

Test(size_class, malloc_usable_size_is_the_class_size) {
  for (size_t n = 1; n <= HM_SMALL_MAX; n += 7) {
    void *p = malloc(n);
    cr_assert_eq(malloc_usable_size(p), hmi_class_size[hmi_size_class(n)]);
    free(p);
  }
}

/* A power of two plus a small header (sqlite's 1032-byte blocks, 1024 + 8) is common enough
 * to have classes of its own from 512 up, where the classes are 64 or more bytes apart: a
 * 1032-byte request rounded to 1152 wasted 120 bytes, 1.9 MB of sqlite3's peak. */
Test(size_class, a_power_of_two_plus_a_header_rounds_up_by_less_than_16) {
  for (size_t pow2 = 512; pow2 < HM_SMALL_MAX; pow2 *= 2)
    for (size_t extra = 1; extra <= 16; extra++) {
      void *p = malloc(pow2 + extra);
      cr_assert_eq(malloc_usable_size(p), pow2 + 16, "%zu + %zu", pow2, extra);
      free(p);
    }
}
