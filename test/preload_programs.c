/* preload_programs.c - real programs with libhmalloc.so preloaded: python3, sqlite3, sort and
 * gcc.  Each run checks that libhmalloc.so really is mapped into the program (read from
 * /proc/PID/maps while the program waits for its standard input) and that the output is
 * byte for byte the output of the same run without LD_PRELOAD.
 * This executable is NOT linked with hmalloc: only the programs it starts use it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#ifndef HMALLOC_SO_PATH
#error "HMALLOC_SO_PATH must name the built libhmalloc.so"
#endif

TestSuite(preload_programs, .timeout = 240);

/* ---- growing buffers (plain libc malloc: this process does not use hmalloc) ----------- */

typedef struct buf_s {
  char *data;
  size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    b->data = realloc(b->data, cap);
    cr_assert_not_null(b->data);
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
}

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf_t *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  cr_assert(n >= 0 && (size_t)n < sizeof tmp);
  buf_add(b, tmp, (size_t)n);
}

static bool file_contains(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  if (!f) return false;
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) found = strstr(line, needle) != NULL;
  fclose(f);
  return found;
}

static bool maps_have_hmalloc(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
  return file_contains(path, "libhmalloc.so");
}

/* Some child of pid (found through /proc/N/stat) has libhmalloc.so mapped. */
static bool child_has_hmalloc(pid_t pid) {
  DIR *d = opendir("/proc");
  if (!d) return false;
  struct dirent *e;
  bool found = false;
  while (!found && (e = readdir(d)) != NULL) {
    char *end;
    long n = strtol(e->d_name, &end, 10);
    if (*end || n <= 0) continue;
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", n);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t got = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[got] = 0;
    char *rp = strrchr(stat, ')'); /* the command name may hold spaces */
    int ppid = 0;
    if (rp && sscanf(rp + 1, " %*c %d", &ppid) == 1 && ppid == pid)
      found = maps_have_hmalloc((pid_t)n);
  }
  closedir(d);
  return found;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct run_s {
  buf_t out, err;
  int status;
  bool loaded;       /* libhmalloc.so seen in the program's maps */
  bool child_loaded; /* ... and in a child's (when asked) */
} run_t;

/* Runs argv with `input` on its standard input.  With `preload`, LD_PRELOAD is set to the
 * library, and before any input is written (the program is then blocked reading stdin, so
 * its libraries are all mapped) its /proc/PID/maps is checked for libhmalloc.so; with
 * `want_child` the same is checked in a child process (gcc's cc1, which reads the stdin). */
static void run_prog(char *const argv[], const char *const env[], bool preload, bool want_child,
                     const char *input, size_t input_len, run_t *res) {
  memset(res, 0, sizeof *res);
  int in[2], out[2], err[2];
  cr_assert_eq(pipe(in), 0);
  cr_assert_eq(pipe(out), 0);
  cr_assert_eq(pipe(err), 0);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (int i = 0; i < 2; i++) {
      close(in[i]);
      close(out[i]);
      close(err[i]);
    }
    if (preload) setenv("LD_PRELOAD", HMALLOC_SO_PATH, 1);
    else unsetenv("LD_PRELOAD");
    for (size_t i = 0; env && env[i]; i++) putenv((char *)env[i]);
    execvp(argv[0], argv);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);

  if (preload) {
    double deadline = now_s() + 20;
    while (now_s() < deadline) {
      if (!res->loaded) res->loaded = maps_have_hmalloc(pid);
      if (want_child && !res->child_loaded) res->child_loaded = child_has_hmalloc(pid);
      if (res->loaded && (!want_child || res->child_loaded)) break;
      siginfo_t si = {0};
      if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid)
        break; /* exited before reading its input */
      usleep(2000);
    }
  }

  /* feed the input and collect the output without blocking on either side */
  fcntl(in[1], F_SETFL, O_NONBLOCK);
  size_t written = 0;
  int in_fd = in[1];
  if (input_len == 0) {
    close(in_fd);
    in_fd = -1;
  }
  int out_open = 1, err_open = 1;
  char chunk[65536];
  while (out_open || err_open || in_fd >= 0) {
    struct pollfd fds[3];
    int nf = 0;
    int i_out = -1, i_err = -1, i_in = -1;
    if (out_open) fds[i_out = nf++] = (struct pollfd){.fd = out[0], .events = POLLIN};
    if (err_open) fds[i_err = nf++] = (struct pollfd){.fd = err[0], .events = POLLIN};
    if (in_fd >= 0) fds[i_in = nf++] = (struct pollfd){.fd = in_fd, .events = POLLOUT};
    int rc = poll(fds, (nfds_t)nf, 200000);
    cr_assert_gt(rc, 0, "%s: no progress for 200 s", argv[0]);
    if (i_out >= 0 && fds[i_out].revents) {
      ssize_t n = read(out[0], chunk, sizeof chunk);
      if (n > 0) buf_add(&res->out, chunk, (size_t)n);
      else out_open = 0;
    }
    if (i_err >= 0 && fds[i_err].revents) {
      ssize_t n = read(err[0], chunk, sizeof chunk);
      if (n > 0) buf_add(&res->err, chunk, (size_t)n);
      else err_open = 0;
    }
    if (i_in >= 0 && fds[i_in].revents) {
      if (fds[i_in].revents & (POLLERR | POLLHUP)) {
        close(in_fd);
        in_fd = -1;
        continue;
      }
      ssize_t n = write(in_fd, input + written, input_len - written);
      if (n > 0) written += (size_t)n;
      else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        close(in_fd);
        in_fd = -1;
        continue;
      }
      if (written == input_len) {
        close(in_fd);
        in_fd = -1;
      }
    }
  }
  close(out[0]);
  close(err[0]);
  cr_assert_eq(waitpid(pid, &res->status, 0), pid);
  if (!res->out.data) buf_add(&res->out, "", 0);
  if (!res->err.data) buf_add(&res->err, "", 0);
}

