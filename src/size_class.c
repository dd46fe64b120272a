/* size_class.c - the small tier's size classes (tables generated once, kept constant so
 * that the fast path can use them before the allocator is initialised).
 *
 * Classes: 16-byte steps up to 128, then eight classes per power of two up to 4096, so
 * rounding a request up wastes at most 12.5% of it above 128 bytes, and at most 15 bytes
 * below.  Invariant: hmi_class_size is strictly increasing, every size is a multiple of 16,
 * and hmi_size_class(n) is the smallest class whose size is >= n. */
#include "internal.h"

const uint32_t hmi_class_size[HM_CLASSES] = {
  16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192,
  208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512,
  576, 640, 704, 768, 832, 896, 960, 1024, 1152, 1280, 1408, 1536,
  1664, 1792, 1920, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096,
};

/* hmi_class_of_small[(n + 15) >> 4] for n <= 1024 */
const uint8_t hmi_class_of_small[(1024 >> 4) + 1] = {
  0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 16, 17,
  17, 18, 18, 19, 19, 20, 20, 21, 21, 22, 22, 23, 23, 24, 24, 24, 24, 25, 25, 25,
  25, 26, 26, 26, 26, 27, 27, 27, 27, 28, 28, 28, 28, 29, 29, 29, 29, 30, 30, 30,
  30, 31, 31, 31, 31,
};

/* ceil(2^32 / size): offset / size == (offset * inv) >> 32 exactly for offsets below 2^16 */
const uint32_t hmi_class_inv[HM_CLASSES] = {
  268435456, 134217728, 89478486, 67108864, 53687092, 44739243,
  38347923, 33554432, 29826162, 26843546, 24403224, 22369622,
  20648882, 19173962, 17895698, 16777216, 14913081, 13421773,
  12201612, 11184811, 10324441, 9586981, 8947849, 8388608,
  7456541, 6710887, 6100806, 5592406, 5162221, 4793491,
  4473925, 4194304, 3728271, 3355444, 3050403, 2796203,
  2581111, 2396746, 2236963, 2097152, 1864136, 1677722,
  1525202, 1398102, 1290556, 1198373, 1118482, 1048576,
};
