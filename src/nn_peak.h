/* nn_peak.h -- the machine's multiply-add peak, measured: what the benchmark's "% of peak"
 * divides by.
 *
 * nn_fma_peak_loop(reps) runs reps x ACC independent fused multiply-adds on full vector
 * registers (ACC accumulators, enough to hide the FMA latency on two FMA ports) with no
 * memory traffic, and returns the floating-point operations done (2 per lane per FMA).
 * Stamped per ISA like the GEMM micro-kernels; float32 lanes. */
#ifndef NN_PEAK_H
#define NN_PEAK_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include "nn_cpu.h"

#ifndef NN_PRAGMA
#define NN_PRAGMA(x) _Pragma(#x)
#endif

#if NN_GNU   /* GCC's vector extensions; a plain-C loop for other compilers below */
#define NN_DEFINE_PEAK(NAME, VL, TARGET)                                                     \
    typedef float NAME##_v __attribute__((vector_size((VL) * sizeof(float))));              \
    TARGET static double NAME(ptrdiff_t reps) {                                                  \
        enum { ACC = 24 };                                                                  \
        NAME##_v acc[ACC], x = {0}, y = {0};                                                \
        x += 0.999999f;                                                                     \
        y += 1e-7f;                                                                         \
        for (int i = 0; i < ACC; ++i) acc[i] = (NAME##_v){0} + (float)i;                    \
        for (ptrdiff_t r = 0; r < reps; ++r) {                                                   \
            NN_PRAGMA(GCC unroll 24)                                                        \
            for (int i = 0; i < ACC; ++i) acc[i] = acc[i] * x + y;                          \
            __asm__ volatile("" : "+x"(x));   /* keep the loop: x may change */             \
        }                                                                                   \
        NAME##_v sum = {0};                                                                 \
        for (int i = 0; i < ACC; ++i) sum += acc[i];                                        \
        volatile float sink = sum[0];                                                       \
        (void)sink;                                                                         \
        return 2.0 * (VL) * ACC * (double)reps;                                             \
    }

NN_DEFINE_PEAK(nn_fma_peak_generic, 4, )
#else
/* plain C: 24 x 4 independent multiply-adds a repetition; x and y read from volatiles each
 * time, so that the compiler can neither fold the loop nor hoist it */
static double nn_fma_peak_generic(ptrdiff_t reps) {
    enum { ACC = 24 * 4 };
    float acc[ACC], sum = 0;
    volatile float xv = 0.999999f, yv = 1e-7f;
    for (int i = 0; i < ACC; ++i) acc[i] = (float)(i / 4);
    for (ptrdiff_t r = 0; r < reps; ++r) {
        const float x = xv, y = yv;
        for (int i = 0; i < ACC; ++i) acc[i] = acc[i] * x + y;
    }
    for (int i = 0; i < ACC; ++i) sum += acc[i];
    volatile float sink = sum;
    (void)sink;
    return 2.0 * ACC * (double)reps;
}
#endif
#if NN_X86
NN_DEFINE_PEAK(nn_fma_peak_avx2, 8, __attribute__((target("avx2,fma"))))
NN_DEFINE_PEAK(nn_fma_peak_avx512, 16, __attribute__((target("avx512f,avx2,fma"))))
#endif

static double nn_fma_peak_loop(int isa, ptrdiff_t reps) {
#if NN_X86
    if (isa >= NN_ISA_AVX512) return nn_fma_peak_avx512(reps);
    if (isa >= NN_ISA_AVX2) return nn_fma_peak_avx2(reps);
#endif
    (void)isa;
    return nn_fma_peak_generic(reps);
}

#endif /* NN_PEAK_H */
