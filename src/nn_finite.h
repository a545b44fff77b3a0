/* nn_finite.h -- does a float array hold no NaN and no infinity? (fit's guard against a
 * poisoned update checks every gradient with it, once per training step.)
 *
 * A float is NaN or +-inf exactly when its exponent bits are all ones. Testing the bits
 * with integer operations (an AND and a compare per element, ORed over a chunk) vectorises
 * without -ffast-math, which a floating-point reduction would need; the loop stops at the
 * first chunk with a hit. The AVX2 version (8 floats a compare) is chosen at run time when
 * the CPU has it -- the extensions are compiled for plain x86-64, whose SSE2 compares 4 --;
 * the portable loop does the rest (and the tails).
 */
#ifndef NN_FINITE_H
#define NN_FINITE_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include <stdint.h>
#include <string.h>

#include "nn_cpu.h"

#define NN_FINITE_CHUNK 4096

/* T: element type; UT: the unsigned integer of its width; EXP: its exponent bits */
#define NN_DEFINE_ALL_FINITE(NAME, T, UT, EXP)                                              \
    static int NAME(const T *x, ptrdiff_t n) {                                                   \
        for (ptrdiff_t s = 0; s < n; s += NN_FINITE_CHUNK) {                                     \
            ptrdiff_t e = s + NN_FINITE_CHUNK < n ? s + NN_FINITE_CHUNK : n;                     \
            UT hit = 0;                                                                     \
            for (ptrdiff_t i = s; i < e; ++i) {                                                  \
                UT b;                                                                       \
                memcpy(&b, x + i, sizeof(b));                                               \
                hit |= (b & (EXP)) == (EXP);                                                \
            }                                                                               \
            if (hit) return 0;                                                              \
        }                                                                                   \
        return 1;                                                                           \
    }

NN_DEFINE_ALL_FINITE(nn_all_finite_f32_generic, float, uint32_t, 0x7f800000u)
NN_DEFINE_ALL_FINITE(nn_all_finite_f64_generic, double, uint64_t, 0x7ff0000000000000u)

#if NN_X86
#include <immintrin.h>

/* T: element type; VL: elements per 256-bit vector; EXP: the exponent bits, SET / CMPEQ:
 * their broadcast and lane compare */
#define NN_DEFINE_ALL_FINITE_AVX2(NAME, T, VL, EXP, SET, CMPEQ, GENERIC)                    \
    __attribute__((target("avx2"))) static int NAME(const T *x, ptrdiff_t n) {                   \
        const __m256i exp = SET(EXP);                                                       \
        ptrdiff_t s = 0;                                                                         \
        for (; s + 4 * (VL) <= n; s += NN_FINITE_CHUNK) {                                   \
            ptrdiff_t e = s + NN_FINITE_CHUNK < n ? s + NN_FINITE_CHUNK : n;                     \
            e -= (e - s) % (4 * (VL));                                                      \
            __m256i hit = _mm256_setzero_si256();                                           \
            for (ptrdiff_t i = s; i < e; i += 4 * (VL))                                          \
                for (int v = 0; v < 4; ++v) {                                               \
                    __m256i b = _mm256_loadu_si256((const __m256i *)(x + i + v * (VL)));    \
                    hit = _mm256_or_si256(hit, CMPEQ(_mm256_and_si256(b, exp), exp));       \
                }                                                                           \
            if (!_mm256_testz_si256(hit, hit)) return 0;                                    \
            if (e < s + NN_FINITE_CHUNK) { s = e; break; }  /* the tail: below */           \
        }                                                                                   \
        return s >= n || GENERIC(x + s, n - s);                                             \
    }

NN_DEFINE_ALL_FINITE_AVX2(nn_all_finite_f32_avx2, float, 8, 0x7f800000, _mm256_set1_epi32,
                          _mm256_cmpeq_epi32, nn_all_finite_f32_generic)
NN_DEFINE_ALL_FINITE_AVX2(nn_all_finite_f64_avx2, double, 4, 0x7ff0000000000000LL,
                          _mm256_set1_epi64x, _mm256_cmpeq_epi64, nn_all_finite_f64_generic)
#endif

static inline int nn_all_finite_f32(const float *x, ptrdiff_t n) {
#if NN_X86
    if (nn_cpu_isa() >= NN_ISA_AVX2) return nn_all_finite_f32_avx2(x, n);
#endif
    return nn_all_finite_f32_generic(x, n);
}

static inline int nn_all_finite_f64(const double *x, ptrdiff_t n) {
#if NN_X86
    if (nn_cpu_isa() >= NN_ISA_AVX2) return nn_all_finite_f64_avx2(x, n);
#endif
    return nn_all_finite_f64_generic(x, n);
}

#endif /* NN_FINITE_H */
