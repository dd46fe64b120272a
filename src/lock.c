/* lock.c - the contended paths of the futex mutex declared in lock.h.
 * A short spin first (critical sections in the allocator are a few hundred instructions),
 * then sleep in the kernel with the word set to 2 so the unlocker knows to wake someone. */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lock.h"

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static void futex_call(int *word, int op, int val) {
  syscall(SYS_futex, word, op | FUTEX_PRIVATE_FLAG, val, (void *)0, (void *)0, 0);
}

void hmi_lock_wait(hm_lock_t *l) {
  for (int spin = 0; spin < 100; spin++) {
    cpu_relax();
    int expected = 0;
    if (__atomic_load_n(&l->word, __ATOMIC_RELAXED) == 0 &&
        __atomic_compare_exchange_n(&l->word, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED))
      return;
  }
  /* Mark the lock contended; whoever holds it will wake us on unlock. */
  while (__atomic_exchange_n(&l->word, 2, __ATOMIC_ACQUIRE) != 0)
    futex_call(&l->word, FUTEX_WAIT, 2);
}

void hmi_lock_wake(hm_lock_t *l) { futex_call(&l->word, FUTEX_WAKE, 1); }
