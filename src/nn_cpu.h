/* nn_cpu.h -- what this CPU can run, asked once at run time.
 *
 * The extensions are compiled for plain x86-64 (no -march=native), so one build runs on any
 * x86-64; the GEMM micro-kernels for AVX2+FMA and AVX-512 are compiled with per-function
 * target attributes and picked here.  On other architectures everything reports "no" and the
 * portable kernels run.
 */
#ifndef NN_CPU_H
#define NN_CPU_H

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NN_X86 1
#else
#define NN_X86 0
#endif

/* levels, in order: a higher level implies the lower ones */
enum { NN_ISA_GENERIC = 0, NN_ISA_AVX2 = 1, NN_ISA_AVX512 = 2 };

static int nn_cpu_has_avx2_fma(void) {
#if NN_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int nn_cpu_has_avx512f(void) {
#if NN_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && nn_cpu_has_avx2_fma();
#else
    return 0;
#endif
}

/* The best level this CPU runs; NN_ISA environment variable ("generic", "avx2") can lower
 * it, for tests of the fallbacks on a machine that has AVX-512. */
static int nn_cpu_best_isa(void) {
    int best = NN_ISA_GENERIC;
    if (nn_cpu_has_avx2_fma()) best = NN_ISA_AVX2;
    if (nn_cpu_has_avx512f()) best = NN_ISA_AVX512;
    return best;
}

#endif /* NN_CPU_H */
