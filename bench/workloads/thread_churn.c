/* thread_churn.c - many short-lived threads.
 *
 * Thread pools are not universal: many programs (and language runtimes) start a thread
 * per task.  Each short-lived thread here allocates a few hundred blocks, frees most of
 * them itself, hands the rest to the main thread (freed there, after the thread is gone)
 * and exits.  Allocators pay per thread for creating and tearing down thread caches or
 * heaps, and must reclaim what a dead thread left behind; one that leaks per-thread state
 * shows a growing peak RSS here.
 *
 * -t N keeps N threads running at a time; the total number of threads is fixed.
 *
 * Check: every block carries its pattern; the blocks a thread leaves behind are verified
 * by main before it frees them. */
#include "wl.h"

enum { PER_THREAD = 400, LEFT_BEHIND = 40 };

struct task {
    unsigned id;
    void *left[LEFT_BEHIND];
    uint32_t size[LEFT_BEHIND];
    uint64_t tag[LEFT_BEHIND];
};

static void *run(void *arg)
{
    struct task *t = arg;
    struct wl_rng rng;
    wl_rng_init(&rng, t->id);
    void *p[PER_THREAD];
    uint32_t size[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++) {
        size[i] = (uint32_t)wl_range(&rng, 8, (wl_rand(&rng) & 7) ? 256 : 8192);
        p[i] = wl_xmalloc(size[i]);
        wl_fill(p[i], size[i], wl_tag(t->id, (uint64_t)i));
    }
    for (int i = 0; i < PER_THREAD; i++) {
        if (i < LEFT_BEHIND) {   /* survives the thread */
            t->left[i] = p[i];
            t->size[i] = size[i];
            t->tag[i] = wl_tag(t->id, (uint64_t)i);
            continue;
        }
        wl_verify(p[i], size[i], wl_tag(t->id, (uint64_t)i), "thread_churn");
        free(p[i]);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    struct wl_args a;
    wl_parse(argc, argv, &a);
    size_t total = wl_scaled(&a, 12000, 200);
    struct task *tasks = calloc((size_t)a.threads, sizeof *tasks);
    pthread_t *t = calloc((size_t)a.threads, sizeof *t);
    if (!tasks || !t)
        wl_fail("thread_churn: no memory for tasks");
    unsigned next_id = 1;
    for (size_t done = 0; done < total; done += (size_t)a.threads) {
        for (int i = 0; i < a.threads; i++)
            tasks[i].id = next_id++;
        wl_start_threads(t, a.threads, run, tasks, sizeof *tasks);
        wl_join_threads(t, a.threads);
        for (int i = 0; i < a.threads; i++)
            for (int j = 0; j < LEFT_BEHIND; j++) {
                wl_verify(tasks[i].left[j], tasks[i].size[j], tasks[i].tag[j], "thread_churn");
                free(tasks[i].left[j]);
            }
    }
    printf("thread_churn: %zu threads, %d at a time\n", total, a.threads);
    free(tasks);
    free(t);
    return 0;
}
