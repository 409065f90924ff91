/* The fused decode step of a Llama-family decoder (issue 22): every layer of the stack for B new tokens
 * (one each, B <= 16 rows of a batch) in one call, the steps of a layer split over the thread pool with a
 * barrier between them:
 *
 *   A  RMSNorm + 8-bit quantization of x (each thread its own copy: cheaper than a barrier), then
 *      wq and wkv as one product (their output rows split over the threads), biases in the epilogue
 *   B  RoPE on the new keys and their write into the cache, (row, key head) split; then one attention
 *      for each (row, query head) over the cache: GQA reads the key head's cache directly, no copies
 *      (a float16 cache: each key and value row widened to float32 as it is read)
 *   C  the heads quantized, wo, and the residual add in its epilogue (x += o W^T + b)
 *   D  RMSNorm + quantization, gate and up as one product with SwiGLU in its epilogue: silu(g) * u
 *   E  the hidden row quantized, down, and the residual add
 *
 * It computes what nn/block.py's pre-norm Block computes (qkv's readable modules stay the reference and
 * run everything else: prefill, training, other families); the PyTorch path with qkv.native's products
 * rounds the activations to 8 bits at the same places, so the two differ by float rounding only.
 *
 * Bits: every row's numbers are computed by the same code in the same order whatever the batch, the thread
 * count or the kernel variant (the products are bit-identical across variants, kernels.c; the float loops
 * here are shared by all), so a row gives the same bits alone and in a batch. The float loops keep eight
 * running sums in a fixed order, which the compiler vectorizes without changing a result
 * (-ffp-contract=off, no -ffast-math). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef struct {
    int kind;                              /* 4: Int4Linear (qkv's nibbles), 8: Int8Linear */
    int O, K, g;
    const void *w;
    const bf16 *scales, *zeros;            /* the layer's bfloat16 buffers; zeros: 4-bit only */
    const float *bias;                     /* NULL for none */
} QLinear;

typedef struct {
    const float *norm1, *norm2;            /* RMSNorm weights (C) */
    float eps1, eps2;
    QLinear wq, wkv, wo, gate, up, down;   /* wkv: G keys then G values of D, as nn/attention.py */
} QLayer;

typedef struct {
    int n_layers, C, H, G, D, F;
    const float *cos, *sin;                /* RoPE tables (positions, D), channel i paired with i + D/2 */
    const QLayer *layers;
} QModel;

typedef struct {
    void *const *k, *const *v;             /* per layer: the cache (B, G, max_len, D), float32 or float16 */
    int half;                              /* 1: the cache holds float16 (rounded when written, half.c) */
    int max_len, length;                   /* positions the cache holds before this step */
    const int32_t *pos;                    /* B: each row's RoPE position */
    const uint8_t *allowed;                /* B x allowed_ld: the keys each row may see, or NULL for all */
    int allowed_ld;
} QStep;

typedef struct {                           /* one thread's scratch */
    float *normed, *range, *tmp, *scores;
    QActs a4, a8;
} Scratch;

typedef struct {
    int variant, B, kmax;
    const QModel *model;
    const QStep *step;
    float *x, *qkv, *att, *hidden;
    Scratch *scratch;
} Job;

static inline __attribute__((always_inline)) float dot(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++) acc[i % 8] += a[i] * b[i];
    return reduce8(acc);
}

/* x / sqrt(mean(x^2) + eps) * w for each of M rows */
static void rms_norm(const float *x, int M, int C, const float *w, float eps, float *y) {
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * C;
        float inv = 1.0f / sqrtf(dot(xm, xm, C) / (float)C + eps);
        for (int c = 0; c < C; c++) y[(size_t)m * C + c] = xm[c] * inv * w[c];
    }
}

/* 8-bit blocks of x for the kinds of products that will read them (4-bit: permuted, int8: natural) */
static void quantize_for(Scratch *s, const float *x, int M, int K, const QLinear *a, const QLinear *b) {
    int need4 = a->kind == 4 || (b && b->kind == 4), need8 = a->kind == 8 || (b && b->kind == 8);
    if (need4) s->a4.M = M, s->a4.K = K, qkv_quantize_rows(x, M, K, 1, s->a4.qx, s->a4.d, s->a4.sums);
    if (need8) s->a8.M = M, s->a8.K = K, qkv_quantize_rows(x, M, K, 0, s->a8.qx, s->a8.d, s->a8.sums);
}

