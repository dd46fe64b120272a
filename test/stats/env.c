/* env.c - the statistics variables, in child processes running stats_prog under
 * LD_PRELOAD=libhmalloc.so: HMALLOC_STATS=1 (also when the program closes fd 2 at exit),
 * text:PATH and json:PATH (with %p), HMALLOC_STATS_INTERVAL with HMALLOC_STATS_FILE, and
 * one warning line for each malformed value while the program carries on. */
#include "stats_test.h"

TestSuite(stats_env, .timeout = 120);

static char preload[600];
static const char *env_of(const char *a, const char *b, const char *c, const char *d,
                          const char *const **out) {
  static const char *env[6];
  env[0] = preload;
  env[1] = a;
  env[2] = b;
  env[3] = c;
  env[4] = d;
  env[5] = NULL;
  *out = env;
  return NULL;
}

static void run_child(run_t *r, const char *mode, const char *arg, const char *e1,
                      const char *e2, const char *e3) {
  snprintf(preload, sizeof preload, "LD_PRELOAD=%s", HMALLOC_SO_PATH);
  const char *const *env;
  env_of(e1, e2, e3, NULL, &env);
  char *const argv[] = {STATS_PROG_PATH, (char *)mode, (char *)arg, NULL};
  run_prog(r, argv, env, NULL);
}

static run_t r;

Test(stats_env, report_on_stderr_at_exit) {
  run_child(&r, "alloc", "10", "HMALLOC_STATS=1", NULL, NULL);
  cr_assert_eq(r.status, 0, "%s", r.err);
  cr_assert_str_eq(r.out, "done\n");
  cr_assert_not_null(strstr(r.err, "hmalloc stats (pid "), "%s", r.err);
  cr_assert_not_null(strstr(r.err, "\ntier "), "%s", r.err);
  cr_assert_not_null(strstr(r.err, "stats_prog"), "%s", r.err);
}

Test(stats_env, report_survives_closed_stderr) {
  run_child(&r, "close2", NULL, "HMALLOC_STATS=1", NULL, NULL);
  cr_assert_eq(r.status, 0);
  cr_assert_not_null(strstr(r.err, "hmalloc stats (pid "), "stderr: '%s'", r.err);
}

Test(stats_env, json_and_text_files) {
  char dir[64], var[256], path[256];
  make_tmpdir(dir, sizeof dir);
  snprintf(var, sizeof var, "HMALLOC_STATS=json:%s/s.%%p.json,text:%s/r.txt", dir, dir);
  run_child(&r, "alloc", "10", var, NULL, NULL);
  cr_assert_eq(r.status, 0, "%s", r.err);
  cr_assert_eq(r.err_len, 0, "nothing on stderr expected: %s", r.err);
  snprintf(path, sizeof path, "%s/r.txt", dir);
  char *text = read_file(path, NULL);
  cr_assert_not_null(text, "no %s", path);
  cr_assert_not_null(strstr(text, "hmalloc stats (pid "));
  /* %p: the child's pid, as the text report names it */
  int pid = atoi(strstr(text, "(pid ") + 5);
  snprintf(path, sizeof path, "%s/s.%d.json", dir, pid);
  char *json = read_file(path, NULL);
  cr_assert_not_null(json, "no %s", path);
  static run_t py;
  cr_assert_eq(python_check("import json,sys; d=json.load(sys.stdin); assert d['malloc_count']>=800",
                            json, &py),
               0, "%s\n%s", py.err, json);
  free(text);
  free(json);
  remove_tree(dir);
}

