/* size_class.c - the small tier's size classes (tables generated once, kept constant so
 * that the fast path can use them before the allocator is initialised).
 *
 * Classes: 16-byte steps up to 128, then eight classes per power of two up to 4096, so
 * rounding a request up wastes at most 12.5% of it above 128 bytes, and at most 15 bytes
 * below; plus 528, 1040 and 2064, a power of two and 16 bytes, because programs often ask
 * for a power of two and a small header: sqlite3 keeps 16k blocks of 1032 bytes (1024 + 8),
 * which rounded to 1152 took 1.9 MB of its 46 MB peak RSS (45.8 -> 43.9 MB with these;
 * alloc_test, xmalloc, churn, thread_churn, shuffle, fragment, python3 and gcc unchanged, 5
 * interleaved runs).
 * Invariant: hmi_class_size is strictly increasing, every size is a multiple of 16, and
 * hmi_size_class(n) is the smallest class whose size is >= n.
 *
 * Object index without a division: write size = d * 2^k with d odd, and let minv be the
 * inverse of d modulo 2^32.  For an offset that is a multiple of size, (offset * minv) rotated
 * right by k is exactly offset / size; for any other offset below 2^32 it is larger than
 * 2^32 / size, which is above every span's capacity.  One multiply and one rotate both divide
 * and tell an object start from an interior pointer (hmi_class_index in internal.h).  The
 * same holds with 64-bit words, which free's fast path uses so that an offset that is not
 * below 2^32 also fails the test (hm_free_raw). */
#include "class_table.h"
#include "internal.h"

const uint32_t hmi_class_size[HM_CLASSES] = {
  16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192,
  208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512,
  528, 576, 640, 704, 768, 832, 896, 960, 1024, 1040, 1152, 1280,
  1408, 1536, 1664, 1792, 1920, 2048, 2064, 2304, 2560, 2816, 3072, 3328,
  3584, 3840, 4096,
};

/* hmi_class_of[(n + 15) >> 4] for n <= HM_SMALL_MAX */
const uint8_t hmi_class_of[(HM_SMALL_MAX >> 4) + 1] = HM_CLASS_OF_TABLE;

/* odd part of each class size, inverted modulo 2^64 (its low half is the inverse modulo
 * 2^32) */
const uint64_t hmi_class_minv[HM_CLASSES] = {
  0x0000000000000001u, 0x0000000000000001u, 0xaaaaaaaaaaaaaaabu,
  0x0000000000000001u, 0xcccccccccccccccdu, 0xaaaaaaaaaaaaaaabu,
  0x6db6db6db6db6db7u, 0x0000000000000001u, 0x8e38e38e38e38e39u,
  0xcccccccccccccccdu, 0x2e8ba2e8ba2e8ba3u, 0xaaaaaaaaaaaaaaabu,
  0x4ec4ec4ec4ec4ec5u, 0x6db6db6db6db6db7u, 0xeeeeeeeeeeeeeeefu,
  0x0000000000000001u, 0x8e38e38e38e38e39u, 0xcccccccccccccccdu,
  0x2e8ba2e8ba2e8ba3u, 0xaaaaaaaaaaaaaaabu, 0x4ec4ec4ec4ec4ec5u,
  0x6db6db6db6db6db7u, 0xeeeeeeeeeeeeeeefu, 0x0000000000000001u,
  0x0f83e0f83e0f83e1u, 0x8e38e38e38e38e39u, 0xcccccccccccccccdu,
  0x2e8ba2e8ba2e8ba3u, 0xaaaaaaaaaaaaaaabu, 0x4ec4ec4ec4ec4ec5u,
  0x6db6db6db6db6db7u, 0xeeeeeeeeeeeeeeefu, 0x0000000000000001u,
  0x0fc0fc0fc0fc0fc1u, 0x8e38e38e38e38e39u, 0xcccccccccccccccdu,
  0x2e8ba2e8ba2e8ba3u, 0xaaaaaaaaaaaaaaabu, 0x4ec4ec4ec4ec4ec5u,
  0x6db6db6db6db6db7u, 0xeeeeeeeeeeeeeeefu, 0x0000000000000001u,
  0x80fe03f80fe03f81u, 0x8e38e38e38e38e39u, 0xcccccccccccccccdu,
  0x2e8ba2e8ba2e8ba3u, 0xaaaaaaaaaaaaaaabu, 0x4ec4ec4ec4ec4ec5u,
  0x6db6db6db6db6db7u, 0xeeeeeeeeeeeeeeefu, 0x0000000000000001u,
};

/* power of two in each class size */
const uint8_t hmi_class_shift[HM_CLASSES] = {
  4, 5, 4, 6, 4, 5, 4, 7, 4, 5, 4, 6, 4, 5, 4, 8, 5, 6, 5, 7, 5, 6, 5, 9,
  4, 6, 7, 6, 8, 6, 7, 6, 10, 4, 7, 8, 7, 9, 7, 8, 7, 11, 4, 8, 9, 8, 10, 8,
  9, 8, 12,
};
