/* nn_gemm_ukernel.h -- GEMM register-tile micro-kernels, one per (dtype, instruction set).
 *
 * A micro-kernel computes one MR x NR tile of row-major C from packed panels:
 *
 *     a : packed A micro-panel, k x MR   (a[p*MR + i] = A[i, p]; zero-padded rows)
 *     b : packed B micro-panel, k x NR   (b[p*NR + j] = B[p, j]; zero-padded columns)
 *     acc[i, j] = sum_p a[p*MR + i] * b[p*NR + j]                   (MR x NR, in registers)
 *
 * (or A and B read in place: NN_DEFINE_UKERNELS below) and writes back, for i < mr,
 * j < nr (mr <= MR, nr <= NR: the tile at the matrix edge):
 *
 *     c[i*ldc + j] = alpha * acc[i, j] + beta * c[i*ldc + j]   (beta == 0: c is never read)
 *                    (+ bias[j]   when bias != NULL)
 *                    (max(., 0)   when relu != 0; NaN stays NaN, as in NumPy and PyTorch)
 *
 * The bias and ReLU are the fused epilogue of linear_forward: the caller passes the bias
 * with the first k-block only and asks for the ReLU on the last one.
 *
 * Per step p the kernel loads NR/VL vectors of B and broadcasts MR scalars of A: MR*NR/VL
 * fused multiply-adds on MR*NR/VL accumulator registers (the register tile), no loads of C.
 * Tile sizes follow BLIS's Skylake-X choice turned to row-major C (24 zmm accumulators):
 *
 *     ISA        float   (MR x NR)   double (MR x NR)
 *     AVX-512    12 x 32             12 x 16
 *     AVX2+FMA    6 x 16              6 x  8
 *     generic     4 x 16              4 x  8   (whatever the compiler vectorises)
 *
 * The kernels are written once, with GCC vector extensions, and stamped out per target
 * by NN_DEFINE_UKERNEL; the loops over MR and NR are fully unrolled by the compiler
 * (`GCC unroll`), so the accumulators live in registers. A compiler without the vector
 * extensions (MSVC; any compiler given -DNN_PLAIN_C) gets the same kernels in plain C,
 * with the same sums and the same bits (see "!NN_GNU" below).
 */
#ifndef NN_GEMM_UKERNEL_H
#define NN_GEMM_UKERNEL_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include <stdint.h>
#include <string.h>

#include "nn_cpu.h"

#if NN_X86
#define NN_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))
#define NN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

#define NN_PRAGMA(x) _Pragma(#x)

/* The epilogue flags (the micro-kernels' `relu` argument): bit 0 the ReLU; NN_CHECK_FINITE:
 * also tell whether a value written is NaN or infinite (the kernel then returns nonzero) --
 * the backward's weight gradients are checked so, in registers, for fit's guard against a
 * poisoned update, instead of by a pass of their own. */
#define NN_RELU 1
#define NN_CHECK_FINITE 2

/* The write-back above for one element of type T, in scalar code (edge tiles, the row
 * kernel): *cp = alpha * acc + beta * *cp (+ bias[bj]), then the ReLU (flags & NN_RELU);
 * with NN_CHECK_FINITE, `bad` becomes nonzero if the value is NaN or infinite. */
#define NN_WRITE_BACK_CHECKED(T, acc, cp, alpha, beta, bias, bj, flags, bad)                 \
    do {                                                                                    \
        T r_ = (alpha) * (acc);                                                             \
        if ((beta) != 0) r_ += (beta) * *(cp);                                              \
        if (bias) r_ += (bias)[bj];                                                         \
        if ((flags) & NN_RELU) r_ = r_ <= 0 ? 0 : r_;                                        \
        *(cp) = r_;                                                                         \
        if ((flags) & NN_CHECK_FINITE) (bad) |= !(r_ - r_ == 0);   /* NaN for NaN, inf */   \
    } while (0)
#define NN_WRITE_BACK(T, acc, cp, alpha, beta, bias, bj, relu)                               \
    do {                                                                                    \
        int unused_ = 0;                                                                    \
        NN_WRITE_BACK_CHECKED(T, acc, cp, alpha, beta, bias, bj, (relu) & NN_RELU, unused_); \
        (void)unused_;                                                                      \
    } while (0)

#if NN_GNU   /* the vector kernels; plain C after them (#else) */

/* NAME: function name; T, IT: element type and the integer type of its width;
 * MR, NR: tile (NR: the packed B panel's width); NC: the columns computed, NR or NR / 2
 * (the half-width variant, for panels with at most NR / 2 columns left: half the work);
 * VL: elements per vector; TARGET: function attribute. */
