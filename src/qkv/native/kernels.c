/* Integer-dot matrix-vector products for qkv's quantized layers (issue 22), the arithmetic llama.cpp's
 * vec_dot_q4_1_q8_1 / vec_dot_q8_0_q8_0 use, on qkv's own portable formats:
 *
 *   Int4Linear  codes q in [0, 15], byte j of a row = column 2j (low nibble) | column 2j+1 (high nibble),
 *               one scale s and one code-8 value z per group of g columns:   w = (q - 8) s + z
 *   Int8Linear  int8 q (O, K) row-major, one scale s per row:                 w = q s
 *
 * The activation row x is quantized once to 8 bits per block of 32 (d = max|x| / 127, qx = round(x / d)),
 * so that every weight block costs integer multiply-adds and a float scaling:
 *
 *   sum_k w_k x_k  ~=  sum_blocks  d_b s_b sum q qx  +  sum_blocks d_b sum(qx) (z_b - 8 s_b)     (4-bit)
 *                  =   s_o sum_blocks d_b sum q qx                                                (int8)
 *
 * For the 4-bit layout the activation block is stored in the weights' order: its even columns, then its
 * odd ones, so that the low nibbles of 16 weight bytes meet the first half and the high nibbles the second.
 *
 * Each SIMD variant computes a block's integer lanes exactly and then the float steps in the same order as
 * the scalar reference (below), so every variant gives the same bits (tests hold them equal): the result does not
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

/* ---- the arithmetic every variant shares ----------------------------------------------------------------
 * A block's integer products are summed in 8 lanes of 4 columns each (lane j: columns 4j .. 4j+3 of the
 * block in its stored order), the grouping of one vpdpbusd (or vpmaddubsw + vpmaddwd) on 32 bytes. Each
 * lane's exact integer becomes a float and is scaled once per block; even blocks go to one set of eight
 * running sums and odd blocks to another (two chains of additions, so that the next block's addition
 * does not wait on this one's). For the 4-bit codes the constant part of (q - 8) s + z is a sum over
 * blocks of its own, c_b (z_b - 8 s_b) with c_b = d_b sum(qx_b), in eight sums by b % 8. A row's result:
 *
 *   4-bit  reduce8(even + odd) + reduce8(constant)        int8  s_o reduce8(even + odd)
 *
 * The scalar reference walks the same lanes one by one, so every variant gives the same bits. */

#define LANES 8

/* Scratch for one range call: a row's per-block scales and code-8 values (widened to float32), c_b of
 * every activation row, each row's running sums (even, odd, constant), and one 8-block scale vector. */
typedef struct {
    float *s_blocks, *z_blocks, *c, *acc, *ds;
} RangeScratch;

static RangeScratch range_scratch(float *scratch, int nb, int M) {
    RangeScratch r = {scratch, scratch + nb, scratch + 2 * nb, scratch + 2 * nb + (size_t)M * nb, NULL};
    r.ds = r.acc + 24 * (size_t)M;
    return r;
}

/* the 4-bit row's per-block scales and code-8 values: the row's own, or each group's repeated when it spans
 * blocks (copied into scratch, still bfloat16) */
static void block_scales(const bf16 *s_row, const bf16 *z_row, int nb, int per_group, RangeScratch *r,
                         const bf16 **sb, const bf16 **zb) {
    if (per_group == 1) { *sb = s_row, *zb = z_row; return; }
    bf16 *s_blocks = (bf16 *)r->s_blocks, *z_blocks = (bf16 *)r->z_blocks;
    for (int b = 0, group = 0; b < nb; group++)
        for (int k = 0; k < per_group; k++, b++) s_blocks[b] = s_row[group], z_blocks[b] = z_row[group];
    *sb = s_blocks, *zb = z_blocks;
}

static void activation_constants(const float *d, const int32_t *sums, int M, int nb, float *c) {
    for (int i = 0; i < M * nb; i++) c[i] = d[i] * (float)sums[i];
}

static float finish(const float *acc) {           /* reduce8 of even + odd, lane by lane */
    float a[LANES];
    for (int j = 0; j < LANES; j++) a[j] = acc[j] + acc[LANES + j];
    return reduce8(a);
}

