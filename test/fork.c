/* fork.c - fork while other threads allocate and free: the child (only the forking thread
 * survives) must find every allocator lock free and every structure consistent, allocate and
 * free in every tier, start threads of its own, and exit 0.  Standard names, in an executable
 * whose malloc is hmalloc. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/wait.h>

#include "hm_test.h"

TestSuite(fork, .timeout = 120);

static atomic_int stop;
static atomic_ulong busy_ops;

/* Allocates and frees in every tier, as fast as it can, until told to stop. */
static void *busy(void *argp) {
  uint64_t rng = 0xFEEDull + (uint64_t)(uintptr_t)argp;
  void *slot[64] = {0};
  size_t slot_size[64] = {0};
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    uint64_t r = rng_next(&rng);
    unsigned i = (unsigned)(r % 64);
    if (slot[i]) {
      if (check_pattern(slot[i], slot_size[i] < 256 ? slot_size[i] : 256, i) != (size_t)-1)
        abort();
      free(slot[i]);
      slot[i] = NULL;
    } else {
      unsigned pick = (unsigned)((r >> 8) % 100);
      size_t n = pick < 85 ? 1 + (r >> 16) % 4096
                 : pick < 98 ? 4097 + (r >> 16) % 120000
                             : 131072 + (r >> 16) % (1 << 20);
      if (pick == 99) {
        if (posix_memalign(&slot[i], 4096, n) != 0) abort();
      } else {
        slot[i] = malloc(n);
      }
      if (!slot[i]) abort();
      slot_size[i] = n;
      fill_pattern(slot[i], n < 256 ? n : 256, i);
    }
    atomic_fetch_add_explicit(&busy_ops, 1, memory_order_relaxed);
  }
  for (unsigned i = 0; i < 64; i++) free(slot[i]);
  return NULL;
}

static void *child_thread(void *argp) {
  (void)argp;
  for (int i = 0; i < 2000; i++) {
    size_t n = 1 + (size_t)i * 97 % 70000;
    void *p = malloc(n);
    if (!p) return (void *)1;
    memset(p, 0x5C, n);
    free(p);
  }
  return NULL;
}

/* Runs in the child.  Returns the exit status: 0 when everything worked. */
static int child_work(void) {
  if (hm_heap_check() != 0) return 10;
  const size_t sizes[] = {1, 16, 100, 1000, 4096, 4097, 10000, 60000, 131072, 200000, 3 << 20};
  void *p[sizeof sizes / sizeof sizes[0]];
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    p[k] = malloc(sizes[k]);
    if (!p[k]) return 11;
    fill_pattern(p[k], sizes[k], k);
  }
  void *c = calloc(1000, 100);
  if (!c || first_nonzero(c, 100000) != (size_t)-1) return 12;
  void *a = NULL;
  if (posix_memalign(&a, 65536, 70000) != 0 || ((uintptr_t)a & 65535)) return 13;
  void *r = malloc(10);
  for (size_t n = 100; n < 4 * MiB; n *= 3) {
    r = realloc(r, n);
    if (!r) return 14;
    memset(r, 1, n);
  }
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
    if (check_pattern(p[k], sizes[k], k) != (size_t)-1) return 15;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) free(p[k]);
  free(c);
  free(a);
  free(r);
  /* threads in the child */
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    if (pthread_create(&t[i], NULL, child_thread, NULL) != 0) return 16;
  for (int i = 0; i < 2; i++) {
    void *ret = (void *)2;
    pthread_join(t[i], &ret);
    if (ret) return 17;
  }
  if (hm_heap_check() != 0) return 18;
  return 0;
}

static const char *describe(int status, char *buf, size_t len) {
  if (WIFEXITED(status)) snprintf(buf, len, "exited with %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(buf, len, "killed by signal %d (%s)%s", WTERMSIG(status), strsignal(WTERMSIG(status)),
             WTERMSIG(status) == SIGALRM ? ": deadlocked?" : "");
  else snprintf(buf, len, "status 0x%x", status);
  return buf;
}

static void fork_rounds(int rounds, int nested) {
  enum { T = 4 };
  pthread_t th[T];
  atomic_store(&stop, 0);
  for (int i = 0; i < T; i++) cr_assert_eq(pthread_create(&th[i], NULL, busy, (void *)(uintptr_t)i), 0);
  for (int round = 0; round < rounds; round++) {
    /* let the threads get going so that the fork lands in the middle of their work */
    unsigned long start = atomic_load(&busy_ops);
    while (atomic_load(&busy_ops) < start + 2000) sched_yield();
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork failed");
    if (pid == 0) {
      alarm(20);
      int rc = child_work();
      if (rc == 0 && nested) {
        /* the child forks again, with its own threads gone */
        pid_t g = fork();
        if (g < 0) _exit(30);
        if (g == 0) {
          alarm(20);
          _exit(child_work());
        }
        int gs = 0;
        if (waitpid(g, &gs, 0) != g) _exit(31);
        if (!WIFEXITED(gs) || WEXITSTATUS(gs) != 0) _exit(32);
      }
      _exit(rc);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    char buf[128];
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork round %d: child %s", round,
              describe(status, buf, sizeof buf));
    /* the parent keeps working too */
    void *p = malloc(50000);
    cr_assert_not_null(p);
    memset(p, 3, 50000);
    free(p);
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  assert_heap_ok();
}

Test(fork, fork_while_threads_allocate) { fork_rounds(30, 0); }

Test(fork, nested_fork_while_threads_allocate) { fork_rounds(10, 1); }

Test(fork, fork_single_threaded) {
  /* the plain case, with live blocks of every tier inherited by the child */
  void *p[5];
  const size_t sizes[] = {24, 3000, 20000, 100000, 2 << 20};
  for (int i = 0; i < 5; i++) {
    p[i] = malloc(sizes[i]);
    cr_assert_not_null(p[i]);
    fill_pattern(p[i], sizes[i], (uint64_t)i);
  }
  for (int round = 0; round < 5; round++) {
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
      alarm(20);
      for (int i = 0; i < 5; i++) {
        if (check_pattern(p[i], sizes[i], (uint64_t)i) != (size_t)-1) _exit(40);
        free(p[i]); /* inherited blocks are the child's to free */
      }
      _exit(child_work());
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    char buf[128];
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %s",
              describe(status, buf, sizeof buf));
  }
  for (int i = 0; i < 5; i++) {
    cr_assert_pattern(p[i], sizes[i], (uint64_t)i);
    free(p[i]);
  }
  assert_heap_ok();
}