static void free_run(run_t *r) {
  free(r->out.data);
  free(r->err.data);
}

static bool program_exists(const char *path) { return access(path, X_OK) == 0; }

static void assert_exit0(const run_t *r, const char *what) {
  if (WIFSIGNALED(r->status))
    cr_assert_fail("%s killed by signal %d (%s); stderr:\n%.4000s", what, WTERMSIG(r->status),
                   strsignal(WTERMSIG(r->status)), r->err.data);
  cr_assert(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0,
            "%s exited with %d; stderr:\n%.4000s", what, WEXITSTATUS(r->status), r->err.data);
}

/* Runs the program twice, without and with hmalloc, and compares. */
static void compare_runs(char *const argv[], const char *const env[], bool want_child,
                         const char *input, size_t input_len, run_t *plain, run_t *hm) {
  run_prog(argv, env, false, false, input, input_len, plain);
  assert_exit0(plain, "the run without LD_PRELOAD");
  cr_assert_gt(plain->out.len, 0, "%s printed nothing", argv[0]);
  run_prog(argv, env, true, want_child, input, input_len, hm);
  cr_assert(hm->loaded, "%s: libhmalloc.so (%s) not found in /proc/PID/maps under LD_PRELOAD",
            argv[0], HMALLOC_SO_PATH);
  if (want_child)
    cr_assert(hm->child_loaded, "%s: libhmalloc.so not mapped in its child process", argv[0]);
  assert_exit0(hm, "the run with LD_PRELOAD=libhmalloc.so");
  if (hm->out.len != plain->out.len || memcmp(hm->out.data, plain->out.data, plain->out.len)) {
    size_t i = 0;
    while (i < hm->out.len && i < plain->out.len && hm->out.data[i] == plain->out.data[i]) i++;
    size_t from = i > 200 ? i - 200 : 0;
    cr_assert_fail("%s: output differs with hmalloc (%zu vs %zu bytes) from byte %zu:\n"
                   "--- plain ---\n%.600s\n--- hmalloc ---\n%.600s\n--- hmalloc stderr ---\n%.2000s",
                   argv[0], plain->out.len, hm->out.len, i, plain->out.data + from,
                   hm->out.data + from, hm->err.data);
  }
}

/* ---- the library is loaded and actually used ------------------------------------------ */