/* The scalar reference. */
static void q4_scalar(const uint8_t *w, const bf16 *s_all, const bf16 *z_all, int o0, int o1, int K, int g,
                      const int8_t *qx, const float *d, const int32_t *sums, int M, float *y, int ldy,
                      float *scratch) {
    const int nb = K / BLOCK, per_group = g / BLOCK, G = K / g;
    RangeScratch r = range_scratch(scratch, nb, M);
    activation_constants(d, sums, M, nb, r.c);
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (int64_t)o * (K / 2);
        const bf16 *sb, *zb;
        block_scales(s_all + (int64_t)o * G, z_all + (int64_t)o * G, nb, per_group, &r, &sb, &zb);
        for (int m = 0; m < M; m++) {
            float acc[2 * LANES] = {0}, constant[LANES] = {0};
            for (int b = 0; b < nb; b++) {
                const uint8_t *w16 = row + b * 16;
                const int8_t *x = qx + (int64_t)m * K + b * BLOCK;
                const float s = bf16_float(sb[b]), ds = d[m * nb + b] * s;
                for (int j = 0; j < LANES; j++) {
                    int32_t lane = 0;
                    for (int i = 4 * j; i < 4 * j + 4; i++)
                        lane += (i < 16 ? w16[i] & 15 : w16[i - 16] >> 4) * x[i];
                    acc[(b % 2) * LANES + j] += (float)lane * ds;
                }
                constant[b % LANES] += r.c[m * nb + b] * (bf16_float(zb[b]) - s * 8.0f);
            }
            y[(int64_t)m * ldy + o] = finish(acc) + reduce8(constant);
        }
    }
}

static void q8_scalar(const int8_t *w, const bf16 *scales, int o0, int o1, int K, const int8_t *qx, const float *d,
                      int M, float *y, int ldy) {
    const int nb = K / BLOCK;
    for (int o = o0; o < o1; o++) {
        const int8_t *row = w + (int64_t)o * K;
        for (int m = 0; m < M; m++) {
            float acc[2 * LANES] = {0};
            for (int b = 0; b < nb; b++) {
                const int8_t *wb = row + b * BLOCK, *x = qx + (int64_t)m * K + b * BLOCK;
                for (int j = 0; j < LANES; j++) {
                    int32_t lane = 0;
                    for (int i = 4 * j; i < 4 * j + 4; i++) lane += wb[i] * x[i];
                    acc[(b % 2) * LANES + j] += (float)lane * d[m * nb + b];
                }
            }
            y[(int64_t)m * ldy + o] = bf16_float(scales[o]) * finish(acc);
        }
    }
}

#ifdef QKV_X86
/* ---- SIMD: a weight block is unpacked once for all M rows of the batch (M-tiled), eight blocks at a time;
 * the lanes of one 256-bit register are the eight lanes above. */

#define AVX2_T __attribute__((target("avx2,fma")))
#define VNNI_T __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))   /* a superset of AVX2_T: its helpers inline */

AVX2_T static inline __m256i q4_unpack(const uint8_t *w16) {      /* 32 codes: low nibbles, then high ones */
    __m128i packed = _mm_loadu_si128((const __m128i *)w16), mask = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
}

/* eight bfloat16 values widened to float32 (exact: they are float32's top halves) */
AVX2_T static inline __m256 widen8(const bf16 *h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)h)), 16));
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

/* acc += float(lanes) * ds, no fused multiply-add (the scalar order) */
#define SCALED_ADD(acc, lanes, ds) _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(ds)))

/* One function per variant holds the whole loop: switching between VEX/EVEX code and the caller's
 * baseline (SSE) code once per row left the upper register state dirty and made the AVX-512 variant 8x
 * slower than AVX2 (measured); now the switch happens once per call. Row by row, the running sums of
 * one activation row stay in registers (M = 1, a decode step) or in scratch (M > 1). */
