/* What kernels.c, pool.c and decode.c share: the products over activation rows quantized once, a range of
 * output rows at a time (so that threads split the rows and fused steps write into wider buffers), and
 * the thread pool. */
#ifndef QKV_KERNELS_H
#define QKV_KERNELS_H
#include <stdint.h>

#define BLOCK 32
#define QKV_ABI 5             /* one more whenever an entry point's arguments change (qkv.native.ABI) */
enum { SCALAR = 0, AVX2 = 1, AVX512 = 2 };

/* The layers' scales and code-8 values stay bfloat16 (quant/linear.py's SCALE_DTYPE, the bytes it stores):
 * 2 bytes a group instead of 4 streamed per token, widened exactly (bfloat16 is float32's top half). */
typedef uint16_t bf16;

static inline float bf16_float(bf16 v) {
    union { uint32_t u; float f; } bits = {(uint32_t)v << 16};
    return bits.f;
}

/* M activation rows of K, quantized to 8 bits per block of 32: codes, the block's step d and sum of codes.
 * ``permuted``: each block in the 4-bit weights' order (even columns, then odd ones), else natural. */
typedef struct {
    int8_t *qx;
    float *d;
    int32_t *sums;
    int M, K, permuted;
} QActs;

/* floats of scratch one range call needs (per thread): a scale and a code-8 value per block, a constant per
 * block of each row, 24 running sums a row, 8 block scales (kernels.c's RangeScratch) */
#define QKV_RANGE_SCRATCH(K, M) (2 * ((K) / BLOCK) + (M) * ((K) / BLOCK) + 24 * (M) + 8)

void qkv_quantize_rows(const float *x, int M, int K, int permute, int8_t *qx, float *d, int32_t *sums);

/* y[m * ldy + o] for o in [o0, o1): the 4-bit product (a permuted) and the int8 one (a natural) */
void qkv_q4_range(int variant, const QActs *a, const uint8_t *w, const bf16 *scales, const bf16 *zeros, int g,
                  int o0, int o1, float *y, int ldy, float *scratch);
void qkv_q8_range(int variant, const QActs *a, const int8_t *w, const bf16 *scales, int o0, int o1, float *y,
                  int ldy, float *scratch);

/* float16 rows (half.c): widened exactly, narrowed to nearest even; the same bits in every variant */
void qkv_half_to_float(int variant, const uint16_t *h, float *f, int n);
void qkv_float_to_half(int variant, const float *f, uint16_t *h, int n);

/* Run fn(arg, t, T) on T threads (this one is t = 0) and return when all are done. */
typedef void (*qkv_task)(void *arg, int t, int T);
void qkv_parallel(qkv_task fn, void *arg, int T);
/* Inside a task: wait until all T threads of this run reach the barrier. */
void qkv_barrier(int T);

/* The fixed reduction of eight running sums every variant uses (the same bits everywhere). */
static inline float reduce8(const float *a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* [begin, end) of n items for thread t of T, in whole multiples of ``align`` */
static inline void qkv_share(int n, int t, int T, int align, int *begin, int *end) {
    int units = (n + align - 1) / align;
    *begin = (int)((int64_t)units * t / T) * align;
    *end = (int)((int64_t)units * (t + 1) / T) * align;
    if (*end > n) *end = n;
    if (*begin > n) *begin = n;
}
#endif
