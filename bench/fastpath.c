/* fastpath.c - the tiny binary bench/run runs under valgrind --tool=callgrind to count
 * the instructions of the allocator's fast path.
 *
 *   fastpath N [SIZE]   performs N malloc(SIZE)+free pairs (SIZE defaults to 16)
 *
 * The runner runs it with two different N and reports (Ir(N2) - Ir(N1)) / (N2 - N1):
 * start-up, allocator initialisation and the first-touch slow paths cancel out, leaving
 * the steady-state cost of one pair.  Nothing else happens in the loop. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s N [SIZE]\n", argv[0]);
        return 1;
    }
    long n = atol(argv[1]);
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 16;
    /* Warm up outside the measured difference: both runs do this identically. */
    free(malloc(size));
    for (long i = 0; i < n; i++) {
        void *p = malloc(size);
        /* the empty asm makes p escape, so the compiler cannot drop the pair */
        __asm__ volatile("" : : "g"(p) : "memory");
        free(p);
    }
    return 0;
}
