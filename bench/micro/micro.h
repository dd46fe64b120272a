/* micro.h - the micro benchmark workloads (plain C, micro.c) as seen by the C++
 * google-benchmark shim (shim.cpp).  Each function performs one benchmark iteration and
 * returns the number of allocation calls it made, so the shim can report items/s. */
#ifndef BENCH_MICRO_H
#define BENCH_MICRO_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum mb_order { MB_LIFO, MB_FIFO, MB_RANDOM };

/* malloc(size), touch, free. */
size_t mb_malloc_free(size_t size);
/* `count` blocks of `size` allocated, then freed in the given order. */
size_t mb_batch(size_t size, size_t count, enum mb_order order);
/* calloc(1, size), read one byte from the middle (must be zero), free. */
size_t mb_calloc(size_t size);
/* Build a string of `final_len` bytes by appending `step` bytes at a time with realloc. */
size_t mb_realloc_grow(size_t step, size_t final_len);
/* aligned_alloc(align, size) and free. */
size_t mb_aligned(size_t align, size_t size);
/* Allocate `count` blocks of `size` and let a consumer thread free them. */
size_t mb_xthread(size_t size, size_t count);
/* Stop the consumer thread started by mb_xthread (between benchmarks). */
void mb_xthread_stop(void);

#ifdef __cplusplus
}
#endif

#endif
