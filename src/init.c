/* init.c - process start-up and fork.
 *
 * Start-up happens on the first call that needs it (the fast paths never ask: a zeroed
 * thread cache sends the first request to a slow path, which calls hmi_ensure_init) or from
 * the library constructor, whichever comes first.  Nothing called during init allocates: the
 * getrandom and sched_getaffinity system calls, a walk of environ, pthread_key_create.
 * pthread_atfork may allocate, so it runs after hmi_ready is set, outside the init lock: a
 * malloc it makes is served normally.
 * fork: the prepare handler takes every allocator lock in the global lock order (registry,
 * central lists by class, arenas, large, metadata, page map), so the child starts with
 * consistent structures; parent and child then release them. */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

uintptr_t hmi_secret;
uintptr_t hmi_list_key, hmi_free_mark;
int hmi_ready;
static hm_lock_t init_lock = HM_LOCK_INIT;
static int atfork_done;

void hmi_pagemap_lock(void);
void hmi_pagemap_unlock(void);
void hmi_pagemap_reset_lock(void);
void hmi_tcache_after_fork_child(void);
void hmi_stats_init(void);

static void fork_prepare(void) {
  hm_lock(&hmi_quarantine_lock); /* a leaf lock, held alone: first is as good as any */
  hm_lock(&hmi_registry_lock);
  for (unsigned c = 0; c < HM_CLASSES; c++) hm_lock(&hmi_central[c].lock);
  hmi_arena_lock_all();
  hm_lock(&hmi_large_lock);
  hm_lock(&hmi_meta_lock);
  hmi_pagemap_lock();
}

static void fork_parent(void) {
  hmi_pagemap_unlock();
  hm_unlock(&hmi_meta_lock);
  hm_unlock(&hmi_large_lock);
  hmi_arena_unlock_all();
  for (unsigned c = HM_CLASSES; c-- > 0;) hm_unlock(&hmi_central[c].lock);
  hm_unlock(&hmi_registry_lock);
  hm_unlock(&hmi_quarantine_lock);
}

static void fork_child(void) {
  hmi_pagemap_reset_lock();
  hm_lock_reset(&hmi_meta_lock);
  hm_lock_reset(&hmi_large_lock);
  hmi_arena_reset_locks();
  for (unsigned c = 0; c < HM_CLASSES; c++) hm_lock_reset(&hmi_central[c].lock);
  hmi_tcache_after_fork_child();
  hm_lock_reset(&hmi_registry_lock);
  hm_lock_reset(&hmi_quarantine_lock);
}

void hmi_init(void) {
  hm_lock(&init_lock);
  if (!hmi_ready) {
    hmi_secret = (uintptr_t)hmi_os_random();
    hmi_list_key = (uintptr_t)hmi_os_random();
    hmi_free_mark = (uintptr_t)hmi_os_random() | 1;
    hmi_options_load();
    hmi_arenas_init(hmi_options.arenas);
    hmi_tcache_init_process();
    hmi_stats_init();
    __atomic_store_n(&hmi_ready, 1, __ATOMIC_RELEASE);
  }
  hm_unlock(&init_lock);
  if (!__atomic_exchange_n(&atfork_done, 1, __ATOMIC_ACQ_REL)) {
    pthread_atfork(fork_prepare, fork_parent, fork_child);
  }
}

__attribute__((constructor)) static void hm_constructor(void) { hmi_init(); }
