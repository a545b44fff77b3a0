/* nn_cpu.h -- what this CPU can run, asked once at run time.
 *
 * The extensions are compiled for plain x86-64 (no -march=native), so one build runs on any
 * x86-64; the GEMM micro-kernels for AVX2+FMA and AVX-512 are compiled with per-function
 * target attributes and picked here.  On other architectures everything reports "no" and the
 * portable kernels run.
 */
#ifndef NN_CPU_H
#define NN_CPU_H

/* NN_GNU: GCC's extensions are there (GCC, clang): vector types (`vector_size`), function
 * target attributes, __builtin_*. Without them (MSVC; or any compiler given -DNN_PLAIN_C,
 * which is how the plain-C path is built and tested with GCC) every header falls back to
 * plain C11: scalar loops with the same sums in the same order as the vector kernels. */
#if defined(__GNUC__) && !defined(NN_PLAIN_C)
#define NN_GNU 1
#else
#define NN_GNU 0
#endif

#if NN_GNU && (defined(__x86_64__) || defined(__i386__))
#define NN_X86 1
#else
#define NN_X86 0
#endif

/* a hint to fetch the cache line at p (for writing: NN_PREFETCH_W) */
#if NN_GNU
#define NN_PREFETCH(p) __builtin_prefetch(p)
#define NN_PREFETCH_W(p) __builtin_prefetch((p), 1)
#else
#define NN_PREFETCH(p) ((void)0)
#define NN_PREFETCH_W(p) ((void)0)
#endif

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

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

/* The best level this CPU runs; the NN_ISA environment variable ("generic", "avx2") can
 * lower it at import, to run the fallbacks on a machine that has AVX-512. */
static int nn_cpu_best_isa(void) {
    int best = NN_ISA_GENERIC;
    const char *cap = getenv("NN_ISA");
    if (nn_cpu_has_avx2_fma()) best = NN_ISA_AVX2;
    if (nn_cpu_has_avx512f()) best = NN_ISA_AVX512;
    if (cap != NULL && strcmp(cap, "generic") == 0) best = NN_ISA_GENERIC;
    if (cap != NULL && strcmp(cap, "avx2") == 0 && best > NN_ISA_AVX2) best = NN_ISA_AVX2;
    return best;
}

/* nn_cpu_best_isa's answer, asked once per module at the first call (threads that get
 * there together each ask, and find the same; relaxed atomics: no data race): for the
 * kernels that dispatch per call */
static _Atomic int nn_cpu_isa_level = -1;

static inline int nn_cpu_isa(void) {
    int level = atomic_load_explicit(&nn_cpu_isa_level, memory_order_relaxed);
    if (level < 0) {
        level = nn_cpu_best_isa();
        atomic_store_explicit(&nn_cpu_isa_level, level, memory_order_relaxed);
    }
    return level;
}

/* Flush-to-zero and denormals-are-zero for the calling thread, for loops where numbers
 * decay towards zero (optimizer state): subnormal arithmetic costs ~100 cycles each on
 * x86. nn_ftz_begin returns the old state for nn_ftz_end. */
#if NN_X86
#include <xmmintrin.h>
static inline unsigned nn_ftz_begin(void) {
    unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);
    return old;
}
static inline void nn_ftz_end(unsigned old) { _mm_setcsr(old); }
#else
static inline unsigned nn_ftz_begin(void) { return 0; }
static inline void nn_ftz_end(unsigned old) { (void)old; }
#endif

#endif /* NN_CPU_H */
