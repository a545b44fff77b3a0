/* nn_lanes.h -- sums over a contiguous run of values in NN_LANES interleaved lanes, in
 * double: the per-channel sums of batch norm and of the convolution's bias gradient.
 *
 *     lanes[l] = sum over i = l, l + NN_LANES, ... (i < n - n % NN_LANES) of term(i)
 *     total    = lanes[0] + lanes[1] + ... + lanes[NN_LANES - 1], then the tail in order
 *
 * with term(i) one of (kind)
 *     NN_LANE_SUM          v[i]
 *     NN_LANE_SUM_SQ_DEV   (v[i] - mean)^2
 *     NN_LANE_SUM_G_DEV    g[i] (v[i] - mean)
 *
 * A fixed order, so the result depends neither on the thread count nor on the ISA: the
 * AVX-512 version keeps the 32 lanes in four vectors of 8 doubles (AVX2: eight of 4) --
 * independent chains of additions, where one vector of 8 lanes would wait on every add's
 * latency (batch norm's sums were that slow) -- and adds them up through memory in lane
 * order. Their products and sums are rounded one by one as the portable loop's are (the
 * AVX-512 _round intrinsics, and AVX2 compiled without FMA: the compiler may not fuse a
 * product into a sum), so every version gives the same bits.
 */
#ifndef NN_LANES_H
#define NN_LANES_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include "nn_cpu.h"

enum { NN_LANES = 32, NN_LANE_SUM = 0, NN_LANE_SUM_SQ_DEV = 1, NN_LANE_SUM_G_DEV = 2 };

#define NN_LANE_TERM(g, v, i, mean, kind)                                                    \
    ((kind) == NN_LANE_SUM ? (double)(v)[i]                                                 \
     : (kind) == NN_LANE_SUM_SQ_DEV ? ((double)(v)[i] - (mean)) * ((double)(v)[i] - (mean)) \
                                    : (double)(g)[i] * ((double)(v)[i] - (mean)))

/* lanes[l] = the sum of lane l over the first n32 values (n32 a multiple of NN_LANES) */
#define NN_DEFINE_LANES_PORTABLE(name, T)                                                    \
    static void name(const T *g, const T *v, ptrdiff_t n32, double mean, int kind,               \
                     double *lanes) {                                                       \
        for (int l = 0; l < NN_LANES; ++l) lanes[l] = 0;                                    \
        for (ptrdiff_t i = 0; i < n32; i += NN_LANES)                                            \
            for (int l = 0; l < NN_LANES; ++l) lanes[l] += NN_LANE_TERM(g, v, i + l, mean, kind); \
    }

NN_DEFINE_LANES_PORTABLE(nn_lanes_f32_portable, float)
NN_DEFINE_LANES_PORTABLE(nn_lanes_f64_portable, double)

#if NN_X86
#include <immintrin.h>

#define NN_RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* 8 values from i on, widened to double (LOAD8: from float or from double) */
#define NN_LOAD8_F32(p, i) _mm512_cvtps_pd(_mm256_loadu_ps((p) + (i)))
#define NN_LOAD8_F64(p, i) _mm512_loadu_pd((p) + (i))

#define NN_DEFINE_LANES_AVX512(name, T, LOAD8)                                               \
    __attribute__((target("avx512f"))) static void name(const T *g, const T *v, ptrdiff_t n32,  \
                                                        double mean, int kind,              \
                                                        double *lanes) {                    \
        __m512d acc[4], m = _mm512_set1_pd(mean);                                           \
        for (int q = 0; q < 4; ++q) acc[q] = _mm512_setzero_pd();                           \
        for (ptrdiff_t i = 0; i < n32; i += NN_LANES) {                                          \
            for (int q = 0; q < 4; ++q) {                                                   \
                __m512d t = LOAD8(v, i + 8 * q);                                            \
                if (kind == NN_LANE_SUM_SQ_DEV) {                                           \
                    t = _mm512_sub_round_pd(t, m, NN_RN);                                   \
                    t = _mm512_mul_round_pd(t, t, NN_RN);                                   \
                } else if (kind == NN_LANE_SUM_G_DEV) {                                     \
                    t = _mm512_mul_round_pd(LOAD8(g, i + 8 * q),                            \
                                            _mm512_sub_round_pd(t, m, NN_RN), NN_RN);       \
                }                                                                           \
                acc[q] = _mm512_add_round_pd(acc[q], t, NN_RN);                             \
            }                                                                               \
        }                                                                                   \
        for (int q = 0; q < 4; ++q) _mm512_storeu_pd(lanes + 8 * q, acc[q]);                \
    }

