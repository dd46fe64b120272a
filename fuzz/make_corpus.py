#!/usr/bin/env python3
"""Write the seed corpus of fuzz/fuzz_api.c into fuzz/corpus/ (deterministic: same files on
every run; the files are committed, rerun this after changing the input format).

Each file is one scenario in the harness's input format (see the comment at the top of
fuzz_api.c): small-tier churn, medium coalescing and in-place realloc, large blocks and
mremap, every alignment, calloc, tier boundaries, failing calls, and a seeded random mix.

usage: fuzz/make_corpus.py [OUTDIR]   (default: fuzz/corpus next to this script)"""
import os
import random
import sys

KiB, MiB = 1 << 10, 1 << 20
NSLOTS = 64
(MALLOC, CALLOC, REALLOC, FREE, POSIX_MEMALIGN, ALIGNED_ALLOC, MEMALIGN, VERIFY, BAD,
 REALLOC_DELTA) = range(10)
BOUNDARY = [0, 1, 8, 15, 16, 17, 127, 128, 129, 1024, 1025, 2048, 4095, 4096, 4097, 4112,
            8192, 65520, 65536, 65537, 131055, 131056, 131071, 131072, 131073, 262144,
            1 * MiB, 1 * MiB + 1, 2 * MiB - 1, 4 * MiB + 16, 16 * MiB]


def le(v, n):
    return bytes((v >> (8 * k)) & 0xFF for k in range(n))


def size(n):
    """Encode n in the tier that holds it."""
    if n in BOUNDARY:
        return bytes([3, BOUNDARY.index(n)])
    if n <= 4096:
        return bytes([0]) + le(n, 2)
    if n < 128 * KiB:
        return bytes([1]) + le(n - 4097, 3)
    if n - 128 * KiB < MiB:
        return bytes([2]) + le(n - 128 * KiB, 3)
    assert n - 128 * KiB < 16 * MiB, n
    return bytes([0x1e]) + le(n - 128 * KiB, 3)


def align(a):
    assert a & (a - 1) == 0 and 8 <= a <= MiB, a
    return bytes([a.bit_length() - 4])


class Prog:
    def __init__(self):
        self.b = bytearray()

    def op(self, code, slot, *args):
        self.b += bytes([code, slot % NSLOTS])
        for a in args:
            self.b += a

    def malloc(self, slot, n): self.op(MALLOC, slot, size(n))
    def calloc(self, slot, n, count=1): self.op(CALLOC, slot, size(n), bytes([count - 1]))
    def realloc(self, slot, n): self.op(REALLOC, slot, size(n))
    def free(self, slot): self.op(FREE, slot)
    def verify(self, slot): self.op(VERIFY, slot)
    def aligned(self, code, slot, a, n): self.op(code, slot, align(a), size(n))
    def bad(self, slot, which, x=0): self.op(BAD, slot, bytes([which, x]))

    def delta(self, slot, d, shift, grow):
        self.op(REALLOC_DELTA, slot, bytes([d, shift, 1 if grow else 0]))


def small_churn():
    p = Prog()
    sizes = [1, 16, 24, 48, 100, 128, 200, 500, 1000, 1500, 2048, 3000, 4096]
    for i in range(48):
        p.malloc(i, sizes[i % len(sizes)])
    for i in range(0, 48, 2):
        p.free(i)
    for i in range(0, 48, 2):
        p.malloc(i, sizes[(i * 7) % len(sizes)])
    for i in range(48):
        p.verify(i)
    for i in range(48):
        p.free(i)
    return p.b


def medium_coalesce():
    p = Prog()
    for i in range(24):
        p.malloc(i, 5000 + i * 3000)
    for i in range(1, 24, 2):
        p.free(i)  # holes between live blocks
    for i in range(0, 24, 2):
        p.free(i)  # now every hole coalesces with its neighbours
    for i in range(8):
        p.malloc(i, 20000)
    for i in range(8):
        p.realloc(i, 20000 + 4096 * (i + 1))  # grow in place when the next chunk is free
        p.delta(i, 200, 4, i % 2 == 0)
        p.verify(i)
    for i in range(8):
        p.realloc(i, 4097 + i)  # shrink: the tail is split off
    return p.b


