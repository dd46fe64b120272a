/* check_prog.c - run by check_mode.c with HMALLOC_CHECK=1 (the mode is chosen at start-up, so
 * it needs a process of its own).  Linked with the whole of libhmalloc.a.
 * usage: check_prog MODE SIZE
 *   ok        allocate, fill, check usable size == SIZE, realloc, calloc, free: exit 0
 *   overflow  write one byte past SIZE, then free (expects an abort naming the block)
 *   uaf       free, then write into the freed block, then malloc_trim and allocate again
 *             (expects an abort: "write after free")
 *   overrun   write bytes past SIZE one after the other, for three pages: a large block's guard
 *             page must stop it at once (prints "fault at block+OFFSET", exits 77)
 *   recarve   a correct program whose spans are released and carved again at the same
 *             addresses, with the heap's free chunks split over them in between (SIZE: the
 *             size of the blocks that fill the spans); exit 0
 *   early-MODE   MODE on a block allocated by a constructor that runs before the library's
 *             own (priority 101), as another library's constructor may: the process's first
 *             allocation must already be made in checking mode */
#include <malloc.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *launder(void *p) {
  void *volatile v = p;
  return v;
}

static unsigned char *early_block;

static unsigned char *overrun_block;
static void report_fault(int sig, siginfo_t *info, void *context) {
  (void)sig, (void)context;
  char line[64];
  int len = snprintf(line, sizeof line, "fault at block+%zu\n",
                     (size_t)((unsigned char *)info->si_addr - overrun_block));
  if (write(2, line, (size_t)len) < 0) _exit(78);
  _exit(77);
}

/* glibc passes main's arguments to constructors. */
__attribute__((constructor(101))) static void allocate_early(int argc, char **argv) {
  if (argc == 3 && strncmp(argv[1], "early-", 6) == 0)
    early_block = launder(malloc(strtoul(argv[2], NULL, 10)));
}

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  size_t n = strtoul(argv[2], NULL, 10);
  const char *early = "early-";
  bool is_early = strncmp(argv[1], early, strlen(early)) == 0;
  if (is_early) argv[1] += strlen(early);
  unsigned char *p = is_early ? early_block : launder(malloc(n));
  if (p == NULL) return 3;
  if (strcmp(argv[1], "ok") == 0) {
    if (malloc_usable_size(p) != n) return 4;
    memset(p, 0x11, n);
    unsigned char *q = launder(realloc(p, n * 2));
    if (q == NULL || q[n - 1] != 0x11) return 5;
    memset(q, 0x22, n * 2);
    free(q);
    unsigned char *z = launder(calloc(1, n));
    for (size_t i = 0; i < n; i++)
      if (z[i] != 0) return 6;
    free(z);
    printf("ok\n");
    return 0;
  }
  if (strcmp(argv[1], "overflow") == 0) {
    fprintf(stderr, "block %p\n", (void *)p);
    p[n] = 0x7f;
    free(p);
    return 0;
  }
  if (strcmp(argv[1], "overrun") == 0) {
    overrun_block = p;
    struct sigaction sa = {.sa_sigaction = report_fault, .sa_flags = SA_SIGINFO};
    sigaction(SIGSEGV, &sa, NULL);
    fprintf(stderr, "block %p\n", (void *)p);
    for (size_t i = n; i < n + 3 * 4096; i++) ((volatile unsigned char *)p)[i] = 0x7f;
    return 0;
  }
  if (strcmp(argv[1], "recarve") == 0) {
    /* Rounds of: spans of one class filled and freed whole (given back to the heap), then
     * mixed small and medium blocks carved from that memory and freed, a few blocks kept
     * so the heap is not trimmed away.  A free chunk split off in between writes its header
     * and links where an object of the next span of the class will be, in memory no block
     * was handed out from since. */
    enum { N = 6000, KEEP = 64 };
    static unsigned char *b[N];
    static void *keep[KEEP];
    static const size_t mixed[] = {24, 40, 72, 100, 200, 5000, 9000, 20000, 33000};
    unsigned seed = 1;
    free(p);
    for (int round = 0; round < 200; round++) {
      if (round < KEEP) keep[round] = launder(malloc(3000 + (size_t)round));
      for (int i = 0; i < N; i++) {
        b[i] = launder(malloc(n));
        memset(b[i], 0x5a, n);
      }
      for (int i = 0; i < N; i++) free(b[i]);
      for (int i = 0; i < N / 4; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t m = mixed[(seed >> 16) % 9];
        b[i] = launder(malloc(m));
        memset(b[i], 0x77, m);
      }
      for (int i = 0; i < N / 4; i++) free(b[i]);
      if (round % 8 == 7) malloc_trim(0);
    }
    for (int i = 0; i < KEEP; i++) free(keep[i]);
    printf("ok\n");
    return 0;
  }
  if (strcmp(argv[1], "uaf") == 0) {
    fprintf(stderr, "block %p\n", (void *)p);
    free(p);
    p[n - 2] = 0x7f; /* past the first 16 bytes, which hold the free-list link and mark */
    malloc_trim(0); /* medium blocks: checked as they leave the quarantine */
    for (int i = 0; i < 1000; i++) free(launder(malloc(n))); /* small blocks: on reuse */
    return 0;
  }
  return 2;
}