#define SIMD_MATMULS(NAME, TARGET, Q4DOT, Q8DOT)                                                              \
    /* Two output rows of one activation row (a decode step, whole-block groups): each row's sums in the same  \
     * lanes and order as below (the same bits), held in registers, the activation blocks loaded once. */    \
    TARGET static void q4_pair_##NAME(const uint8_t *w, const bf16 *s_all, const bf16 *z_all, int o, int K,  \
                                      const int8_t *x, const float *d, const float *c, float *y) {            \
        const int nb = K / BLOCK;                                                                             \
        const __m256 eight = _mm256_set1_ps(8.0f);                                                            \
        const uint8_t *rw[2] = {w + (int64_t)o * (K / 2), w + (int64_t)(o + 1) * (K / 2)};                    \
        const bf16 *sb[2] = {s_all + (int64_t)o * nb, s_all + (int64_t)(o + 1) * nb};                         \
        const bf16 *zb[2] = {z_all + (int64_t)o * nb, z_all + (int64_t)(o + 1) * nb};                         \
        __m256 even[2], odd[2], k[2];                                                                         \
        float ds[2][8];                                                                                       \
        for (int p = 0; p < 2; p++) even[p] = odd[p] = k[p] = _mm256_setzero_ps();                            \
        int b = 0;                                                                                            \
        for (; b + 8 <= nb; b += 8) {                                                                         \
            const __m256 d8 = _mm256_loadu_ps(d + b), c8 = _mm256_loadu_ps(c + b);                            \
            for (int p = 0; p < 2; p++) {                                                                     \
                __m256 s8 = widen8(sb[p] + b);                                                                \
                _mm256_storeu_ps(ds[p], _mm256_mul_ps(d8, s8));                                               \
                k[p] = _mm256_add_ps(k[p], _mm256_mul_ps(c8, _mm256_sub_ps(widen8(zb[p] + b),                 \
                                                                        _mm256_mul_ps(s8, eight))));          \
            }                                                                                                 \
            for (int i = 0; i < 8; i += 2) {                                                                  \
                const int8_t *x0 = x + (b + i) * BLOCK, *x1 = x0 + BLOCK;                                     \
                for (int p = 0; p < 2; p++) {                                                                 \
                    even[p] = SCALED_ADD(even[p], Q4DOT(q4_unpack(rw[p] + (b + i) * 16), x0), ds[p][i]);      \
                    odd[p] = SCALED_ADD(odd[p], Q4DOT(q4_unpack(rw[p] + (b + i + 1) * 16), x1), ds[p][i + 1]); \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        for (int p = 0; p < 2; p++) {                                                                         \
            float acc[24];                                                                                    \
            _mm256_storeu_ps(acc, even[p]), _mm256_storeu_ps(acc + 8, odd[p]), _mm256_storeu_ps(acc + 16, k[p]); \
            for (int t = b; t < nb; t++) {            /* the last blocks: one at a time, as below */          \
                float *a = acc + (t % 2) * 8;                                                                 \
                _mm256_storeu_ps(a, SCALED_ADD(_mm256_loadu_ps(a), Q4DOT(q4_unpack(rw[p] + t * 16), x + t * BLOCK), \
                                               d[t] * bf16_float(sb[p][t])));                                 \
                acc[16 + t % 8] += c[t] * (bf16_float(zb[p][t]) - bf16_float(sb[p][t]) * 8.0f);               \
            }                                                                                                 \
            y[o + p] = finish(acc) + reduce8(acc + 16);                                                       \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void q4_##NAME(const uint8_t *w, const bf16 *s_all, const bf16 *z_all, int o0, int o1,     \
                                 int K, int g, const int8_t *qx, const float *d, const int32_t *sums, int M,  \
                                 float *y, int ldy, float *scratch) {                                         \
        const int nb = K / BLOCK, per_group = g / BLOCK, G = K / g;                                           \
        RangeScratch r = range_scratch(scratch, nb, M);                                                       \
        activation_constants(d, sums, M, nb, r.c);                                                            \
        const __m256 eight = _mm256_set1_ps(8.0f);                                                            \
        int o = o0;                                                                                           \
        if (M == 1 && per_group == 1)                                                                         \
            for (; o + 2 <= o1; o += 2) q4_pair_##NAME(w, s_all, z_all, o, K, qx, d, r.c, y);                 \
        for (; o < o1; o++) {                                                                                 \
            const uint8_t *row = w + (int64_t)o * (K / 2);                                                    \
            const bf16 *sb, *zb;                                                                              \
            block_scales(s_all + (int64_t)o * G, z_all + (int64_t)o * G, nb, per_group, &r, &sb, &zb);        \
            for (int i = 0; i < 24 * M; i++) r.acc[i] = 0.0f;                                                 \
            int b = 0;                                                                                        \
            for (; b + 8 <= nb; b += 8) {                                                                     \
                __m256i q[8];                                                                                 \
                for (int i = 0; i < 8; i++) q[i] = q4_unpack(row + (b + i) * 16);                             \
                __m256 s8 = widen8(sb + b), k8 = _mm256_sub_ps(widen8(zb + b), _mm256_mul_ps(s8, eight));     \
                for (int m = 0; m < M; m++) {                                                                 \
                    const int8_t *x = qx + (int64_t)m * K + b * BLOCK;                                        \
                    float *acc = r.acc + 24 * m;                                                              \
                    _mm256_storeu_ps(r.ds, _mm256_mul_ps(_mm256_loadu_ps(d + m * nb + b), s8));               \
                    __m256 even = _mm256_loadu_ps(acc), odd = _mm256_loadu_ps(acc + 8);                       \
                    for (int i = 0; i < 8; i += 2) {                                                          \
                        even = SCALED_ADD(even, Q4DOT(q[i], x + i * BLOCK), r.ds[i]);                         \
                        odd = SCALED_ADD(odd, Q4DOT(q[i + 1], x + (i + 1) * BLOCK), r.ds[i + 1]);             \
                    }                                                                                         \
                    __m256 k = _mm256_add_ps(_mm256_loadu_ps(acc + 16),                                       \
                                             _mm256_mul_ps(_mm256_loadu_ps(r.c + m * nb + b), k8));          \
                    _mm256_storeu_ps(acc, even), _mm256_storeu_ps(acc + 8, odd), _mm256_storeu_ps(acc + 16, k); \
                }                                                                                             \
            }                                                                                                 \
            for (; b < nb; b++) {                     /* the last blocks: one at a time, the same lanes */    \
                __m256i q = q4_unpack(row + b * 16);                                                          \
                for (int m = 0; m < M; m++) {                                                                 \
                    float *acc = r.acc + 24 * m + (b % 2) * 8;                                                \
                    __m256 a = SCALED_ADD(_mm256_loadu_ps(acc), Q4DOT(q, qx + (int64_t)m * K + b * BLOCK),    \
                                          d[m * nb + b] * bf16_float(sb[b]));                                 \
                    _mm256_storeu_ps(acc, a);                                                                 \
                    r.acc[24 * m + 16 + b % 8] += r.c[m * nb + b] * (bf16_float(zb[b]) - bf16_float(sb[b]) * 8.0f); \
                }                                                                                             \
            }                                                                                                 \
            for (int m = 0; m < M; m++)                                                                       \
                y[(int64_t)m * ldy + o] = finish(r.acc + 24 * m) + reduce8(r.acc + 24 * m + 16);              \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void q8_##NAME(const int8_t *w, const bf16 *scales, int o0, int o1, int K, const int8_t *qx,  \
                                 const float *d, int M, float *y, int ldy, float *scratch) {                  \
        const int nb = K / BLOCK;                                                                             \
        RangeScratch r = range_scratch(scratch, nb, M);                                                       \
        for (int o = o0; o < o1; o++) {                                                                       \
            const int8_t *row = w + (int64_t)o * K;                                                           \
            for (int i = 0; i < 24 * M; i++) r.acc[i] = 0.0f;                                                 \
            int b = 0;                                                                                        \
            for (; b + 8 <= nb; b += 8) {                                                                     \
                __m256i q[8];                                                                                 \
                for (int i = 0; i < 8; i++) q[i] = q8_load(row + (b + i) * BLOCK);                            \
                for (int m = 0; m < M; m++) {                                                                 \
                    const int8_t *x = qx + (int64_t)m * K + b * BLOCK;                                        \
                    const float *dm = d + m * nb + b;                                                         \
                    float *acc = r.acc + 24 * m;                                                              \
                    __m256 even = _mm256_loadu_ps(acc), odd = _mm256_loadu_ps(acc + 8);                       \
                    for (int i = 0; i < 8; i += 2) {                                                          \
                        even = SCALED_ADD(even, Q8DOT(q[i], x + i * BLOCK), dm[i]);                           \
                        odd = SCALED_ADD(odd, Q8DOT(q[i + 1], x + (i + 1) * BLOCK), dm[i + 1]);               \
                    }                                                                                         \
                    _mm256_storeu_ps(acc, even), _mm256_storeu_ps(acc + 8, odd);                              \
                }                                                                                             \
            }                                                                                                 \
            for (; b < nb; b++) {                                                                             \
                __m256i q = q8_load(row + b * BLOCK);                                                         \
                for (int m = 0; m < M; m++) {                                                                 \
                    float *acc = r.acc + 24 * m + (b % 2) * 8;                                                \
                    _mm256_storeu_ps(acc, SCALED_ADD(_mm256_loadu_ps(acc),                                    \
                                                     Q8DOT(q, qx + (int64_t)m * K + b * BLOCK), d[m * nb + b])); \
                }                                                                                             \
            }                                                                                                 \
            for (int m = 0; m < M; m++) y[(int64_t)m * ldy + o] = bf16_float(scales[o]) * finish(r.acc + 24 * m);         \
        }                                                                                                     \
    }

SIMD_MATMULS(avx2, AVX2_T, q4_dot_avx2, q8_dot_avx2)
SIMD_MATMULS(vnni, VNNI_T, q4_dot_vnni, q8_dot_vnni)
#endif

/* ---- the range products over quantized rows (kernels.h) ------------------------------------------------ */

void qkv_q4_range(int variant, const QActs *a, const uint8_t *w, const bf16 *scales, const bf16 *zeros, int g,
                  int o0, int o1, float *y, int ldy, float *scratch) {
    const int K = a->K, M = a->M;
#ifdef QKV_X86
    if (variant == AVX512) q4_vnni(w, scales, zeros, o0, o1, K, g, a->qx, a->d, a->sums, M, y, ldy, scratch);
    else if (variant == AVX2) q4_avx2(w, scales, zeros, o0, o1, K, g, a->qx, a->d, a->sums, M, y, ldy, scratch);
    else
#endif
        q4_scalar(w, scales, zeros, o0, o1, K, g, a->qx, a->d, a->sums, M, y, ldy, scratch);
}

void qkv_q8_range(int variant, const QActs *a, const int8_t *w, const bf16 *scales, int o0, int o1, float *y,
                  int ldy, float *scratch) {
    const int K = a->K, M = a->M;
#ifdef QKV_X86
    if (variant == AVX512) q8_vnni(w, scales, o0, o1, K, a->qx, a->d, M, y, ldy, scratch);
    else if (variant == AVX2) q8_avx2(w, scales, o0, o1, K, a->qx, a->d, M, y, ldy, scratch);
    else
#endif
        q8_scalar(w, scales, o0, o1, K, a->qx, a->d, M, y, ldy);
}

/* ---- the entry points: y (M, O) = x (M, K) W^T; quantize the activation rows once, then the output rows
 * split over ``threads`` (each row's bits do not depend on the split). Returns 0, or -1 when the scratch
 * memory cannot be had. */

typedef struct {
    int variant, kind, O, g;
    const QActs *a;
    const void *w;
    const bf16 *scales, *zeros;
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

static int linear(int variant, int kind, const float *x, int M, const void *w, const bf16 *scales,
                  const bf16 *zeros, int O, int K, int g, float *y, int threads) {
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

int qkv_q4_linear(int variant, const float *x, int M, const uint8_t *w, const bf16 *scales, const bf16 *zeros,
                  int O, int K, int g, float *y, int threads) {
    return linear(variant, 4, x, M, w, scales, zeros, O, K, g, y, threads);
}

int qkv_q8_linear(int variant, const float *x, int M, const int8_t *w, const bf16 *scales, int O, int K, float *y,
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
