/* plain_c_check.c -- the GEMM micro-kernels, row kernels and packers of the portable path
 * (src/nn_gemm_ukernel.h, the "generic" ISA) over edge tiles, every way of reading A and B
 * and every write-back rule, with their results written to stdout as raw bytes.
 *
 * tests/library/test_portability.py compiles this file twice -- as is (GCC's vector
 * extensions) and with -DNN_PLAIN_C (the plain C11 a compiler without them, such as MSVC,
 * gets) -- and asserts the two outputs are the same bytes. */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef NN_PLAIN_C
/* From here on, GCC's extensions are errors (the system headers above may use them; their
 * macros, defined before this line, may still expand to them): the project's headers must
 * not, when NN_PLAIN_C takes the place of a compiler without them. */
#pragma GCC poison __attribute__ __asm__ __asm asm vector_size __typeof__ typeof
#pragma GCC poison __builtin_prefetch __builtin_cpu_init __builtin_cpu_supports
#pragma GCC poison __builtin_ia32_pause __auto_type __int128
#endif

#include "nn_cpu.h"
#include "nn_finite.h"
#include "nn_gemm_ukernel.h"
#include "nn_im2col.h"
#include "nn_lanes.h"
#include "nn_norm.h"
#include "nn_peak.h"
#include "nn_pool.h"
#include "nn_scratch.h"
#include "nn_team.h"

static unsigned long long state = 0x9E3779B97F4A7C15ull;

static double uniform(void) {   /* in [-1, 1), from a 64-bit LCG */
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(state >> 11) / 4503599627370496.0 - 1.0;
}

static void emit(const void *p, size_t n) {
    if (fwrite(p, 1, n, stdout) != n) exit(3);
}

