/* cr_shim.h - the few Criterion macros the hardening tests use, for builds where Criterion
 * cannot run: under ThreadSanitizer, Criterion (BoxFort) aborts at start-up with
 * "Could not initialize inheritable arena" because it maps its arena at a random fixed
 * address that TSan's shadow memory owns (Snaipe/Criterion#274).
 *
 * Include it instead of <criterion/criterion.h> when HM_NO_CRITERION is defined.  Each test
 * runs in a forked child, one at a time; the run ends with Criterion's synthesis line
 *   [====] Synthesis: Tested: N | Passing: N | Failing: N | Crashing: N
 * so test/run-all counts it like any Criterion executable.  Supported: Test(suite, name,
 * .timeout = s, .signal = sig, .exit_code = n), cr_assert, cr_expect, cr_assert_eq,
 * cr_expect_eq, cr_assert_neq, cr_expect_neq, cr_assert_null, cr_assert_not_null. */
#ifndef HM_CR_SHIM_H
#define HM_CR_SHIM_H

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct hmt_params {
  int signal;      /* the test passes when it dies of this signal */
  int exit_code;   /* ... or exits with this code */
  double timeout;  /* seconds, 0: none */
};

struct hmt_test {
  const char *suite, *name;
  void (*fn)(void);
  struct hmt_params params;
};

#define HMT_MAX 64
static struct hmt_test *hmt_tests[HMT_MAX];
static int hmt_count;
static int hmt_failed; /* in the child: an expectation failed */

static inline void hmt_register(struct hmt_test *t) {
  if (hmt_count < HMT_MAX) hmt_tests[hmt_count++] = t;
}

#define Test(suite, name, ...)                                                               \
  static void hmt_fn_##suite##_##name(void);                                                 \
  static struct hmt_test hmt_t_##suite##_##name = {                                          \
      #suite, #name, hmt_fn_##suite##_##name, {.signal = 0, __VA_ARGS__}};                   \
  __attribute__((constructor)) static void hmt_reg_##suite##_##name(void) {                  \
    hmt_register(&hmt_t_##suite##_##name);                                                   \
  }                                                                                          \
  static void hmt_fn_##suite##_##name(void)

__attribute__((format(printf, 6, 7))) static inline void
hmt_check(int ok, int fatal, const char *file, int line, const char *expr, const char *fmt, ...) {
  if (ok) return;
  char msg[512] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[----] %s:%d: %s: %s\n", file, line, fatal ? "Assertion Failed" : "Expectation Failed",
          msg[0] ? msg : expr);
  fflush(stderr);
  hmt_failed = 1;
  if (fatal) _exit(1);
}

#define cr_assert(cond, ...) hmt_check(!!(cond), 1, __FILE__, __LINE__, #cond, "" __VA_ARGS__)
#define cr_expect(cond, ...) hmt_check(!!(cond), 0, __FILE__, __LINE__, #cond, "" __VA_ARGS__)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_expect_eq(a, b, ...) cr_expect((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...) cr_assert((a) != (b), __VA_ARGS__)
#define cr_expect_neq(a, b, ...) cr_expect((a) != (b), __VA_ARGS__)
#define cr_assert_null(p, ...) cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)

int main(void) {
  int passing = 0, failing = 0, crashing = 0;
  for (int i = 0; i < hmt_count; i++) {
    struct hmt_test *t = hmt_tests[i];
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      return 2;
    }
    if (pid == 0) {
      if (t->params.timeout > 0) alarm((unsigned)t->params.timeout);
      t->fn();
      fflush(NULL);
      exit(hmt_failed ? 1 : 0); /* exit, not _exit: sanitizers report at exit */
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
    }
    const char *verdict;
    if (WIFSIGNALED(st) && WTERMSIG(st) == t->params.signal && t->params.signal != 0) {
      verdict = "PASS";
    } else if (WIFSIGNALED(st)) {
      verdict = WTERMSIG(st) == SIGALRM ? "TIMEOUT" : "CRASH";
    } else if (WEXITSTATUS(st) == t->params.exit_code && t->params.signal == 0) {
      verdict = "PASS";
    } else {
      verdict = "FAIL";
    }
    if (strcmp(verdict, "PASS") == 0) passing++;
    else if (strcmp(verdict, "FAIL") == 0) failing++;
    else crashing++;
    if (WIFSIGNALED(st))
      fprintf(stderr, "[%s] %s::%s: signal %d\n", verdict, t->suite, t->name, WTERMSIG(st));
    else
      fprintf(stderr, "[%s] %s::%s: exit code %d\n", verdict, t->suite, t->name, WEXITSTATUS(st));
  }
  fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: %d \n",
          hmt_count, passing, failing + crashing, crashing);
  return failing + crashing ? 1 : 0;
}

#endif
