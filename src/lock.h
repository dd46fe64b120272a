/* lock.h - the allocator's one lock type: a futex-based mutex.
 *
 * Why not pthread_mutex_t: we need a lock that is a plain word (zero = unlocked), so that
 * statically allocated locks need no initialiser call, a forked child can reset every lock by
 * storing zero, and nothing on the lock path can ever call malloc.
 * States: 0 unlocked, 1 locked, 2 locked with (possible) waiters. */
#ifndef HM_LOCK_H
#define HM_LOCK_H

#include <stdint.h>

typedef struct hm_lock_s {
  int word;
} hm_lock_t;

#define HM_LOCK_INIT {0}

void hmi_lock_wait(hm_lock_t *l);  /* contended path of hm_lock */
void hmi_lock_wake(hm_lock_t *l);  /* contended path of hm_unlock */

/* glibc (2.32 and later) keeps this true until the process creates its first thread, and
 * resets it in the child of a fork.  While it is true no other thread can touch a lock, so
 * the lock word is set and cleared with plain stores: each atomic read-modify-write costs
 * tens of cycles, and single-threaded programs (compilers, interpreters, most tools) take
 * these locks on every medium and large call.  glibc's own malloc skips its locks the same
 * way.  A thread can only be created outside the allocator's critical sections, so no lock
 * is ever held across the switch; one taken with a plain store is released with the atomic
 * exchange below if a thread appeared meanwhile (hmalloc's own stats thread, say), which is
 * still correct.  Weak: without it (another libc) every lock is atomic. */
extern char __libc_single_threaded __attribute__((weak));
static inline int hm_single_threaded(void) {
  return &__libc_single_threaded != 0 && __atomic_load_n(&__libc_single_threaded, __ATOMIC_RELAXED);
}

static inline void hm_lock(hm_lock_t *l) {
  if (hm_single_threaded()) {
    l->word = 1;
    return;
  }
  int expected = 0;
  if (__builtin_expect(__atomic_compare_exchange_n(&l->word, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                                   __ATOMIC_RELAXED), 1))
    return;
  hmi_lock_wait(l);
}

static inline int hm_trylock(hm_lock_t *l) {
  int expected = 0;
  return __atomic_compare_exchange_n(&l->word, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                     __ATOMIC_RELAXED);
}

static inline void hm_unlock(hm_lock_t *l) {
  if (hm_single_threaded()) {
    l->word = 0;
    return;
  }
  if (__builtin_expect(__atomic_exchange_n(&l->word, 0, __ATOMIC_RELEASE) == 2, 0))
    hmi_lock_wake(l);
}

/* In a forked child only the forking thread exists: every lock it took in the prepare
 * handler is simply released by storing zero (no waiter can exist). */
static inline void hm_lock_reset(hm_lock_t *l) { __atomic_store_n(&l->word, 0, __ATOMIC_RELAXED); }

#endif