Test(preload_programs, python_global_malloc_is_hmalloc) {
  if (!program_exists("/usr/bin/python3")) cr_skip_test("/usr/bin/python3 not installed");
  /* call the process's global malloc (what every library in it calls) through ctypes and
   * see hmalloc account for it: hm_stats_get must show the bytes, hm_malloc_usable_size must
   * know the block, and the interpreter's own allocations must be counted */
  const char *script =
      "import ctypes, sys\n"
      "g = ctypes.CDLL(None)\n"
      "g.malloc.restype = ctypes.c_void_p\n"
      "g.malloc.argtypes = [ctypes.c_size_t]\n"
      "g.free.argtypes = [ctypes.c_void_p]\n"
      "g.hm_malloc_usable_size.restype = ctypes.c_size_t\n"
      "g.hm_malloc_usable_size.argtypes = [ctypes.c_void_p]\n"
      "class St(ctypes.Structure):\n"
      "    _fields_ = [(n, ctypes.c_size_t) for n in ('allocated','peak_allocated','mapped',\n"
      "               'peak_mapped','heap_free','cached','large_count','large_bytes')] + \\\n"
      "               [(n, ctypes.c_uint64) for n in ('malloc_count','free_count','realloc_count',\n"
      "               'mmap_count','munmap_count','brk_grow_count','brk_trim_count','splits',\n"
      "               'coalesces')]\n"
      "s = St()\n"
      "g.hm_stats_get(ctypes.byref(s))\n"
      "before, large_before = s.malloc_count, s.large_count\n"
      "p = g.malloc(3 << 20)\n"
      "g.hm_stats_get(ctypes.byref(s))\n"
      "ok = s.large_count == large_before + 1 and g.hm_malloc_usable_size(p) >= (3 << 20)\n"
      "print('global malloc(3 MiB) seen by hmalloc:', ok)\n"
      "g.free(p)\n"
      "junk = [bytes(1000 + i) for i in range(1000)]\n"
      "g.hm_stats_get(ctypes.byref(s))\n"
      "print('malloc_count', before, s.malloc_count)\n"
      "sys.exit(0 if ok and s.malloc_count >= before + 1000 else 3)\n";
  char *argv[] = {"/usr/bin/python3", "-", NULL};
  const char *env[] = {"PYTHONMALLOC=malloc", NULL};
  run_t r;
  run_prog(argv, env, true, false, script, strlen(script), &r);
  cr_assert(r.loaded, "libhmalloc.so not mapped into python3");
  assert_exit0(&r, "python3 calling hm_stats_get");
  cr_assert(strstr(r.out.data, "seen by hmalloc: True") != NULL,
            "python3's malloc is not hmalloc's:\n%s", r.out.data);
  free_run(&r);
}

/* ---- python3: an object-heavy JSON workload --------------------------------------------- */

Test(preload_programs, python3_json_workload) {
  if (!program_exists("/usr/bin/python3")) cr_skip_test("/usr/bin/python3 not installed");
  const char *script =
      "import json, hashlib, random\n"
      "rng = random.Random(1234)\n"
      "docs = []\n"
      "for i in range(60000):\n"
      "    d = {'id': i, 'name': 'user%07d' % rng.randrange(10**7),\n"
      "         'tags': ['t%d' % rng.randrange(500) for _ in range(rng.randrange(12))],\n"
      "         'score': rng.random() * 1000,\n"
      "         'nested': {'a': [rng.randrange(1000) for _ in range(rng.randrange(20))],\n"
      "                    'b': 'x' * rng.randrange(300)}}\n"
      "    docs.append(d)\n"
      "text = json.dumps(docs, sort_keys=True)\n"
      "back = json.loads(text)\n"
      "assert back == docs\n"
      "back.sort(key=lambda d: (d['name'], d['id']))\n"
      "index = {}\n"
      "for d in back:\n"
      "    for t in d['tags']:\n"
      "        index.setdefault(t, []).append(d['id'])\n"
      "big = [json.dumps(d) for d in back[::3]]\n"
      "h = hashlib.sha256()\n"
      "for s in big: h.update(s.encode())\n"
      "print(len(text), len(index), sum(len(v) for v in index.values()))\n"
      "print(h.hexdigest())\n"
      "print(json.dumps(back[:3], sort_keys=True)[:2000])\n";
  char *argv[] = {"/usr/bin/python3", "-", NULL};
  const char *env[] = {"PYTHONMALLOC=malloc", "PYTHONHASHSEED=0", NULL};
  run_t plain, hm;
  compare_runs(argv, env, false, script, strlen(script), &plain, &hm);
  free_run(&plain);
  free_run(&hm);
}

