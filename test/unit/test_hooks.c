/* Hooks: called with the right arguments for every tier and for realloc; a hook that
 * allocates does not recurse; removing the hooks stops the calls and restores the caches;
 * a thread started after hm_set_hooks is traced from its first call. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "hmalloc.h"
#include "internal.h"

typedef struct {
  char kind; /* 'a', 'f', 'r' */
  void *p, *q;
  size_t requested, usable;
  pthread_t thread;
} event_t;

/* volatile: glibc declares malloc and free "leaf" (they never call back into this file), so
 * without it the compiler may keep these in registers across a malloc whose hook changes
 * them. */
static volatile event_t events[1024];
static volatile int n_events;
static int hook_arg_ok = 1;
static const int token = 42;

/* Criterion's own threads allocate too: keep only the events of the threads a test follows
 * (the test's thread, and the one it starts). */
static pthread_t followed[2];
static void record(event_t e, void *arg) {
  if (arg != &token) hook_arg_ok = 0;
  e.thread = pthread_self();
  if (!pthread_equal(e.thread, followed[0]) && !pthread_equal(e.thread, followed[1])) return;
  if (n_events < 1024) events[n_events++] = e;

}
static void on_alloc(void *p, size_t req, size_t usable, void *arg) {
  record((event_t){'a', p, NULL, req, usable, 0}, arg);
}
static void on_free(void *p, size_t usable, void *arg) {
  record((event_t){'f', p, NULL, 0, usable, 0}, arg);
}
static void on_realloc(void *p, void *q, size_t req, size_t usable, void *arg) {
  record((event_t){'r', p, q, req, usable, 0}, arg);
}
static const hm_hooks_t all_hooks = {on_alloc, on_free, on_realloc};

static const volatile event_t *find(char kind, void *p) {
  for (int i = n_events - 1; i >= 0; i--)
    if (events[i].kind == kind && (kind == 'r' ? events[i].q : events[i].p) == p) return &events[i];
  return NULL;
}

static void follow_me(void) { followed[0] = followed[1] = pthread_self(); }

Test(hooks, alloc_and_free_in_every_tier, .init = follow_me) {
  hm_set_hooks(&all_hooks, (void *)&token);
  size_t sizes[] = {1, 100, 4096, 5000, 100000, 1 << 20};
  for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    n_events = 0;
    void *p = malloc(sizes[i]);
    const volatile event_t *a = find('a', p);
    cr_assert_not_null(a, "no alloc event for %zu", sizes[i]);
    cr_assert_eq(a->requested, sizes[i]);
    cr_assert_eq(a->usable, malloc_usable_size(p));
    free(p);
    const volatile event_t *f = find('f', p);
    cr_assert_not_null(f, "no free event for %zu", sizes[i]);
    cr_assert_eq(f->usable, a->usable);
    cr_assert_eq(n_events, 2, "exactly one event each (got %d)", n_events);
  }
  cr_assert(hook_arg_ok);
  hm_set_hooks(NULL, NULL);
}

Test(hooks, realloc_is_one_event, .init = follow_me) {
  hm_set_hooks(&all_hooks, (void *)&token);
  void *p = malloc(10);
  n_events = 0;
  void *q = realloc(p, 50000);
  cr_assert_eq(n_events, 1);
  const volatile event_t *r = find('r', q);
  cr_assert_not_null(r);
  cr_assert_eq(r->p, p);
  cr_assert_eq(r->requested, 50000);
  cr_assert_eq(r->usable, malloc_usable_size(q));
  n_events = 0;
  cr_assert_null(realloc(q, 0));
  cr_assert_not_null(find('f', q), "realloc to 0 is a free");
  hm_set_hooks(NULL, NULL);
}

static void allocating_hook(void *p, size_t req, size_t usable, void *arg) {
  (void)req, (void)usable, (void)arg;
  if (!pthread_equal(pthread_self(), followed[0])) return;
  void *scratch = malloc(64); /* not reported to this hook: no endless recursion */
  free(scratch);
  if (n_events < 1024) events[n_events++] = (event_t){'a', p, NULL, req, usable, pthread_self()};
}

Test(hooks, a_hook_may_allocate, .init = follow_me) {
  hm_hooks_t h = {allocating_hook, NULL, NULL};
  hm_set_hooks(&h, NULL);
  n_events = 0;
  void *p = malloc(200);
  cr_assert_eq(n_events, 1);
  cr_assert_eq(events[0].p, p);
  free(p);
  hm_set_hooks(NULL, NULL);
}

Test(hooks, removing_hooks_stops_calls_and_restores_the_cache, .init = follow_me) {
  hm_set_hooks(&all_hooks, (void *)&token);
  hm_tcache_t *tc = &hmi_tcache;
  cr_assert(tc->hooked);
  hm_set_hooks(NULL, NULL);
  cr_assert_not(tc->hooked);
  n_events = 0;
  for (int i = 0; i < 100; i++) free(malloc(32));
  cr_assert_eq(n_events, 0);
  cr_assert_gt(tc->limit[hmi_size_class(32)], 0);
}

static void *thread_body(void *arg) {
  (void)arg;
  followed[1] = pthread_self();
  void *p = malloc(48);
  free(p);
  return p;
}

Test(hooks, new_threads_are_traced_from_their_first_call, .init = follow_me) {
  hm_set_hooks(&all_hooks, (void *)&token);
  n_events = 0;
  pthread_t t;
  void *p;
  pthread_create(&t, NULL, thread_body, NULL);
  pthread_join(t, &p);
  cr_assert_not_null(find('a', p));
  cr_assert_not_null(find('f', p));
  hm_set_hooks(NULL, NULL);
}
