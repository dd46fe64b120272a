/* check_mode.c - HMALLOC_CHECK=1: overflows and writes after free are reported with the
 * block's address and the program aborts; correct programs run unchanged, and
 * malloc_usable_size reports the requested size.  Each case runs check_prog in a child
 * process with HMALLOC_CHECK=1 (the mode is chosen at start-up). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

typedef struct {
  int status;
  char err[2048];
} run_t;

static void run_prog(const char *mode, const char *size, run_t *r) {
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    int devnull = open("/dev/null", 1);
    if (devnull >= 0) dup2(devnull, 1);
    setenv("HMALLOC_CHECK", "1", 1);
    execl(CHECK_PROG, CHECK_PROG, mode, size, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  size_t len = 0;
  for (;;) {
    ssize_t k = read(fds[0], r->err + len, sizeof r->err - 1 - len);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    len += (size_t)k;
  }
  r->err[len] = '\0';
  close(fds[0]);
  cr_assert_eq(waitpid(pid, &r->status, 0), pid);
}

/* The block address check_prog printed ("block 0x..."). */
static const char *block_of(const run_t *r, char *buf, size_t len) {
  const char *b = strstr(r->err, "block 0x");
  cr_assert_not_null(b, "no block address in \"%s\"", r->err);
  size_t n = strcspn(b + 6, "\n");
  if (n >= len) n = len - 1;
  memcpy(buf, b + 6, n);
  buf[n] = '\0';
  return buf;
}

static const char *sizes[] = {"24", "3000", "20000", "300000"};

/* check_prog MODE runs to the end for every size. */
static void expect_clean_runs(const char *mode) {
  for (unsigned i = 0; i < 4; i++) {
    run_t r;
    run_prog(mode, sizes[i], &r);
    cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
              "%s, size %s: status %d, stderr \"%s\"", mode, sizes[i], r.status, r.err);
  }
}

/* check_prog MODE aborts for every size, naming the overflowed block and its size. */
static void expect_overflow_reports(const char *mode) {
  for (unsigned i = 0; i < 4; i++) {
    run_t r;
    run_prog(mode, sizes[i], &r);
    char block[64], want[160];
    block_of(&r, block, sizeof block);
    snprintf(want, sizeof want, "hmalloc: free(): buffer overflow after block %s of size %s",
             block, sizes[i]);
    cr_assert(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT,
              "%s, size %s: not aborted; stderr \"%s\"", mode, sizes[i], r.err);
    cr_assert_not_null(strstr(r.err, want), "%s, size %s: stderr \"%s\", expected \"%s\"",
                       mode, sizes[i], r.err, want);
  }
}

Test(check_mode, correct_programs_run_and_usable_size_is_the_request) {
  expect_clean_runs("ok");
}

Test(check_mode, an_overflow_is_reported_with_the_block_and_size) {
  expect_overflow_reports("overflow");
}

/* A block allocated before the library's constructor has run (by another library's
 * constructor, as libselinux's fopen in ls) is checked like any other: ls aborted with a
 * false overflow report when the first allocation of a small size skipped reading
 * HMALLOC_CHECK. */
Test(check_mode, a_block_allocated_before_the_constructor_is_checked_too) {
  expect_clean_runs("early-ok");
  expect_overflow_reports("early-overflow");
}

/* Memory that was a span, then the heap's (free chunks split and merged over it), then a span
 * of the same class at the same address again: the chunk headers and links written there in
 * between are no write after free.  Reported as one, this aborted seven modules of Python's
 * test suite (test_pickle, test_os, test_ast, ...) and this program. */
Test(check_mode, spans_carved_again_where_spans_were_are_not_writes_after_free) {
  run_t r;
  run_prog("recarve", "32", &r);
  cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "status %d, stderr \"%s\"",
            r.status, r.err);
}

Test(check_mode, a_write_after_free_is_reported) {
  /* small (checked when reused) and medium (checked when leaving the quarantine); a large
   * block is unmapped on free, so the write faults at once */
  for (unsigned i = 0; i < 3; i++) {
    run_t r;
    run_prog("uaf", sizes[i], &r);
    cr_assert(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT,
              "size %s: not aborted (status %d); stderr \"%s\"", sizes[i], r.status, r.err);
    cr_assert_not_null(strstr(r.err, "write after free in block"), "size %s: stderr \"%s\"",
                       sizes[i], r.err);
  }
  run_t r;
  run_prog("uaf", "300000", &r);
  cr_assert(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGSEGV,
            "large: expected a fault, status %d", r.status);
}

/* A large block is followed by an inaccessible page: an overrun faults on the first byte of
 * the page after the block's end (its canary included), not further on.  (Without the guard
 * a large mapping usually has another right after it, and the writes would go on.) */
Test(check_mode, an_overrun_of_a_large_block_faults_on_its_guard_page) {
  run_t r;
  run_prog("overrun", "300000", &r);
  cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 77,
            "expected the fault handler's exit, status %d; stderr \"%s\"", r.status, r.err);
  char block[64];
  block_of(&r, block, sizeof block);
  unsigned long long at = strtoull(block, NULL, 16);
  const char *f = strstr(r.err, "fault at block+");
  cr_assert_not_null(f, "stderr \"%s\"", r.err);
  unsigned long long off = strtoull(f + strlen("fault at block+"), NULL, 10);
  cr_assert(off >= 300000 && off < 300000 + 16 + 4096, "fault at offset %llu", off);
  cr_assert_eq((at + off) % 4096, 0, "fault at offset %llu, not on a page boundary", off);
}