/* rows [o0, o1) of one product into y (row stride ldy, column o - o0), bias added */
static void product(int variant, Scratch *s, const QLinear *L, int o0, int o1, float *y, int ldy) {
    if (o1 <= o0) return;
    if (L->kind == 4)
        qkv_q4_range(variant, &s->a4, (const uint8_t *)L->w + (size_t)o0 * (L->K / 2), L->scales + (size_t)o0 * (L->K / L->g),
                     L->zeros + (size_t)o0 * (L->K / L->g), L->g, 0, o1 - o0, y, ldy, s->range);
    else
        qkv_q8_range(variant, &s->a8, (const int8_t *)L->w + (size_t)o0 * L->K, L->scales + o0, 0, o1 - o0, y, ldy,
                     s->range);
    if (L->bias)
        for (int m = 0, M = L->kind == 4 ? s->a4.M : s->a8.M; m < M; m++)
            for (int o = o0; o < o1; o++) y[(size_t)m * ldy + o - o0] += L->bias[o];
}

/* (q, k) pairs (i, i + D/2) rotated by the position's angle, as nn/position.py's apply_rotary */
static void rope(const float *x, const float *cos, const float *sin, int D, float *y) {
    const int half = D / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        y[i] = a * cos[i] - b * sin[i];
        y[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* A: norm, quantize, q/k/v rows of this thread */
static void step_qkv(const Job *j, const QLayer *L, Scratch *s, int t, int T) {
    const int B = j->B, C = j->model->C, Oq = L->wq.O, total = Oq + L->wkv.O;
    rms_norm(j->x, B, C, L->norm1, L->eps1, s->normed);
    quantize_for(s, s->normed, B, C, &L->wq, &L->wkv);
    int o0, o1;
    qkv_share(total, t, T, 16, &o0, &o1);
    int q1 = o1 < Oq ? o1 : Oq, k0 = o0 > Oq ? o0 : Oq;
    product(j->variant, s, &L->wq, o0, q1, j->qkv + o0, total);
    product(j->variant, s, &L->wkv, k0 - Oq, o1 - Oq, j->qkv + k0, total);
}

/* B1: the new keys rotated and written to the cache with the values */
static void step_cache(const Job *j, int layer, int t, int T) {
    const QModel *md = j->model;
    const QStep *st = j->step;
    const int G = md->G, D = md->D, total = (md->H + 2 * G) * D;
    int i0, i1;
    qkv_share(j->B * G, t, T, 1, &i0, &i1);
    for (int i = i0; i < i1; i++) {
        int b = i / G, g = i % G;
        const float *k = j->qkv + (size_t)b * total + (md->H + g) * D, *v = k + G * D;
        size_t at = (((size_t)b * G + g) * st->max_len + st->length) * D;
        float rotated[512];                              /* D <= 512 (checked by qkv.native.fused) */
        float *key = st->half ? rotated : (float *)st->k[layer] + at;   /* a float32 cache: rotated in place */
        rope(k, md->cos + (size_t)st->pos[b] * D, md->sin + (size_t)st->pos[b] * D, D, key);
        if (st->half) {
            qkv_float_to_half(j->variant, key, (uint16_t *)st->k[layer] + at, D);
            qkv_float_to_half(j->variant, v, (uint16_t *)st->v[layer] + at, D);
        } else {
            memcpy((float *)st->v[layer] + at, v, sizeof(float) * D);
        }
    }
}

/* A float16 cache row widened to float32 (exact, so every way gives the same bits): by half.c's entry point
 * in the baseline build, inline with F16C in the AVX2 one (a call per cached row cost more than the row). */
typedef void (*Widen)(int variant, const uint16_t *h, float *f, int n);
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
__attribute__((target("avx2,f16c"))) static inline void widen_f16c(int variant, const uint16_t *h, float *f, int n) {
    (void)variant;
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    if (i < n) qkv_half_to_float(SCALAR, h + i, f + i, n - i);
}
#endif

/* one cached key or value row (D floats from element ``at``) as float32: in place, or widened into ``row`` */
static inline __attribute__((always_inline)) const float *cached(const Job *j, Widen widen, const void *cache,
                                                                 size_t at, float *row) {
    const int D = j->model->D;
    if (!j->step->half) return (const float *)cache + at;
    widen(j->variant, (const uint16_t *)cache + at, row, D);
    return row;
}

/* e^x for x <= 0 (a score minus the largest), the same operations in every build: 2^n by the exponent bits
 * times a degree-6 polynomial on r = x - n ln 2, |r| <= ln 2 / 2 (within 2 ulps of expf). Branch-free, so
 * the compiler vectorizes the loop calling it, and the bits do not depend on the vector width (each value
 * is computed alone, no fused multiply-adds: -ffp-contract=off). */
static inline __attribute__((always_inline)) float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;                          /* below: e^x < 2^-125, as good as 0 next to 1 */
    const float shift = 12582912.0f;                      /* 1.5 * 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504f + shift) - shift;
    float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;   /* ln 2 in two parts: r exact enough */
    float poly = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f + r * (0.00833333377f
                 + r * 0.00138888892f)))));
    union { int32_t i; float f; } scale = {((int32_t)n + 127) << 23};
    return poly * scale.f;
}