Test(stats_env, interval_samples) {
  char dir[64], file[256], path[256];
  make_tmpdir(dir, sizeof dir);
  snprintf(file, sizeof file, "HMALLOC_STATS_FILE=%s/t.dat", dir);
  run_child(&r, "alloc", "200", "HMALLOC_STATS_INTERVAL=5", file, NULL);
  cr_assert_eq(r.status, 0, "%s", r.err);
  cr_assert_eq(r.err_len, 0, "%s", r.err);
  snprintf(path, sizeof path, "%s/t.dat", dir);
  char *text = read_file(path, NULL);
  cr_assert_not_null(text);
  static run_t py;
  const char *check =
      "import sys\n"
      "rows=[l.split() for l in sys.stdin if not l.startswith('#')]\n"
      "assert len(rows)>=10, len(rows)\n"
      "assert all(len(r)==11 for r in rows)\n"
      "t=[int(r[0]) for r in rows]; assert t==sorted(t) and t[-1]>=150, t\n"
      "assert max(int(r[1]) for r in rows)>=4<<20, 'allocated never reached 4 MiB'\n"
      "assert all(int(r[4])>0 for r in rows), 'rss'\n"
      "assert int(rows[-1][7])>=800\n";
  cr_assert_eq(python_check(check, text, &py), 0, "%s\n%s", py.err, text);
  cr_assert_eq(strncmp(text, "# hmalloc samples: pid ", 23), 0, "%.80s", text);
  free(text);
  remove_tree(dir);
}

Test(stats_env, sampler_thread_does_not_allocate) {
  run_child(&r, "quiet", "200", "HMALLOC_STATS_INTERVAL=1", "HMALLOC_STATS_FILE=/dev/null", NULL);
  cr_assert_eq(r.status, 0, "%s", r.err);
  unsigned long long a, b;
  cr_assert_eq(sscanf(r.out, "malloc %llu %llu", &a, &b), 2, "%s", r.out);
  cr_assert_eq(a, b, "malloc_count moved from %llu to %llu while only the sampler ran", a, b);
}

static void expect_warning(const char *var, const char *name, const char *dflt) {
  run_child(&r, "alloc", "5", var, NULL, NULL);
  cr_assert_eq(r.status, 0, "%s: status %d", var, r.status);
  cr_assert_str_eq(r.out, "done\n", "%s: the program did not carry on", var);
  const char *w = strstr(r.err, "hmalloc: warning: ");
  cr_assert_not_null(w, "%s: no warning; stderr: %s", var, r.err);
  const char *eol = strchr(w, '\n');
  cr_assert_not_null(eol);
  cr_assert_null(strstr(eol + 1, "hmalloc: warning: "), "%s: more than one warning: %s", var, r.err);
  char line[512];
  snprintf(line, sizeof line, "%.*s", (int)(eol - w), w);
  cr_assert_not_null(strstr(line, name), "%s: warning does not name %s: %s", var, name, line);
  cr_assert_not_null(strstr(line, dflt), "%s: warning does not give the default %s: %s", var,
                     dflt, line);
}

Test(stats_env, malformed_values_warn_once) {
  expect_warning("HMALLOC_STATS=yes", "HMALLOC_STATS=yes", "default 0");
  expect_warning("HMALLOC_STATS=json:", "HMALLOC_STATS=json:", "default 0");
  expect_warning("HMALLOC_STATS=1,bogus", "HMALLOC_STATS=1,bogus", "default 0");
  expect_warning("HMALLOC_STATS_INTERVAL=abc", "HMALLOC_STATS_INTERVAL=abc", "default 0");
  expect_warning("HMALLOC_STATS_INTERVAL=-5", "HMALLOC_STATS_INTERVAL=-5", "default 0");
  expect_warning("HMALLOC_STATS_INTERVAL=99999999999", "HMALLOC_STATS_INTERVAL", "default 0");
  expect_warning("HMALLOC_STATS_FILE=", "HMALLOC_STATS_FILE", "default");
}

Test(stats_env, zero_and_empty_mean_off) {
  run_child(&r, "alloc", "5", "HMALLOC_STATS=0", "HMALLOC_STATS_INTERVAL=0", NULL);
  cr_assert_eq(r.status, 0);
  cr_assert_eq(r.err_len, 0, "%s", r.err);
}
