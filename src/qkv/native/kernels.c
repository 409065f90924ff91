/* Integer-dot matrix-vector products for qkv's quantized layers (issue 22), the arithmetic llama.cpp's
 * vec_dot_q4_1_q8_1 / vec_dot_q8_0_q8_0 use, on qkv's own portable formats:
 *
 *   Int4Linear  codes q in [0, 15], byte j of a row = column 2j (low nibble) | column 2j+1 (high nibble),
 *               one scale s and one code-8 value z per group of g columns:   w = (q - 8) s + z
 *   Int8Linear  int8 q (O, K) row-major, one scale s per row:                 w = q s
 *
 * The activation row x is quantized once to 8 bits per block of 32 (d = max|x| / 127, qx = round(x / d)),
 * so that every weight block costs integer multiply-adds and one float step:
 *
 *   sum_k w_k x_k  ~=  sum_blocks  d_b (s (sum q qx - 8 sum qx) + z sum qx)     (4-bit)
 *                  =   s_o sum_blocks d_b sum q qx                              (int8)
 *
 * For the 4-bit layout the activation block is stored in the weights' order: its even columns, then its
 * odd ones, so that the low nibbles of 16 weight bytes meet the first half and the high nibbles the second.
 *
 * Each SIMD variant computes a block's integer sum exactly and then the float step in the same order as
 * the scalar reference, so every variant gives the same bits (tests hold them equal): the result does not
 * depend on the CPU, and a row's output does not depend on the other rows of its batch.
 *
 * Variants: scalar (any CPU), AVX2 (+FMA), AVX-512 (BW, VL, VNNI); qkv.native picks one at run time from
 * what the CPU reports, overridable with QKV_KERNELS=scalar|avx2|avx512|torch.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QKV_X86 1
#endif

/* ---- activation quantization (shared by every variant: it is a small part of the time) ---------------- */

/* x (K floats) -> qx (K int8) in natural order, d and sum(qx) per block of 32. */
static void quantize_row(const float *x, int K, int permute, int8_t *qx, float *d, int32_t *sums) {
    for (int b = 0; b < K / BLOCK; b++) {
        const float *xb = x + b * BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < BLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < BLOCK; i++) {
            int v = (int)lrintf(xb[i] * inv);
            v = v > 127 ? 127 : (v < -127 ? -127 : v);
            /* 4-bit order: even columns first, then odd ones (see the header) */
            int at = permute ? (i % 2) * (BLOCK / 2) + i / 2 : i;
            qx[b * BLOCK + at] = (int8_t)v;
            sum += v;
        }
        d[b] = scale;
        sums[b] = sum;
    }
}

void qkv_quantize_rows(const float *x, int M, int K, int permute, int8_t *qx, float *d, int32_t *sums) {
    for (int m = 0; m < M; m++)
        quantize_row(x + (int64_t)m * K, K, permute, qx + (int64_t)m * K, d + (int64_t)m * (K / BLOCK),
                     sums + (int64_t)m * (K / BLOCK));
}

/* ---- integer block sums: sum q qx over 32 columns ------------------------------------------------------ */

static int32_t q4_block_scalar(const uint8_t *w16, const int8_t *qx32) {
    int32_t sum = 0;
    for (int j = 0; j < 16; j++) sum += (w16[j] & 15) * qx32[j] + (w16[j] >> 4) * qx32[16 + j];
    return sum;
}

static int32_t q8_block_scalar(const int8_t *w32, const int8_t *qx32) {
    int32_t sum = 0;
    for (int i = 0; i < BLOCK; i++) sum += w32[i] * qx32[i];
    return sum;
}

/* ---- the float steps: eight running sums per row, block b into sum b % 8, then one fixed reduction -------
 * Every variant adds the same terms into the same sums in the same order (SIMD lanes are the eight sums;
 * the scalar code walks them one by one), so all of them give the same bits. */

/* One block's share of a 4-bit dot product: d (s (sum q qx - 8 sum qx) + z sum qx). */
static inline float q4_step(float d, float s, float z, int32_t dot, int32_t sum_qx) {
    return d * (s * (float)(dot - 8 * sum_qx) + z * (float)sum_qx);
}