/* CHECK(T, X): every kernel of nn_Xgemm_kernel_for(NN_ISA_GENERIC) */
#define CHECK(T, X)                                                                          \
    do {                                                                                    \
        const nn_##X##gemm_kernel_t kt = nn_##X##gemm_kernel_for(NN_ISA_GENERIC);           \
        const int MR = kt.mr, NR = kt.nr;                                                   \
        static const int ks[] = {0, 1, 3, 17, 64};                                          \
        for (int ki = 0; ki < 5; ++ki) {                                                    \
            const int k = ks[ki], lda = k + 3, ldb = NR + 5, ldc = NR + 2;                  \
            T *a = malloc(sizeof(T) * (size_t)(MR * lda + k * MR + 1));                     \
            T *b = malloc(sizeof(T) * (size_t)(k * ldb + k * NR + NR + 1));                 \
            T *c = malloc(sizeof(T) * (size_t)(MR * ldc));                                  \
            T bias[64];                                                                     \
            for (int t = 0; t < MR * lda + k * MR + 1; ++t) a[t] = (T)uniform();            \
            for (int t = 0; t < k * ldb + k * NR + NR + 1; ++t) b[t] = (T)uniform();        \
            for (int t = 0; t < 64; ++t) bias[t] = (T)uniform();                            \
            for (int way = 0; way < 4; ++way)                                               \
                for (int half = 0; half < 2; ++half)                                        \
                    for (int rule = 0; rule < 5; ++rule)                                    \
                        for (int mr = 1; mr <= MR; ++mr)                                    \
                            for (int nr = 1; nr <= (half ? NR / 2 : NR); ++nr) {            \
                                /* rule 0: the plain product; 1: alpha, beta, bias, ReLU;   \
                                 * 2: the finite check; 3: it, with a NaN in C (beta 1);   \
                                 * 4: ReLU and the check, beta 0 */                         \
                                const T alpha = rule == 1 ? (T)0.5 : 1;                     \
                                const T beta = rule == 1 ? (T)0.25 : rule == 3 ? 1 : 0;     \
                                const T *bs = rule == 1 ? bias : NULL;                      \
                                const int flags = rule == 1 ? NN_RELU                       \
                                                : rule == 4 ? NN_RELU | NN_CHECK_FINITE     \
                                                : rule >= 2 ? NN_CHECK_FINITE : 0;          \
                                for (int t = 0; t < MR * ldc; ++t) c[t] = (T)uniform();     \
                                if (rule == 3) c[(mr - 1) * ldc + nr - 1] = (T)NAN;         \
                                const T *ap = (way & 1) ? a : a + MR * lda;                 \
                                const T *bp = (way & 2) ? b : b + k * ldb;                  \
                                const int bad = (half ? kt.ukr_half : kt.ukr)[way](         \
                                    k, ap, lda, bp, ldb, c, ldc, alpha, beta, bs, flags,    \
                                    mr, nr);                                                \
                                emit(c, sizeof(T) * (size_t)(MR * ldc));                    \
                                emit(&bad, sizeof bad);                                     \
                            }                                                               \
            free(a);                                                                        \
            free(b);                                                                        \
            free(c);                                                                        \
        }                                                                                   \
        /* the row kernel: n columns of one row of A (stride csa) times B */                \
        static const int ns[] = {1, 3, 4, 7, 8, 15, 16, 17, 33, 64, 65, 127, 130, 257, 300}; \
        static const int rks[] = {1, 2, 7, 33};                                             \
        for (int ni = 0; ni < 15; ++ni)                                                     \
            for (int ki = 0; ki < 4; ++ki)                                                  \
                for (int csa = 1; csa <= 3; csa += 2)                                       \
                    for (int rule = 0; rule < 2; ++rule) {                                  \
                        const int n = ns[ni], k = rks[ki], ldb = n + (ni & 1) * 3;          \
                        T *a = malloc(sizeof(T) * (size_t)(k * csa));                       \
                        T *b = malloc(sizeof(T) * (size_t)(k * ldb));                       \
                        T *c = malloc(sizeof(T) * (size_t)n);                               \
                        T *bias = malloc(sizeof(T) * (size_t)n);                            \
                        for (int t = 0; t < k * csa; ++t) a[t] = (T)uniform();              \
                        for (int t = 0; t < k * ldb; ++t) b[t] = (T)uniform();              \
                        for (int t = 0; t < n; ++t) c[t] = (T)uniform();                    \
                        for (int t = 0; t < n; ++t) bias[t] = (T)uniform();                 \
                        if (rule == 0)                                                      \
                            kt.row(k, n, a, csa, b, ldb, c, 1, 0, NULL, 0);                 \
                        else                                                                \
                            kt.row(k, n, a, csa, b, ldb, c, (T)0.5, (T)0.25, bias, NN_RELU); \
                        emit(c, sizeof(T) * (size_t)n);                                     \
                        free(a);                                                            \
                        free(b);                                                            \
                        free(c);                                                            \
                        free(bias);                                                         \
                    }                                                                       \
        /* packing a whole NR-column panel of B, and an MR-row panel of transposed A */     \
        {                                                                                   \
            enum { KC = 37, RS = 70 };                                                      \
            T src[KC * RS], dst[KC * 64];                                                   \
            for (int t = 0; t < KC * RS; ++t) src[t] = (T)uniform();                        \
            memset(dst, 0, sizeof dst);                                                     \
            kt.pack_b(KC, src, RS, dst);                                                    \
            emit(dst, sizeof dst);                                                          \
            memset(dst, 0, sizeof dst);                                                     \
            kt.pack_at(KC, src, RS, dst);                                                   \
            emit(dst, sizeof dst);                                                          \
        }                                                                                   \
    } while (0)

int main(void) {
    CHECK(float, s);
    CHECK(double, d);
    /* the peak loop runs and counts 2 flops per lane per multiply-add (4 lanes x 24) */
    const double flops = nn_fma_peak_loop(NN_ISA_GENERIC, 1000);
    if (flops != 2.0 * 4 * 24 * 1000) {
        fprintf(stderr, "peak loop counted %g flops\n", flops);
        return 1;
    }
    return 0;
}
