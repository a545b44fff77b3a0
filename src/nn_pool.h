/* nn_pool.h -- 2x2, stride-2 max pooling of one output row with AVX-512 (float32).
 *
 * For output row oh of one (H, W) plane, with r0, r1 the input rows 2*oh and 2*oh + 1 and
 * base = 2*oh*W their flat offset in the plane, for ow < OW:
 *
 *     out[ow] = max(r0[2ow], r0[2ow+1], r1[2ow], r1[2ow+1])     scanned in that order
 *     idx[ow] = the flat position (ih * W + iw) of the winner
 *
 * with the rule of the scalar loop in _conv.pyx (and PyTorch): a later element wins if it
 * is larger, or if it is a NaN and the best so far is not -- so the first maximum wins ties
 * and the first NaN wins over numbers. Sixteen outputs at a time: the even and odd columns
 * are split apart with one permute each, the "take" rule becomes mask compares and blends.
 * Positions are computed in int32 (the caller checks H*W < 2^31) and widened to int64.
 */
#ifndef NN_POOL_H
#define NN_POOL_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include <stdint.h>

#include "nn_cpu.h"

#if NN_X86
#include <immintrin.h>

#define NN_POOL_TAKE(v, pv)                                                                  \
    do {                                                                                    \
        __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) |                          \
                         (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) &                          \
                          _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q));                      \
        best = _mm512_mask_blend_ps(take, best, v);                                         \
        pos = _mm512_mask_blend_epi32(take, pos, pv);                                       \
    } while (0)

__attribute__((target("avx512f"))) static void nn_maxpool2x2_row_avx512(
        const float *r0, const float *r1, ptrdiff_t OW, ptrdiff_t base, ptrdiff_t W, float *out,
        int64_t *idx) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i lane2 = _mm512_slli_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
    const __m512i one = _mm512_set1_epi32(1), width = _mm512_set1_epi32((int)W);
    for (ptrdiff_t ow = 0; ow < OW; ow += 16) {
        ptrdiff_t rem = OW - ow < 16 ? OW - ow : 16;          /* outputs in this chunk */
        __mmask16 out_mask = (__mmask16)((1u << rem) - 1u);
        /* 2*rem inputs per row: the first 16 in lo, the rest in hi */
        ptrdiff_t in_lo = 2 * rem < 16 ? 2 * rem : 16, in_hi = 2 * rem - in_lo;
        __mmask16 m_lo = (__mmask16)((1u << in_lo) - 1u);
        __mmask16 m_hi = (__mmask16)((1u << in_hi) - 1u);
        const float *p0 = r0 + 2 * ow, *p1 = r1 + 2 * ow;
        __m512 a_lo = _mm512_maskz_loadu_ps(m_lo, p0), a_hi = _mm512_maskz_loadu_ps(m_hi, p0 + 16);
        __m512 c_lo = _mm512_maskz_loadu_ps(m_lo, p1), c_hi = _mm512_maskz_loadu_ps(m_hi, p1 + 16);
        __m512 a = _mm512_permutex2var_ps(a_lo, even, a_hi);   /* r0[2ow] */
        __m512 b = _mm512_permutex2var_ps(a_lo, odd, a_hi);    /* r0[2ow + 1] */
        __m512 c = _mm512_permutex2var_ps(c_lo, even, c_hi);   /* r1[2ow] */
        __m512 d = _mm512_permutex2var_ps(c_lo, odd, c_hi);    /* r1[2ow + 1] */
        __m512i pa = _mm512_add_epi32(_mm512_set1_epi32((int)(base + 2 * ow)), lane2);
        __m512i pc = _mm512_add_epi32(pa, width);
        __m512 best = a;
        __m512i pos = pa;
        NN_POOL_TAKE(b, _mm512_add_epi32(pa, one));
        NN_POOL_TAKE(c, pc);
        NN_POOL_TAKE(d, _mm512_add_epi32(pc, one));
        _mm512_mask_storeu_ps(out + ow, out_mask, best);
        _mm512_mask_storeu_epi64(idx + ow, (__mmask8)out_mask,
                                 _mm512_cvtepi32_epi64(_mm512_castsi512_si256(pos)));
        _mm512_mask_storeu_epi64(idx + ow + 8, (__mmask8)(out_mask >> 8),
                                 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(pos, 1)));
    }
}
#else
/* Off x86 the AVX-512 row never runs (nn_cpu_has_avx512f() is 0 there): this stub only keeps
 * the call site in cnn_core/_conv.pyx linking, as nn_im2col.h's do. */
static void nn_maxpool2x2_row_avx512(const float *r0, const float *r1, ptrdiff_t OW,
                                     ptrdiff_t base, ptrdiff_t W, float *out, int64_t *idx) {
    (void)r0; (void)r1; (void)OW; (void)base; (void)W; (void)out; (void)idx;
}
#endif

#endif /* NN_POOL_H */
