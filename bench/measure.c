/* measure.c - runs one benchmark child and reports its wall time, CPU time and peak RSS.
 *
 *   measure RESULT_FILE [-p PRELOAD_LIB] -- PROGRAM [ARGS...]
 *
 * Why not measure from bench/run directly: Linux carries the peak RSS of the process
 * image that called exec() over into the new program's ru_maxrss, so a child forked from
 * the Python runner could never report less than the runner's own ~16 MiB.  This helper is
 * tiny, so forking from it keeps the floor at about 1 MiB.  It also sets LD_PRELOAD only
 * for the child, so the allocator under test never runs inside the measuring code.
 *
 * RESULT_FILE receives one line: "wall_s user_s sys_s maxrss_kib".  The exit status is
 * the child's (128+signal if it was killed).  SIGTERM/SIGINT/SIGHUP are forwarded to the
 * child, so bench/run can stop a server (redis) through this helper. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t child;

static void forward(int sig)
{
    if (child > 0)
        kill(child, sig);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s RESULT_FILE [-p LIB] -- PROGRAM [ARGS...]\n", argv[0]);
        return 125;
    }
    const char *result = argv[1], *preload = NULL;
    int i = 2;
    if (strcmp(argv[i], "-p") == 0 && i + 1 < argc) {
        preload = argv[i + 1];
        i += 2;
    }
    if (i >= argc || strcmp(argv[i], "--") != 0 || i + 1 >= argc) {
        fprintf(stderr, "measure: missing -- PROGRAM\n");
        return 125;
    }
    char **cmd = &argv[i + 1];

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) {
        perror("measure: fork");
        return 125;
    }
    if (pid == 0) {
        if (preload)
            setenv("LD_PRELOAD", preload, 1);
        else
            unsetenv("LD_PRELOAD");
        execvp(cmd[0], cmd);
        fprintf(stderr, "measure: cannot run %s: %s\n", cmd[0], strerror(errno));
        _exit(127);
    }
    child = pid;
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0)
        if (errno != EINTR) {
            perror("measure: wait4");
            return 125;
        }
    double wall = now() - t0;

    FILE *f = fopen(result, "w");
    if (!f) {
        perror("measure: result file");
        return 125;
    }
    fprintf(f, "%.6f %.6f %.6f %ld\n", wall,
            (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6,
            (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6, ru.ru_maxrss);
    fclose(f);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
