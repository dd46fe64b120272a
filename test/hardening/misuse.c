/* misuse.c - invalid and double frees, and writes that damage hmalloc's data in user memory,
 * must abort with hmalloc's one-line message.
 *
 * Linked with the whole of libhmalloc.a, so free and realloc here ARE hmalloc.  Every test
 * first runs the misuse in a forked child whose stderr is a pipe, and checks that the child
 * died of SIGABRT after writing exactly one line:
 *     hmalloc: free(): invalid pointer 0x...      (realloc: "realloc(): invalid pointer")
 *     hmalloc: free(): double free 0x...
 *     hmalloc: heap corruption: free list link of 0x... overwritten
 *     hmalloc: heap corruption: <what> at 0x...   (a medium chunk's boundary tags)
 * naming the pointer passed (or the damaged chunk).  Then it commits the same misuse itself, so Criterion sees the
 * SIGABRT it expects (.signal = SIGABRT). */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "hmalloc.h"

/* Pointers the compiler cannot see through (no -Wfree-nonheap-object, no folding). */
static void *launder(void *p) {
  void *volatile v = p;
  return v;
}

static char global_buffer[256];

typedef void (*misuse_fn)(void *arg);

/* Run fn(arg) in a child with stderr on a pipe; check it dies of SIGABRT after writing
 * exactly `<prefix><pointer>\n` where pointer is the value `ptr`. */
static void expect_abort_message(misuse_fn fn, void *arg, const char *prefix, void *ptr,
                                 const char *suffix) {
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    close(fds[1]);
    signal(SIGABRT, SIG_DFL);
    fn(arg);
    _exit(0); /* the misuse went unnoticed */
  }
  close(fds[1]);
  char out[1024];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(fds[0], out + len, sizeof out - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
    if (len == sizeof out - 1) break;
  }
  out[len] = '\0';
  close(fds[0]);
  int st = 0;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
            "the misuse did not abort (%s %d); stderr: \"%s\"",
            WIFSIGNALED(st) ? "signal" : "exit code",
            WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), out);
  char want[256];
  snprintf(want, sizeof want, "%s%p%s\n", prefix, ptr, suffix);
  cr_assert_str_eq(out, want, "stderr was \"%s\", expected \"%s\"", out, want);
}

/* ---- the misuses ---- */
static void do_free(void *p) { free(launder(p)); }
static void do_realloc(void *p) {
  void *q = realloc(launder(p), 100);
  (void)q;
}
static void do_double_free(void *p) {
  free(launder(p));
  free(launder(p));
}

/* For each test: check the message in a child, then abort here. */
#define MISUSE(fn, prefix, p)                                                               \
  do {                                                                                      \
    void *p_ = (p);                                                                         \
    expect_abort_message(fn, p_, prefix, p_, "");                                           \
    fn(p_);                                                                                 \
  } while (0)
#define INVALID_FREE(p) MISUSE(do_free, "hmalloc: free(): invalid pointer ", p)
#define INVALID_REALLOC(p) MISUSE(do_realloc, "hmalloc: realloc(): invalid pointer ", p)
#define DOUBLE_FREE(p) MISUSE(do_double_free, "hmalloc: free(): double free ", p)

/* A few blocks on each side, so the interesting block is not alone in its span or arena. */
static void *tiered_block(size_t size) {
  void *before = malloc(size), *p = malloc(size), *after = malloc(size);
  cr_assert(before && p && after);
  memset(p, 0x5A, size);
  return p;
}

#define SMALL 100
#define MEDIUM 10000
#define LARGE (1024 * 1024)

/* ---- free ---- */
Test(misuse, free_stack_pointer, .signal = SIGABRT) {
  char buf[64];
  memset(buf, 1, sizeof buf);
  INVALID_FREE(buf + 16);
}

Test(misuse, free_global, .signal = SIGABRT) { INVALID_FREE(global_buffer + 32); }

Test(misuse, free_interior_small, .signal = SIGABRT) {
  char *p = tiered_block(SMALL);
  INVALID_FREE(p + 16);
}

Test(misuse, free_interior_medium, .signal = SIGABRT) {
  char *p = tiered_block(MEDIUM);
  INVALID_FREE(p + 64);
}

Test(misuse, free_interior_large, .signal = SIGABRT) {
  char *p = tiered_block(LARGE);
  INVALID_FREE(p + 16);
}

