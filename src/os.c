/* os.c - every system call hmalloc makes about memory: mmap, munmap, mremap, sbrk, madvise,
 * and the random key.  Nothing here allocates; failures are reported as NULL, never as
 * MAP_FAILED or (void *)-1, so callers have one failure value to test. */
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

int hmi_os_brk_disabled;
uint64_t hmi_os_mmap_calls, hmi_os_munmap_calls, hmi_os_mremap_calls;

/* A failed mmap retries once after the large tier's cache of freed mappings is unmapped:
 * those mappings count against RLIMIT_AS (and vm.overcommit), so under a limit the memory a
 * program freed would otherwise stay unusable.  Callers never hold hmi_large_lock here. */
void *hmi_os_mmap(size_t size) {
  __atomic_fetch_add(&hmi_os_mmap_calls, 1, __ATOMIC_RELAXED);
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED && hmi_large_cache_flush()) {
    __atomic_fetch_add(&hmi_os_mmap_calls, 1, __ATOMIC_RELAXED);
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  return p == MAP_FAILED ? NULL : p;
}

void hmi_os_munmap(void *p, size_t size) {
  __atomic_fetch_add(&hmi_os_munmap_calls, 1, __ATOMIC_RELAXED);
  munmap(p, size);
}

void *hmi_os_mremap(void *p, size_t old_size, size_t new_size) {
  __atomic_fetch_add(&hmi_os_mremap_calls, 1, __ATOMIC_RELAXED);
  void *q = mremap(p, old_size, new_size, MREMAP_MAYMOVE);
  return q == MAP_FAILED ? NULL : q;
}

void *hmi_os_mremap_inplace(void *p, size_t old_size, size_t new_size) {
  __atomic_fetch_add(&hmi_os_mremap_calls, 1, __ATOMIC_RELAXED);
  void *q = mremap(p, old_size, new_size, 0);
  return q == MAP_FAILED ? NULL : q;
}

void *hmi_os_mremap_to(void *p, size_t old_size, size_t new_size, void *dst) {
  __atomic_fetch_add(&hmi_os_mremap_calls, 1, __ATOMIC_RELAXED);
  void *q = mremap(p, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
  return q == MAP_FAILED ? NULL : q;
}

void *hmi_os_sbrk(intptr_t increment) {
  if (hmi_os_brk_disabled) return NULL;
  void *p = sbrk(increment);
  return p == (void *)-1 ? NULL : p;
}

void hmi_os_release(void *p, size_t size) {
  uintptr_t start = hm_align_up((uintptr_t)p, HM_PAGE);
  uintptr_t end = hm_page_floor((uintptr_t)p + size);
  if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
}

uint64_t hmi_os_random(void) {
  uint64_t r = 0;
  /* getrandom is a plain system call: it never allocates.  GRND_NONBLOCK: early in boot the
   * pool may not be ready, and an allocator must not block there. */
  if (syscall(SYS_getrandom, &r, sizeof r, GRND_NONBLOCK) != (long)sizeof r) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    r = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)&r ^
        ((uint64_t)getpid() << 32);
  }
  return r;
}
