/* hooks.c - tracing callbacks (hm_set_hooks): storage, and the calls made from slow paths.
 *
 * The fast paths never look at hooks.  Instead a thread in "hooked" mode has every cache
 * limit at 0, so each of its mallocs and frees takes a slow path, where the hooks are called.
 * A thread switches mode on its next slow-path operation after the global setting changes
 * (hmi_tcache_sync_hooks), the caller of hm_set_hooks at once.  `in_hook` (per thread) keeps
 * the allocations a hook makes from being reported to it, and realloc's inner allocation and
 * free from being reported besides its one on_realloc.
 * The hook pointers are words read without a lock; hooks_lock only orders writers. */
#include "hmalloc.h"
#include "internal.h"

int hmi_hooks_on;
static hm_hooks_t hooks;
static void *hooks_arg;
static hm_lock_t hooks_lock = HM_LOCK_INIT;

#define LOAD(field) __atomic_load_n(&hooks.field, __ATOMIC_ACQUIRE)

HM_API void hm_set_hooks(const hm_hooks_t *h, void *arg) {
  hmi_ensure_init();
  hm_lock(&hooks_lock);
  __atomic_store_n(&hooks_arg, arg, __ATOMIC_RELEASE);
  __atomic_store_n(&hooks.on_alloc, h ? h->on_alloc : NULL, __ATOMIC_RELEASE);
  __atomic_store_n(&hooks.on_free, h ? h->on_free : NULL, __ATOMIC_RELEASE);
  __atomic_store_n(&hooks.on_realloc, h ? h->on_realloc : NULL, __ATOMIC_RELEASE);
  int on = h != NULL && (h->on_alloc || h->on_free || h->on_realloc);
  __atomic_store_n(&hmi_hooks_on, on, __ATOMIC_RELEASE);
  hm_unlock(&hooks_lock);
  hmi_tcache_sync_hooks();
}

void hmi_hook_alloc(void *p, size_t requested) {
  hm_tcache_t *tc = &hmi_tcache;
  void (*fn)(void *, size_t, size_t, void *) = LOAD(on_alloc);
  if (fn == NULL || tc->in_hook) return;
  tc->in_hook = 1;
  fn(p, requested, hmi_usable(p, "malloc"), __atomic_load_n(&hooks_arg, __ATOMIC_ACQUIRE));
  tc->in_hook = 0;
}

void hmi_hook_free(void *p, size_t usable) {
  hm_tcache_t *tc = &hmi_tcache;
  void (*fn)(void *, size_t, void *) = LOAD(on_free);
  if (fn == NULL || tc->in_hook) return;
  tc->in_hook = 1;
  fn(p, usable, __atomic_load_n(&hooks_arg, __ATOMIC_ACQUIRE));
  tc->in_hook = 0;
}

/* realloc with hooks: the inner allocation and free are not reported, the move is. */
void *hmi_hooked_realloc(void *(*impl)(void *, size_t), void *p, size_t size) {
  hm_tcache_t *tc = &hmi_tcache;
  if (tc->in_hook) return impl(p, size);
  tc->in_hook = 1;
  void *q = impl(p, size);
  tc->in_hook = 0;
  void (*fn)(void *, void *, size_t, size_t, void *) = LOAD(on_realloc);
  if (q != NULL && fn != NULL) {
    tc->in_hook = 1;
    fn(p, q, size, hmi_usable(q, "realloc"), __atomic_load_n(&hooks_arg, __ATOMIC_ACQUIRE));
    tc->in_hook = 0;
  }
  return q;
}