Test(misuse, free_interior_large_next_page, .signal = SIGABRT) {
  char *p = tiered_block(LARGE);
  INVALID_FREE(p + 8192);
}

Test(misuse, free_mmap_pointer, .signal = SIGABRT) {
  char *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(m, MAP_FAILED);
  INVALID_FREE(m + 4096);
}

/* Above the 47 bits of user space: free's fast path reads the page map without a range
 * test, where such an address names the page 2^47 (or a multiple) below it, a real block. */
#define ALIASED(p, k) ((char *)(p) + ((uintptr_t)(k) << 47))
Test(misuse, free_small_block_address_plus_2_pow_47, .signal = SIGABRT) {
  INVALID_FREE(ALIASED(tiered_block(SMALL), 1));
}

Test(misuse, free_small_block_address_plus_3_times_2_pow_47, .signal = SIGABRT) {
  INVALID_FREE(ALIASED(tiered_block(48), 3)); /* 48 divides 3 * 2^47 */
}

Test(misuse, free_medium_block_address_plus_2_pow_47, .signal = SIGABRT) {
  INVALID_FREE(ALIASED(tiered_block(MEDIUM), 1));
}

Test(misuse, free_large_block_address_plus_8_times_2_pow_47, .signal = SIGABRT) {
  INVALID_FREE(ALIASED(tiered_block(LARGE), 8));
}

/* ---- realloc ---- */
Test(misuse, realloc_stack_pointer, .signal = SIGABRT) {
  char buf[64];
  memset(buf, 1, sizeof buf);
  INVALID_REALLOC(buf + 16);
}

Test(misuse, realloc_global, .signal = SIGABRT) { INVALID_REALLOC(global_buffer + 32); }

Test(misuse, realloc_interior_small, .signal = SIGABRT) {
  char *p = tiered_block(SMALL);
  INVALID_REALLOC(p + 16);
}

Test(misuse, realloc_interior_medium, .signal = SIGABRT) {
  char *p = tiered_block(MEDIUM);
  INVALID_REALLOC(p + 64);
}

Test(misuse, realloc_interior_large, .signal = SIGABRT) {
  char *p = tiered_block(LARGE);
  INVALID_REALLOC(p + 16);
}

Test(misuse, realloc_mmap_pointer, .signal = SIGABRT) {
  char *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(m, MAP_FAILED);
  INVALID_REALLOC(m + 4096);
}

/* ---- double free ---- */
Test(misuse, double_free_small, .signal = SIGABRT) { DOUBLE_FREE(tiered_block(SMALL)); }

Test(misuse, double_free_medium, .signal = SIGABRT) { DOUBLE_FREE(tiered_block(MEDIUM)); }

Test(misuse, double_free_large, .signal = SIGABRT) { DOUBLE_FREE(tiered_block(LARGE)); }

/* A small block freed by one thread (so it sits in that thread's cache, the thread still
 * running) and freed again by another: the key in the block gives it away, though the second
 * thread's list and the block's span do not hold it.  (glibc's tcache searches only the
 * calling thread's list and misses this.) */
static sem_t freed, never;
static void *free_in_thread(void *p) {
  free(malloc(SMALL)); /* this thread's cache is set up, so the block stays in it */
  free(launder(p));
  sem_post(&freed);
  sem_wait(&never); /* keep the cache alive until the process aborts */
  return NULL;
}
static void do_cross_thread_double_free(void *p) {
  sem_init(&freed, 0, 0);
  sem_init(&never, 0, 0);
  pthread_t t;
  pthread_create(&t, NULL, free_in_thread, p);
  sem_wait(&freed);
  free(launder(p));
}
Test(misuse, double_free_small_across_threads, .signal = SIGABRT) {
  free(malloc(SMALL)); /* this thread's cache is set up */
  MISUSE(do_cross_thread_double_free, "hmalloc: free(): double free ", tiered_block(SMALL));
}
/* The same with a medium block, kept whole in the first thread's medium cache. */
Test(misuse, double_free_medium_across_threads, .signal = SIGABRT) {
  free(malloc(SMALL));
  MISUSE(do_cross_thread_double_free, "hmalloc: free(): double free ", tiered_block(MEDIUM));
}

/* A small block freed, back in its span, then written after free (its free mark gone) and
 * freed again: free's own check cannot see it, but its span's free map still has it. */
