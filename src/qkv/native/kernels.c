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
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QKV_X86 1
#endif

#define BLOCK 32

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

#ifdef QKV_X86
__attribute__((target("avx2,fma"))) static inline __m256i q4_unpack_avx2(const uint8_t *w16) {
    __m128i packed = _mm_loadu_si128((const __m128i *)w16);
    __m128i mask = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(packed, mask), hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    return _mm256_set_m128i(hi, lo);
}

/* AVX-512 VNNI (with VL: on 256-bit registers): one dpbusd replaces maddubs + madd */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static inline __m256i
q4_block_vnni(const uint8_t *w16, const int8_t *qx32) {
    __m128i packed = _mm_loadu_si128((const __m128i *)w16);
    __m128i mask = _mm_set1_epi8(15);
    __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, _mm256_loadu_si256((const __m256i *)qx32));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static inline __m256i
q8_block_vnni(const int8_t *w32, const int8_t *qx32) {
    __m256i w = _mm256_loadu_si256((const __m256i *)w32), x = _mm256_loadu_si256((const __m256i *)qx32);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

__attribute__((target("avx2,fma"))) static inline __m256i q4_block_vec_avx2(const uint8_t *w16, const int8_t *qx32) {
    __m256i pairs = _mm256_maddubs_epi16(q4_unpack_avx2(w16), _mm256_loadu_si256((const __m256i *)qx32));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

__attribute__((target("avx2,fma"))) static inline __m256i q8_block_vec_avx2(const int8_t *w32, const int8_t *qx32) {
    __m256i w = _mm256_loadu_si256((const __m256i *)w32), x = _mm256_loadu_si256((const __m256i *)qx32);
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/* Eight vectors of partial sums -> one vector whose lane i is the total of v[i] (integer: any order). */
__attribute__((target("avx2,fma"))) static inline __m256i sum8_avx2(const __m256i *v) {
    __m256i t0 = _mm256_hadd_epi32(v[0], v[1]), t1 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i t2 = _mm256_hadd_epi32(v[4], v[5]), t3 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

__attribute__((target("avx2,fma"))) static inline int32_t hsum_avx2(__m256i v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1)));
}

/* The integer sums of blocks b .. b+7 of a row (lane i: block b + i); _one: block b's partial sums. */
#define SUMS8(NAME, TARGET, BLOCKFN, WTYPE, WSTEP)                                                    \
    __attribute__((target(TARGET))) static inline __m256i NAME(const WTYPE *row, const int8_t *qx, int b) { \
        __m256i v[8];                                                                                \
        for (int i = 0; i < 8; i++) v[i] = BLOCKFN(row + (b + i) * WSTEP, qx + (b + i) * BLOCK);    \
        return sum8_avx2(v);                                                                         \
    }                                                                                                \
    __attribute__((target(TARGET))) static inline __m256i NAME##_one(const WTYPE *row, const int8_t *qx, int b) { \
        return BLOCKFN(row + b * WSTEP, qx + b * BLOCK);                                             \
    }
SUMS8(sums8_avx2_q4, "avx2,fma", q4_block_vec_avx2, uint8_t, 16)
SUMS8(sums8_avx2_q8, "avx2,fma", q8_block_vec_avx2, int8_t, BLOCK)
SUMS8(sums8_vnni_q4, "avx512f,avx512bw,avx512vl,avx512vnni", q4_block_vnni, uint8_t, 16)
SUMS8(sums8_vnni_q8, "avx512f,avx512bw,avx512vl,avx512vnni", q8_block_vnni, int8_t, BLOCK)
#endif

/* ---- the float steps: eight running sums per row, block b into sum b % 8, then one fixed reduction -------
 * Every variant adds the same terms into the same sums in the same order (SIMD lanes are the eight sums;
 * the scalar code walks them one by one), so all of them give the same bits. */

enum { SCALAR = 0, AVX2 = 1, AVX512 = 2 };

/* One block's share of a 4-bit dot product: d (s (sum q qx - 8 sum qx) + z sum qx). */
static inline float q4_step(float d, float s, float z, int32_t dot, int32_t sum_qx) {
    return d * (s * (float)(dot - 8 * sum_qx) + z * (float)sum_qx);
}

static inline float reduce8(const float *a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

#ifdef QKV_X86
/* acc += d (s (dots - 8 sums) + z sums), lane by lane, with no fused multiply-add (the scalar order) */
__attribute__((target("avx2,fma"))) static inline __m256 q4_steps8(__m256 acc, const float *d, const float *s,
                                                                   const float *z, __m256i dots, const int32_t *sums) {
    __m256i sq = _mm256_loadu_si256((const __m256i *)sums);
    __m256 centered = _mm256_cvtepi32_ps(_mm256_sub_epi32(dots, _mm256_slli_epi32(sq, 3)));
    __m256 inner = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(s), centered),
                                 _mm256_mul_ps(_mm256_loadu_ps(z), _mm256_cvtepi32_ps(sq)));
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(d), inner));
}