/* The scalar reference: every block through the integer loops above. */
static void q4_scalar(const uint8_t *w, const float *s_all, const float *z_all, int o0, int o1, int K, int g,
                      const int8_t *qx, const float *d, const int32_t *sums, int M, float *y, int ldy,
                      float *s_blocks, float *z_blocks, float *acc) {
    const int nb = K / BLOCK, per_group = g / BLOCK, G = K / g;
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (int64_t)o * (K / 2);
        for (int b = 0; b < nb; b++) s_blocks[b] = s_all[(int64_t)o * G + b / per_group],
                                     z_blocks[b] = z_all[(int64_t)o * G + b / per_group];
        for (int m = 0; m < M; m++) {
            float *a = acc + 8 * m;
            for (int i = 0; i < 8; i++) a[i] = 0.0f;
            for (int b = 0; b < nb; b++)
                a[b % 8] += q4_step(d[m * nb + b], s_blocks[b], z_blocks[b],
                                    q4_block_scalar(row + b * 16, qx + (int64_t)m * K + b * BLOCK), sums[m * nb + b]);
            y[(int64_t)m * ldy + o] = reduce8(a);
        }
    }
}

static void q8_scalar(const int8_t *w, const float *scales, int o0, int o1, int K, const int8_t *qx, const float *d,
                      int M, float *y, int ldy, float *acc) {
    const int nb = K / BLOCK;
    for (int o = o0; o < o1; o++) {
        const int8_t *row = w + (int64_t)o * K;
        for (int m = 0; m < M; m++) {
            float *a = acc + 8 * m;
            for (int i = 0; i < 8; i++) a[i] = 0.0f;
            for (int b = 0; b < nb; b++)
                a[b % 8] += d[m * nb + b] * (float)q8_block_scalar(row + b * BLOCK, qx + (int64_t)m * K + b * BLOCK);
            y[(int64_t)m * ldy + o] = scales[o] * reduce8(a);
        }
    }
}

#ifdef QKV_X86
/* ---- SIMD: a weight block is unpacked once for all M rows of the batch (M-tiled), then each row's integer
 * sums; eight blocks' sums are gathered into one vector (lane i: block b + i) for the float step. */

#define AVX2_T __attribute__((target("avx2,fma")))
#define VNNI_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

AVX2_T static inline __m256i q4_unpack(const uint8_t *w16) {      /* 32 codes: low nibbles, then high ones */
    __m128i packed = _mm_loadu_si128((const __m128i *)w16), mask = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
}

AVX2_T static inline __m256i q8_load(const int8_t *w32) { return _mm256_loadu_si256((const __m256i *)w32); }

/* unsigned codes x signed activations: maddubs (<= 2 * 15 * 127, no saturation) then pairs to int32 */
AVX2_T static inline __m256i q4_dot_avx2(__m256i q, const int8_t *x32) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)x32)), _mm256_set1_epi16(1));
}

/* signed x signed: |w| and x with w's sign, since maddubs takes one unsigned operand (|w| <= 127) */
AVX2_T static inline __m256i q8_dot_avx2(__m256i w, const int8_t *x32) {
    __m256i x = _mm256_loadu_si256((const __m256i *)x32);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)),
                             _mm256_set1_epi16(1));
}

/* AVX-512 VNNI on 256-bit registers (VL): one dpbusd does maddubs + madd */
VNNI_T static inline __m256i q4_dot_vnni(__m256i q, const int8_t *x32) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, _mm256_loadu_si256((const __m256i *)x32));
}

VNNI_T static inline __m256i q8_dot_vnni(__m256i w, const int8_t *x32) {
    __m256i x = _mm256_loadu_si256((const __m256i *)x32);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

/* Eight vectors of partial sums -> one vector whose lane i is the total of v[i] (integers: any order). */
AVX2_T static inline __m256i sum8(const __m256i *v) {
    __m256i t0 = _mm256_hadd_epi32(v[0], v[1]), t1 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i t2 = _mm256_hadd_epi32(v[4], v[5]), t3 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

AVX2_T static inline int32_t hsum(__m256i v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1)));
}

/* acc += d (s (dots - 8 sums) + z sums), lane by lane, with no fused multiply-add (the scalar order) */
AVX2_T static inline __m256 q4_steps8(__m256 acc, const float *d, __m256 s, __m256 z, __m256i dots,
                                      const int32_t *sums) {
    __m256i sq = _mm256_loadu_si256((const __m256i *)sums);
    __m256 centered = _mm256_cvtepi32_ps(_mm256_sub_epi32(dots, _mm256_slli_epi32(sq, 3)));
    __m256 inner = _mm256_add_ps(_mm256_mul_ps(s, centered), _mm256_mul_ps(z, _mm256_cvtepi32_ps(sq)));
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(d), inner));
}

/* One function per variant holds the whole loop: switching between VEX/EVEX code and the caller's
 * baseline (SSE) code once per row left the upper register state dirty and made the AVX-512 variant 8x
 * slower than AVX2 (measured); now the switch happens once per call. */