NN_DEFINE_LANES_AVX512(nn_lanes_f32_avx512, float, NN_LOAD8_F32)
NN_DEFINE_LANES_AVX512(nn_lanes_f64_avx512, double, NN_LOAD8_F64)

/* AVX2: the 32 lanes in eight vectors of 4 doubles (compiled without FMA, so that no
 * product and sum can be fused: the portable loop's rounding) */
#define NN_LOAD4_F32(p, i) _mm256_cvtps_pd(_mm_loadu_ps((p) + (i)))
#define NN_LOAD4_F64(p, i) _mm256_loadu_pd((p) + (i))

#define NN_DEFINE_LANES_AVX2(name, T, LOAD4)                                                 \
    __attribute__((target("avx2,no-fma"))) static void name(const T *g, const T *v,        \
                                                            ptrdiff_t n32, double mean,          \
                                                            int kind, double *lanes) {      \
        __m256d acc[8], m = _mm256_set1_pd(mean);                                           \
        for (int q = 0; q < 8; ++q) acc[q] = _mm256_setzero_pd();                           \
        for (ptrdiff_t i = 0; i < n32; i += NN_LANES) {                                          \
            for (int q = 0; q < 8; ++q) {                                                   \
                __m256d t = LOAD4(v, i + 4 * q);                                            \
                if (kind == NN_LANE_SUM_SQ_DEV) {                                           \
                    t = _mm256_sub_pd(t, m);                                                \
                    t = _mm256_mul_pd(t, t);                                                \
                } else if (kind == NN_LANE_SUM_G_DEV) {                                     \
                    t = _mm256_mul_pd(LOAD4(g, i + 4 * q), _mm256_sub_pd(t, m));            \
                }                                                                           \
                acc[q] = _mm256_add_pd(acc[q], t);                                          \
            }                                                                               \
        }                                                                                   \
        for (int q = 0; q < 8; ++q) _mm256_storeu_pd(lanes + 4 * q, acc[q]);                \
    }

NN_DEFINE_LANES_AVX2(nn_lanes_f32_avx2, float, NN_LOAD4_F32)
NN_DEFINE_LANES_AVX2(nn_lanes_f64_avx2, double, NN_LOAD4_F64)
#endif

/* The sum: the lanes by the CPU's version, then their total and the tail here, in code
 * compiled for the baseline ISA (no FMA on x86-64: inside a function built for AVX-512,
 * the compiler would be free to fuse the tail's products into its sums) */
#if NN_X86
#define NN_LANES_BY_ISA(f, g, v, n32, mean, kind, lanes)                                     \
    do {                                                                                    \
        int level_ = nn_cpu_isa();                                                          \
        if (level_ >= NN_ISA_AVX512) nn_lanes_##f##_avx512(g, v, n32, mean, kind, lanes);   \
        else if (level_ >= NN_ISA_AVX2) nn_lanes_##f##_avx2(g, v, n32, mean, kind, lanes);  \
        else nn_lanes_##f##_portable(g, v, n32, mean, kind, lanes);                         \
    } while (0)
#else
#define NN_LANES_BY_ISA(f, g, v, n32, mean, kind, lanes)                                     \
    nn_lanes_##f##_portable(g, v, n32, mean, kind, lanes)
#endif

#define NN_DEFINE_LANE_SUM(f, T)                                                             \
    static inline double nn_lane_sum_##f(const T *g, const T *v, ptrdiff_t n, double mean,       \
                                         int kind) {                                        \
        double lanes[NN_LANES], total = 0;                                                  \
        ptrdiff_t n32 = n - n % NN_LANES;                                                        \
        NN_LANES_BY_ISA(f, g, v, n32, mean, kind, lanes);                                   \
        for (int l = 0; l < NN_LANES; ++l) total += lanes[l];                               \
        for (ptrdiff_t i = n32; i < n; ++i) total += NN_LANE_TERM(g, v, i, mean, kind);          \
        return total;                                                                       \
    }

