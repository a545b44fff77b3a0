/* nn_im2col.h -- one row of im2col, and one channel of its adjoint col2im, for a convolution
 * with unit column stride, float32, with AVX-512 masks.
 *
 * Row (c, kh, kw) of col holds, for every output position (oh, ow) of one sample,
 *
 *     col[oh * OW + ow] = x[c, ih, iw]   with ih = oh * sh - ph + kh, iw = ow - pw + kw,
 *
 * or 0 where (ih, iw) falls in the zero padding. `plane` is x[c] (H x W); the output columns
 * whose iw is inside [0, W) are [ow_lo, ow_hi) (the caller's _valid_columns). For small
 * feature maps (a 14-wide row) a run is shorter than one vector: the scalar loop spent more
 * on its bounds and zero fills, and on a memcpy call per run, than on the copying. Here
 * each output row is 16 lanes at a time: a masked load (the lanes outside [ow_lo, ow_hi)
 * read as 0 and touch no memory) and a whole-vector store, whose lanes past the row land
 * on the rows after it (written next); a masked store only at the end of the block.
 *
 * col2im adds the rows back into the plane in the scalar loop's order (below), so the
 * same bits.
 */
#ifndef NN_IM2COL_H
#define NN_IM2COL_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include "nn_cpu.h"

#if NN_X86
#include <immintrin.h>

/* lanes [lo, hi) of a 16-lane chunk, both clamped to [0, 16] */
static inline unsigned nn_lanes(ptrdiff_t lo, ptrdiff_t hi) {
    lo = lo < 0 ? 0 : (lo > 16 ? 16 : lo);
    hi = hi < lo ? lo : (hi > 16 ? 16 : hi);
    return ((1u << hi) - 1u) & ~((1u << lo) - 1u);
}

/* the lanes of the chunk at j0 of an OW-wide output row: `out` those inside the row,
 * `valid` those whose input column is inside [0, W) */
static inline void nn_chunk_masks(ptrdiff_t j0, ptrdiff_t OW, ptrdiff_t ow_lo, ptrdiff_t ow_hi,
                                  __mmask16 *valid, __mmask16 *out) {
    *valid = (__mmask16)nn_lanes(ow_lo - j0, ow_hi - j0);
    *out = (__mmask16)nn_lanes(0, OW - j0);
}

enum { NN_IM2COL_CHUNKS = 8 };   /* masks kept for rows of up to 8 chunks (128 columns) */

__attribute__((target("avx512f"))) static void nn_im2col_row_s1_avx512(
        const float *plane, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ow_lo, ptrdiff_t ow_hi,
        float *dst) {
    const __m512 zero = _mm512_setzero_ps();
    const ptrdiff_t chunks = (OW + 15) / 16, end = OH * OW;
    __mmask16 valid[NN_IM2COL_CHUNKS], out[NN_IM2COL_CHUNKS];
    /* the same masks for every output row: worked out once (they cost more than the copy) */
    for (ptrdiff_t c = 0; c < chunks && c < NN_IM2COL_CHUNKS; ++c)
        nn_chunk_masks(16 * c, OW, ow_lo, ow_hi, &valid[c], &out[c]);
    for (ptrdiff_t oh = 0; oh < OH; ++oh) {
        ptrdiff_t ih = oh * sh - ph + kh;
        int inside = ih >= 0 && ih < H;
        float *d = dst + oh * OW;
        /* lane ow of chunk j0 reads row[j0 + ow], row = the input row shifted by kw - pw */
        const float *row = inside ? plane + ih * W + (kw - pw) : plane;
        for (ptrdiff_t c = 0; c < chunks; ++c) {
            ptrdiff_t j0 = 16 * c;
            __mmask16 v, o;
            if (c < NN_IM2COL_CHUNKS) {
                v = valid[c];
                o = out[c];
            } else {
                nn_chunk_masks(j0, OW, ow_lo, ow_hi, &v, &o);
            }
            __m512 x = inside ? _mm512_maskz_loadu_ps(v, row + j0) : zero;
            /* a whole-vector store where its lanes past the row land on later rows of this
             * sample's block (written after it, in order): a masked store only at the end */
            if (oh * OW + j0 + 16 <= end)
                _mm512_storeu_ps(d + j0, x);
            else
                _mm512_mask_storeu_ps(d + j0, o, x);
        }
    }
}

/* col2im of one channel: plane (H x W) += the KH * KW rows of col for it (row (kh, kw) at
 * col + (kh * KW + kw) * ldc). Each 16-lane chunk of an input row gathers its values from
 * every (kh, kw) that reaches it -- in the scalar loop's order, kh then kw, so the same
 * bits -- in a register, then is stored once: adding row after row into memory would load
 * each chunk back soon after a store that overlaps it by all but one lane, which the
 * store-to-load forwarding cannot serve (measured slower than the scalar loop). */
__attribute__((target("avx512f"))) static void nn_col2im_plane_s1_avx512(
        const float *col, ptrdiff_t ldc, ptrdiff_t H, ptrdiff_t W, ptrdiff_t KH, ptrdiff_t KW,
        ptrdiff_t sh, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t OH, ptrdiff_t OW, float *plane) {
    for (ptrdiff_t ih = 0; ih < H; ++ih) {
        float *xr = plane + ih * W;
        for (ptrdiff_t iw0 = 0; iw0 < W; iw0 += 16) {
            __mmask16 out = (__mmask16)nn_lanes(0, W - iw0);
            __m512 acc = _mm512_maskz_loadu_ps(out, xr + iw0);
            for (ptrdiff_t kh = 0; kh < KH; ++kh) {
                ptrdiff_t t = ih + ph - kh, oh;
                if (t < 0 || t % sh != 0 || (oh = t / sh) >= OH)
                    continue;
                for (ptrdiff_t kw = 0; kw < KW; ++kw) {
                    ptrdiff_t off = iw0 + pw - kw;   /* the output column of lane 0 */
                    __mmask16 valid = out & (__mmask16)nn_lanes(-off, OW - off);
                    const float *src = col + (kh * KW + kw) * ldc + oh * OW + off;
                    acc = _mm512_mask_add_ps(acc, valid, acc, _mm512_maskz_loadu_ps(valid, src));
                }
            }
            _mm512_mask_storeu_ps(xr + iw0, out, acc);
        }
    }
}
#else
static void nn_im2col_row_s1_avx512(const float *plane, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                    ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t ph, ptrdiff_t pw,
                                    ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t ow_lo, ptrdiff_t ow_hi,
                                    float *dst) {
    (void)plane; (void)H; (void)W; (void)kh; (void)kw; (void)sh; (void)ph; (void)pw;
    (void)OH; (void)OW; (void)ow_lo; (void)ow_hi; (void)dst;
}
static void nn_col2im_plane_s1_avx512(const float *col, ptrdiff_t ldc, ptrdiff_t H, ptrdiff_t W,
                                      ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t sh, ptrdiff_t ph,
                                      ptrdiff_t pw, ptrdiff_t OH, ptrdiff_t OW, float *plane) {
    (void)col; (void)ldc; (void)H; (void)W; (void)KH; (void)KW; (void)sh; (void)ph; (void)pw;
    (void)OH; (void)OW; (void)plane;
}
#endif

#endif /* NN_IM2COL_H */
