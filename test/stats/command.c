/* command.c - the `hmalloc` command of the build tree (build/tools/hmalloc): --help,
 * --version, exit statuses passed through (128+N for signals), --stats report, --json file,
 * --timeline PNG (signature and IHDR dimensions checked). */
#include <stdint.h>

#include "stats_test.h"

TestSuite(command, .timeout = 180);

static run_t r;

static void hm(const char *a1, const char *a2, const char *a3, const char *a4, const char *a5,
               const char *a6, const char *a7, const char *a8) {
  char *argv[10] = {HMALLOC_TOOL_PATH};
  const char *in[] = {a1, a2, a3, a4, a5, a6, a7, a8};
  int n = 1;
  for (int i = 0; i < 8 && in[i]; i++) argv[n++] = (char *)in[i];
  argv[n] = NULL;
  run_prog(&r, argv, NULL, NULL);
}

Test(command, help_and_version) {
  hm("--help", 0, 0, 0, 0, 0, 0, 0);
  cr_assert_eq(r.status, 0);
  cr_assert_not_null(strstr(r.out, "Usage: hmalloc run"), "%s", r.out);
  hm("--version", 0, 0, 0, 0, 0, 0, 0);
  cr_assert_eq(r.status, 0);
  cr_assert_str_eq(r.out, "hmalloc 0.1.0\n");
  hm("frobnicate", 0, 0, 0, 0, 0, 0, 0);
  cr_assert_neq(r.status, 0);
  cr_assert_not_null(strstr(r.err, "unknown command"));
}

Test(command, exit_status_passed_through) {
  hm("run", "--", STATS_PROG_PATH, "exit", "0", 0, 0, 0);
  cr_assert_eq(r.status, 0, "%s", r.err);
  hm("run", "--", STATS_PROG_PATH, "exit", "42", 0, 0, 0);
  cr_assert_eq(r.status, 42, "%s", r.err);
  hm("run", "--stats", "--", STATS_PROG_PATH, "signal", "15", 0, 0);
  cr_assert_eq(r.status, 128 + 15, "%s", r.err);
  cr_assert_not_null(strstr(r.err, "signal 15"), "%s", r.err);
  hm("run", "--", STATS_PROG_PATH, "signal", "6", 0, 0, 0);
  cr_assert_eq(r.status, 128 + 6, "%s", r.err);
  hm("run", "--", "/nonexistent/program", 0, 0, 0, 0, 0);
  cr_assert_eq(r.status, 127);
}

Test(command, stats_report_and_json) {
  char dir[64], json[128];
  make_tmpdir(dir, sizeof dir);
  snprintf(json, sizeof json, "%s/out.json", dir);
  hm("run", "--stats", "--json", json, "--", STATS_PROG_PATH, "alloc", "20");
  cr_assert_eq(r.status, 0, "%s", r.err);
  cr_assert_str_eq(r.out, "done\n");
  cr_assert_not_null(strstr(r.err, "hmalloc stats (pid "), "%s", r.err);
  cr_assert_not_null(strstr(r.err, "stats_prog"), "%s", r.err);
  cr_assert_not_null(strstr(r.err, "\ntier "), "%s", r.err);
  char *text = read_file(json, NULL);
  cr_assert_not_null(text, "no %s", json);
  static run_t py;
  cr_assert_eq(python_check("import json,sys; d=json.load(sys.stdin); "
                            "assert d['malloc_count']>=800 and d['peak_allocated']>=4<<20, d",
                            text, &py),
               0, "%s", py.err);
  free(text);
  /* a shell and its children (bash: dash leaves with _exit, no report): only the top
   * process's report */
  hm("run", "--stats", "--", "/bin/bash", "-c", "/bin/true; /bin/true; exit 5", 0, 0);
  cr_assert_eq(r.status, 5);
  const char *first = strstr(r.err, "hmalloc stats (pid ");
  cr_assert_not_null(first, "%s", r.err);
  cr_assert_null(strstr(first + 1, "hmalloc stats (pid "), "more than one report: %s", r.err);
  remove_tree(dir);
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

Test(command, timeline_png) {
  char dir[64], png[128], dat[128];
  make_tmpdir(dir, sizeof dir);
  snprintf(png, sizeof png, "%s/t.png", dir);
  snprintf(dat, sizeof dat, "%s/t.dat", dir);
  char *argv[] = {HMALLOC_TOOL_PATH, "run", "--timeline", png, "--samples", dat, "--interval",
                  "5", "--", STATS_PROG_PATH, "alloc", "300", NULL};
  run_prog(&r, argv, NULL, NULL);
  cr_assert_eq(r.status, 0, "%s", r.err);
  size_t len = 0;
  unsigned char *p = (unsigned char *)read_file(png, &len);
  cr_assert_not_null(p, "no %s: %s", png, r.err);
  cr_assert_gt(len, 2000, "PNG of %zu bytes", len);
  cr_assert_eq(memcmp(p, "\x89PNG\r\n\x1a\n", 8), 0, "not a PNG");
  cr_assert_eq(memcmp(p + 12, "IHDR", 4), 0);
  cr_assert_eq(be32(p + 16), 1000);
  cr_assert_eq(be32(p + 20), 600);
  free(p);
  char *samples = read_file(dat, NULL);
  cr_assert_not_null(samples);
  int lines = 0;
  for (char *s = samples; *s; s++) lines += *s == '\n';
  cr_assert_geq(lines, 20, "%d sample lines", lines);
  free(samples);
  remove_tree(dir);
}