#define NN_DEFINE_UKERNEL(NAME, T, IT, MR, NR, NC, VL, TARGET, A_AT, B_AT)                   \
    typedef T NAME##_v __attribute__((vector_size((VL) * sizeof(T))));                      \
    typedef IT NAME##_iv __attribute__((vector_size((VL) * sizeof(T))));                    \
    TARGET static int NAME(ptrdiff_t k, const T *restrict a, ptrdiff_t lda,                 \
                           const T *restrict b, ptrdiff_t ldb, T *restrict c,               \
                           ptrdiff_t ldc, T alpha, T beta, const T *restrict bias,          \
                           int relu, int mr, int nr) {                                      \
        enum { NV = (NC) / (VL) };                                                          \
        int bad = 0;                                                                        \
        /* the check: OR of the bits of value * 0 -- +-0 for a finite value, NaN (all-ones \
         * exponent) for NaN or +-inf; independent multiplies, a chain of 1-cycle ORs */   \
        NAME##_iv chk = (NAME##_iv){0};                                                     \
        NAME##_v acc[MR][NV];                                                               \
        NN_PRAGMA(GCC unroll 16)                                                            \
        for (int i = 0; i < (MR); ++i)                                                      \
            NN_PRAGMA(GCC unroll 4)                                                         \
            for (int v = 0; v < NV; ++v) acc[i][v] = (NAME##_v){0};                         \
        NN_PRAGMA(GCC unroll 16)                                                            \
        for (int i = 0; i < (MR); ++i) {                                                    \
            NN_PREFETCH_W(c + i * ldc);                                                     \
            if ((NC) * sizeof(T) > 64) NN_PREFETCH_W(c + i * ldc + 64 / sizeof(T));          \
        }                                                                                   \
        for (ptrdiff_t p = 0; p < k; ++p) {                                                 \
            NAME##_v bv[NV];                                                                \
            NN_PREFETCH(B_AT(b, ldb, p + 16, NR));                                          \
            if ((NC) * sizeof(T) > 64)                                                      \
                NN_PREFETCH(B_AT(b, ldb, p + 16, NR) + 64 / sizeof(T));                     \
            NN_PRAGMA(GCC unroll 4)                                                         \
            for (int v = 0; v < NV; ++v)                                                    \
                memcpy(&bv[v], B_AT(b, ldb, p, NR) + v * (VL), sizeof(NAME##_v));          \
            NN_PRAGMA(GCC unroll 16)                                                        \
            for (int i = 0; i < (MR); ++i) {                                                \
                const T ai = A_AT(a, lda, p, i, MR);                                        \
                NN_PRAGMA(GCC unroll 4)                                                     \
                for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];                       \
            }                                                                               \
        }                                                                                   \
        if (nr == (NC) && mr == (MR) && alpha == 1 && beta == 0 && !bias &&                \
            !(relu & NN_RELU)) {                                                            \
            /* a whole tile, nothing to add or apply (a product's usual case): stores only, \
             * no branch per row -- with a short k (a weight gradient over a batch of 16)  \
             * the write-back costs as much as a third of the multiply-adds */              \
            NN_PRAGMA(GCC unroll 16)                                                        \
            for (int i = 0; i < (MR); ++i)                                                  \
                NN_PRAGMA(GCC unroll 4)                                                     \
                for (int v = 0; v < NV; ++v)                                                \
                    memcpy(c + i * ldc + v * (VL), &acc[i][v], sizeof(NAME##_v));           \
            if (relu & NN_CHECK_FINITE) {                                                   \
                NN_PRAGMA(GCC unroll 16)                                                    \
                for (int i = 0; i < (MR); ++i)                                              \
                    NN_PRAGMA(GCC unroll 4)                                                 \
                    for (int v = 0; v < NV; ++v)                                            \
                        chk |= (NAME##_iv)(acc[i][v] * (NAME##_v){0});                      \
            }                                                                               \
        } else if (nr == (NC)) {                                                            \
            /* whole rows (all of them but in the last tile of a column): on vectors */     \
            NAME##_v bias_v[NV];                                                            \
            NN_PRAGMA(GCC unroll 4)                                                         \
            for (int v = 0; v < NV; ++v) {                                                  \
                bias_v[v] = (NAME##_v){0};                                                  \
                if (bias) memcpy(&bias_v[v], bias + v * (VL), sizeof(NAME##_v));            \
            }                                                                               \
            NN_PRAGMA(GCC unroll 16)                                                        \
            for (int i = 0; i < (MR); ++i) {                                                \
                if (i == mr) break;                                                         \
                NN_PRAGMA(GCC unroll 4)                                                     \
                for (int v = 0; v < NV; ++v) {                                              \
                    T *cp = c + i * ldc + v * (VL);                                         \
                    NAME##_v r = alpha * acc[i][v];                                         \
                    if (beta != 0) {                                                        \
                        NAME##_v old;                                                       \
                        memcpy(&old, cp, sizeof(NAME##_v));                                 \
                        r += beta * old;                                                    \
                    }                                                                       \
                    if (bias) r += bias_v[v];                                               \
                    if (relu & NN_RELU)                                                     \
                        r = (NAME##_v)((NAME##_iv)r & ~(r <= (NAME##_v){0}));               \
                    memcpy(cp, &r, sizeof(NAME##_v));                                       \
                    if (relu & NN_CHECK_FINITE) chk |= (NAME##_iv)(r * (NAME##_v){0});      \
                }                                                                           \
            }                                                                               \
        } else {                                                                            \
            /* an edge tile: spill the accumulators, write the mr x nr corner */            \
            T tile[(MR) * (NC)];                                                            \
            memcpy(tile, acc, sizeof(tile));                                                \
            for (int i = 0; i < mr; ++i)                                                    \
                for (int j = 0; j < nr; ++j)                                                \
                    NN_WRITE_BACK_CHECKED(T, tile[i * (NC) + j], c + i * ldc + j, alpha,    \
                                          beta, bias, j, relu, bad);                        \
        }                                                                                   \
        if (relu & NN_CHECK_FINITE) {                                                       \
            NAME##_v as_float;                                                              \
            memcpy(&as_float, &chk, sizeof(chk));                                           \
            NAME##_iv nan = as_float != as_float;                                           \
            for (int l = 0; l < (VL); ++l) bad |= nan[l] != 0;                              \
        }                                                                                   \
        return bad;                                                                         \
    }

/* A row kernel for the few-rows case (m < 4: one-sample inference, tiny batches), where
 * packing B would cost as much as the product itself. For one row a of A (stride csa):
 *
 *     c[j] = alpha * sum_p a[p*csa] * b[p*ldb + j] + beta * c[j]  (+ bias[j], ReLU)
 *
 * for j < n, streaming B's rows once, NRV vectors of columns at a time.
 * NN_ROW_CHUNKS: columns [j, j + NRV*VL) at a time, NRV accumulator vectors. */
#define NN_ROW_CHUNKS(NAME, T, VL, NRV)                                                      \
    for (; j + (NRV) * (VL) <= n; j += (NRV) * (VL)) {                                      \
        NAME##_v acc[NRV];                                                                  \
        NN_PRAGMA(GCC unroll NRV)                                                             \
        for (int v = 0; v < (NRV); ++v) acc[v] = (NAME##_v){0};                             \
        for (ptrdiff_t p = 0; p < k; ++p) {                                                 \
            const T ap = a[p * csa];                                                        \
            NN_PRAGMA(GCC unroll NRV)                                                         \
            for (int v = 0; v < (NRV); ++v) {                                               \
                NAME##_v bv;                                                                \
                memcpy(&bv, b + p * ldb + j + v * (VL), sizeof(bv));                        \
                acc[v] += ap * bv;                                                          \
            }                                                                               \
        }                                                                                   \
        if (plain) {            /* (a partial product: the sums as they are, same bits) */ \
            memcpy(c + j, acc, sizeof(acc));                                                \
            continue;                                                                       \
        }                                                                                   \
        T tile[(NRV) * (VL)];                                                               \
        memcpy(tile, acc, sizeof(tile));                                                    \
        for (int t = 0; t < (NRV) * (VL); ++t)                                              \
            NN_WRITE_BACK(T, tile[t], c + j + t, alpha, beta, bias, j + t, relu);           \
    }

/* Columns go WIDE vectors at a time (16 with AVX-512's 32 registers: a 256-float row of B
 * read whole, in one pass), then 8 (8 independent FMA chains: enough to hide the
 * latency), then one vector at a time, then the last n % VL in one vector; every column is
 * summed by the same vector multiply-adds in the same order (p = 0, 1, ..., k-1) whichever
 * of them takes it, so it gets the same bits. */
#define NN_DEFINE_ROWKERNEL(NAME, T, VL, TARGET, WIDE)                                       \
    typedef T NAME##_v __attribute__((vector_size((VL) * sizeof(T))));                      \
    TARGET static void NAME(ptrdiff_t k, ptrdiff_t n, const T *restrict a, ptrdiff_t csa,   \
                            const T *restrict b, ptrdiff_t ldb, T *restrict c, T alpha,     \
                            T beta, const T *restrict bias, int relu) {                     \
        ptrdiff_t j = 0;                                                                    \
        /* alpha 1, beta 0, no bias, no ReLU: r = 1 * acc is acc, stored whole */           \
        const int plain = alpha == 1 && beta == 0 && bias == NULL && !relu;                 \
        if ((WIDE) > 8) {                                                                   \
            NN_ROW_CHUNKS(NAME, T, VL, WIDE)                                                \
        }                                                                                   \
        NN_ROW_CHUNKS(NAME, T, VL, 8)                                                       \
        NN_ROW_CHUNKS(NAME, T, VL, 1)                                                       \
        if (j < n) {                                                                        \
            /* the last n - j < VL columns (a 10-class output layer: all of them) in one    \
             * vector: on the rows p where a whole vector from column j still lies inside  \
             * B, that vector (its other lanes run on into the next row and are dropped),  \
             * on the last rows the rem columns copied into a zeroed vector -- the same     \
             * vector multiply-add on every row, as the whole vectors above */              \
            const ptrdiff_t rem = n - j, room = (k - 1) * ldb + n - j - (VL);               \
            const ptrdiff_t pv = room < 0 ? 0 : (room / ldb + 1 < k ? room / ldb + 1 : k);  \
            NAME##_v acc = (NAME##_v){0};                                                   \
            for (ptrdiff_t p = 0; p < k; ++p) {                                             \
                NAME##_v bv = (NAME##_v){0};                                                \
                if (p < pv)                                                                 \
                    memcpy(&bv, b + p * ldb + j, sizeof(bv));                               \
                else                                                                        \
                    memcpy(&bv, b + p * ldb + j, rem * sizeof(T));                          \
                acc += a[p * csa] * bv;                                                     \
            }                                                                               \
            T r[VL];                                                                        \
            memcpy(r, &acc, sizeof(r));                                                     \
            for (ptrdiff_t t = 0; t < rem; ++t)                                             \
                NN_WRITE_BACK(T, r[t], c + j + t, alpha, beta, bias, j + t, relu);          \
        }                                                                                   \
    }

#else  /* !NN_GNU: the same kernels in plain C11 (MSVC; -DNN_PLAIN_C), for any compiler.
 * Each element of C is summed by the same multiply-adds in the same order (p = 0, 1, ...,
 * k-1) as in a lane of the vector kernels above, and written back by the same rule, so the
 * two give the same bits; the loops read the same elements of A and B. VL and IT are not
 * used here. */
#define NN_DEFINE_UKERNEL(NAME, T, IT, MR, NR, NC, VL, TARGET, A_AT, B_AT)                   \
    static int NAME(ptrdiff_t k, const T *restrict a, ptrdiff_t lda, const T *restrict b,   \
                    ptrdiff_t ldb, T *restrict c, ptrdiff_t ldc, T alpha, T beta,           \
                    const T *restrict bias, int relu, int mr, int nr) {                     \
        T acc[MR][NC];                                                                      \
        int bad = 0;                                                                        \
        for (int i = 0; i < (MR); ++i)                                                      \
            for (int j = 0; j < (NC); ++j) acc[i][j] = 0;                                   \
        for (ptrdiff_t p = 0; p < k; ++p) {                                                 \
            const T *bp = B_AT(b, ldb, p, NR);                                              \
            for (int i = 0; i < (MR); ++i) {                                                \
                const T ai = A_AT(a, lda, p, i, MR);                                        \
                for (int j = 0; j < (NC); ++j) acc[i][j] += ai * bp[j];                     \
            }                                                                               \
        }                                                                                   \
        for (int i = 0; i < mr; ++i)                                                        \
            for (int j = 0; j < nr; ++j)                                                    \
                NN_WRITE_BACK_CHECKED(T, acc[i][j], c + i * ldc + j, alpha, beta, bias, j,  \
                                      relu, bad);                                           \
        return bad;                                                                         \
    }

/* the row kernel: c[j] for j < n, CHUNK columns at a time (B's rows read along) */
#define NN_DEFINE_ROWKERNEL(NAME, T, VL, TARGET, WIDE)                                       \
    static void NAME(ptrdiff_t k, ptrdiff_t n, const T *restrict a, ptrdiff_t csa,          \
                     const T *restrict b, ptrdiff_t ldb, T *restrict c, T alpha, T beta,    \
                     const T *restrict bias, int relu) {                                    \
        enum { CHUNK = 64 };                                                                \
        const int plain = alpha == 1 && beta == 0 && bias == NULL && !relu;                 \
        for (ptrdiff_t j0 = 0; j0 < n; j0 += CHUNK) {                                       \
            const int w = n - j0 < CHUNK ? (int)(n - j0) : CHUNK;                           \
            T acc[CHUNK];                                                                   \
            for (int t = 0; t < w; ++t) acc[t] = 0;                                         \
            for (ptrdiff_t p = 0; p < k; ++p) {                                             \
                const T ap = a[p * csa];                                                    \
                const T *bp = b + p * ldb + j0;                                             \
                for (int t = 0; t < w; ++t) acc[t] += ap * bp[t];                           \
            }                                                                               \
            for (int t = 0; t < w; ++t) {                                                   \
                if (plain)                                                                  \
                    c[j0 + t] = acc[t];                                                     \
                else                                                                        \
                    NN_WRITE_BACK(T, acc[t], c + j0 + t, alpha, beta, bias, j0 + t, relu);  \
            }                                                                               \
        }                                                                                   \
    }

#endif /* NN_GNU */

NN_DEFINE_ROWKERNEL(nn_sgemm_row_generic, float, 4, , 8)
NN_DEFINE_ROWKERNEL(nn_dgemm_row_generic, double, 2, , 8)
#if NN_X86
NN_DEFINE_ROWKERNEL(nn_sgemm_row_avx2, float, 8, NN_TARGET_AVX2, 8)
NN_DEFINE_ROWKERNEL(nn_dgemm_row_avx2, double, 4, NN_TARGET_AVX2, 8)
NN_DEFINE_ROWKERNEL(nn_sgemm_row_avx512, float, 16, NN_TARGET_AVX512, 16)
NN_DEFINE_ROWKERNEL(nn_dgemm_row_avx512, double, 8, NN_TARGET_AVX512, 16)
#endif

/* Packing a whole NR-column micro-panel of row-major B (kc x NR, rows rsb apart) is a copy
 * of NR contiguous elements per row: dst[p*NR + j] = b[p*rsb + j]. Stamped per ISA so that
 * the copy moves whole vectors (the extension modules themselves are built for plain
 * x86-64). Edge panels are packed by the Cython code, transposed B by NN_DEFINE_PACK_BT. */
#if NN_GNU
#define NN_DEFINE_PACK_B(NAME, T, NR, VL, TARGET)                                            \
    typedef T NAME##_v __attribute__((vector_size((VL) * sizeof(T))));                      \
    TARGET static void NAME(ptrdiff_t kc, const T *restrict b, ptrdiff_t rsb,               \
                            T *restrict dst) {                                              \
        enum { NV = (NR) / (VL) };                                                          \
        for (ptrdiff_t p = 0; p < kc; ++p) {                                                \
            NN_PRAGMA(GCC unroll 4)                                                         \
            for (int v = 0; v < NV; ++v) {                                                  \
                NAME##_v x;                                                                 \
                memcpy(&x, b + p * rsb + v * (VL), sizeof(x));                              \
                memcpy(dst + p * (NR) + v * (VL), &x, sizeof(x));                           \
            }                                                                               \
        }                                                                                   \
    }
#else
#define NN_DEFINE_PACK_B(NAME, T, NR, VL, TARGET)                                            \
    static void NAME(ptrdiff_t kc, const T *restrict b, ptrdiff_t rsb, T *restrict dst) {   \
        for (ptrdiff_t p = 0; p < kc; ++p) memcpy(dst + p * (NR), b + p * rsb, (NR) * sizeof(T)); \
    }
#endif

/* Packing a whole MR-row micro-panel of transposed A (A[i, p] = a[p*csa + i]: op(A) = X^T, as
 * in the weight gradient X^T @ g) is a copy of MR contiguous elements per p:
 * dst[p*MR + i] = a[p*csa + i] -- a fixed-size copy the compiler does with whole vectors. */
#define NN_DEFINE_PACK_AT(NAME, T, MR, TARGET)                                                \
    TARGET static void NAME(ptrdiff_t kc, const T *restrict a, ptrdiff_t csa,               \
                            T *restrict dst) {                                              \
        for (ptrdiff_t p = 0; p < kc; ++p) memcpy(dst + p * (MR), a + p * csa, (MR) * sizeof(T)); \
    }

NN_DEFINE_PACK_AT(nn_spack_at_generic_4, float, 4, )
NN_DEFINE_PACK_AT(nn_dpack_at_generic_4, double, 4, )
#if NN_X86
NN_DEFINE_PACK_AT(nn_spack_at_avx2_6, float, 6, NN_TARGET_AVX2)
NN_DEFINE_PACK_AT(nn_dpack_at_avx2_6, double, 6, NN_TARGET_AVX2)
NN_DEFINE_PACK_AT(nn_spack_at_avx512_12, float, 12, NN_TARGET_AVX512)
NN_DEFINE_PACK_AT(nn_dpack_at_avx512_12, double, 12, NN_TARGET_AVX512)
#endif

NN_DEFINE_PACK_B(nn_spack_b_generic_16, float, 16, 4, )
NN_DEFINE_PACK_B(nn_dpack_b_generic_8, double, 8, 2, )
#if NN_X86
NN_DEFINE_PACK_B(nn_spack_b_avx2_16, float, 16, 8, NN_TARGET_AVX2)
NN_DEFINE_PACK_B(nn_dpack_b_avx2_8, double, 8, 4, NN_TARGET_AVX2)
NN_DEFINE_PACK_B(nn_spack_b_avx512_32, float, 32, 16, NN_TARGET_AVX512)
NN_DEFINE_PACK_B(nn_dpack_b_avx512_16, double, 16, 8, NN_TARGET_AVX512)
#endif

/* Packing a micro-panel of transposed B (B[p, j] = b[j*csb + p]: op(B) = W^T, as in the
 * input gradient g @ W^T) gathers its `cols` <= NR columns, csb apart, per row p:
 * dst[p*NR + j] = b[j*csb + p] for j < cols, 0 for cols <= j < NR. With AVX2/AVX-512 a
 * masked gather instruction fetches a vector of them (the source rows stay in L1 while p
 * walks along them). Needs csb * NR to fit an int32 index; returns 0 (the caller packs)
 * when it does not. */
#if NN_X86
#include <immintrin.h>

/* IDX: an index vector of VL int32 lanes 0, csb, 2*csb, ...; MASK(n): the mask of the
 * first n lanes; GATHER(base, idx, mask): masked gather of VL elements (0 where masked
 * off); STORE(dst, v): unaligned store. */
#define NN_DEFINE_PACK_BT(NAME, T, NR, VL, TARGET, IDX, MASK, GATHER, STORE)                 \
    TARGET static int NAME(ptrdiff_t kc, const T *restrict b, ptrdiff_t csb, int cols,      \
                           T *restrict dst) {                                               \
        if (csb > INT32_MAX / (NR)) return 0;                                               \
        const int c = (int)csb;                                                             \
        const T *half = b + (VL) * csb;                                                     \
        const int lo = cols < (VL) ? cols : (VL), hi = cols - lo;                           \
        for (ptrdiff_t p = 0; p < kc; ++p) {                                                \
            STORE(dst + p * (NR), GATHER(b + p, IDX, MASK(lo)));                            \
            STORE(dst + p * (NR) + (VL), GATHER(half + p, IDX, MASK(hi)));                  \
        }                                                                                   \
        return 1;                                                                           \
    }

#define NN_IDX16 _mm512_setr_epi32(0, c, 2 * c, 3 * c, 4 * c, 5 * c, 6 * c, 7 * c, 8 * c, \
                                   9 * c, 10 * c, 11 * c, 12 * c, 13 * c, 14 * c, 15 * c)
#define NN_IDX8 _mm256_setr_epi32(0, c, 2 * c, 3 * c, 4 * c, 5 * c, 6 * c, 7 * c)
#define NN_IDX4 _mm_setr_epi32(0, c, 2 * c, 3 * c)
/* AVX-512: k-register masks; AVX2: vector masks (lane i on when i < n) */
#define NN_KMASK16(n) ((__mmask16)((1u << (n)) - 1u))
#define NN_KMASK8(n) ((__mmask8)((1u << (n)) - 1u))
#define NN_VMASK8(n) _mm256_cmpgt_epi32(_mm256_set1_epi32(n), \
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define NN_VMASK4(n) _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3))
#define NN_GATHER_PS512(base, idx, m) \
    _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, base, 4)
#define NN_GATHER_PD512(base, idx, m) \
    _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m, idx, base, 8)
#define NN_GATHER_PS256(base, idx, m) \
    _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, idx, _mm256_castsi256_ps(m), 4)
#define NN_GATHER_PD256(base, idx, m) \
    _mm256_mask_i32gather_pd(_mm256_setzero_pd(), base, idx, _mm256_castsi256_pd(m), 8)

NN_DEFINE_PACK_BT(nn_spack_bt_avx512_32_gather, float, 32, 16, NN_TARGET_AVX512, NN_IDX16,
                  NN_KMASK16, NN_GATHER_PS512, _mm512_storeu_ps)

/* 16 rows r[0..15] of 16 floats in, their transpose out: r[k][i] <- r[i][k]. Four rounds
 * of shuffles: pairs of rows interleaved (ps, then pd), then 128-bit lanes regrouped. */
NN_TARGET_AVX512 static inline void nn_transpose16_ps(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {                   /* r0[4L], r1[4L], r0[4L+1], ... */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {                   /* u[g + c]: column 4L + c of */
        __m512d a0 = _mm512_castps_pd(t[g]), a1 = _mm512_castps_pd(t[g + 1]);  /* rows  */
        __m512d b0 = _mm512_castps_pd(t[g + 2]), b1 = _mm512_castps_pd(t[g + 3]);  /* g.. */
        u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
        u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
        u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
        u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
    }
    for (int c = 0; c < 4; ++c) {                       /* lane L of u[c], u[4+c], ... */
        __m512 v = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
        __m512 w = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
        __m512 w2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
        r[c] = _mm512_shuffle_f32x4(v, v2, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(v, v2, 0xDD);
        r[8 + c] = _mm512_shuffle_f32x4(w, w2, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(w, w2, 0xDD);
    }
}

/* A whole 32-column panel of transposed B, 16 rows p at a time: 16 contiguous vectors of
 * 16 source rows (whole cache lines), transposed in registers -- no gather instructions;
 * the last kc % 16 rows and partial panels are gathered as above. */
NN_TARGET_AVX512 static int nn_spack_bt_avx512_32(ptrdiff_t kc, const float *restrict b,
                                                  ptrdiff_t csb, int cols, float *restrict dst) {
    if (cols != 32) return nn_spack_bt_avx512_32_gather(kc, b, csb, cols, dst);
    ptrdiff_t p0 = 0;
    for (; p0 + 16 <= kc; p0 += 16) {
        for (int h = 0; h < 2; ++h) {
            __m512 r[16];
            for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(b + (16 * h + i) * csb + p0);
            nn_transpose16_ps(r);
            for (int k = 0; k < 16; ++k) _mm512_storeu_ps(dst + (p0 + k) * 32 + 16 * h, r[k]);
        }
    }
    if (p0 < kc) return nn_spack_bt_avx512_32_gather(kc - p0, b + p0, csb, 32, dst + p0 * 32);
    return 1;
}
NN_DEFINE_PACK_BT(nn_dpack_bt_avx512_16, double, 16, 8, NN_TARGET_AVX512, NN_IDX8,
                  NN_KMASK8, NN_GATHER_PD512, _mm512_storeu_pd)
NN_DEFINE_PACK_BT(nn_spack_bt_avx2_16_gather, float, 16, 8, NN_TARGET_AVX2, NN_IDX8, NN_VMASK8,
                  NN_GATHER_PS256, _mm256_storeu_ps)
NN_DEFINE_PACK_BT(nn_dpack_bt_avx2_8_gather, double, 8, 4, NN_TARGET_AVX2, NN_IDX4, NN_VMASK4,
                  NN_GATHER_PD256, _mm256_storeu_pd)

/* 8 rows r[0..7] of 8 floats in, their transpose out: r[k][i] <- r[i][k]. Pairs of rows
 * interleaved, then pairs of pairs (within 128-bit lanes), then the lanes regrouped. */
NN_TARGET_AVX2 static inline void nn_transpose8_ps(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {                    /* r_i[0] r_i+1[0] r_i[1] r_i+1[1] */
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 8; g += 4) {                    /* u[g + c]: column c (and c + 4) */
        u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);         /* of rows g .. g+3 */
        u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {                       /* rows 0-3 and 4-7, side by side */
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

/* 4 rows of 4 doubles in, their transpose out. */
NN_TARGET_AVX2 static inline void nn_transpose4_pd(__m256d r[4]) {
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* A whole panel of transposed B (NR = 2 VL columns) with AVX2, VL rows p at a time: VL
 * contiguous vectors of VL source rows, transposed in registers -- no gathers, which are
 * slow on the AVX2 machines (on AMD Zen 2, ~1 cycle an element: packing W^T took a tenth of
 * the input-gradient product 128x256 @ 256x784); the last kc % VL rows and partial panels
 * are gathered as above. */
#define NN_DEFINE_PACK_BT_AVX2(NAME, T, V, VL, LOAD, STORE, TRANSPOSE)                      \
    NN_TARGET_AVX2 static int NAME(ptrdiff_t kc, const T *restrict b, ptrdiff_t csb,        \
                                   int cols, T *restrict dst) {                             \
        if (cols != 2 * (VL)) return NAME##_gather(kc, b, csb, cols, dst);                  \
        ptrdiff_t p0 = 0;                                                                   \
        for (; p0 + (VL) <= kc; p0 += (VL)) {                                               \
            for (int h = 0; h < 2; ++h) {                                                   \
                V r[VL];                                                                    \
                for (int i = 0; i < (VL); ++i) r[i] = LOAD(b + ((VL) * h + i) * csb + p0);  \
                TRANSPOSE(r);                                                               \
                for (int k = 0; k < (VL); ++k)                                              \
                    STORE(dst + (p0 + k) * 2 * (VL) + (VL) * h, r[k]);                      \
            }                                                                               \
        }                                                                                   \
        if (p0 < kc)                                                                        \
            return NAME##_gather(kc - p0, b + p0, csb, cols, dst + p0 * 2 * (VL));          \
        return 1;                                                                           \
    }
NN_DEFINE_PACK_BT_AVX2(nn_spack_bt_avx2_16, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps,
                       nn_transpose8_ps)
NN_DEFINE_PACK_BT_AVX2(nn_dpack_bt_avx2_8, double, __m256d, 4, _mm256_loadu_pd,
                       _mm256_storeu_pd, nn_transpose4_pd)
#endif

/* no gather instruction: the caller's scalar packing */
static int nn_spack_bt_generic_16(ptrdiff_t kc, const float *b, ptrdiff_t csb, int cols,
                                  float *dst) {
    (void)kc; (void)b; (void)csb; (void)cols; (void)dst;
    return 0;
}

static int nn_dpack_bt_generic_8(ptrdiff_t kc, const double *b, ptrdiff_t csb, int cols,
                                 double *dst) {
    (void)kc; (void)b; (void)csb; (void)cols; (void)dst;
    return 0;
}

/* A's element (p, i) of the micro-panel: packed (a[p*MR + i], lda unused), or read in place
 * from row-major A (a[i*lda + p]: MR rows, each contiguous in p -- no packing, for A stored
 * with unit column stride and a whole MR-row tile). B's row p of the micro-panel: packed
 * (b + p*NR, ldb unused), or in place in row-major B (b + p*ldb: NR contiguous elements of
 * row p -- no packing, for a whole NR-column tile of B with unit column stride, when too
 * few rows of A share the panel to pay for packing it). */
#define NN_A_PACKED(a, lda, p, i, MR) ((a)[(p) * (MR) + (i)])
#define NN_A_ROWS(a, lda, p, i, MR) ((a)[(i) * (lda) + (p)])
#define NN_B_PACKED(b, ldb, p, NR) ((b) + (p) * (NR))
#define NN_B_ROWS(b, ldb, p, NR) ((b) + (p) * (ldb))

/* the four ways to read A and B: NAME (both packed), NAME_rows (A in place), NAME_brows
 * (B in place), NAME_rows_brows (neither packed); each whole and half width (NAME_half...) */
#define NN_DEFINE_UKERNELS_NC(NAME, T, IT, MR, NR, NC, VL, TARGET)                           \
    NN_DEFINE_UKERNEL(NAME, T, IT, MR, NR, NC, VL, TARGET, NN_A_PACKED, NN_B_PACKED)         \
    NN_DEFINE_UKERNEL(NAME##_rows, T, IT, MR, NR, NC, VL, TARGET, NN_A_ROWS, NN_B_PACKED)    \
    NN_DEFINE_UKERNEL(NAME##_brows, T, IT, MR, NR, NC, VL, TARGET, NN_A_PACKED, NN_B_ROWS)   \
    NN_DEFINE_UKERNEL(NAME##_rows_brows, T, IT, MR, NR, NC, VL, TARGET, NN_A_ROWS, NN_B_ROWS)
#define NN_DEFINE_UKERNELS(NAME, T, IT, MR, NR, VL, TARGET)                                  \
    NN_DEFINE_UKERNELS_NC(NAME, T, IT, MR, NR, NR, VL, TARGET)                               \
    NN_DEFINE_UKERNELS_NC(NAME##_half, T, IT, MR, NR, (NR) / 2, VL, TARGET)

NN_DEFINE_UKERNELS(nn_sgemm_ukr_generic_4x16, float, int32_t, 4, 16, 4, )
NN_DEFINE_UKERNELS(nn_dgemm_ukr_generic_4x8, double, int64_t, 4, 8, 2, )
#if NN_X86
NN_DEFINE_UKERNELS(nn_sgemm_ukr_avx2_6x16, float, int32_t, 6, 16, 8, NN_TARGET_AVX2)
NN_DEFINE_UKERNELS(nn_dgemm_ukr_avx2_6x8, double, int64_t, 6, 8, 4, NN_TARGET_AVX2)
NN_DEFINE_UKERNELS(nn_sgemm_ukr_avx512_12x32, float, int32_t, 12, 32, 16, NN_TARGET_AVX512)
NN_DEFINE_UKERNELS(nn_dgemm_ukr_avx512_12x16, double, int64_t, 12, 16, 8, NN_TARGET_AVX512)
#endif

typedef int (*nn_sgemm_ukr_t)(ptrdiff_t, const float *, ptrdiff_t, const float *, ptrdiff_t,
                              float *, ptrdiff_t, float, float, const float *, int, int, int);
typedef void (*nn_sgemm_row_t)(ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t, const float *,
                               ptrdiff_t, float *, float, float, const float *, int);
typedef void (*nn_dgemm_row_t)(ptrdiff_t, ptrdiff_t, const double *, ptrdiff_t, const double *,
                               ptrdiff_t, double *, double, double, const double *, int);
typedef void (*nn_spack_b_t)(ptrdiff_t, const float *, ptrdiff_t, float *);
typedef void (*nn_dpack_b_t)(ptrdiff_t, const double *, ptrdiff_t, double *);
typedef void (*nn_spack_at_t)(ptrdiff_t, const float *, ptrdiff_t, float *);
typedef void (*nn_dpack_at_t)(ptrdiff_t, const double *, ptrdiff_t, double *);
typedef int (*nn_spack_bt_t)(ptrdiff_t, const float *, ptrdiff_t, int, float *);
typedef int (*nn_dpack_bt_t)(ptrdiff_t, const double *, ptrdiff_t, int, double *);
typedef int (*nn_dgemm_ukr_t)(ptrdiff_t, const double *, ptrdiff_t, const double *, ptrdiff_t,
                              double *, ptrdiff_t, double, double, const double *, int, int, int);

/* The micro-kernel chosen for this CPU, its tile and the cache blocking around it. */
typedef struct {
    nn_sgemm_ukr_t ukr[4];    /* [a_in_place + 2 * b_in_place]: NN_DEFINE_UKERNELS */
    nn_sgemm_ukr_t ukr_half[4];    /* the same, NR / 2 columns wide */
    nn_sgemm_row_t row;
    nn_spack_b_t pack_b;  /* a whole NR-column panel of row-major B */
    nn_spack_at_t pack_at;  /* a whole MR-row panel of transposed A */
    nn_spack_bt_t pack_bt;  /* ... of transposed B (0: not done, pack it yourself) */
    int mr, nr;
    int nblock;             /* columns of packed B per block (loop 3), for the L2 cache */
    const char *name;
} nn_sgemm_kernel_t;

typedef struct {
    nn_dgemm_ukr_t ukr[4];    /* [a_in_place + 2 * b_in_place]: NN_DEFINE_UKERNELS */
    nn_dgemm_ukr_t ukr_half[4];    /* the same, NR / 2 columns wide */
    nn_dgemm_row_t row;
    nn_dpack_b_t pack_b;  /* a whole NR-column panel of row-major B */
    nn_dpack_at_t pack_at;  /* a whole MR-row panel of transposed A */
    nn_dpack_bt_t pack_bt;  /* ... of transposed B (0: not done, pack it yourself) */
    int mr, nr;
    int nblock;             /* columns of packed B per block (loop 3), for the L2 cache */
    const char *name;
} nn_dgemm_kernel_t;

/* the kernel table of one (type, ISA): its four micro-kernels, row kernel and packers */
#define NN_KERNEL(T, X, ISA, MR, NR, NBLOCK)                                                 \
    (nn_##X##gemm_kernel_t) {                                                               \
        {nn_##X##gemm_ukr_##ISA##_##MR##x##NR, nn_##X##gemm_ukr_##ISA##_##MR##x##NR##_rows,  \
         nn_##X##gemm_ukr_##ISA##_##MR##x##NR##_brows,                                      \
         nn_##X##gemm_ukr_##ISA##_##MR##x##NR##_rows_brows},                                \
        {nn_##X##gemm_ukr_##ISA##_##MR##x##NR##_half,                                       \
         nn_##X##gemm_ukr_##ISA##_##MR##x##NR##_half_rows,                                  \
         nn_##X##gemm_ukr_##ISA##_##MR##x##NR##_half_brows,                                 \
         nn_##X##gemm_ukr_##ISA##_##MR##x##NR##_half_rows_brows},                           \
        nn_##X##gemm_row_##ISA, nn_##X##pack_b_##ISA##_##NR, nn_##X##pack_at_##ISA##_##MR,   \
        nn_##X##pack_bt_##ISA##_##NR,                                                       \
        MR, NR, NBLOCK, #ISA " " #MR "x" #NR                                                \
    }

/* The packed B block (kc x nblock) shares L2 with the rows of A the micro-kernels read in
 * place and the C slab they write: 240 float columns were measured best with AVX-512 on a
 * 2 MiB L2 (Xeon SPR-class), 120 with AVX2 on a 512 KiB one (AMD Zen 2: the input gradient
 * 128x256 @ 256x784 at 138 -> 157 GF/s, the other products unchanged). The blocking does
 * not change any sum: every element of C is summed over k in the same order. */
static nn_sgemm_kernel_t nn_sgemm_kernel_for(int isa) {
#if NN_X86
    if (isa >= NN_ISA_AVX512) return NN_KERNEL(float, s, avx512, 12, 32, 240);
    if (isa >= NN_ISA_AVX2) return NN_KERNEL(float, s, avx2, 6, 16, 120);
#endif
    (void)isa;
    return NN_KERNEL(float, s, generic, 4, 16, 240);
}

static nn_dgemm_kernel_t nn_dgemm_kernel_for(int isa) {
#if NN_X86
    if (isa >= NN_ISA_AVX512) return NN_KERNEL(double, d, avx512, 12, 16, 120);
    if (isa >= NN_ISA_AVX2) return NN_KERNEL(double, d, avx2, 6, 8, 120);
#endif
    (void)isa;
    return NN_KERNEL(double, d, generic, 4, 8, 120);
}

#endif /* NN_GEMM_UKERNEL_H */