static void *free_then_exit(void *p) {
  free(launder(p)); /* a new thread's first call: the block goes back to its span at once */
  return NULL;
}
static void do_double_free_after_write_after_free(void *p) {
  pthread_t t;
  pthread_create(&t, NULL, free_then_exit, p);
  pthread_join(t, NULL);
  ((volatile uintptr_t *)p)[1] = 0x4141414141414141u; /* over its free mark */
  pthread_create(&t, NULL, free_then_exit, p);
  pthread_join(t, NULL);
}
Test(misuse, double_free_small_after_a_write_after_free, .signal = SIGABRT) {
  MISUSE(do_double_free_after_write_after_free, "hmalloc: free(): double free ",
         tiered_block(SMALL));
}

/* ---- heap corruption: damage to hmalloc's data in user memory is reported, not followed ----
 * As above: the report is checked in a child, then the test process aborts the same way. */
#define CORRUPTION(fn, arg, what, at)                                                       \
  do {                                                                                      \
    expect_abort_message(fn, (arg), "hmalloc: heap corruption: " what " at ", (at), "");    \
    fn(arg);                                                                                \
  } while (0)

/* A write after free that changes a freed small block's link (safe-linking, internal.h):
 * the next malloc of its class pops the block and finds the decoded link misaligned.  One
 * flipped low bit always does that; arbitrary data does 15 times in 16. */
static void do_write_after_free_to_link(void *p) {
  free(launder(p));
  ((volatile uintptr_t *)p)[0] ^= 1;
  void *q = malloc(SMALL);
  (void)q;
}
Test(misuse, write_after_free_to_a_small_link, .signal = SIGABRT) {
  free(malloc(SMALL)); /* this thread's cache is set up: the freed block stays in it */
  void *p = tiered_block(SMALL);
  expect_abort_message(do_write_after_free_to_link, p,
                       "hmalloc: heap corruption: free list link of ", p, " overwritten");
  do_write_after_free_to_link(p);
}

/* Medium blocks aligned above 16 bytes are not of a medium class size, so their free goes
 * to the arena at once (no per-thread medium cache), where it merges with free neighbours. */
static void *aligned_medium(void) {
  void *p = NULL;
  cr_assert_eq(posix_memalign(&p, 64, MEDIUM), 0);
  return p;
}

/* Three aligned medium blocks; the third keeps the second off the heap's top.  Between
 * the first and the second there may be a free chunk left by the alignment. */
static void *medium_pair(void **second) {
  void *a = aligned_medium(), *b = aligned_medium(), *c = aligned_medium();
  cr_assert_lt((char *)a, (char *)b);
  (void)c;
  *second = b;
  return a;
}

/* An overflow past a medium block over the next chunk's header: the free that would merge
 * with that chunk reports it instead of reading its size. */
static void do_overflow_over_next_header(void *a) {
  memset((char *)a + malloc_usable_size(a), 0x41, 16);
  free(launder(a));
}
Test(misuse, overflow_over_the_next_medium_header, .signal = SIGABRT) {
  void *b, *a = medium_pair(&b);
  CORRUPTION(do_overflow_over_next_header, a, "bad next chunk header",
             (char *)a + malloc_usable_size(a));
}

/* A write just below a medium block, over the footer (last word) of the free chunk before
 * it (the first block, freed, with any alignment gap): the free that would merge with that
 * chunk reports the forged size. */
static size_t forged_size;
static void do_forge_prev_footer(void *b) {
  ((volatile size_t *)b)[-3] = forged_size;
  free(launder(b));
}
/* A size reaching below the address space's start, which wraps round to a huge address. */
Test(misuse, forged_footer_wrapping_below_zero, .signal = SIGABRT) {
  void *b, *a = medium_pair(&b);
  free(a);
  forged_size = ((size_t)1 << 63) | 16;
  CORRUPTION(do_forge_prev_footer, b, "bad footer before chunk", (char *)b - 16);
}
/* A size pointing into the free chunk's body, where no header is. */
Test(misuse, forged_footer_into_a_chunk_body, .signal = SIGABRT) {
  void *b, *a = medium_pair(&b);
  free(a);
  forged_size = 4096;
  CORRUPTION(do_forge_prev_footer, b, "bad previous chunk header", (char *)b - 16 - 4096);
}