/* ---- sqlite3: a few hundred thousand rows with an index --------------------------------- */

Test(preload_programs, sqlite3_rows_and_index) {
  if (!program_exists("/usr/bin/sqlite3")) cr_skip_test("/usr/bin/sqlite3 not installed");
  const char *sql =
      "PRAGMA cache_size = -65536;\n"
      "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, name TEXT, payload BLOB);\n"
      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)\n"
      "  INSERT INTO t SELECT x, (x * 7919) % 100003, printf('name-%08d', (x * 104729) % 1000003),\n"
      "                zeroblob(x % 200) FROM c;\n"
      "CREATE INDEX t_k ON t(k);\n"
      "CREATE INDEX t_name ON t(name);\n"
      "SELECT count(*), sum(k), max(name), min(name), sum(length(payload)) FROM t;\n"
      "SELECT k, count(*) FROM t WHERE k BETWEEN 500 AND 520 GROUP BY k ORDER BY k;\n"
      "SELECT id, name FROM t WHERE name > 'name-00999000' ORDER BY name LIMIT 20;\n"
      "DELETE FROM t WHERE id % 3 = 0;\n"
      "UPDATE t SET name = name || '-u' WHERE k % 11 = 0;\n"
      "SELECT count(*), count(DISTINCT k), sum(length(name)) FROM t;\n"
      "SELECT group_concat(name, ',') FROM (SELECT name FROM t ORDER BY name DESC LIMIT 50);\n"
      "PRAGMA integrity_check;\n";
  char *argv[] = {"/usr/bin/sqlite3", ":memory:", NULL};
  run_t plain, hm;
  compare_runs(argv, NULL, false, sql, strlen(sql), &plain, &hm);
  cr_assert(strstr(plain.out.data, "300000|") != NULL, "unexpected sqlite3 output:\n%.2000s",
            plain.out.data);
  cr_assert(strstr(hm.out.data, "\nok\n") != NULL, "integrity_check failed:\n%.2000s",
            hm.out.data);
  free_run(&plain);
  free_run(&hm);
}

/* ---- sort: a million lines ------------------------------------------------------------- */

Test(preload_programs, sort_million_lines) {
  if (!program_exists("/usr/bin/sort")) cr_skip_test("/usr/bin/sort not installed");
  buf_t in = {0};
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < 1000000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    int len = (int)(x % 40);
    char line[64];
    int n = snprintf(line, sizeof line, "%016llx%.*s\n", (unsigned long long)x, len,
                     "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN");
    buf_add(&in, line, (size_t)n);
  }
  char *argv[] = {"/usr/bin/sort", "--parallel=2", "-S", "64M", NULL};
  const char *env[] = {"LC_ALL=C", NULL};
  run_t plain, hm;
  compare_runs(argv, env, false, in.data, in.len, &plain, &hm);
  cr_assert_eq(hm.out.len, in.len, "sort output has %zu bytes, input %zu", hm.out.len, in.len);
  /* spot check the order */
  char *prev = hm.out.data;
  for (int i = 0; i < 1000; i++) {
    char *nl = strchr(prev, '\n');
    cr_assert_not_null(nl);
    cr_assert(strncmp(prev, nl + 1, 16) <= 0, "sort output not sorted at line %d", i);
    prev = nl + 1;
  }
  free(in.data);
  free_run(&plain);
  free_run(&hm);
}

/* ---- gcc: compile a generated C file, run the result ----------------------------------- */