def large_mremap():
    p = Prog()
    p.malloc(0, 128 * KiB)
    p.malloc(1, 200000)
    p.realloc(0, 3 * MiB)  # mremap grows
    p.realloc(1, 8 * MiB)
    p.calloc(2, 2 * MiB, 4)
    p.verify(2)
    p.realloc(2, 6 * MiB)
    p.realloc(0, 140000)  # shrink, still large
    p.realloc(1, 100000)  # large -> medium
    p.realloc(0, 1000)  # large -> small
    p.malloc(3, 16 * MiB)
    p.delta(3, 255, 9, False)
    for i in range(4):
        p.free(i)
    return p.b


def alignments():
    p = Prog()
    slot = 0
    for code in (POSIX_MEMALIGN, ALIGNED_ALLOC, MEMALIGN):
        for k in range(18):
            a = 8 << k
            for n in (1, 100, 4096, 5000, 130000, 300000):
                p.aligned(code, slot, a, n)
                slot += 1
                if slot % 8 == 0:
                    for s in range(slot - 8, slot):
                        p.realloc(s, 7000)
                        p.free(s)
    return p.b


def callocs():
    p = Prog()
    for i, n in enumerate([0, 1, 64, 4096, 4097, 65536, 131071, 131072, 1 * MiB]):
        p.calloc(i, n, 1 + i % 16)
    for i in range(9):
        p.verify(i)  # checks the zeros, then patterns the block
    for i in range(9):
        p.free(i)
    for i, n in enumerate([32, 3000, 9000, 100000, 500000]):  # reuse freed, dirty memory
        p.calloc(i, n, 3)
        p.realloc(i, n * 2 + 1)
    return p.b


def boundaries():
    p = Prog()
    for i, n in enumerate(BOUNDARY):
        p.malloc(i, n)
    for i, n in enumerate(BOUNDARY):
        p.realloc(i, BOUNDARY[(i + 5) % len(BOUNDARY)])
    for i in range(len(BOUNDARY)):
        p.delta(i, 1, 0, True)
        p.delta(i, 1, 0, False)
    for i in range(len(BOUNDARY)):
        p.realloc(i, 0)  # frees
    return p.b


def bad_calls():
    p = Prog()
    p.malloc(0, 100)
    p.malloc(1, 50000)
    p.malloc(2, 500000)
    for which in range(7):
        for slot in range(4):
            p.bad(slot, which, slot * 37)
    for slot in range(3):
        p.verify(slot)
    return p.b


def random_mix(seed, steps):
    rng = random.Random(seed)
    p = Prog()

    def any_size():
        r = rng.random()
        if r < 0.55:
            return rng.randint(0, 4096)
        if r < 0.85:
            return rng.randint(4097, 128 * KiB - 1)
        if r < 0.95:
            return rng.randint(128 * KiB, 2 * MiB)
        return rng.choice(BOUNDARY)

    for _ in range(steps):
        slot = rng.randrange(16)
        r = rng.random()
        if r < 0.30:
            p.malloc(slot, any_size())
        elif r < 0.40:
            p.calloc(slot, any_size(), rng.randint(1, 16))
        elif r < 0.60:
            p.realloc(slot, any_size())
        elif r < 0.75:
            p.free(slot)
        elif r < 0.85:
            p.aligned(rng.choice((POSIX_MEMALIGN, ALIGNED_ALLOC, MEMALIGN)), slot,
                      8 << rng.randrange(18), any_size())
        elif r < 0.92:
            p.delta(slot, rng.randrange(256), rng.randrange(10), rng.random() < 0.5)
        elif r < 0.98:
            p.verify(slot)
        else:
            p.bad(slot, rng.randrange(7), rng.randrange(256))
    return p.b


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    os.makedirs(out, exist_ok=True)
    seeds = {
        "small_churn": small_churn(),
        "medium_coalesce": medium_coalesce(),
        "large_mremap": large_mremap(),
        "alignments": alignments(),
        "callocs": callocs(),
        "boundaries": boundaries(),
        "bad_calls": bad_calls(),
        "random_mix_1": random_mix(1, 300),
        "random_mix_2": random_mix(2, 300),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
