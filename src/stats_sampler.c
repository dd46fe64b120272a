/* stats_sampler.c - HMALLOC_STATS_INTERVAL: a background thread that appends one line of
 * counters every interval to HMALLOC_STATS_FILE (or stderr), for timelines.
 *
 * Line format (whitespace-separated, '#' lines are comments, so gnuplot reads it as is):
 *   time_ms allocated peak_allocated mapped rss heap_free cached malloc_count free_count
 *   large_count large_bytes
 * time_ms counts from the start of sampling (the library constructor).
 *
 * The thread must not allocate from the heap it measures: it formats into a stack buffer,
 * reads /proc/self/statm with open/read and writes with write(2); hmi_stats_in_sampler marks
 * it.  It is created by the library constructor once init is complete, outside every
 * allocator lock (pthread_create allocates the thread's TLS), with every signal blocked so
 * that signals meant for the program never land on it.  A program that closes the file's
 * descriptor (some close every descriptor) does not get lines in the file that replaced it:
 * the descriptor is checked against the file's identity before each write and reopened. */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "stats_internal.h"

__thread int hmi_stats_in_sampler;

static char path_buf[1024];   /* expanded path, or "" for stderr */
static int out_fd = -1;
static dev_t out_dev;
static ino_t out_ino;
static int interval_ms;
static struct timespec t0;
static hm_lock_t out_lock = HM_LOCK_INIT; /* serialises the file's reopening */

static bool out_valid(void) {
  struct stat st;
  return out_fd >= 0 && fstat(out_fd, &st) == 0 && st.st_dev == out_dev && st.st_ino == out_ino;
}

static bool out_open(void) {
  int fd;
  if (path_buf[0] != '\0') fd = open(path_buf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  else fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
  if (fd < 0) return false;
  if (fd < 100) { /* out of the way of programs that reuse low descriptors */
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    if (high >= 0) {
      close(fd);
      fd = high;
    }
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return false;
  }
  out_fd = fd;
  out_dev = st.st_dev;
  out_ino = st.st_ino;
  return true;
}

static void emit(const char *buf, size_t n) {
  hm_lock(&out_lock);
  if (!out_valid() && !out_open()) {
    hm_unlock(&out_lock);
    return;
  }
  hmi_stats_write_all(out_fd, buf, n);
  hm_unlock(&out_lock);
}

static void sample(void) {
  hms_snap_t s;
  hmi_stats_snapshot(&s);
  size_t rss = hmi_stats_rss();
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  long long ms = (long long)(now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
  if (ms < 0) ms = 0;
  const hm_stats_t *c = &s.core;
  char buf[512];
  size_t n = hmi_fmt(buf, sizeof buf, "%lld %zu %zu %zu %zu %zu %zu %llu %llu %zu %zu\n", ms,
                     c->allocated, c->peak_allocated, c->mapped, rss, c->heap_free, c->cached,
                     (unsigned long long)c->malloc_count, (unsigned long long)c->free_count,
                     c->large_count, c->large_bytes);
  if (n < sizeof buf) emit(buf, n);
}

static void *sampler_main(void *arg) {
  (void)arg;
  hmi_stats_in_sampler = 1;
  struct timespec next = t0;
  long step_ns = (long)(interval_ms % 1000) * 1000000L;
  for (;;) {
    sample();
    /* the next tick after now: ticks missed (a stopped process, a slow snapshot) are skipped
     * rather than sampled in a burst */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    do {
      next.tv_nsec += step_ns;
      next.tv_sec += interval_ms / 1000;
      if (next.tv_nsec >= 1000000000L) {
        next.tv_nsec -= 1000000000L;
        next.tv_sec++;
      }
    } while (next.tv_sec < now.tv_sec || (next.tv_sec == now.tv_sec && next.tv_nsec <= now.tv_nsec));
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) != 0) {
    }
  }
  return NULL;
}

void hmi_stats_sampler_start(int ms, const char *path) {
  static int started;
  if (__atomic_exchange_n(&started, 1, __ATOMIC_ACQ_REL)) return;
  interval_ms = ms;
  path_buf[0] = '\0';
  if (path != NULL && !hmi_stats_path(path, path_buf, sizeof path_buf)) {
    hmi_warn("hmalloc: warning: HMALLOC_STATS_FILE is too long; sampling is off\n");
    return;
  }
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (!out_open()) {
    hmi_warn("hmalloc: warning: cannot open %s for HMALLOC_STATS_FILE; sampling is off\n",
             path_buf);
    return;
  }
  char head[256];
  size_t n = hmi_fmt(head, sizeof head,
                     "# hmalloc samples: pid %d, every %d ms\n"
                     "# time_ms allocated peak_allocated mapped rss heap_free cached "
                     "malloc_count free_count large_count large_bytes\n",
                     (int)getpid(), ms);
  emit(head, n);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, (size_t)256 << 10);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t th;
  int err = pthread_create(&th, &attr, sampler_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) hmi_warn("hmalloc: warning: cannot start the statistics sampler thread\n");
}

/* At exit: one last line, so that even a short program leaves its final figures. */
void hmi_stats_sampler_final(void) {
  if (out_fd >= 0) sample();
}