static void generate_program(buf_t *src) {
  buf_printf(src, "#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\n");
  buf_printf(src, "struct node { struct node *next; unsigned long v; char tag[24]; };\n");
  enum { F = 400 };
  for (int i = 0; i < F; i++) {
    buf_printf(src, "static unsigned long f%d(unsigned long x) {\n", i);
    buf_printf(src, "  struct node n[%d]; unsigned long acc = %dUL;\n", 4 + i % 7, i * 31 + 1);
    buf_printf(src, "  for (int k = 0; k < %d; k++) { n[k].v = x * %dUL + (unsigned long)k;\n",
               4 + i % 7, i % 13 + 3);
    buf_printf(src, "    snprintf(n[k].tag, sizeof n[k].tag, \"f%d-%%d\", k);\n", i);
    buf_printf(src, "    acc = acc * 1099511628211UL ^ n[k].v ^ (unsigned long)strlen(n[k].tag); }\n");
    buf_printf(src, "  switch (x %% 5) {\n");
    for (int c = 0; c < 5; c++)
      buf_printf(src, "  case %d: acc += %dUL * (x >> %d); break;\n", c, i * 7 + c, c + 1);
    buf_printf(src, "  }\n");
    if (i > 0) buf_printf(src, "  if (x %% %d == 1) acc ^= f%d(x / 3);\n", i % 9 + 2, i - 1);
    buf_printf(src, "  return acc;\n}\n");
  }
  buf_printf(src, "int main(void) {\n  unsigned long total = 0;\n");
  buf_printf(src, "  unsigned long (*fs[])(unsigned long) = {");
  for (int i = 0; i < F; i++) buf_printf(src, "f%d,", i);
  buf_printf(src, "};\n");
  buf_printf(src, "  for (unsigned long x = 0; x < 2000; x++) {\n"
                  "    total = total * 31 + fs[x %% %d](x);\n"
                  "    if (x %% 250 == 0) printf(\"%%lu %%lu\\n\", x, total);\n  }\n",
             F);
  buf_printf(src, "  printf(\"total %%lu\\n\", total);\n  return 0;\n}\n");
}

Test(preload_programs, gcc_compile_and_run) {
  if (!program_exists("/usr/bin/gcc")) cr_skip_test("/usr/bin/gcc not installed");
  buf_t src = {0};
  generate_program(&src);
  char dir[] = "/tmp/hm_gcc_XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  char exe_plain[128], exe_hm[128];
  snprintf(exe_plain, sizeof exe_plain, "%s/plain", dir);
  snprintf(exe_hm, sizeof exe_hm, "%s/hm", dir);

  char *argv_plain[] = {"/usr/bin/gcc", "-O2", "-x", "c", "-", "-o", exe_plain, NULL};
  char *argv_hm[] = {"/usr/bin/gcc", "-O2", "-x", "c", "-", "-o", exe_hm, NULL};
  run_t cp, ch;
  run_prog(argv_plain, NULL, false, false, src.data, src.len, &cp);
  assert_exit0(&cp, "gcc without LD_PRELOAD");
  run_prog(argv_hm, NULL, true, true, src.data, src.len, &ch);
  cr_assert(ch.loaded, "libhmalloc.so not mapped into the gcc driver");
  cr_assert(ch.child_loaded, "libhmalloc.so not mapped into cc1");
  assert_exit0(&ch, "gcc with LD_PRELOAD=libhmalloc.so");
  cr_assert_str_eq(ch.err.data, cp.err.data, "gcc diagnostics differ");

  char *run_plain[] = {exe_plain, NULL};
  char *run_hm[] = {exe_hm, NULL};
  run_t rp, rh;
  run_prog(run_plain, NULL, false, false, "", 0, &rp);
  run_prog(run_hm, NULL, false, false, "", 0, &rh);
  assert_exit0(&rp, "the program compiled without hmalloc");
  assert_exit0(&rh, "the program compiled with hmalloc");
  cr_assert(strstr(rp.out.data, "total ") != NULL, "unexpected output:\n%s", rp.out.data);
  cr_assert_str_eq(rh.out.data, rp.out.data,
                   "the two compiled programs print different things");
  /* the compiled program itself, run under hmalloc too */
  run_t rhh;
  run_prog(run_hm, NULL, true, false, "", 0, &rhh);
  assert_exit0(&rhh, "the compiled program under LD_PRELOAD");
  cr_assert_str_eq(rhh.out.data, rp.out.data);

  unlink(exe_plain);
  unlink(exe_hm);
  rmdir(dir);
  free(src.data);
  free_run(&cp);
  free_run(&ch);
  free_run(&rp);
  free_run(&rh);
  free_run(&rhh);
}
