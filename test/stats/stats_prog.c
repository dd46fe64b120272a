/* stats_prog.c - a plain program (not linked with hmalloc) that the statistics tests run
 * under LD_PRELOAD=libhmalloc.so or through the hmalloc command.
 *   stats_prog alloc MS        allocate and free a few MiB over about MS milliseconds
 *   stats_prog close2          close fd 2 in an exit handler (as coreutils do)
 *   stats_prog quiet MS        no allocation for MS ms; prints malloc_count before and after
 *   stats_prog exit N          exit with status N
 *   stats_prog signal N        kill itself with signal N */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hmalloc.h"

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static void close_stderr(void) { close(2); }

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "alloc";
  long n = argc > 2 ? atol(argv[2]) : 50;
  if (strcmp(mode, "exit") == 0) return (int)n;
  if (strcmp(mode, "signal") == 0) {
    signal((int)n, SIG_DFL);
    raise((int)n);
    return 99;
  }
  if (strcmp(mode, "close2") == 0) {
    atexit(close_stderr);
    free(malloc(1000));
    return 0;
  }
  if (strcmp(mode, "quiet") == 0) {
    void (*get)(hm_stats_t *) = (void (*)(hm_stats_t *))dlsym(RTLD_DEFAULT, "hm_stats_get");
    if (get == NULL) return 2;
    hm_stats_t a, b;
    get(&a);
    sleep_ms(n);
    get(&b);
    /* write(2), not stdio: printf's buffer would be an allocation of its own */
    char line[128];
    int len = snprintf(line, sizeof line, "malloc %llu %llu\n", (unsigned long long)a.malloc_count,
                       (unsigned long long)b.malloc_count);
    if (write(1, line, (size_t)len) != len) return 3;
    return 0;
  }
  /* alloc: ramp up to ~8 MiB in steps, then free it all */
  enum { STEPS = 20 };
  static void *blocks[STEPS * 40];
  int k = 0;
  for (int s = 0; s < STEPS; s++) {
    for (int i = 0; i < 40; i++) {
      size_t size = (i % 3 == 0) ? 200000 : (i % 3 == 1) ? 5000 : 64;
      blocks[k] = malloc(size);
      memset(blocks[k], 1, size);
      k++;
    }
    sleep_ms(n / STEPS / 2 + 1);
  }
  for (int i = 0; i < k; i++) free(blocks[i]);
  sleep_ms(n / 2 + 1);
  printf("done\n");
  return 0;
}
