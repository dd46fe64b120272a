/* Options: hmi_getenv (hmalloc's own getenv, which walks environ) matches whole names only
 * and sees changes to the environment; the CPU count read by a raw system call agrees with
 * libc's; sizes parse with suffixes and refuse overflow. */
#include <criterion/criterion.h>

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "hmalloc.h"
#include "internal.h"

Test(options, getenv_finds_a_variable_and_its_value) {
  cr_assert_eq(setenv("HMALLOC_TEST_OPT", "64K", 1), 0);
  const char *v = hmi_getenv("HMALLOC_TEST_OPT");
  cr_assert_not_null(v);
  cr_assert_str_eq(v, "64K");
  cr_assert_eq(v, getenv("HMALLOC_TEST_OPT"), "the value is the environment's own string");
  cr_assert_eq(setenv("HMALLOC_TEST_OPT", "", 1), 0);
  cr_assert_str_eq(hmi_getenv("HMALLOC_TEST_OPT"), "");
  cr_assert_eq(unsetenv("HMALLOC_TEST_OPT"), 0);
  cr_assert_null(hmi_getenv("HMALLOC_TEST_OPT"));
}

Test(options, getenv_matches_whole_names_only) {
  cr_assert_eq(setenv("HMALLOC_TEST_LONGER", "1", 1), 0);
  cr_assert_eq(setenv("HMALLOC_TES", "2", 1), 0);
  cr_assert_null(hmi_getenv("HMALLOC_TEST"), "a longer name is not a match");
  cr_assert_null(hmi_getenv("HMALLOC_TEST_LONGER_STILL"), "nor is a shorter one");
  cr_assert_str_eq(hmi_getenv("HMALLOC_TEST_LONGER"), "1");
  cr_assert_str_eq(hmi_getenv("HMALLOC_TES"), "2");
  cr_assert_null(hmi_getenv(""));
}

Test(options, value_may_contain_an_equals_sign) {
  cr_assert_eq(setenv("HMALLOC_TEST_EQ", "a=b", 1), 0);
  cr_assert_str_eq(hmi_getenv("HMALLOC_TEST_EQ"), "a=b");
}

Test(options, cpu_count_agrees_with_libc) {
  free(malloc(1)); /* start-up reads the options */
  cpu_set_t set;
  cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
  cr_assert_eq(hmi_options.cpus, (unsigned)CPU_COUNT(&set));
}

Test(options, sizes_parse_with_suffixes_and_refuse_overflow) {
  size_t n = 0;
  cr_assert(hmi_parse_size("123", &n));
  cr_assert_eq(n, 123);
  cr_assert(hmi_parse_size("64k", &n));
  cr_assert_eq(n, (size_t)64 << 10);
  cr_assert(hmi_parse_size("2M", &n));
  cr_assert_eq(n, (size_t)2 << 20);
  cr_assert(hmi_parse_size("1G", &n));
  cr_assert_eq(n, (size_t)1 << 30);
  cr_assert_not(hmi_parse_size("", &n));
  cr_assert_not(hmi_parse_size("-1", &n));
  cr_assert_not(hmi_parse_size("12Q", &n));
  cr_assert_not(hmi_parse_size("1KB", &n));
  cr_assert_not(hmi_parse_size("18446744073709551616", &n));
  cr_assert_not(hmi_parse_size("17179869184G", &n));
}
