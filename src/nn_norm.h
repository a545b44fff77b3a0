/* nn_norm.h -- batch norm's two per-value loops (cnn_core/_norm.pyx: _normalise, _grad_x)
 * over one (sample, channel) run of S float32 values, in double arithmetic:
 *
 *     normalise   y[s]  = (float) (x[s] a + b)                        (a, b: the channel's)
 *     grad_x      dx[s] = (float) (k (g[s] - mg - xhat mgx)),  xhat = (float) ((x[s] - mu) inv)
 *                 (eval: dx[s] = (float) (k g[s]))
 *
 * With AVX-512 the first S - S % 8 values go 8 at a time, widened to double, each product
 * and sum rounded on its own (the _round intrinsics: the compiler may not fuse a product
 * into a sum, which the baseline-ISA loop cannot do either); the functions return how many
 * values they did -- 0 without AVX-512 -- and the Cython loop does the rest: the same bits.
 */
#ifndef NN_NORM_H
#define NN_NORM_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include "nn_cpu.h"

#if NN_X86
#include <immintrin.h>

#define NN_NORM_RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

__attribute__((target("avx512f"))) static ptrdiff_t nn_normalise_f32_avx512(
        const float *x, float *y, ptrdiff_t S, double a, double b) {
    const __m512d va = _mm512_set1_pd(a), vb = _mm512_set1_pd(b);
    ptrdiff_t S8 = S - S % 8;
    for (ptrdiff_t s = 0; s < S8; s += 8) {
        __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + s));
        v = _mm512_add_round_pd(_mm512_mul_round_pd(v, va, NN_NORM_RN), vb, NN_NORM_RN);
        _mm256_storeu_ps(y + s, _mm512_cvtpd_ps(v));
    }
    return S8;
}

__attribute__((target("avx512f"))) static ptrdiff_t nn_grad_x_f32_avx512(
        const float *g, const float *x, float *dx, ptrdiff_t S, double k, double mg, double mgx,
        float mu, float inv, int training) {
    const __m512d vk = _mm512_set1_pd(k), vmg = _mm512_set1_pd(mg), vmgx = _mm512_set1_pd(mgx);
    const __m256 vmu = _mm256_set1_ps(mu), vinv = _mm256_set1_ps(inv);
    ptrdiff_t S8 = S - S % 8;
    for (ptrdiff_t s = 0; s < S8; s += 8) {
        __m512d gd = _mm512_cvtps_pd(_mm256_loadu_ps(g + s)), r;
        if (training) {
            /* (x - mu) inv in float: a difference then a product, which nothing can fuse */
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + s), vmu), vinv);
            r = _mm512_sub_round_pd(_mm512_sub_round_pd(gd, vmg, NN_NORM_RN),
                                    _mm512_mul_round_pd(_mm512_cvtps_pd(xh), vmgx, NN_NORM_RN),
                                    NN_NORM_RN);
            r = _mm512_mul_round_pd(vk, r, NN_NORM_RN);
        } else {
            r = _mm512_mul_round_pd(vk, gd, NN_NORM_RN);
        }
        _mm256_storeu_ps(dx + s, _mm512_cvtpd_ps(r));
    }
    return S8;
}
#endif

/* the leading values done by AVX-512 (0 where the CPU, or NN_ISA, has none) */
static inline ptrdiff_t nn_normalise_f32(const float *x, float *y, ptrdiff_t S, double a,
                                         double b) {
#if NN_X86
    if (nn_cpu_isa() >= NN_ISA_AVX512)
        return nn_normalise_f32_avx512(x, y, S, a, b);
#endif
    (void)x; (void)y; (void)S; (void)a; (void)b;
    return 0;
}

static inline ptrdiff_t nn_grad_x_f32(const float *g, const float *x, float *dx, ptrdiff_t S,
                                      double k, double mg, double mgx, float mu, float inv,
                                      int training) {
#if NN_X86
    if (nn_cpu_isa() >= NN_ISA_AVX512)
        return nn_grad_x_f32_avx512(g, x, dx, S, k, mg, mgx, mu, inv, training);
#endif
    (void)g; (void)x; (void)dx; (void)S; (void)k; (void)mg; (void)mgx; (void)mu; (void)inv;
    (void)training;
    return 0;
}

#endif /* NN_NORM_H */
