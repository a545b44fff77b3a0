/* nn_direct.h -- a 3x3 convolution with stride 1 and padding 1 (the "same" convolution of
 * ResNets and of the CLI's CNN), float32, AVX-512, computed straight from the input: no
 * column matrix.
 *
 * im2col writes nine shifted copies of every input plane before its GEMM reads them back.
 * With 16-64 channels that copying, not the multiply-adds, is what the convolution spends
 * its time on (16 -> 16 channels on 28x28, batch 128: a 57 MB column matrix for 0.46
 * GFLOP). Here the plane is read in place. Its pixels, numbered flat (p = i * W + j), go 16
 * to a vector; tap t = (kh, kw) of output pixel p reads input pixel p + (kh - 1) * W +
 * (kw - 1), so each tap of a vector of outputs is one unaligned load of 16 inputs -- with a
 * mask that zeroes the lanes whose input lies in the padding (the row above the first, the
 * row below the last, the column left of the first and right of the last). The masks depend
 * on the pixel vector and the tap only, so they are worked out once per call and plane
 * size (nn_direct3_masks), not per sample or channel; a masked-out lane touches no memory.
 *
 * A register tile is 8 output channels by 3 pixel vectors (24 accumulators): for each input
 * channel r and tap t, three masked loads and 24 multiply-adds with the weights broadcast.
 * Each output is therefore
 *
 *     out[q, p] = sum over r = 0, 1, ..., then t = 0..8 of w[q, r, t] * xpad[r, p + tap t]
 *
 * one multiply-add at a time from 0, in that order -- the same for every sample, thread
 * and batch size.
 *
 * The weights are packed once per call (nn_direct3_pack): blocks of 8 output channels,
 * wp[((qb * R + r) * 9 + t) * 8 + o] = w[qb * 8 + o, r, t], zero past the last channel.
 * With transpose set they are those of the input gradient -- a convolution of grad_out with
 * the weights' channels swapped and their taps reversed:
 *
 *     gx[c, a, b] = sum_{o, kh, kw} w[o, c, 2 - kh, 2 - kw] * gpad[o, a + kh - 1, b + kw - 1]
 *
 * Planes up to NN_DIRECT_MAX_PIXELS: the masks live on the stack. A 7x7 plane fills 49 of
 * the 64 lanes of its four vectors; sixteen such planes stacked (one channel of sixteen
 * samples, copied one after the other) fill 49 vectors whole. The caller stacks them
 * (cnn_core/_conv.pyx); a tap that would cross into the next plane is masked like the
 * padding, so each output's sum is the same, stacked or not.
 *
 * The same tiles compute a 3x3 convolution with stride 2 and padding 1 (a ResNet's
 * downsampling) from the input's phase planes (nn_direct3_phases_avx512 below), and the
 * weight gradient of both (nn_direct3_gw_run_avx512).
 */
#ifndef NN_DIRECT_H
#define NN_DIRECT_H


#include <stddef.h>   /* ptrdiff_t: sizes and indices (64-bit wherever pointers are) */
#include <stdint.h>

#include "nn_cpu.h"

enum { NN_DIRECT_MAX_PIXELS = 4096, NN_DIRECT_MASKS = 10,   /* 9 taps + the pixels kept */
       NN_DIRECT_MASK_WORDS = NN_DIRECT_MAX_PIXELS / 16 * NN_DIRECT_MASKS,
       NN_DIRECT_GW_CHUNK = 131072,     /* floats of x and g per chunk of the weight gradient */
       NN_DIRECT_GX_MAX_K = 1024 };     /* _gemm.pyx's KC_FLOAT: k summed as one block */

/* wp (blocks of 8 of the Q output channels, R input channels, 9 taps, 8) from w (O, C, 3,
 * 3): Q = O, R = C; or, with transpose, Q = C, R = O and the taps reversed. */
static void nn_direct3_pack(const float *w, ptrdiff_t O, ptrdiff_t C, int transpose,
                            float *wp) {
    ptrdiff_t Q = transpose ? C : O, R = transpose ? O : C, blocks = (Q + 7) / 8;
    for (ptrdiff_t qb = 0; qb < blocks; ++qb)
        for (ptrdiff_t r = 0; r < R; ++r)
            for (int t = 0; t < 9; ++t)
                for (int o = 0; o < 8; ++o) {
                    ptrdiff_t q = qb * 8 + o;
                    float v = 0.0f;
                    if (q < Q)
                        v = transpose ? w[(r * C + q) * 9 + (8 - t)] : w[(q * C + r) * 9 + t];
                    wp[((qb * R + r) * 9 + t) * 8 + o] = v;
                }
}