/* softmax(q k^T / sqrt(D)) v for the (row, query head) pairs [i0, i1), written into j->att. Consecutive
 * heads that share a key/value head (GQA) go together, up to GROUP_RUN at a time: each cached key and value
 * row is read once for all of them (read once per head, the cache bounded this step at long contexts). The
 * loops keep every sum in eight running sums in a fixed order (a score: over d; the softmax denominator: over
 * keys; the output: key by key), so a head's bits do not depend on which heads go with it, and each build of
 * this body (below) gives the same bits: wider vectors only make it faster. */
#define GROUP_RUN 4
static inline __attribute__((always_inline)) void attend_heads(const Job *j, int layer, Scratch *s, int i0, int i1,
                                                                Widen widen) {
    const QModel *md = j->model;
    const QStep *st = j->step;
    const int H = md->H, G = md->G, D = md->D, total = (H + 2 * G) * D, M = st->length + 1, per = H / G;
    const float scale = 1.0f / sqrtf((float)D);
    float q[GROUP_RUN][512], out[GROUP_RUN][512], row[512];    /* D <= 512 (checked by qkv.native.fused) */
    for (int i = i0; i < i1;) {
        const int b = i / H, h0 = i % H, g = h0 / per;
        int R = per - h0 % per;                               /* the heads left in this group ... */
        R = R < i1 - i ? R : i1 - i;                          /* ... and in this thread's share */
        R = R < GROUP_RUN ? R : GROUP_RUN;
        const float *cos = md->cos + (size_t)st->pos[b] * D, *sin = md->sin + (size_t)st->pos[b] * D;
        for (int r = 0; r < R; r++) rope(j->qkv + (size_t)b * total + (h0 + r) * D, cos, sin, D, q[r]);
        const size_t head = ((size_t)b * G + g) * st->max_len * D;
        const uint8_t *allowed = st->allowed ? st->allowed + (size_t)b * st->allowed_ld : NULL;
        float *p[GROUP_RUN], top[GROUP_RUN], sums[GROUP_RUN][8] = {{0}};
        for (int r = 0; r < R; r++) p[r] = s->scores + (size_t)r * st->max_len, top[r] = -INFINITY;
        for (int m = 0; m < M; m++) {
            if (allowed && !allowed[m]) {
                for (int r = 0; r < R; r++) p[r][m] = -INFINITY;
                continue;
            }
            const float *k = cached(j, widen, st->k[layer], head + (size_t)m * D, row);
            for (int r = 0; r < R; r++) {
                p[r][m] = dot(q[r], k, D) * scale;
                top[r] = p[r][m] > top[r] ? p[r][m] : top[r];     /* not fmaxf: a library call per key */
            }
        }
        for (int r = 0; r < R; r++) {
            for (int m = 0; m < M; m++) {
                p[r][m] = p[r][m] == -INFINITY ? 0.0f : exp_nonpositive(p[r][m] - top[r]);
                sums[r][m % 8] += p[r][m];
            }
            for (int d = 0; d < D; d++) out[r][d] = 0.0f;
        }
        for (int m = 0; m < M; m++) {
            if (allowed && !allowed[m]) continue;
            const float *v = cached(j, widen, st->v[layer], head + (size_t)m * D, row);
            for (int r = 0; r < R; r++) {
                const float pm = p[r][m];
                for (int d = 0; d < D; d++) out[r][d] += pm * v[d];
            }
        }
        for (int r = 0; r < R; r++) {
            const float inv = 1.0f / reduce8(sums[r]);
            for (int d = 0; d < D; d++) j->att[(size_t)b * H * D + (h0 + r) * D + d] = out[r][d] * inv;
        }
        i += R;
    }
}

static void attend_baseline(const Job *j, int layer, Scratch *s, int i0, int i1) {
    attend_heads(j, layer, s, i0, i1, qkv_half_to_float);
}
#if defined(__x86_64__) || defined(_M_X64)
/* the same body compiled for AVX2 (no FMA: -ffp-contract=off keeps a * b + c two roundings): 8-wide vectors */
__attribute__((target("avx2,f16c"))) static void attend_avx2(const Job *j, int layer, Scratch *s, int i0, int i1) {
    attend_heads(j, layer, s, i0, i1, widen_f16c);
}
#endif

/* B2: the attention of each (row, query head) over the length + 1 cached keys, split over the threads */
static void step_attend(const Job *j, int layer, Scratch *s, int t, int T) {
    int i0, i1;
    qkv_share(j->B * j->model->H, t, T, 1, &i0, &i1);
#if defined(__x86_64__) || defined(_M_X64)
    if (j->variant != SCALAR) { attend_avx2(j, layer, s, i0, i1); return; }
#endif
    attend_baseline(j, layer, s, i0, i1);
}