#define SIMD_MATMULS(NAME, TARGET, Q4DOT, Q8DOT)                                                              \
    TARGET static void q4_##NAME(const uint8_t *w, const float *s_all, const float *z_all, int o0, int o1,     \
                                 int K, int g, const int8_t *qx, const float *d, const int32_t *sums, int M,  \
                                 float *y, int ldy, float *s_blocks, float *z_blocks, float *acc) {           \
        const int nb = K / BLOCK, per_group = g / BLOCK, G = K / g;                                           \
        for (int o = o0; o < o1; o++) {                                                                       \
            const uint8_t *row = w + (int64_t)o * (K / 2);                                                    \
            const float *sb = s_all + (int64_t)o * G, *zb = z_all + (int64_t)o * G;                           \
            if (per_group > 1) {                        /* groups wider than a block: a scale per block */    \
                for (int b = 0; b < nb; b++) s_blocks[b] = sb[b / per_group], z_blocks[b] = zb[b / per_group]; \
                sb = s_blocks, zb = z_blocks;                                                                 \
            }                                                                                                 \
            for (int i = 0; i < 8 * M; i++) acc[i] = 0.0f;                                                    \
            int b = 0;                                                                                        \
            for (; b + 8 <= nb; b += 8) {                                                                     \
                __m256i q[8], v[8];                                                                           \
                for (int i = 0; i < 8; i++) q[i] = q4_unpack(row + (b + i) * 16);                             \
                __m256 s8 = _mm256_loadu_ps(sb + b), z8 = _mm256_loadu_ps(zb + b);                            \
                for (int m = 0; m < M; m++) {                                                                 \
                    const int8_t *x = qx + (int64_t)m * K + b * BLOCK;                                        \
                    for (int i = 0; i < 8; i++) v[i] = Q4DOT(q[i], x + i * BLOCK);                            \
                    __m256 a = q4_steps8(_mm256_loadu_ps(acc + 8 * m), d + m * nb + b, s8, z8, sum8(v),       \
                                         sums + m * nb + b);                                                  \
                    _mm256_storeu_ps(acc + 8 * m, a);                                                         \
                }                                                                                             \
            }                                                                                                 \
            for (; b < nb; b++) {              /* the last blocks: a vector dot each, the scalar float step */ \
                __m256i q = q4_unpack(row + b * 16);                                                          \
                for (int m = 0; m < M; m++)                                                                   \
                    acc[8 * m + b % 8] += q4_step(d[m * nb + b], sb[b], zb[b],                                \
                                                  hsum(Q4DOT(q, qx + (int64_t)m * K + b * BLOCK)), sums[m * nb + b]); \
            }                                                                                                 \
            for (int m = 0; m < M; m++) y[(int64_t)m * ldy + o] = reduce8(acc + 8 * m);                       \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void q8_##NAME(const int8_t *w, const float *scales, int o0, int o1, int K, const int8_t *qx,  \
                                 const float *d, int M, float *y, int ldy, float *acc) {                      \
        const int nb = K / BLOCK;                                                                             \
        for (int o = o0; o < o1; o++) {                                                                       \
            const int8_t *row = w + (int64_t)o * K;                                                           \
            for (int i = 0; i < 8 * M; i++) acc[i] = 0.0f;                                                    \
            int b = 0;                                                                                        \
            for (; b + 8 <= nb; b += 8) {                                                                     \
                __m256i q[8], v[8];                                                                           \
                for (int i = 0; i < 8; i++) q[i] = q8_load(row + (b + i) * BLOCK);                            \
                for (int m = 0; m < M; m++) {                                                                 \
                    const int8_t *x = qx + (int64_t)m * K + b * BLOCK;                                        \
                    for (int i = 0; i < 8; i++) v[i] = Q8DOT(q[i], x + i * BLOCK);                            \
                    __m256 a = _mm256_loadu_ps(acc + 8 * m);                                                  \
                    a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_loadu_ps(d + m * nb + b), _mm256_cvtepi32_ps(sum8(v)))); \
                    _mm256_storeu_ps(acc + 8 * m, a);                                                         \
                }                                                                                             \
            }                                                                                                 \
            for (; b < nb; b++) {                                                                             \
                __m256i q = q8_load(row + b * BLOCK);                                                         \
                for (int m = 0; m < M; m++)                                                                   \
                    acc[8 * m + b % 8] += d[m * nb + b] * (float)hsum(Q8DOT(q, qx + (int64_t)m * K + b * BLOCK)); \
            }                                                                                                 \
            for (int m = 0; m < M; m++) y[(int64_t)m * ldy + o] = scales[o] * reduce8(acc + 8 * m);           \
        }                                                                                                     \
    }

SIMD_MATMULS(avx2, AVX2_T, q4_dot_avx2, q8_dot_avx2)
SIMD_MATMULS(vnni, VNNI_T, q4_dot_vnni, q8_dot_vnni)
#endif