/* The taps of stride 2 over phase planes stacked as nn_direct3_phases_avx512 writes them
 * (phase planes `stride` floats apart, OW wide): off[t] into them and masks2 from masks1,
 * nn_direct3_masks(OH, OW, m)'s masks for the stacked phase plane's `vectors` vectors --
 * tap (kh, kw) takes the mask of the shift it makes */
static void nn_direct3_s2_taps(ptrdiff_t OW, ptrdiff_t stride, ptrdiff_t vectors,
                               const uint16_t *masks1, uint16_t *masks2, ptrdiff_t *off) {
    int shift[9];
    for (int t = 0; t < 9; ++t) {
        int kh = t / 3, kw = t % 3, dr = kh == 0 ? -1 : 0, dc = kw == 0 ? -1 : 0;
        off[t] = ((kh != 1) * 2 + (kw != 1)) * stride + dr * OW + dc;
        shift[t] = (dr + 1) * 3 + (dc + 1);
    }
    for (ptrdiff_t v = 0; v < vectors; ++v) {
        for (int t = 0; t < 9; ++t)
            masks2[v * NN_DIRECT_MASKS + t] = masks1[v * NN_DIRECT_MASKS + shift[t]];
        masks2[v * NN_DIRECT_MASKS + 9] = masks1[v * NN_DIRECT_MASKS + 9];
    }
}

#if NN_X86
#include <immintrin.h>

/* For `planes` (H, W) planes stacked into one of planes * H rows (several samples' planes
 * of one channel, one after the other: small planes fill the vectors better), masks[v * 10
 * + t], t < 9: the lanes of pixel vector v whose tap t lies inside the lane's own plane;
 * masks[v * 10 + 9]: the lanes that are pixels at all (p < planes * H * W) */
static void nn_direct3_masks(ptrdiff_t H, ptrdiff_t W, ptrdiff_t planes, uint16_t *masks) {
    ptrdiff_t P = planes * H * W, vectors = (P + 15) / 16;
    for (ptrdiff_t v = 0; v < vectors; ++v) {
        uint16_t m[NN_DIRECT_MASKS] = {0};
        for (int lane = 0; lane < 16; ++lane) {
            ptrdiff_t p = v * 16 + lane, i = p / W % H, j = p % W;
            if (p >= P)
                break;
            m[9] |= (uint16_t)(1u << lane);
            for (int t = 0; t < 9; ++t) {
                ptrdiff_t ih = i + t / 3 - 1, jw = j + t % 3 - 1;
                if (ih >= 0 && ih < H && jw >= 0 && jw < W)
                    m[t] |= (uint16_t)(1u << lane);
            }
        }
        for (int t = 0; t < NN_DIRECT_MASKS; ++t)
            masks[v * NN_DIRECT_MASKS + t] = m[t];
    }
}