/* C and E: quantize the input rows, this thread's output rows of the product, x += them */
static void step_residual(const Job *j, const QLinear *L, const float *in, Scratch *s, int t, int T) {
    const int B = j->B, C = j->model->C;
    quantize_for(s, in, B, L->K, L, NULL);
    int o0, o1;
    qkv_share(C, t, T, 16, &o0, &o1);
    product(j->variant, s, L, o0, o1, s->tmp, o1 - o0);
    for (int b = 0; b < B; b++)
        for (int o = o0; o < o1; o++) j->x[(size_t)b * C + o] += s->tmp[(size_t)b * (o1 - o0) + o - o0];
}

/* D: norm, quantize, gate and up rows of this thread, silu(gate) * up */
static void step_swiglu(const Job *j, const QLayer *L, Scratch *s, int t, int T) {
    const int B = j->B, C = j->model->C, F = j->model->F;
    rms_norm(j->x, B, C, L->norm2, L->eps2, s->normed);
    quantize_for(s, s->normed, B, C, &L->gate, &L->up);
    int f0, f1;
    qkv_share(F, t, T, 16, &f0, &f1);
    const int n = f1 - f0;
    float *g = s->tmp, *u = s->tmp + (size_t)B * n;
    product(j->variant, s, &L->gate, f0, f1, g, n);
    product(j->variant, s, &L->up, f0, f1, u, n);
    for (int b = 0; b < B; b++)
        for (int f = 0; f < n; f++) {
            float a = g[(size_t)b * n + f];
            j->hidden[(size_t)b * F + f0 + f] = a / (1.0f + expf(-a)) * u[(size_t)b * n + f];
        }
}

static void stack_task(void *arg, int t, int T) {
    const Job *j = arg;
    Scratch *s = j->scratch + t;
    for (int layer = 0; layer < j->model->n_layers; layer++) {
        const QLayer *L = j->model->layers + layer;
        step_qkv(j, L, s, t, T);
        qkv_barrier(T);
        step_cache(j, layer, t, T);
        qkv_barrier(T);
        step_attend(j, layer, s, t, T);
        qkv_barrier(T);
        step_residual(j, &L->wo, j->att, s, t, T);
        qkv_barrier(T);
        step_swiglu(j, L, s, t, T);
        qkv_barrier(T);
        step_residual(j, &L->down, j->hidden, s, t, T);
        qkv_barrier(T);
    }
}

/* x (B, C): the embedded new tokens in, the stack's output (before the final norm) out. The caches gain
 * position ``length`` (the caller counts it). Returns 0, or -1 when memory cannot be had. */
int qkv_decode(int variant, const QModel *md, float *x, int B, const QStep *step, int threads) {
    if (threads < 1) threads = 1;
    const int H = md->H, G = md->G, D = md->D, F = md->F;
    int kmax = md->C > H * D ? md->C : H * D;
    kmax = kmax > F ? kmax : F;
    const size_t nb = (size_t)kmax / BLOCK, shared = (size_t)B * ((H + 2 * G) * D + H * D + F);
    const int wide = F > md->C ? F : md->C;                 /* step D's gate and up, or step C's rows */
    const size_t per = (size_t)B * kmax + QKV_RANGE_SCRATCH(kmax, B) + 2 * (size_t)B * wide
                       + (size_t)GROUP_RUN * step->max_len + 4 * B * nb;
    float *f = malloc(sizeof(float) * (shared + per * threads));
    int8_t *codes = malloc(2 * (size_t)B * kmax * threads);
    Scratch *scratch = malloc(sizeof(Scratch) * threads);
    if (!f || !codes || !scratch) return free(f), free(codes), free(scratch), -1;
    Job job = {variant, B, kmax, md, step, x, f, f + (size_t)B * (H + 2 * G) * D, NULL, scratch};
    job.hidden = job.att + (size_t)B * H * D;
    for (int t = 0; t < threads; t++) {
        float *p = f + shared + per * t;
        Scratch *s = scratch + t;
        s->normed = p, p += (size_t)B * kmax;
        s->range = p, p += QKV_RANGE_SCRATCH(kmax, B);
        s->tmp = p, p += 2 * (size_t)B * wide;
        s->scores = p, p += (size_t)GROUP_RUN * step->max_len;
        s->a4 = (QActs){codes + 2 * (size_t)B * kmax * t, p, (int32_t *)(p + B * nb), 0, 0, 1};
        s->a8 = (QActs){s->a4.qx + (size_t)B * kmax, p + 2 * B * nb, (int32_t *)(p + 3 * B * nb), 0, 0, 0};
    }
    if (threads == 1) stack_task(&job, 0, 1);
    else qkv_parallel(stack_task, &job, threads);
    free(f), free(codes), free(scratch);
    return 0;
}
