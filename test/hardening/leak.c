/* leak.c - a program that loses one block in each tier, for valgrind_leak.sh.
 *
 * It does not link hmalloc: the script runs it under valgrind with LD_PRELOAD of
 * libhmalloc.so built with -Dvalgrind=true, and expects memcheck to report exactly these
 * blocks as definitely lost:
 *     small  100 bytes, medium 50000 bytes, large 300000 bytes  =  350100 bytes in 3 blocks
 * Around them it allocates, uses and frees blocks of every tier (no error may be reported for
 * those), keeps one block per tier reachable from a global (still reachable, not lost), and
 * allocates one block of each tier's size class first so that no lost block is the first
 * object of its span or segment (a pointer to that is kept by the allocator's metadata).
 * With the argument "clean" it frees everything: memcheck must then report no leak and no
 * error at all. */
#include <stdlib.h>
#include <string.h>

#define N_TIERS 3
static const size_t lost_sizes[N_TIERS] = {100, 50000, 300000};

static void *reachable[N_TIERS];     /* still reachable at exit */
static void *warm[N_TIERS];          /* allocated first, kept */
static void *volatile sink;

__attribute__((noinline)) static void churn(void) {
  /* blocks used and freed in every tier, realloc across tiers included */
  for (int round = 0; round < 50; round++) {
    size_t n = 16 + (size_t)round * 4000;
    char *p = malloc(n);
    memset(p, round, n);
    p = realloc(p, n * 3 + 7);
    p[n * 3 + 6] = 1;
    sink = p;
    free(p);
    char *c = calloc(round + 1, 100);
    sink = c;
    free(c);
  }
}

__attribute__((noinline)) static void lose_blocks(void) {
  for (int t = 0; t < N_TIERS; t++) {
    char *p = malloc(lost_sizes[t]);
    memset(p, 0xA5, lost_sizes[t]);
    sink = p; /* used, then the only pointer is dropped */
  }
  sink = NULL;
}

int main(int argc, char **argv) {
  int clean = argc > 1 && strcmp(argv[1], "clean") == 0;
  for (int t = 0; t < N_TIERS; t++) {
    warm[t] = malloc(lost_sizes[t]);
    memset(warm[t], 1, lost_sizes[t]);
  }
  churn();
  for (int t = 0; t < N_TIERS; t++) {
    reachable[t] = malloc(lost_sizes[t] + 8);
    memset(reachable[t], 2, lost_sizes[t] + 8);
  }
  if (!clean) lose_blocks();
  churn();
  if (clean)
    for (int t = 0; t < N_TIERS; t++) {
      free(reachable[t]);
      free(warm[t]);
      reachable[t] = warm[t] = NULL;
    }
  return 0;
}