/* The whole groups of eight blocks of one row: acc[0..7] = the eight running sums; returns blocks done. */
#define ROW_PARTS(NAME, TARGET, SUMS)                                                                     \
    __attribute__((target(TARGET))) static inline int NAME##_q4(const uint8_t *row, const int8_t *qx, const float *d,  \
                                                       const float *s, const float *z, const int32_t *sums,   \
                                                       int nb, float *acc) {                                 \
        __m256 acc8 = _mm256_setzero_ps();                                                                \
        int b = 0;                                                                                        \
        for (; b + 8 <= nb; b += 8) acc8 = q4_steps8(acc8, d + b, s + b, z + b, SUMS##_q4(row, qx, b), sums + b); \
        _mm256_storeu_ps(acc, acc8);                                                                      \
        for (; b < nb; b++) /* the last blocks: a vector dot each, the scalar float step */              \
            acc[b % 8] += q4_step(d[b], s[b], z[b], hsum_avx2(SUMS##_q4_one(row, qx, b)), sums[b]);      \
        return b;                                                                                         \
    }                                                                                                     \
    __attribute__((target(TARGET))) static inline int NAME##_q8(const int8_t *row, const int8_t *qx, const float *d,   \
                                                       int nb, float *acc) {                                 \
        __m256 acc8 = _mm256_setzero_ps();                                                                \
        int b = 0;                                                                                        \
        for (; b + 8 <= nb; b += 8)                                                                       \
            acc8 = _mm256_add_ps(acc8, _mm256_mul_ps(_mm256_loadu_ps(d + b), _mm256_cvtepi32_ps(SUMS##_q8(row, qx, b)))); \
        _mm256_storeu_ps(acc, acc8);                                                                      \
        for (; b < nb; b++) acc[b % 8] += d[b] * (float)hsum_avx2(SUMS##_q8_one(row, qx, b));           \
        return b;                                                                                         \
    }
ROW_PARTS(row_avx2, "avx2,fma", sums8_avx2)
ROW_PARTS(row_vnni, "avx512f,avx512bw,avx512vl,avx512vnni", sums8_vnni)
#endif

static inline int row_scalar_q4(const uint8_t *row, const int8_t *qx, const float *d, const float *s,
                                const float *z, const int32_t *sums, int nb, float *acc) {
    (void)row, (void)qx, (void)d, (void)s, (void)z, (void)sums, (void)nb, (void)acc;
    return 0;                                          /* no whole groups: every block takes the tail loop */
}

static inline int row_scalar_q8(const int8_t *row, const int8_t *qx, const float *d, int nb, float *acc) {
    (void)row, (void)qx, (void)d, (void)nb, (void)acc;
    return 0;
}

/* One function per variant holds the whole loop, its SIMD part inlined: switching between VEX/EVEX code
 * and the baseline (SSE) code of the caller once per row left the upper register state dirty and made the
 * AVX-512 variant 8x slower than AVX2 (measured); now the switch happens once per call. */
#define MATMULS(NAME, TARGET)                                                                                 \
    TARGET static void q4_##NAME(const uint8_t *w, const float *scales, const float *zeros, int O, int K, int g, \
                                 const int8_t *qx, const float *d, const int32_t *sums, int M, float *y,      \
                                 int o_begin, int o_end) {                                                    \
        const int nb = K / BLOCK, per_group = g / BLOCK, G = K / g;                                           \
        float s_blocks[nb], z_blocks[nb];              /* a row's scales per block (g > 32 repeats them) */  \
        for (int o = o_begin; o < o_end; o++) {                                                               \
            const uint8_t *row = w + (int64_t)o * (K / 2);                                                    \
            const float *s = scales + (int64_t)o * G, *z = zeros + (int64_t)o * G;                            \
            if (per_group > 1) {                                                                              \
                for (int b = 0; b < nb; b++) s_blocks[b] = s[b / per_group], z_blocks[b] = z[b / per_group];  \
                s = s_blocks, z = z_blocks;                                                                   \
            }                                                                                                 \
            for (int m = 0; m < M; m++) {              /* the row's blocks stay in cache across the batch */  \
                const int8_t *qxm = qx + (int64_t)m * K;                                                      \
                const float *dm = d + (int64_t)m * nb;                                                        \
                const int32_t *sm = sums + (int64_t)m * nb;                                                   \
                float acc[8] = {0};                                                                           \
                int b = row_##NAME##_q4(row, qxm, dm, s, z, sm, nb, acc);                                     \
                for (; b < nb; b++)                                                                           \
                    acc[b % 8] += q4_step(dm[b], s[b], z[b], q4_block_scalar(row + b * 16, qxm + b * BLOCK), sm[b]); \
                y[(int64_t)m * O + o] = reduce8(acc);                                                         \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void q8_##NAME(const int8_t *w, const float *scales, int O, int K, const int8_t *qx,          \
                                 const float *d, int M, float *y, int o_begin, int o_end) {                   \
        const int nb = K / BLOCK;                                                                             \
        for (int o = o_begin; o < o_end; o++) {                                                               \
            const int8_t *row = w + (int64_t)o * K;                                                           \
            for (int m = 0; m < M; m++) {                                                                     \
                const int8_t *qxm = qx + (int64_t)m * K;                                                      \
                const float *dm = d + (int64_t)m * nb;                                                        \
                float acc[8] = {0};                                                                           \
                int b = row_##NAME##_q8(row, qxm, dm, nb, acc);                                               \
                for (; b < nb; b++) acc[b % 8] += dm[b] * (float)q8_block_scalar(row + b * BLOCK, qxm + b * BLOCK); \
                y[(int64_t)m * O + o] = scales[o] * reduce8(acc);                                             \
            }                                                                                                 \
        }                                                                                                     \
    }

MATMULS(scalar, )
#ifdef QKV_X86
MATMULS(avx2, __attribute__((target("avx2,fma"))))
MATMULS(vnni, __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))))
#endif

/* y[m, o] = sum_k W[o, k] x[m, k] for the 4-bit layout. w: (O, K/2) bytes; scales, zeros: (O, K/g) floats;
 * qx, d, sums from qkv_quantize_rows(permute=1). Rows o in [o_begin, o_end). */
void qkv_q4_matmul(int variant, const uint8_t *w, const float *scales, const float *zeros, int O, int K, int g,
                   const int8_t *qx, const float *d, const int32_t *sums, int M, float *y, int o_begin, int o_end) {
#ifdef QKV_X86
    if (variant == AVX512) return q4_vnni(w, scales, zeros, O, K, g, qx, d, sums, M, y, o_begin, o_end);
    if (variant == AVX2) return q4_avx2(w, scales, zeros, O, K, g, qx, d, sums, M, y, o_begin, o_end);
#endif
    q4_scalar(w, scales, zeros, O, K, g, qx, d, sums, M, y, o_begin, o_end);
}

/* y[m, o] = s[o] sum_k q[o, k] x[m, k] for the int8 layout; qx, d from qkv_quantize_rows(permute=0). */
void qkv_q8_matmul(int variant, const int8_t *w, const float *scales, int O, int K, const int8_t *qx,
                   const float *d, int M, float *y, int o_begin, int o_end) {
#ifdef QKV_X86
    if (variant == AVX512) return q8_vnni(w, scales, O, K, qx, d, M, y, o_begin, o_end);
    if (variant == AVX2) return q8_avx2(w, scales, O, K, qx, d, M, y, o_begin, o_end);
#endif
    q8_scalar(w, scales, O, K, qx, d, M, y, o_begin, o_end);
}

/* The layers' entry points: quantize the M activation rows, then the product (one call from Python). */
int qkv_q4_linear(int variant, const float *x, int M, const uint8_t *w, const float *scales, const float *zeros,
                  int O, int K, int g, float *y) {
    int8_t *qx = malloc((size_t)M * K);
    float *d = malloc(sizeof(float) * (size_t)M * (K / BLOCK));
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)M * (K / BLOCK));
    if (!qx || !d || !sums) return free(qx), free(d), free(sums), -1;
    qkv_quantize_rows(x, M, K, 1, qx, d, sums);
    qkv_q4_matmul(variant, w, scales, zeros, O, K, g, qx, d, sums, M, y, 0, O);
    free(qx), free(d), free(sums);
    return 0;
}

int qkv_q8_linear(int variant, const float *x, int M, const int8_t *w, const float *scales, int O, int K, float *y) {
    int8_t *qx = malloc((size_t)M * K);
    float *d = malloc(sizeof(float) * (size_t)M * (K / BLOCK));
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)M * (K / BLOCK));
    if (!qx || !d || !sums) return free(qx), free(d), free(sums), -1;
    qkv_quantize_rows(x, M, K, 0, qx, d, sums);
    qkv_q8_matmul(variant, w, scales, O, K, qx, d, M, y, 0, O);
    free(qx), free(d), free(sums);
    return 0;
}

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
