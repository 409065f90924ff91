/* IEEE half precision (float16) rows to float32 and back, for the fused step's float16 KV cache (decode.c):
 * the cache's keys and values are rounded once when written and widened each time attention reads them.
 *
 * Both directions are exact functions of their input (widening is exact; narrowing rounds to nearest, ties
 * to even, as torch's .half() does), so the scalar reference and the F16C variant (vcvtps2ph / vcvtph2ps,
 * on every AVX2 CPU qkv picks) give the same bits, and the float32 math after them is decode.c's shared
 * code: the cache's dtype changes a result, never the variant. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QKV_X86 1
#endif

static float half_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 31, mantissa = h & 0x3ff;
    float value;
    if (exponent == 0) value = ldexpf((float)mantissa, -24);                   /* zero and subnormals */
    else if (exponent == 31) value = mantissa ? NAN : INFINITY;
    else value = ldexpf((float)(mantissa | 0x400), (int)exponent - 25);
    uint32_t bits;
    memcpy(&bits, &value, 4);
    bits |= sign;
    if (exponent == 31 && mantissa) bits |= (uint32_t)mantissa << 13;           /* keep a NaN's payload */
    memcpy(&value, &bits, 4);
    return value;
}

static uint16_t float_half(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    const uint32_t magnitude = bits & 0x7fffffff;
    if (magnitude > 0x7f800000) return sign | 0x7e00 | (uint16_t)((magnitude >> 13) & 0x3ff);   /* NaN */
    if (magnitude >= 0x477ff000) return sign | 0x7c00;          /* rounds past 65504, or infinite */
    if (magnitude < 0x38800000) {                               /* below 2^-14: a subnormal half or zero */
        /* the value in units of 2^-24, rounded to nearest even: rintf does that in the default rounding */
        float units;
        uint32_t m = magnitude;
        memcpy(&units, &m, 4);
        return sign | (uint16_t)rintf(ldexpf(units, 24));
    }
    /* a normal half: drop 13 mantissa bits, rounding to nearest, ties to even (a carry may bump the exponent) */
    uint32_t rounded = magnitude + 0xfff + ((magnitude >> 13) & 1);
    return sign | (uint16_t)((rounded - 0x38000000) >> 13);
}

#ifdef QKV_X86
#define F16C_T __attribute__((target("avx2,f16c")))

F16C_T static void widen_f16c(const uint16_t *h, float *f, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) f[i] = half_float(h[i]);
}

F16C_T static void narrow_f16c(const float *f, uint16_t *h, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = float_half(f[i]);
}
#endif

void qkv_half_to_float(int variant, const uint16_t *h, float *f, int n) {
#ifdef QKV_X86
    if (variant != SCALAR) { widen_f16c(h, f, n); return; }
#endif
    for (int i = 0; i < n; i++) f[i] = half_float(h[i]);
}

void qkv_float_to_half(int variant, const float *f, uint16_t *h, int n) {
#ifdef QKV_X86
    if (variant != SCALAR) { narrow_f16c(f, h, n); return; }
#endif
    for (int i = 0; i < n; i++) h[i] = float_half(f[i]);
}