/* ---- the range products over quantized rows (kernels.h) ------------------------------------------------ */

void qkv_q4_range(int variant, const QActs *a, const uint8_t *w, const float *scales, const float *zeros, int g,
                  int o0, int o1, float *y, int ldy, float *scratch) {
    const int K = a->K, nb = K / BLOCK, M = a->M;
    float *s_blocks = scratch, *z_blocks = s_blocks + nb, *acc = z_blocks + nb;
#ifdef QKV_X86
    if (variant == AVX512)
        q4_vnni(w, scales, zeros, o0, o1, K, g, a->qx, a->d, a->sums, M, y, ldy, s_blocks, z_blocks, acc);
    else if (variant == AVX2)
        q4_avx2(w, scales, zeros, o0, o1, K, g, a->qx, a->d, a->sums, M, y, ldy, s_blocks, z_blocks, acc);
    else
#endif
        q4_scalar(w, scales, zeros, o0, o1, K, g, a->qx, a->d, a->sums, M, y, ldy, s_blocks, z_blocks, acc);
}

void qkv_q8_range(int variant, const QActs *a, const int8_t *w, const float *scales, int o0, int o1, float *y,
                  int ldy, float *scratch) {
    const int K = a->K, M = a->M;
#ifdef QKV_X86
    if (variant == AVX512) q8_vnni(w, scales, o0, o1, K, a->qx, a->d, M, y, ldy, scratch);
    else if (variant == AVX2) q8_avx2(w, scales, o0, o1, K, a->qx, a->d, M, y, ldy, scratch);
    else
#endif
        q8_scalar(w, scales, o0, o1, K, a->qx, a->d, M, y, ldy, scratch);
}

/* ---- the entry points: y (M, O) = x (M, K) W^T; quantize the activation rows once, then the output rows
 * split over ``threads`` (each row's bits do not depend on the split). Returns 0, or -1 when the scratch
 * memory cannot be had. */

typedef struct {
    int variant, kind, O, g;
    const QActs *a;
    const void *w;
    const float *scales, *zeros;
    float *y, *scratch;
} LinearTask;

static void linear_task(void *arg, int t, int T) {
    const LinearTask *j = arg;
    int o0, o1;
    qkv_share(j->O, t, T, 8, &o0, &o1);
    float *scratch = j->scratch + (size_t)t * QKV_RANGE_SCRATCH(j->a->K, j->a->M);
    if (j->kind == 4) qkv_q4_range(j->variant, j->a, j->w, j->scales, j->zeros, j->g, o0, o1, j->y, j->O, scratch);
    else qkv_q8_range(j->variant, j->a, j->w, j->scales, o0, o1, j->y, j->O, scratch);
}

static int linear(int variant, int kind, const float *x, int M, const void *w, const float *scales,
                  const float *zeros, int O, int K, int g, float *y, int threads) {
    const int nb = K / BLOCK;
    if (threads < 1) threads = 1;
    int8_t *qx = malloc((size_t)M * K);
    float *f = malloc(sizeof(float) * ((size_t)M * nb + (size_t)threads * QKV_RANGE_SCRATCH(K, M)));
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)M * nb);
    if (!qx || !f || !sums) return free(qx), free(f), free(sums), -1;
    QActs a = {qx, f, sums, M, K, kind == 4};
    qkv_quantize_rows(x, M, K, kind == 4, qx, a.d, sums);
    LinearTask job = {variant, kind, O, g, &a, w, scales, zeros, y, f + (size_t)M * nb};
    if (threads == 1) linear_task(&job, 0, 1);
    else qkv_parallel(linear_task, &job, threads);
    free(qx), free(f), free(sums);
    return 0;
}

int qkv_q4_linear(int variant, const float *x, int M, const uint8_t *w, const float *scales, const float *zeros,
                  int O, int K, int g, float *y, int threads) {
    return linear(variant, 4, x, M, w, scales, zeros, O, K, g, y, threads);
}

int qkv_q8_linear(int variant, const float *x, int M, const int8_t *w, const float *scales, int O, int K, float *y,
                  int threads) {
    return linear(variant, 8, x, M, w, scales, NULL, O, K, BLOCK, y, threads);
}

/* The version of these entry points' arguments: qkv.native refuses a build older than its sources. */
int qkv_abi(void) { return QKV_ABI; }

/* Which variants this CPU runs: bit 0 scalar, bit 1 AVX2+FMA, bit 2 AVX-512 BW/VL/VNNI. */
int qkv_supported(void) {
    int bits = 1;
#ifdef QKV_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) bits |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        bits |= 4;
#endif
    return bits;
}