NN_DEFINE_LANE_SUM(f32, float)
NN_DEFINE_LANE_SUM(f64, double)

/* totals[j] = nn_lane_sum_f32(g + j * stride, v + j * stride, n, means ? means[j] : 0, kind)
 * for j < count: the same terms, added in the same order, to the same bits. One run's sum
 * ends in a chain of additions each waiting on the last -- its 32 lane totals, then its
 * tail -- which is most of the time for short runs (batch norm over a ResNet's 7x7 planes:
 * 0.36 -> 0.22 ms forward, 0.43 -> 0.25 backward; 28x28 about 10% less), so with AVX-512
 * eight runs go together: each run's lanes (nn_lanes_f32_avx512) and tail terms first,
 * then the eight chains of additions interleaved, each in its own order. */
#if NN_X86
/* the first of 8 floats at p that k keeps, widened to double (the others 0) */
#define NN_LOAD8_MASKED(k, p) \
    _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps((__mmask16)(k), p)))

__attribute__((target("avx512f"))) static ptrdiff_t nn_lane_sums_f32_avx512(
        const float *g0, const float *v0, ptrdiff_t n, ptrdiff_t stride, const double *means,
        int kind, ptrdiff_t count, double *totals) {
    const ptrdiff_t n32 = n - n % NN_LANES, tail = n - n32;
    double lanes[8][NN_LANES], terms[8][NN_LANES];
    ptrdiff_t j = 0;
    for (; j + 8 <= count; j += 8) {
        for (int q = 0; q < 8; ++q) {
            const float *g = g0 + (j + q) * stride + n32, *v = v0 + (j + q) * stride + n32;
            const double mean = means != NULL ? means[j + q] : 0;
            const __m512d m = _mm512_set1_pd(mean);
            if (n32 > 0)
                nn_lanes_f32_avx512(g - n32, v - n32, n32, mean, kind, lanes[q]);
            for (ptrdiff_t i = 0; i < tail; i += 8) {
                __mmask8 k = tail - i >= 8 ? 0xFF : (__mmask8)((1u << (tail - i)) - 1);
                __m512d t = NN_LOAD8_MASKED(k, v + i);
                if (kind == NN_LANE_SUM_SQ_DEV) {
                    t = _mm512_sub_round_pd(t, m, NN_RN);
                    t = _mm512_mul_round_pd(t, t, NN_RN);
                } else if (kind == NN_LANE_SUM_G_DEV) {
                    t = _mm512_mul_round_pd(NN_LOAD8_MASKED(k, g + i),
                                            _mm512_sub_round_pd(t, m, NN_RN), NN_RN);
                }
                _mm512_storeu_pd(terms[q] + i, t);
            }
        }
        double total[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (n32 > 0)
            for (int l = 0; l < NN_LANES; ++l)
                for (int q = 0; q < 8; ++q)
                    total[q] += lanes[q][l];
        for (ptrdiff_t i = 0; i < tail; ++i)
            for (int q = 0; q < 8; ++q)
                total[q] += terms[q][i];
        for (int q = 0; q < 8; ++q)
            totals[j + q] = total[q];
    }
    return j;
}
#endif

static inline void nn_lane_sums_f32(const float *g, const float *v, ptrdiff_t n,
                                    ptrdiff_t stride, const double *means, int kind,
                                    ptrdiff_t count, double *totals) {
    ptrdiff_t j = 0;
#if NN_X86
    if (nn_cpu_isa() >= NN_ISA_AVX512)
        j = nn_lane_sums_f32_avx512(g, v, n, stride, means, kind, count, totals);
#endif
    for (; j < count; ++j)
        totals[j] = nn_lane_sum_f32(g + j * stride, v + j * stride, n,
                                    means != NULL ? means[j] : 0, kind);
}

#endif /* NN_LANES_H */