/* the first n of a vector's 16 lanes (none for n <= 0, all for n >= 16) */
static inline __mmask16 nn_direct3_lanes(ptrdiff_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* one tile: 8 output channels (the first `rows` stored) by NV pixel vectors from x, the
 * input at the tile's first pixel; out at the tile's first output. The 24 accumulators are
 * named variables, a<o><v>: GCC keeps an array of them in registers but also stores it to
 * the stack after every multiply-add */
#define NN_D_ACC(o)                                                                         \
    __m512 a##o##0 = _mm512_setzero_ps(), a##o##1 = a##o##0, a##o##2 = a##o##0;
/* acc + w * x written as the GEMM's micro-kernels write it (src/nn_gemm_ukernel.h), not as
 * an FMA intrinsic: the compiler fuses both into one multiply-add or neither (an -O0 build
 * fuses none), so the forward keeps im2col + GEMM's bits in every build (w8: the 8 output
 * channels' weights of this input channel and tap; the stride-2 input gradient's tiles
 * below use it too) */
#define NN_D_FMA(o, w8)                                                                     \
    do {                                                                                    \
        __m512 wv = _mm512_set1_ps((w8)[o]);                                                \
        a##o##0 += wv * x0;                                                                 \
        if (nv > 1) a##o##1 += wv * x1;                                                     \
        if (nv > 2) a##o##2 += wv * x2;                                                     \
    } while (0)
#define NN_D_STORE(o)                                                                       \
    do {                                                                                    \
        if (o < rows) {                                                                     \
            _mm512_mask_storeu_ps(out + o * P, (__mmask16)masks[9], a##o##0);               \
            if (nv > 1)                                                                     \
                _mm512_mask_storeu_ps(out + o * P + 16,                                     \
                                      (__mmask16)masks[NN_DIRECT_MASKS + 9], a##o##1);      \
            if (nv > 2)                                                                     \
                _mm512_mask_storeu_ps(out + o * P + 32,                                     \
                                      (__mmask16)masks[2 * NN_DIRECT_MASKS + 9], a##o##2);  \
        }                                                                                   \
    } while (0)
#define NN_DIRECT3_TILE(NV)                                                                  \
    __attribute__((target("avx512f"))) static void nn_direct3_tile##NV(                     \
            const float *x, ptrdiff_t XS, ptrdiff_t R, ptrdiff_t P, const ptrdiff_t *off,     \
            const uint16_t *masks, const float *wq, ptrdiff_t rows, float *out) {            \
        enum { nv = NV };                                                                   \
        const __m512 zero = _mm512_setzero_ps();                                            \
        NN_D_ACC(0) NN_D_ACC(1) NN_D_ACC(2) NN_D_ACC(3)                                     \
        NN_D_ACC(4) NN_D_ACC(5) NN_D_ACC(6) NN_D_ACC(7)                                     \
        for (ptrdiff_t r = 0; r < R; ++r) {                                                 \
            const float *xr = x + r * XS, *wr = wq + r * 72;                                \
            for (int t = 0; t < 9; ++t) {                                                   \
                const float *xt = xr + off[t];                                              \
                __m512 x0 = _mm512_maskz_loadu_ps((__mmask16)masks[t], xt);                 \
                __m512 x1 = NV > 1 ? _mm512_maskz_loadu_ps(                                 \
                    (__mmask16)masks[NN_DIRECT_MASKS + t], xt + 16) : zero;                 \
                __m512 x2 = NV > 2 ? _mm512_maskz_loadu_ps(                                 \
                    (__mmask16)masks[2 * NN_DIRECT_MASKS + t], xt + 32) : zero;             \
                const float *w8 = wr + t * 8;                                               \
                NN_D_FMA(0, w8); NN_D_FMA(1, w8); NN_D_FMA(2, w8); NN_D_FMA(3, w8);         \
                NN_D_FMA(4, w8); NN_D_FMA(5, w8); NN_D_FMA(6, w8); NN_D_FMA(7, w8);         \
            }                                                                               \
        }                                                                                   \
        NN_D_STORE(0); NN_D_STORE(1); NN_D_STORE(2); NN_D_STORE(3);                         \
        NN_D_STORE(4); NN_D_STORE(5); NN_D_STORE(6); NN_D_STORE(7);                         \
    }

NN_DIRECT3_TILE(1)
NN_DIRECT3_TILE(2)
NN_DIRECT3_TILE(3)

/* out (Q, P) = for each output channel q and pixel p < P, the sum over input channels r,
 * then taps t, of w[q, r, t] * x[r * XS + p + off[t]] -- the lanes whose bit in tap t's
 * mask is clear read as 0 -- with the packed weights wp and masks per pixel vector (10
 * words each: the 9 taps', then the pixels kept). The tile loop of one sample, or stack.
 *
 * With `ahead` set (x read where it lies, a sample's planes fresh from memory or L3 rather
 * than a stack just copied into scratch), each block of 48 pixels first asks for the
 * lines of every channel's block after next (prefetch: no arithmetic changes). With few
 * output channels each line of x serves few tiles, and the tiles waited for it: 16 -> 16
 * channels on 28x28, batch 128, 2 threads: 261 -> 372 GFLOP/s forward, 201 -> 247 for the
 * backward (its input gradient is this loop too); on stacks it gained nothing. */
__attribute__((target("avx512f"))) static void nn_direct3_run_avx512(
        const float *x, ptrdiff_t XS, ptrdiff_t R, ptrdiff_t P, const ptrdiff_t *off,
        const uint16_t *masks, const float *wp, ptrdiff_t Q, float *out, int ahead) {
    const ptrdiff_t blocks = (Q + 7) / 8;
    for (ptrdiff_t p0 = 0; p0 < P; p0 += 48) {
        ptrdiff_t nv = (P - p0 + 15) / 16;
        const uint16_t *m = masks + (p0 / 16) * NN_DIRECT_MASKS;
        if (ahead && p0 + 96 < P)
            for (ptrdiff_t r = 0; r < R; ++r) {
                const char *next = (const char *)(x + r * XS + p0 + 96 + off[8]);
                _mm_prefetch(next, _MM_HINT_T0);
                _mm_prefetch(next + 64, _MM_HINT_T0);
                _mm_prefetch(next + 128, _MM_HINT_T0);
            }
        for (ptrdiff_t qb = 0; qb < blocks; ++qb) {
            const float *wq = wp + qb * R * 72;
            ptrdiff_t rows = Q - qb * 8 < 8 ? Q - qb * 8 : 8;
            float *o = out + qb * 8 * P + p0;
            if (nv >= 3)
                nn_direct3_tile3(x + p0, XS, R, P, off, m, wq, rows, o);
            else if (nv == 2)
                nn_direct3_tile2(x + p0, XS, R, P, off, m, wq, rows, o);
            else
                nn_direct3_tile1(x + p0, XS, R, P, off, m, wq, rows, o);
        }
    }
}

/* Stride 2 (padding 1, 3x3) from phase planes. Output (i, j)'s tap (kh, kw) reads input
 * (2i + kh - 1, 2j + kw - 1): for kh = 1 an even row, row i of the even rows; for kh = 0
 * and 2 an odd one, row i - 1 or i of the odd rows -- columns alike. So split each input
 * plane (H, W) into its four phase planes, ph[a * 2 + b][i, j] = x[2i + a, 2j + b] (0 past
 * the edge), each of the output's size OH x OW = (H + 1) / 2 x (W + 1) / 2: then every tap
 * is a shift by -1 or 0 within one of them, masked like stride 1's shifts. The products and
 * their order are im2col + GEMM's, as for stride 1.
 *
 * ph (R, 4, m, OH * OW) = the phase planes of m samples, sample j's x at x + j * SS
 * (R, H, W): each channel's four phases, each phase the m samples' planes stacked */
__attribute__((target("avx512f"))) static void nn_direct3_phases_avx512(
        const float *x, ptrdiff_t SS, ptrdiff_t m, ptrdiff_t R, ptrdiff_t H, ptrdiff_t W,
        float *ph) {
    const ptrdiff_t OH = (H + 1) / 2, OW = (W + 1) / 2, P2 = OH * OW;
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4,
                                          2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (ptrdiff_t r = 0; r < R; ++r)
        for (ptrdiff_t j = 0; j < m; ++j) {
            const float *plane = x + j * SS + r * H * W;
            for (int a = 0; a < 2; ++a) {
                float *e = ph + ((r * 4 + a * 2) * m + j) * P2, *o = e + m * P2;
                for (ptrdiff_t i = 0; i < OH; ++i) {
                    ptrdiff_t row = 2 * i + a;
                    for (ptrdiff_t c0 = 0; c0 < OW; c0 += 16) {
                        ptrdiff_t left = OW - c0, in = W - 2 * c0;
                        __mmask16 keep = nn_direct3_lanes(left);
                        __m512 lo = _mm512_setzero_ps(), hi = lo;
                        if (row < H) {
                            const float *src = plane + row * W + 2 * c0;
                            lo = _mm512_maskz_loadu_ps(nn_direct3_lanes(in), src);
                            hi = _mm512_maskz_loadu_ps(nn_direct3_lanes(in - 16), src + 16);
                        }
                        __m512 ev = _mm512_permutex2var_ps(lo, even, hi);
                        __m512 od = _mm512_permutex2var_ps(lo, odd, hi);
                        if (keep != 0xFFFF && i * OW + c0 + 16 > P2) {
                            _mm512_mask_storeu_ps(e + i * OW + c0, keep, ev);
                            _mm512_mask_storeu_ps(o + i * OW + c0, keep, od);
                        } else {
                            /* whole vectors (a masked store costs several on some CPUs):
                             * the lanes past the row land on later rows of the same plane,
                             * written after this one */
                            _mm512_storeu_ps(e + i * OW + c0, ev);
                            _mm512_storeu_ps(o + i * OW + c0, od);
                        }
                    }
                }
            }
        }
}

/* The weight gradient, straight from the planes too: for samples [0, n) of x (n, R, H, W)
 * and g = grad_out (n, O, H, W),
 *
 *     gw[o, r, t] = sum over samples s, pixels p of g[s, o, p] * xpad[s, r, p + tap t]
 *
 * written over gw (O, R, 9) -- or added to it with accumulate set -- a part's partial, the
 * caller adds the parts. x's channels are XS floats apart (a sample's R * XS), its taps at
 * off[t] with masks per pixel vector as the forward's (nn_direct3_run_avx512: stride 2
 * reads phase planes), P pixels. A tile is 8 output channels by the 3 taps of one row of
 * the kernel (kh), for one input channel: 24 accumulators of 16 lanes; each pixel vector
 * is 3 masked loads of x (one per tap) and 8 of g, each g vector multiplied into the 3
 * taps' accumulators. They sum over the pixel vectors of a chunk of samples (as many as
 * keep the chunk's planes within ~512 KB), then each is reduced across its lanes
 * (_mm512_reduce_add_ps) and added to gw, chunk after chunk.
 *
 * Within a chunk, for each block of 8 output channels, the samples go outermost: for one
 * sample, the tiles of every input channel and kernel row in turn, each tile's 24
 * accumulators kept in acc (R * 3 tiles of 24 vectors, the caller's scratch, 64-byte
 * aligned) from one sample to the next (none for a chunk of one sample: zeroed in registers
 * at the first, reduced at the last) -- so the 8 planes of g a sample's tiles share (25 KB
 * for 28x28) stay in the core's L1 cache while its 3R tiles read them, instead of coming
 * again from L2 for every tile. Batch 128, 2 threads, in-process A/B: 16 channels on 28x28
 * 240 -> 306 GFLOP/s, 32 on 14x14 314 -> 378, 16 -> 32 with stride 2 262 -> 298; 64 on 7x7
 * (a chunk of one stack) 378 either way. Each lane still sums sample after sample, pixel
 * vector after pixel vector, as it did when the samples were the innermost loop: each gw
 * entry's order is fixed by n, the shapes and the pixel vectors -- not by the tile -- the
 * same bits for the same part. Planes that are stacks of several samples'
 * (nn_direct3_masks with planes > 1) are summed the same way: a tap that would cross into
 * the next plane is masked. */
#define NN_D_GW_LOAD(i)                                                                     \
    __m512 a##i##0 = _mm512_setzero_ps(), a##i##1 = a##i##0, a##i##2 = a##i##0;              \
    if (s > s0) {                                                                           \
        a##i##0 = _mm512_load_ps(t + (i) * 48);                                             \
        a##i##1 = _mm512_load_ps(t + (i) * 48 + 16);                                        \
        a##i##2 = _mm512_load_ps(t + (i) * 48 + 32);                                        \
    }
#define NN_D_GW_OUT1(i, k)                                                                  \
    do {                                                                                    \
        float sum = _mm512_reduce_add_ps(a##i##k);                                          \
        float *d = gw + ((o + (i)) * R + r) * 9 + kh * 3 + (k);                             \
        *d = s0 == 0 && !accumulate ? sum : *d + sum;                                       \
    } while (0)
#define NN_D_GW_STORE(i)                                                                    \
    do {                                                                                    \
        if (s + 1 < s1) {                                                                   \
            _mm512_store_ps(t + (i) * 48, a##i##0);                                         \
            _mm512_store_ps(t + (i) * 48 + 16, a##i##1);                                    \
            _mm512_store_ps(t + (i) * 48 + 32, a##i##2);                                    \
        } else if ((i) < rows) {                                                            \
            NN_D_GW_OUT1(i, 0); NN_D_GW_OUT1(i, 1); NN_D_GW_OUT1(i, 2);                     \
        }                                                                                   \
    } while (0)
#define NN_D_GW_FMA(i)                                                                      \
    do {                                                                                    \
        __m512 gv = _mm512_maskz_loadu_ps(keep, gp + goff[i] + 16 * v);                     \
        a##i##0 = _mm512_fmadd_ps(gv, x0, a##i##0);                                         \
        a##i##1 = _mm512_fmadd_ps(gv, x1, a##i##1);                                         \
        a##i##2 = _mm512_fmadd_ps(gv, x2, a##i##2);                                         \
    } while (0)

__attribute__((target("avx512f"))) static void nn_direct3_gw_run_avx512(
        const float *g, const float *x, ptrdiff_t XS, ptrdiff_t n, ptrdiff_t O, ptrdiff_t R,
        ptrdiff_t P, const ptrdiff_t *off, const uint16_t *masks, int accumulate, float *gw,
        float *acc, int ahead) {
    const ptrdiff_t vectors = (P + 15) / 16;
    ptrdiff_t chunk = NN_DIRECT_GW_CHUNK / ((R + O) * P);
    if (chunk < 1)
        chunk = 1;
    for (ptrdiff_t s0 = 0; s0 < n; s0 += chunk) {
        ptrdiff_t s1 = s0 + chunk < n ? s0 + chunk : n;
        for (ptrdiff_t o = 0; o < O; o += 8) {
            /* past the last channel a tile reads channel o's plane again and stores nothing */
            int rows = O - o < 8 ? (int)(O - o) : 8;
            ptrdiff_t goff[8];
            for (int i = 0; i < 8; ++i)
                goff[i] = (i < rows ? i : 0) * P;
            for (ptrdiff_t s = s0; s < s1; ++s) {
                const float *gp = g + (s * O + o) * P;
                /* what the tiles read next: the next sample's x and g, the next tile row's
                 * g, or the next chunk's first sample */
                const char *nx = NULL, *ng = NULL;
                ptrdiff_t xlines = 0, glines = 0;
                if (ahead) {
                    ptrdiff_t ns = s + 1 < s1 ? s + 1 : o + 8 < O ? s0 : s1, no = o;
                    if (s + 1 >= s1)
                        no = o + 8 < O ? o + 8 : 0;
                    if (ns < n) {
                        if (ns != s)
                            nx = (const char *)(x + ns * R * XS), xlines = R * XS / 16;
                        ng = (const char *)(g + (ns * O + no) * P);
                        glines = (O - no < 8 ? O - no : 8) * P / 16;
                    }
                }
                for (ptrdiff_t r = 0; r < R; ++r) {
                    const float *xp = x + (s * R + r) * XS;
                    for (ptrdiff_t l = r * xlines / R; l < (r + 1) * xlines / R; ++l)
                        _mm_prefetch(nx + l * 64, _MM_HINT_T1);
                    for (ptrdiff_t l = r * glines / R; l < (r + 1) * glines / R; ++l)
                        _mm_prefetch(ng + l * 64, _MM_HINT_T1);
                    for (int kh = 0; kh < 3; ++kh) {
                        const ptrdiff_t f0 = off[kh * 3], f1 = off[kh * 3 + 1],
                                        f2 = off[kh * 3 + 2];
                        float *t = acc + (r * 3 + kh) * 384;
                        NN_D_GW_LOAD(0) NN_D_GW_LOAD(1) NN_D_GW_LOAD(2) NN_D_GW_LOAD(3)
                        NN_D_GW_LOAD(4) NN_D_GW_LOAD(5) NN_D_GW_LOAD(6) NN_D_GW_LOAD(7)
                        for (ptrdiff_t v = 0; v < vectors; ++v) {
                            const uint16_t *m = masks + v * NN_DIRECT_MASKS + kh * 3;
                            const __mmask16 keep = (__mmask16)masks[v * NN_DIRECT_MASKS + 9];
                            const float *xv = xp + 16 * v;
                            __m512 x0 = _mm512_maskz_loadu_ps((__mmask16)m[0], xv + f0);
                            __m512 x1 = _mm512_maskz_loadu_ps((__mmask16)m[1], xv + f1);
                            __m512 x2 = _mm512_maskz_loadu_ps((__mmask16)m[2], xv + f2);
                            NN_D_GW_FMA(0); NN_D_GW_FMA(1); NN_D_GW_FMA(2); NN_D_GW_FMA(3);
                            NN_D_GW_FMA(4); NN_D_GW_FMA(5); NN_D_GW_FMA(6); NN_D_GW_FMA(7);
                        }
                        NN_D_GW_STORE(0); NN_D_GW_STORE(1); NN_D_GW_STORE(2); NN_D_GW_STORE(3);
                        NN_D_GW_STORE(4); NN_D_GW_STORE(5); NN_D_GW_STORE(6); NN_D_GW_STORE(7);
                    }
                }
            }
        }
    }
}

/* The input gradient of a 3x3 convolution with stride 2 and padding 1, summed as im2col +
 * GEMM + col2im sum it (cnn_core/_conv.pyx), so with the same bits: for each input channel
 * c, tap t and output pixel p, d[c, t, p] = sum over o of w[o, c, t] * g[o, p], one
 * multiply-add at a time from 0 (the GEMM's one block of k = O: O <= NN_DIRECT_GX_MAX_K);
 * then each input pixel, from 0, plus the d of every tap that reaches it, in the order of
 * the taps. Which taps reach input pixel (y, x) = (2Y + a, 2X + b) depends on its phase
 * (a, b) only: rows from kh = 1 (i = Y) when y is even, else from kh = 0 (i = Y + 1) then
 * kh = 2 (i = Y); columns alike. So each phase plane (OH x OW, as nn_direct3_phases_avx512's)
 * is 1, 2 or 4 taps, each a shift by 0 or +1 row and column within g's planes -- masked like
 * stride 1's shifts, and a lane whose tap falls off g's plane adds nothing (a masked add,
 * so that even a non-finite weight leaves it alone, as col2im does).
 *
 * ph (C, 4, OH * OW) = the phase planes of one sample's input gradient from g (O, OH * OW),
 * masks of nn_direct3_masks(OH, OW, 1) and wpt = nn_direct3_pack(w, O, C, 1) (taps
 * reversed there); nn_direct3_unphase_avx512 puts them in place. A tile is 8 input
 * channels by 3 pixel vectors, one tap at a time: 24 accumulators over the O channels of g,
 * then added into the tile's outputs (read back for the phase's later taps). */
#define NN_D_GX_ADD1(i, v, k)                                                               \
    do {                                                                                    \
        float *d_ = out + (i) * 4 * P + 16 * (v);                                           \
        __m512 r_ = first ? zero : _mm512_maskz_loadu_ps(keep##v, d_);                      \
        _mm512_mask_storeu_ps(d_, keep##v, _mm512_mask_add_ps(r_, tap##v, r_, k));          \
    } while (0)
#define NN_D_GX_ADD(i)                                                                      \
    do {                                                                                    \
        if ((i) < rows) {                                                                   \
            NN_D_GX_ADD1(i, 0, a##i##0);                                                    \
            if (nv > 1) NN_D_GX_ADD1(i, 1, a##i##1);                                        \
            if (nv > 2) NN_D_GX_ADD1(i, 2, a##i##2);                                        \
        }                                                                                   \
    } while (0)
/* (acc + w * g by the forward's NN_D_FMA: the GEMM's contraction) */
#define NN_DIRECT3_GX_TILE(NV)                                                               \
    __attribute__((target("avx512f"))) static void nn_direct3_gx_tile##NV(                  \
            const float *g, ptrdiff_t O, ptrdiff_t P, const uint16_t *masks, int t,          \
            const float *wt, ptrdiff_t rows, float *out, int first) {                       \
        enum { nv = NV };                                                                   \
        const __m512 zero = _mm512_setzero_ps();                                            \
        const __mmask16 tap0 = (__mmask16)masks[t], keep0 = (__mmask16)masks[9];             \
        const __mmask16 tap1 = NV > 1 ? (__mmask16)masks[NN_DIRECT_MASKS + t] : 0;          \
        const __mmask16 keep1 = NV > 1 ? (__mmask16)masks[NN_DIRECT_MASKS + 9] : 0;         \
        const __mmask16 tap2 = NV > 2 ? (__mmask16)masks[2 * NN_DIRECT_MASKS + t] : 0;      \
        const __mmask16 keep2 = NV > 2 ? (__mmask16)masks[2 * NN_DIRECT_MASKS + 9] : 0;     \
        (void)keep1; (void)keep2; (void)tap1; (void)tap2;                                   \
        NN_D_ACC(0) NN_D_ACC(1) NN_D_ACC(2) NN_D_ACC(3)                                     \
        NN_D_ACC(4) NN_D_ACC(5) NN_D_ACC(6) NN_D_ACC(7)                                     \
        for (ptrdiff_t o = 0; o < O; ++o) {                                                 \
            const float *gs = g + o * P, *wo = wt + o * 72;                                 \
            __m512 x0 = _mm512_maskz_loadu_ps(tap0, gs);                                    \
            __m512 x1 = NV > 1 ? _mm512_maskz_loadu_ps(tap1, gs + 16) : zero;               \
            __m512 x2 = NV > 2 ? _mm512_maskz_loadu_ps(tap2, gs + 32) : zero;               \
            NN_D_FMA(0, wo); NN_D_FMA(1, wo); NN_D_FMA(2, wo); NN_D_FMA(3, wo);             \
            NN_D_FMA(4, wo); NN_D_FMA(5, wo); NN_D_FMA(6, wo); NN_D_FMA(7, wo);             \
        }                                                                                   \
        NN_D_GX_ADD(0); NN_D_GX_ADD(1); NN_D_GX_ADD(2); NN_D_GX_ADD(3);                     \
        NN_D_GX_ADD(4); NN_D_GX_ADD(5); NN_D_GX_ADD(6); NN_D_GX_ADD(7);                     \
    }

NN_DIRECT3_GX_TILE(1)
NN_DIRECT3_GX_TILE(2)
NN_DIRECT3_GX_TILE(3)

__attribute__((target("avx512f"))) static void nn_direct3_s2_gx_avx512(
        const float *g, ptrdiff_t O, ptrdiff_t OH, ptrdiff_t OW, const uint16_t *masks,
        const float *wpt, ptrdiff_t C, float *ph) {
    const ptrdiff_t P = OH * OW;
    for (ptrdiff_t cb = 0; cb < (C + 7) / 8; ++cb) {
        ptrdiff_t rows = C - cb * 8 < 8 ? C - cb * 8 : 8;
        for (int phase = 0; phase < 4; ++phase) {
            int a = phase >> 1, b = phase & 1, first = 1;
            float *out = ph + (cb * 8 * 4 + phase) * P;
            for (int kh = 0; kh < 3; ++kh) {
                if ((kh == 1) != (a == 0))
                    continue;
                for (int kw = 0; kw < 3; ++kw) {
                    if ((kw == 1) != (b == 0))
                        continue;
                    /* the shift (kh == 0: the next row of g; kw == 0: the next column) and
                     * the stride-1 tap whose mask it is */
                    ptrdiff_t di = kh == 0, dj = kw == 0, shift = di * OW + dj;
                    int t = (int)((di + 1) * 3 + dj + 1);
                    const float *wt = wpt + (cb * O * 9 + (8 - (kh * 3 + kw))) * 8;
                    for (ptrdiff_t p0 = 0; p0 < P; p0 += 48) {
                        ptrdiff_t nv = (P - p0 + 15) / 16;
                        const uint16_t *m = masks + (p0 / 16) * NN_DIRECT_MASKS;
                        if (nv >= 3)
                            nn_direct3_gx_tile3(g + p0 + shift, O, P, m, t, wt, rows, out + p0,
                                                first);
                        else if (nv == 2)
                            nn_direct3_gx_tile2(g + p0 + shift, O, P, m, t, wt, rows, out + p0,
                                                first);
                        else
                            nn_direct3_gx_tile1(g + p0 + shift, O, P, m, t, wt, rows, out + p0,
                                                first);
                    }
                    first = 0;
                }
            }
        }
    }
}

/* gx (C, H, W) from its phase planes ph (C, 4, OH * OW): row y from phase (y % 2, 0) and
 * (y % 2, 1), interleaved -- the inverse of nn_direct3_phases_avx512 -- and, with x, kept
 * where x > 0, else 0 (relu_backward's select) */
__attribute__((target("avx512f"))) static void nn_direct3_unphase_avx512(
        const float *ph, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, const float *x, float *gx) {
    const ptrdiff_t OH = (H + 1) / 2, OW = (W + 1) / 2, P = OH * OW;
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const __m512 zero = _mm512_setzero_ps();
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t y = 0; y < H; ++y) {
            const float *e = ph + (c * 4 + (y & 1) * 2) * P + (y >> 1) * OW, *o = e + P;
            float *dst = gx + (c * H + y) * W;
            const float *xr = x != NULL ? x + (c * H + y) * W : NULL;
            for (ptrdiff_t x0 = 0; x0 < W; x0 += 32) {
                ptrdiff_t left = OW - x0 / 2, n = W - x0;
                __mmask16 in = nn_direct3_lanes(left), m0 = nn_direct3_lanes(n),
                          m1 = nn_direct3_lanes(n - 16);
                __m512 ev = _mm512_maskz_loadu_ps(in, e + x0 / 2);
                __m512 ov = _mm512_maskz_loadu_ps(in, o + x0 / 2);
                __m512 v0 = _mm512_permutex2var_ps(ev, lo, ov);
                __m512 v1 = _mm512_permutex2var_ps(ev, hi, ov);
                if (xr != NULL) {
                    __mmask16 k0 = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m0, xr + x0), zero,
                                                      _CMP_GT_OQ);
                    __mmask16 k1 = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m1, xr + x0 + 16),
                                                      zero, _CMP_GT_OQ);
                    v0 = _mm512_maskz_mov_ps(k0, v0);
                    v1 = _mm512_maskz_mov_ps(k1, v1);
                }
                _mm512_mask_storeu_ps(dst + x0, m0, v0);
                _mm512_mask_storeu_ps(dst + x0 + 16, m1, v1);
            }
        }
}

#else
/* Off x86 the AVX-512 path never runs (nn_cpu_has_avx512f() is 0 there): these stubs only
 * keep the call sites in cnn_core/_conv.pyx linking, as nn_im2col.h's do. */
static void nn_direct3_masks(ptrdiff_t H, ptrdiff_t W, ptrdiff_t planes, uint16_t *masks) {
    (void)H; (void)W; (void)planes; (void)masks;
}
static void nn_direct3_run_avx512(const float *x, ptrdiff_t XS, ptrdiff_t R, ptrdiff_t P,
                                  const ptrdiff_t *off, const uint16_t *masks, const float *wp,
                                  ptrdiff_t Q, float *out, int ahead) {
    (void)x; (void)XS; (void)R; (void)P; (void)off; (void)masks; (void)wp; (void)Q; (void)out;
    (void)ahead;
}
static void nn_direct3_phases_avx512(const float *x, ptrdiff_t SS, ptrdiff_t m, ptrdiff_t R,
                                     ptrdiff_t H, ptrdiff_t W, float *ph) {
    (void)x; (void)SS; (void)m; (void)R; (void)H; (void)W; (void)ph;
}
static void nn_direct3_gw_run_avx512(const float *g, const float *x, ptrdiff_t XS, ptrdiff_t n,
                                     ptrdiff_t O, ptrdiff_t R, ptrdiff_t P, const ptrdiff_t *off,
                                     const uint16_t *masks, int accumulate, float *gw,
                                     float *acc, int ahead) {
    (void)g; (void)x; (void)XS; (void)n; (void)O; (void)R; (void)P; (void)off; (void)masks;
    (void)accumulate; (void)gw; (void)acc; (void)ahead;
}
static void nn_direct3_s2_gx_avx512(const float *g, ptrdiff_t O, ptrdiff_t OH, ptrdiff_t OW,
                                    const uint16_t *masks, const float *wpt, ptrdiff_t C,
                                    float *ph) {
    (void)g; (void)O; (void)OH; (void)OW; (void)masks; (void)wpt; (void)C; (void)ph;
}
static void nn_direct3_unphase_avx512(const float *ph, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                                      const float *x, float *gx) {
    (void)ph; (void)C; (void)H; (void)W; (void)x; (void)gx;
}
#endif

#endif /* NN_DIRECT_H */
