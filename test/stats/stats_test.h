/* stats_test.h - helpers of the statistics tests: run a program with extra environment
 * variables and capture its output and status; feed text to a python3 check. */
#ifndef HM_STATS_TEST_H
#define HM_STATS_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

typedef struct run_s {
  char out[1 << 16], err[1 << 16];
  size_t out_len, err_len;
  int status; /* exit status, or 128 + signal */
} run_t;

extern char **environ;

/* Run argv[0] (searched in PATH) with the NULL-terminated list `env` of NAME=VALUE added to
 * the environment (and NAME= with an empty value... set to empty); `input` on stdin. */
static inline void run_prog(run_t *r, char *const argv[], const char *const env[],
                            const char *input) {
  int o[2], e[2], i[2];
  cr_assert_eq(pipe(o), 0);
  cr_assert_eq(pipe(e), 0);
  cr_assert_eq(pipe(i), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    dup2(o[1], 1);
    dup2(e[1], 2);
    dup2(i[0], 0);
    close(o[0]); close(o[1]); close(e[0]); close(e[1]); close(i[0]); close(i[1]);
    for (const char *const *p = env; p && *p; p++) putenv((char *)*p);
    execvp(argv[0], argv);
    _exit(126);
  }
  close(o[1]);
  close(e[1]);
  close(i[0]);
  if (input) {
    size_t n = strlen(input), done = 0;
    signal(SIGPIPE, SIG_IGN);
    while (done < n) {
      ssize_t w = write(i[1], input + done, n - done);
      if (w <= 0) break;
      done += (size_t)w;
    }
  }
  close(i[1]);
  r->out_len = r->err_len = 0;
  struct pollfd fds[2] = {{o[0], POLLIN, 0}, {e[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(fds, 2, 60000) <= 0) break;
    for (int k = 0; k < 2; k++) {
      if (fds[k].fd < 0 || fds[k].revents == 0) continue;
      char *buf = k == 0 ? r->out : r->err;
      size_t *len = k == 0 ? &r->out_len : &r->err_len;
      char tmp[4096];
      ssize_t n = read(fds[k].fd, tmp, sizeof tmp);
      if (n <= 0) {
        close(fds[k].fd);
        fds[k].fd = -1;
        open_fds--;
        continue;
      }
      size_t room = sizeof r->out - 1 - *len;
      size_t take = (size_t)n < room ? (size_t)n : room;
      memcpy(buf + *len, tmp, take);
      *len += take;
    }
  }
  r->out[r->out_len] = '\0';
  r->err[r->err_len] = '\0';
  int st;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* python3 -c script with text on stdin; returns its status (0: the check passed). */
static inline int python_check(const char *script, const char *text, run_t *r) {
  char *const argv[] = {"/usr/bin/python3", "-c", (char *)script, NULL};
  run_prog(r, argv, NULL, text);
  return r->status;
}

static inline char *read_file(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return NULL;
  struct stat st;
  fstat(fd, &st);
  char *buf = malloc((size_t)st.st_size + 1);
  size_t n = 0;
  ssize_t k;
  while ((k = read(fd, buf + n, (size_t)st.st_size - n)) > 0) n += (size_t)k;
  close(fd);
  buf[n] = '\0';
  if (len) *len = n;
  return buf;
}

static inline void make_tmpdir(char *dir, size_t len) {
  snprintf(dir, len, "/tmp/hmstats.XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
}

static inline void remove_tree(const char *dir) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) { /* best effort */ }
}

#endif
