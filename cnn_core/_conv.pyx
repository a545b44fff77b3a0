"""2-D convolution, max pooling and average pooling, NCHW, forward and backward.

Convolution by im2col + GEMM, samples spread over threads. Small feature maps would give
GEMMs too thin to run at speed, so G samples go through one GEMM together (G*OH*OW ~ 512
columns: their cols side by side, then each sample's block copied to its place in out):

    col (C*KH*KW, OH*OW)    col[(c, kh, kw), (i, j)] = xpad[c, i*sh + kh, j*sw + kw]
    out[n] (O, OH*OW)       = w (O, C*KH*KW) @ col + b[:, None]

and backward, from the same col (recomputed: cheaper than keeping N of them):

    grad_w (O, C*KH*KW)     += sum_n grad_out[n] (O, OH*OW) @ col[n].T
    grad_b (O,)             += sum_{n, i, j} grad_out[n, :, i, j]
    dcol (C*KH*KW, OH*OW)    = w.T @ grad_out[n];   grad_x[n] = col2im(dcol)  (adds overlaps)

Each product takes the orientation whose register tiles waste less: with more than 32
output channels the forward computes (pixels x channels) = col.T @ w.T and transposes each
sample's block into place (at most 32 rows read col in place, unpacked: w @ col stays), and
the weight gradient is summed as its transpose, col @ g.T, where that fits the tiles better
(32 -> 64 channels, 3x3 on 14x14, a group of three samples: forward 120 -> 102 us, weight
gradient 115 -> 90 us). With unit column stride, float32 col2im (and im2col, with
padding) run by AVX-512 masks (src/nn_im2col.h): same bits as the scalar loops.

The 3x3 convolutions with stride 1 and padding 1 in float32 skip col where the CPU has
AVX-512 (src/nn_direct.h): the forward and the input gradient read the planes in place,
16 pixels to a vector, each tap one masked load (the same sums in the same order as im2col
+ GEMM for the forward), and so does the weight gradient; small planes are stacked so that
their pixels fill the vectors.

The GEMMs are the project's own (cnn_core._gemm, single-thread inside each sample's
thread). Each thread sums its samples' grad_w into its own partial buffer; the partials
are added in thread order, so the result is reproducible for a given thread count. The
column buffers are per-thread scratch reused across calls: no allocation in steady state.

Max pooling keeps, for every output, the flat index (ih * W + iw) of its maximum within
its (H, W) plane, as torch's return_indices; backward routes the gradient there.

Average pooling sums each window from 0, row by row, and divides by KH*KW (the order of
PyTorch's loop); backward adds grad_out / (KH*KW) over each window, windows in row-major
order. Pooling splits planes among threads, each plane wholly on one: the bits do not
depend on the thread count.

No buffer written here may share memory with what is read or with another buffer written
(ValueError naming the two): windows overlap and samples run on several threads, so no
output can be computed in place over its input.
"""
import numpy as np

from cython cimport floating
from libc.string cimport memcpy, memset
from libc.stdint cimport int64_t, uint16_t, INT32_MAX

from cnn_core._checks cimport (as_float_array, check_same_dtype, check_same_shape, check_buffer,
                              output, plain, refuse_overlap, refuse_overlaps)
from cnn_core._gemm cimport sgemm_serial, dgemm_serial, B_IN_PLACE_MAX_M
from cnn_core._parallel cimport num_threads, span_parts, run_parts, MAX_PARTS
from cnn_core._lanes cimport lane_sum, LANE_SUM

cdef extern from *:
    """
    /* dst[i] += src[i]: the two never overlap (restrict lets the compiler use vectors) */
    static void nn_sadd(float *restrict dst, const float *restrict src, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; ++i) dst[i] += src[i];
    }
    static void nn_dadd(double *restrict dst, const double *restrict src, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; ++i) dst[i] += src[i];
    }
    """
    void nn_sadd(float *dst, const float *src, Py_ssize_t n) nogil
    void nn_dadd(double *dst, const double *src, Py_ssize_t n) nogil


cdef inline void _add_run(floating *dst, const floating *src, Py_ssize_t n) noexcept nogil:
    if floating is float:
        nn_sadd(dst, src, n)
    else:
        nn_dadd(dst, src, n)


cdef extern from "nn_scratch.h" nogil:
    void *nn_scratch(int slot, size_t nbytes)

cdef extern from "nn_pool.h" nogil:
    void nn_maxpool2x2_row_avx512(const float *r0, const float *r1, Py_ssize_t OW, Py_ssize_t base,
                                  Py_ssize_t W, float *out, int64_t *idx)

cdef extern from "nn_cpu.h" nogil:
    int nn_cpu_isa()
    cdef enum:
        NN_ISA_AVX512

# the 2x2 pooling rows by AVX-512 (src/nn_pool.h) where the CPU, and NN_ISA, allow
cdef bint _pool_avx512 = nn_cpu_isa() >= NN_ISA_AVX512

cdef extern from "nn_im2col.h" nogil:
    void nn_im2col_row_s1_avx512(const float *plane, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                                 Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t ph, Py_ssize_t pw,
                                 Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ow_lo, Py_ssize_t ow_hi,
                                 float *dst)
    void nn_col2im_plane_s1_avx512(const float *col, Py_ssize_t ldc, Py_ssize_t H, Py_ssize_t W,
                                   Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t ph,
                                   Py_ssize_t pw, Py_ssize_t OH, Py_ssize_t OW, float *plane)

# im2col / col2im rows by AVX-512 masks (float32, unit column stride): src/nn_im2col.h
cdef bint _rows_avx512 = _pool_avx512

cdef extern from "nn_direct.h" nogil:
    cdef enum:
        NN_DIRECT_MAX_PIXELS
        NN_DIRECT_MASKS
        NN_DIRECT_MASK_WORDS
        NN_DIRECT_GW_CHUNK
        NN_DIRECT_GX_MAX_K
    void nn_direct3_pack(const float *w, Py_ssize_t O, Py_ssize_t C, int transpose, float *wp)
    void nn_direct3_masks(Py_ssize_t H, Py_ssize_t W, Py_ssize_t planes, uint16_t *masks)
    void nn_direct3_run_avx512(const float *x, Py_ssize_t XS, Py_ssize_t R, Py_ssize_t P,
                               const Py_ssize_t *off, const uint16_t *masks, const float *wp,
                               Py_ssize_t Q, float *out, int ahead)
    void nn_direct3_phases_avx512(const float *x, Py_ssize_t SS, Py_ssize_t m, Py_ssize_t R,
                                  Py_ssize_t H, Py_ssize_t W, float *ph)
    void nn_direct3_s2_taps(Py_ssize_t OW, Py_ssize_t stride, Py_ssize_t vectors,
                            const uint16_t *masks1, uint16_t *masks2, Py_ssize_t *off)
    void nn_direct3_gw_run_avx512(const float *g, const float *x, Py_ssize_t XS, Py_ssize_t n,
                                  Py_ssize_t O, Py_ssize_t R, Py_ssize_t P, const Py_ssize_t *off,
                                  const uint16_t *masks, int accumulate, float *gw,
                                  float *acc, int ahead)
    void nn_direct3_s2_gx_avx512(const float *g, Py_ssize_t O, Py_ssize_t OH, Py_ssize_t OW,
                                 const uint16_t *masks, const float *wpt, Py_ssize_t C,
                                 float *ph)
    void nn_direct3_unphase_avx512(const float *ph, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                   const float *x, float *gx)

# 3x3 convolutions with stride 1 and padding 1, float32, straight from the planes by AVX-512
# (src/nn_direct.h): the forward and both gradients
cdef bint _direct_avx512 = _pool_avx512


# conv2d_backward calls whose stride-2 input gradient came straight from grad_out's planes
# (_is_direct_s2_gx), counted with the GIL held: tests check that the path ran
cdef Py_ssize_t _s2_gx_calls = 0


def _direct_s2_gx_calls():
    """Tests only: how many conv2d_backward calls so far took a stride-2 3x3 convolution's
    input gradient straight from grad_out's planes (src/nn_direct.h)."""
    return _s2_gx_calls


def _set_direct(enabled):
    """Tests and benchmarks only: run float32 3x3 convolutions with stride 1 and padding 1
    directly (None: where the CPU has AVX-512) or by im2col + GEMM (False). Returns whether
    the direct path is now in use."""
    global _direct_avx512
    _direct_avx512 = _pool_avx512 if enabled is None else bool(enabled and _pool_avx512)
    return _direct_avx512


def _set_vector_rows(enabled):
    """Tests only: run im2col / col2im by the AVX-512 rows (None: where the CPU has them)
    or by the scalar loops (False). Returns whether the vector rows are now in use."""
    global _rows_avx512
    _rows_avx512 = _pool_avx512 if enabled is None else bool(enabled and _pool_avx512)
    return _rows_avx512

cdef enum:
    POOL_PLANES_PER_THREAD = 16
    MAX_WINDOW = 1 << 24     # strides, paddings and pooling windows: far beyond any image
    # multiply-adds per thread below which a second thread costs more than it saves
    CONV_MIN_FMAS_PER_THREAD = 1 << 18
    # columns of a convolution's GEMM to aim for, by grouping samples of small feature maps
    GROUP_COLUMNS = 512


cdef inline Py_ssize_t _floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # floor(a / b) for b > 0 and any sign of a (C division truncates toward zero)
    return a // b if a >= 0 else -((-a + b - 1) // b)


cdef inline Py_ssize_t _clamp(Py_ssize_t v, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef inline int _gemm(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                      Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, floating beta) noexcept nogil:
    if floating is float:
        return sgemm_serial(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, 1, beta, NULL, 0)
    else:
        return dgemm_serial(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, 1, beta, NULL, 0)


cdef inline void _valid_columns(Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t pw, Py_ssize_t W,
                                Py_ssize_t OW, Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    # [lo, hi): the output columns ow whose input column iw = ow*sw - pw + kw is inside [0, W)
    lo[0] = _clamp(_floor_div(pw - kw + sw - 1, sw), 0, OW)
    hi[0] = _clamp(_floor_div(W - 1 + pw - kw, sw) + 1, lo[0], OW)


cdef void im2col(const floating *x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,
                 Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                 Py_ssize_t OH, Py_ssize_t OW, floating *col, Py_ssize_t ldc) noexcept nogil:
    # x (C, H, W) -> col (C*KH*KW, OH*OW), row r at col + r*ldc (ldc >= OH*OW: a column
    # block of a wider matrix); positions in the zero padding read as 0
    cdef Py_ssize_t c, kh, kw, oh, ow, ih, ow_lo, ow_hi
    cdef floating *dst
    cdef const floating *src
    if floating is float:
        # (with padding: without, the runs copied whole below were measured as fast)
        if _rows_avx512 and sw == 1 and (ph > 0 or pw > 0):
            for c in range(C):
                for kh in range(KH):
                    for kw in range(KW):
                        _valid_columns(kw, sw, pw, W, OW, &ow_lo, &ow_hi)
                        nn_im2col_row_s1_avx512(x + c * H * W, H, W, kh, kw, sh, ph, pw, OH,
                                                OW, ow_lo, ow_hi,
                                                col + ((c * KH + kh) * KW + kw) * ldc)
            return
    if ph == 0 and pw == 0 and sw == 1:
        # no padding, unit column stride (the common case): every row of col is OH runs of
        # OW contiguous inputs, copied without the bounds bookkeeping
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    dst = col + ((c * KH + kh) * KW + kw) * ldc
                    src = x + (c * H + kh) * W + kw
                    for oh in range(OH):
                        memcpy(dst + oh * OW, src + oh * sh * W, OW * sizeof(floating))
        return
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                dst = col + ((c * KH + kh) * KW + kw) * ldc
                _valid_columns(kw, sw, pw, W, OW, &ow_lo, &ow_hi)
                for oh in range(OH):
                    ih = oh * sh - ph + kh
                    if ih < 0 or ih >= H:
                        memset(dst + oh * OW, 0, OW * sizeof(floating))
                        continue
                    src = x + (c * H + ih) * W - pw + kw
                    for ow in range(ow_lo):
                        dst[oh * OW + ow] = 0
                    if sw == 1:     # the inside of the row: one contiguous run
                        memcpy(dst + oh * OW + ow_lo, src + ow_lo,
                               (ow_hi - ow_lo) * sizeof(floating))
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[oh * OW + ow] = src[ow * sw]
                    for ow in range(ow_hi, OW):
                        dst[oh * OW + ow] = 0


cdef void col2im(const floating *col, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,
                 Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                 Py_ssize_t OH, Py_ssize_t OW, floating *x, Py_ssize_t ldc) noexcept nogil:
    # adds col (C*KH*KW, OH*OW; row r at col + r*ldc) back into x (C, H, W), which the caller
    # zeroed: the adjoint of im2col
    cdef Py_ssize_t c, kh, kw, oh, ow, ih, ow_lo, ow_hi
    cdef const floating *src
    cdef floating *dst
    if floating is float:
        # (with or without padding: the scalar loop adds runs of OW values, one call each;
        # LeNet's 16 -> 32 backward, 8-wide rows, batch 128: 1.96 -> 1.76 ms)
        if _rows_avx512 and sw == 1:
            for c in range(C):
                nn_col2im_plane_s1_avx512(col + c * KH * KW * ldc, ldc, H, W, KH, KW, sh, ph,
                                          pw, OH, OW, x + c * H * W)
            return
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                src = col + ((c * KH + kh) * KW + kw) * ldc
                _valid_columns(kw, sw, pw, W, OW, &ow_lo, &ow_hi)
                for oh in range(OH):
                    ih = oh * sh - ph + kh
                    if ih < 0 or ih >= H:
                        continue
                    dst = x + (c * H + ih) * W - pw + kw
                    if sw == 1:
                        _add_run(dst + ow_lo, src + oh * OW + ow_lo, ow_hi - ow_lo)
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow * sw] += src[oh * OW + ow]


cdef struct ConvShape:
    Py_ssize_t N, C, H, W, O, KH, KW, sh, sw, ph, pw, OH, OW
    bint relu_x         # backward: grad_x masked where x <= 0 (conv2d_backward's relu_x)


cdef inline void _relu_mask(floating *gx, const floating *x, Py_ssize_t n) noexcept nogil:
    # gx[i] where x[i] > 0, else 0: relu_backward's select (cnn_core/_activations.pyx), on
    # values just written and still in cache
    cdef Py_ssize_t i
    for i in range(n):
        gx[i] = gx[i] if x[i] > 0 else 0


cdef inline bint _is_direct(ConvShape s) noexcept nogil:
    # a 3x3 convolution with stride 1 and padding 1 on a plane of at most
    # NN_DIRECT_MAX_PIXELS, where the CPU runs src/nn_direct.h (for float32 only: the caller
    # checks the dtype)
    return (_direct_avx512 and s.KH == 3 and s.KW == 3 and s.sh == 1 and s.sw == 1
            and s.ph == 1 and s.pw == 1 and s.H * s.W <= NN_DIRECT_MAX_PIXELS)


cdef inline bint _is_direct_s2(ConvShape s) noexcept nogil:
    # a 3x3 convolution with stride 2 and padding 1 whose output plane has at most
    # NN_DIRECT_MAX_PIXELS: its forward straight from the input's phase planes (float32)
    return (_direct_avx512 and s.KH == 3 and s.KW == 3 and s.sh == 2 and s.sw == 2
            and s.ph == 1 and s.pw == 1 and s.OH * s.OW <= NN_DIRECT_MAX_PIXELS)


cdef inline Py_ssize_t _direct_packed(Py_ssize_t q, Py_ssize_t r) noexcept nogil:
    # floats in nn_direct3_pack's weights for q output and r input channels
    return (q + 7) // 8 * 8 * r * 9


cdef inline bint _is_pointwise(ConvShape s) noexcept nogil:
    # a 1x1 convolution with stride 1 and no padding: col is x itself
    return s.KH == 1 and s.KW == 1 and s.sh == 1 and s.sw == 1 and s.ph == 0 and s.pw == 0


cdef inline Py_ssize_t _group(ConvShape s, Py_ssize_t samples) noexcept nogil:
    # samples per GEMM: enough that the product has ~GROUP_COLUMNS columns (small feature
    # maps would otherwise give GEMMs too thin to run at speed); 1 for a 1x1 convolution
    cdef Py_ssize_t P = s.OH * s.OW, g
    if _is_pointwise(s):
        return 1
    g = (GROUP_COLUMNS + P - 1) // P
    return g if g < samples else samples


cdef inline Py_ssize_t _padded(Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    # the work of an m x n product in whole register tiles (12 rows by 16-column halves of
    # the AVX-512 float tile): what the micro-kernels spend on it, edges included. (The same
    # rule for every dtype and ISA -- a guess for their other tiles -- so that the choice
    # depends on the shapes alone)
    return (m + 11) // 12 * 12 * ((n + 15) // 16 * 16)


cdef void _transpose_block(const floating *src, Py_ssize_t lds, floating *dst, Py_ssize_t rows,
                           Py_ssize_t cols) noexcept nogil:
    # dst (cols x rows, row-major) = src (rows x cols, leading dimension lds).T, by 16 x 16
    # blocks: each block's source lines stay in L1 while its destination lines are written
    cdef Py_ssize_t i0, j0, i, j, i1, j1
    for i0 in range(0, rows, 16):
        i1 = i0 + 16 if i0 + 16 < rows else rows
        for j0 in range(0, cols, 16):
            j1 = j0 + 16 if j0 + 16 < cols else cols
            for j in range(j0, j1):
                for i in range(i0, i1):
                    dst[j * rows + i] = src[i * lds + j]


cdef inline bint _transpose_fits(Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    # the transpose (cols x rows) of a rows x cols product wastes less of its tiles: 64
    # channels by 588 pixels, say, as 588 x 64 are 49 x 2 whole tiles, where 64 rows fill
    # five and a third of a sixth in every column. Decided from the shape alone
    return _padded(cols, rows) < _padded(rows, cols)


cdef inline bint _forward_by_rows(ConvShape s) noexcept nogil:
    # the forward's products as (pixels x channels) = col.T @ w.T, each sample's block then
    # transposed into place, when their tiles waste less (_transpose_fits) -- and not for
    # at most B_IN_PLACE_MAX_M channels, where w @ col reads col in place, unpacked (16 -> 32
    # channels, 5x5, 12x12 inputs: 78 us for a group's w @ col, 96 for col.T @ w.T; 32 -> 64
    # channels, 3x3, 14x14: 120 against 102). Decided for the whole batch, so that every
    # sample takes the same products whatever thread and group it falls in
    if _is_pointwise(s) or s.O <= B_IN_PLACE_MAX_M:
        return False
    return _transpose_fits(s.O, _group(s, s.N) * s.OH * s.OW)


cdef Py_ssize_t _direct_stack(Py_ssize_t P) noexcept nogil:
    # how many P-pixel planes the direct path stacks into one (src/nn_direct.h): the count up
    # to 16 (and NN_DIRECT_MAX_PIXELS) whose pixel vectors waste the fewest lanes, the
    # smallest of equals -- 16 of 7x7 (49 whole vectors), 4 of 14x14, one 28x28
    cdef Py_ssize_t g, best = 1
    cdef double used, best_used = <double> P / ((P + 15) // 16 * 16)
    for g in range(2, 17):
        if g * P > NN_DIRECT_MAX_PIXELS:
            break
        used = <double> (g * P) / ((g * P + 15) // 16 * 16)
        if used > best_used + 1e-9:
            best, best_used = g, used
    return best


cdef void _stack(const float *src, Py_ssize_t channels, Py_ssize_t P, Py_ssize_t k,
                 Py_ssize_t m, float *dst) noexcept nogil:
    # dst (k, channels, m * P) from the k * m samples (channels, P) at src: k stacks, each
    # channel's m planes one after the other
    cdef Py_ssize_t i, j, c
    for i in range(k):
        for j in range(m):
            for c in range(channels):
                memcpy(dst + ((i * channels + c) * m + j) * P,
                       src + ((i * m + j) * channels + c) * P, P * sizeof(float))


cdef void _unstack(const float *src, Py_ssize_t channels, Py_ssize_t P, Py_ssize_t m,
                   float *dst) noexcept nogil:
    # the m samples (channels, P) at dst from one stack (channels, m * P) at src
    cdef Py_ssize_t j, c
    for j in range(m):
        for c in range(channels):
            memcpy(dst + (j * channels + c) * P, src + (c * m + j) * P, P * sizeof(float))


cdef int _direct_samples(const float *src, Py_ssize_t R, const float *wp, Py_ssize_t Q,
                         Py_ssize_t H, Py_ssize_t W, Py_ssize_t stride, Py_ssize_t n0,
                         Py_ssize_t n1, float *dst, const float *mask=NULL) noexcept nogil:
    # dst[n] (Q, OH, OW) = the direct 3x3 convolution (padding 1, stride 1 or 2) of src[n]
    # (R, H, W) with the packed weights wp, for samples [n0, n1), _direct_stack's count of
    # them at a time: stride 1 reads small planes stacked (each channel's planes copied one
    # after the other, scratch 0) and others where they lie; stride 2 reads phase planes
    # (nn_direct3_phases_avx512, scratch 0). A stack's outputs are copied back from scratch
    # 2. Each output's sum is the same, stacked or not. With a mask (dst's shape), each
    # stack's outputs are then kept where the mask is > 0, else 0 (_relu_mask)
    cdef bint s2 = stride == 2
    cdef Py_ssize_t OH = (H + 1) // 2 if s2 else H, OW = (W + 1) // 2 if s2 else W
    cdef Py_ssize_t P = OH * OW, CHW = R * H * W, G = _direct_stack(P), n, g, planes = 0
    cdef Py_ssize_t k, t, XS
    cdef uint16_t masks1[NN_DIRECT_MASK_WORDS]
    cdef uint16_t masks2[NN_DIRECT_MASK_WORDS]
    cdef uint16_t *masks = masks1
    cdef Py_ssize_t off[9]
    cdef float *stacked_in = NULL
    cdef float *stacked_out = NULL
    cdef const float *xin
    if s2 or G > 1:
        stacked_in = <float *> nn_scratch(0, R * (4 if s2 else 1) * G * P * sizeof(float))
        if stacked_in == NULL:
            return -1
    if G > 1:
        stacked_out = <float *> nn_scratch(2, Q * G * P * sizeof(float))
        if stacked_out == NULL:
            return -1
    if s2:
        masks = masks2
    for t in range(9):
        off[t] = (t // 3 - 1) * OW + (t % 3 - 1)
    for k in range((n1 - n0 + G - 1) // G):
        n = n0 + k * G
        g = G if n + G <= n1 else n1 - n
        if g != planes:
            nn_direct3_masks(OH, OW, g, masks1)
            if s2:
                nn_direct3_s2_taps(OW, g * P, (g * P + 15) // 16, masks1, masks2, off)
            planes = g
        xin, XS = src + n * CHW, P
        if s2:
            nn_direct3_phases_avx512(xin, CHW, g, R, H, W, stacked_in)
            xin, XS = stacked_in, 4 * g * P
        elif g > 1:
            _stack(xin, R, P, 1, g, stacked_in)
            xin, XS = stacked_in, g * P
        if G == 1:
            nn_direct3_run_avx512(xin, XS, R, P, off, masks, wp, Q, dst + n * Q * P, not s2)
        else:
            nn_direct3_run_avx512(xin, XS, R, g * P, off, masks, wp, Q, stacked_out, 0)
            _unstack(stacked_out, Q, P, g, dst + n * Q * P)
        if mask != NULL:
            _relu_mask(dst + n * Q * P, mask + n * Q * P, g * Q * P)
    return 0


cdef int conv_forward_samples(const floating *x, const floating *w, const floating *b,
                              floating *out, ConvShape s, Py_ssize_t n0, Py_ssize_t n1,
                              const float *wp) noexcept nogil:
    # samples [n0, n1), G at a time: col (CKK, G*P) = [im2col(x[n]) for the G samples],
    # prod (O, G*P) = w @ col, out[n] = prod's block of sample n + b -- or, when its tiles
    # waste less (_forward_by_rows), prod (G*P, O) = col.T @ w.T, each block transposed.
    # With wp (float32 3x3 weights packed by nn_direct3_pack), each sample directly instead
    cdef Py_ssize_t ckk = s.C * s.KH * s.KW, P = s.OH * s.OW, CHW = s.C * s.H * s.W
    cdef Py_ssize_t G = _group(s, n1 - n0), group, n, g, j, o, p, width
    cdef bint transposed = _forward_by_rows(s)
    cdef floating *col = NULL
    cdef floating *prod = NULL
    cdef floating *dst
    if floating is float:
        if wp != NULL:
            if _direct_samples(x, s.C, wp, s.O, s.H, s.W, s.sh, n0, n1, out) != 0:
                return -1
            for n in range(n0, n1):
                if b != NULL:
                    dst = out + n * s.O * P
                    for o in range(s.O):
                        for p in range(P):
                            dst[o * P + p] += b[o]
            return 0
    if G > 1 or not _is_pointwise(s):
        col = <floating *> nn_scratch(0, ckk * G * P * sizeof(floating))
        if col == NULL:
            return -1
    if G > 1 or transposed:
        prod = <floating *> nn_scratch(2, s.O * G * P * sizeof(floating))
        if prod == NULL:
            return -1
    for group in range((n1 - n0 + G - 1) // G):
        n = n0 + group * G
        g = G if n + G <= n1 else n1 - n
        width = g * P
        if col == NULL:      # 1x1, stride 1, no padding: x[n] is its own column matrix
            if _gemm(w, ckk, 1, x + n * CHW, P, 1, out + n * s.O * P, P, s.O, P, ckk, 0) != 0:
                return -1
        else:
            for j in range(g):
                im2col(x + (n + j) * CHW, s.C, s.H, s.W, s.KH, s.KW, s.sh, s.sw, s.ph, s.pw,
                       s.OH, s.OW, col + j * P, width)
            if transposed:
                # prod (width x O) = col.T (width x CKK) @ w.T (CKK x O), read transposed
                if _gemm(col, 1, width, w, 1, ckk, prod, s.O, width, s.O, ckk, 0) != 0:
                    return -1
                for j in range(g):
                    _transpose_block(prod + j * P * s.O, s.O, out + (n + j) * s.O * P, P, s.O)
            elif G == 1:
                if _gemm(w, ckk, 1, col, P, 1, out + n * s.O * P, P, s.O, P, ckk, 0) != 0:
                    return -1
            else:
                if _gemm(w, ckk, 1, col, width, 1, prod, width, s.O, width, ckk, 0) != 0:
                    return -1
                for j in range(g):
                    dst = out + (n + j) * s.O * P
                    for o in range(s.O):
                        for p in range(P):
                            dst[o * P + p] = prod[o * width + j * P + p]
        if b != NULL:
            for j in range(g):
                dst = out + (n + j) * s.O * P
                for o in range(s.O):
                    for p in range(P):
                        dst[o * P + p] += b[o]
    return 0


cdef inline bint _gw_by_rows(ConvShape s) noexcept nogil:
    # the weight gradient summed as its transpose, (CKK x O) = col @ g.T, when its tiles
    # waste less (the transpose is undone as the threads' partials are added)
    return _transpose_fits(s.O, s.C * s.KH * s.KW)


cdef int _direct_gw_samples(const float *g, const float *x, float *gw_partial, ConvShape s,
                            Py_ssize_t n0, Py_ssize_t n1) noexcept nogil:
    # gw_partial (O, C*9) = the weight gradient of samples [n0, n1) straight from the planes
    # (nn_direct3_gw_run_avx512) -- for stride 2 from x's phase planes (scratch 0, as
    # _direct_samples writes them). Small planes are stacked as the forward stacks them
    # (_direct_stack): a chunk of stacks at a time -- the kernel's own chunk -- x's planes to
    # scratch 0, grad_out's to scratch 2; the last stack may hold fewer planes. Stride 1
    # without stacking reads x and grad_out where they lie, all samples in one call
    cdef bint s2 = s.sh == 2
    cdef Py_ssize_t P = s.OH * s.OW, G = _direct_stack(P), CHW = s.C * s.H * s.W
    cdef Py_ssize_t OP = s.O * P, chunk, n = n0, k, m, planes = 0, i, t
    cdef uint16_t masks1[NN_DIRECT_MASK_WORDS]
    cdef uint16_t masks2[NN_DIRECT_MASK_WORDS]
    cdef uint16_t *masks = masks1
    cdef Py_ssize_t off[9]
    cdef Py_ssize_t x_stack = s.C * 4 * G * P if s2 else G * CHW
    cdef float *xs = NULL
    cdef float *gs = NULL
    cdef const float *xsrc
    cdef const float *gsrc
    # the kernel's accumulators: 3 kernel rows of 24 vectors of 16 for every input channel
    cdef float *acc = <float *> nn_scratch(4, s.C * 3 * 384 * sizeof(float))
    if acc == NULL:
        return -1
    chunk = max(1, NN_DIRECT_GW_CHUNK // ((s.C + s.O) * G * P))
    if not s2 and G == 1:
        chunk = n1 - n0
    else:
        xs = <float *> nn_scratch(0, chunk * x_stack * sizeof(float))
        if xs == NULL:
            return -1
    if G > 1:
        gs = <float *> nn_scratch(2, chunk * G * OP * sizeof(float))
        if gs == NULL:
            return -1
    if s2:
        masks = masks2
    for t in range(9):
        off[t] = (t // 3 - 1) * s.OW + (t % 3 - 1)
    while n < n1:
        # k stacks of m planes: whole ones while there are, then the rest as one
        k, m = min(chunk, (n1 - n) // G), G
        if k == 0:
            k, m = 1, n1 - n
        if m != planes:
            nn_direct3_masks(s.OH, s.OW, m, masks1)
            if s2:
                nn_direct3_s2_taps(s.OW, m * P, (m * P + 15) // 16, masks1, masks2, off)
            planes = m
        xsrc, gsrc = x + n * CHW, g + n * OP
        if s2:
            for i in range(k):
                nn_direct3_phases_avx512(xsrc + i * m * CHW, CHW, m, s.C, s.H, s.W,
                                         xs + i * s.C * 4 * m * P)
            xsrc = xs
        elif m > 1:
            _stack(xsrc, s.C, P, k, m, xs)
            xsrc = xs
        if m > 1:
            _stack(gsrc, s.O, P, k, m, gs)
            gsrc = gs
        nn_direct3_gw_run_avx512(gsrc, xsrc, (4 if s2 else 1) * m * P, k, s.O, s.C, m * P, off,
                                 masks, n > n0, gw_partial, acc, not s2 and G == 1)
        n += k * m
    return 0


cdef int _direct_backward_samples(const float *g, const float *x, float *gw_partial, float *gx,
                                  float *sums, ConvShape s, Py_ssize_t n0, Py_ssize_t n1,
                                  const float *wpt) noexcept nogil:
    # conv_backward_samples' work for a float32 3x3 convolution with padding 1 (src/nn_direct.h):
    # when gw_partial is not NULL, gw_partial (O, C*9) = the samples' weight gradient
    # (_direct_gw_samples, stride 1 or 2) and sums as there; when gx is not NULL (stride 1
    # only), gx[n] = the convolution of g[n] with wpt (masked by x > 0 when s.relu_x)
    cdef Py_ssize_t P = s.OH * s.OW, n, o
    if gw_partial != NULL:
        if _direct_gw_samples(g, x, gw_partial, s, n0, n1) != 0:
            return -1
        if sums != NULL:
            for n in range(n0, n1):
                for o in range(s.O):
                    sums[n * s.O + o] = lane_sum(g, g + (n * s.O + o) * P, P, 0, LANE_SUM)
    if gx != NULL:
        return _direct_samples(g, s.O, wpt, s.C, s.H, s.W, 1, n0, n1, gx,
                               x if s.relu_x else NULL)
    return 0


cdef inline bint _is_direct_s2_gx(ConvShape s) noexcept nogil:
    # the input gradient of a stride-2 3x3 straight from grad_out's planes too
    # (nn_direct3_s2_gx_avx512: the bits of im2col's path, where k = O is one GEMM block)
    return _is_direct_s2(s) and s.O <= NN_DIRECT_GX_MAX_K


cdef int _direct_s2_gx_samples(const float *g, const float *x, float *gx, ConvShape s,
                               Py_ssize_t n0, Py_ssize_t n1, const float *wpt) noexcept nogil:
    # gx[n] for samples [n0, n1) of a stride-2 3x3 convolution: its phase planes from g[n]
    # (scratch 0), then put in place -- masked by x > 0 when s.relu_x
    cdef Py_ssize_t P = s.OH * s.OW, CHW = s.C * s.H * s.W, n
    cdef uint16_t masks[NN_DIRECT_MASK_WORDS]
    cdef float *ph = <float *> nn_scratch(0, s.C * 4 * P * sizeof(float))
    if ph == NULL:
        return -1
    nn_direct3_masks(s.OH, s.OW, 1, masks)
    for n in range(n0, n1):
        nn_direct3_s2_gx_avx512(g + n * s.O * P, s.O, s.OH, s.OW, masks, wpt, s.C, ph)
        nn_direct3_unphase_avx512(ph, s.C, s.H, s.W, x + n * CHW if s.relu_x else NULL,
                                  gx + n * CHW)
    return 0


cdef int conv_backward_samples(const floating *g, const floating *x, const floating *w,
                               floating *gw_partial, floating *gx, floating *sums, ConvShape s,
                               Py_ssize_t n0, Py_ssize_t n1, bint direct,
                               const float *wpt) noexcept nogil:
    # samples [n0, n1), G at a time, with col (CKK, G*P) and gg (O, G*P) = their grad_out:
    #   gw_partial (O, CKK) (+)= gg @ col.T;  dcol = w.T @ gg;  gx[n] = col2im(dcol block n)
    # (gw_partial as its transpose (CKK, O) += col @ gg.T when _gw_by_rows)
    # and, unless sums is NULL, sums (N, O)[n, o] = the sum of g[n, o] (for the bias: summed
    # here, by the thread that reads these samples anyway, not all of g by one thread after).
    # With direct (float32, _is_direct), both gradients straight from the planes instead
    # (_direct_backward_samples; wpt: the weights packed transposed by nn_direct3_pack, or
    # NULL when gx is); for _is_direct_s2 the weight gradient so, and with wpt
    # (_is_direct_s2_gx) the input gradient too (_direct_s2_gx_samples)
    cdef Py_ssize_t ckk = s.C * s.KH * s.KW, P = s.OH * s.OW, CHW = s.C * s.H * s.W
    cdef Py_ssize_t G = _group(s, n1 - n0), group, n, cnt, j, o, p, width
    cdef bint pointwise = _is_pointwise(s), by_rows = _gw_by_rows(s)
    cdef floating *col
    cdef floating *gg = NULL
    cdef const floating *xcol = NULL
    cdef const floating *gcol
    cdef bint gw_done = False
    if floating is float:
        if direct:
            return _direct_backward_samples(g, x, gw_partial, gx, sums, s, n0, n1, wpt)
        if _is_direct_s2(s):
            # the weight gradient (and sums) from the phase planes; the input gradient from
            # grad_out's planes too when wpt is given (_is_direct_s2_gx), else below
            if _direct_backward_samples(g, x, gw_partial, NULL, sums, s, n0, n1, NULL) != 0:
                return -1
            if gx == NULL:
                return 0
            if wpt != NULL:
                return _direct_s2_gx_samples(g, x, gx, s, n0, n1, wpt)
            gw_done, sums = True, NULL
    col = <floating *> nn_scratch(0, ckk * G * P * sizeof(floating))
    if col == NULL:
        return -1
    if G > 1:
        gg = <floating *> nn_scratch(2, s.O * G * P * sizeof(floating))
        if gg == NULL:
            return -1
    for group in range((n1 - n0 + G - 1) // G):
        n = n0 + group * G
        cnt = G if n + G <= n1 else n1 - n
        width = cnt * P
        if sums != NULL:
            for j in range(cnt):
                for o in range(s.O):
                    sums[(n + j) * s.O + o] = <floating> lane_sum(
                        g, g + ((n + j) * s.O + o) * P, P, 0, LANE_SUM)
        if pointwise:
            xcol = x + n * CHW                      # G == 1 here
        elif not gw_done:
            for j in range(cnt):
                im2col(x + (n + j) * CHW, s.C, s.H, s.W, s.KH, s.KW, s.sh, s.sw, s.ph, s.pw,
                       s.OH, s.OW, col + j * P, width)
            xcol = col
        if G == 1:
            gcol = g + n * s.O * P
        else:
            for j in range(cnt):
                for o in range(s.O):
                    for p in range(P):
                        gg[o * width + j * P + p] = g[((n + j) * s.O + o) * P + p]
            gcol = gg
        if gw_done:
            pass
        elif by_rows:
            # gw_partial.T (CKK x O) (+)= xcol (CKK x width) @ gcol.T (width x O)
            if _gemm(xcol, width, 1, gcol, 1, width, gw_partial, s.O, ckk, s.O, width,
                     0 if n == n0 else 1) != 0:
                return -1
        # gw_partial (O x CKK) (+)= gcol (O x width) @ xcol.T (width x CKK)
        elif _gemm(gcol, width, 1, xcol, 1, width, gw_partial, ckk, s.O, ckk, width,
                   0 if n == n0 else 1) != 0:
            return -1
        if gx != NULL:
            if pointwise:
                # gx[n] (C x P) = w.T (CKK=C x O) @ g[n] (O x P)
                if _gemm(w, 1, ckk, gcol, P, 1, gx + n * CHW, P, ckk, P, s.O, 0) != 0:
                    return -1
                if s.relu_x:
                    _relu_mask(gx + n * CHW, x + n * CHW, CHW)
            else:
                # dcol (CKK x width) = w.T (CKK x O) @ gcol (O x width), into col (used up)
                if _gemm(w, 1, ckk, gcol, width, 1, col, width, ckk, width, s.O, 0) != 0:
                    return -1
                for j in range(cnt):
                    memset(gx + (n + j) * CHW, 0, CHW * sizeof(floating))
                    col2im(col + j * P, s.C, s.H, s.W, s.KH, s.KW, s.sh, s.sw, s.ph, s.pw,
                           s.OH, s.OW, gx + (n + j) * CHW, width)
                    if s.relu_x:
                        _relu_mask(gx + (n + j) * CHW, x + (n + j) * CHW, CHW)
    return 0


cdef Py_ssize_t _conv_parts(ConvShape s, int threads) noexcept nogil:
    # threads over samples, but only as many as the work pays for
    cdef Py_ssize_t fmas = s.N * s.O * s.OH * s.OW * s.C * s.KH * s.KW
    cdef Py_ssize_t parts = span_parts(s.N, 1, threads)
    while parts > 1 and fmas // parts < CONV_MIN_FMAS_PER_THREAD:
        parts -= 1
    return parts


ctypedef struct _ConvJob:
    # a convolution's samples in spans of `step`, a part each (float32 or float64 behind the
    # pointers); forward: x, w, b -> out; backward: g, x, w -> partials (a slab a part), gx
    ConvShape s
    bint single
    Py_ssize_t step
    const void *g
    const void *x
    const void *w
    const void *b
    void *out
    void *partials
    void *sums
    bint direct             # float32 3x3 by src/nn_direct.h (_is_direct)
    const float *wp         # the direct path's packed weights (float32), or NULL
    int status[MAX_PARTS]


cdef inline Py_ssize_t _span_end(Py_ssize_t n0, Py_ssize_t step, Py_ssize_t n) noexcept nogil:
    return n0 + step if n0 + step < n else n


cdef void _forward_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _ConvJob *j = <_ConvJob *> ctx
    cdef Py_ssize_t n0 = t * j.step, n1 = _span_end(n0, j.step, j.s.N)
    j.status[t] = 0
    if n0 >= j.s.N:
        return
    if j.single:
        j.status[t] = conv_forward_samples(<const float *> j.x, <const float *> j.w,
                                           <const float *> j.b, <float *> j.out, j.s, n0, n1,
                                           j.wp)
    else:
        j.status[t] = conv_forward_samples(<const double *> j.x, <const double *> j.w,
                                           <const double *> j.b, <double *> j.out, j.s, n0, n1,
                                           NULL)


cdef int conv_forward(const floating *x, const floating *w, const floating *b, floating *out,
                      ConvShape s, int threads) noexcept nogil:
    cdef Py_ssize_t parts = _conv_parts(s, threads), t
    cdef _ConvJob j
    cdef int failed = 0
    cdef float *wp = NULL
    if floating is float:
        if _is_direct(s) or _is_direct_s2(s):
            # packed once here, read by every part (this thread's scratch slot 3)
            wp = <float *> nn_scratch(3, _direct_packed(s.O, s.C) * sizeof(float))
            if wp == NULL:
                return -1
            nn_direct3_pack(w, s.O, s.C, 0, wp)
    if parts == 1:
        return conv_forward_samples(x, w, b, out, s, 0, s.N, wp)
    j.wp = wp
    j.s = s
    j.single = floating is float
    j.step = (s.N + parts - 1) // parts
    j.x = x
    j.w = w
    j.b = b
    j.out = out
    run_parts(_forward_part, &j, parts)
    for t in range(parts):
        failed = failed | j.status[t]
    return failed


cdef void _backward_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _ConvJob *j = <_ConvJob *> ctx
    cdef Py_ssize_t ckk = j.s.C * j.s.KH * j.s.KW
    cdef Py_ssize_t n0 = t * j.step, n1 = _span_end(n0, j.step, j.s.N), at = t * j.s.O * ckk
    j.status[t] = 0
    if j.single:
        if n0 < j.s.N:
            j.status[t] = conv_backward_samples(
                <const float *> j.g, <const float *> j.x, <const float *> j.w,
                <float *> j.partials + at, <float *> j.out, <float *> j.sums, j.s, n0, n1,
                j.direct, j.wp)
        else:
            memset(<float *> j.partials + at, 0, j.s.O * ckk * sizeof(float))
    else:
        if n0 < j.s.N:
            j.status[t] = conv_backward_samples(
                <const double *> j.g, <const double *> j.x, <const double *> j.w,
                <double *> j.partials + at, <double *> j.out, <double *> j.sums, j.s, n0, n1,
                False, NULL)
        else:
            memset(<double *> j.partials + at, 0, j.s.O * ckk * sizeof(double))


cdef int conv_backward(const floating *g, const floating *x, const floating *w, floating *gw,
                       floating *gb, floating *gx, floating *partials, ConvShape s,
                       Py_ssize_t parts) noexcept nogil:
    # partials: (parts, O, CKK) scratch, then (N, O) more when gb is not NULL; gw (+)= their
    # sum in part order; gb += sum of g (each sample's sums, added in sample order)
    cdef Py_ssize_t ckk = s.C * s.KH * s.KW, P = s.OH * s.OW
    cdef floating *sums = partials + parts * s.O * ckk if gb != NULL else NULL
    cdef Py_ssize_t step = (s.N + parts - 1) // parts, t, n0, i, n, o, p, q
    cdef const floating *part
    cdef bint by_rows = _gw_by_rows(s)     # (the partials are then (CKK, O))
    cdef _ConvJob job
    cdef int failed = 0
    cdef floating acc
    cdef float *wpt = NULL
    cdef bint direct = False
    if floating is float:
        direct = _is_direct(s)
        by_rows = by_rows and not direct and not _is_direct_s2(s)
        if gx != NULL and (direct or _is_direct_s2_gx(s)):
            # the input gradient's weights, packed once here for every part (slot 3)
            wpt = <float *> nn_scratch(3, _direct_packed(s.C, s.O) * sizeof(float))
            if wpt == NULL:
                return -1
            nn_direct3_pack(w, s.O, s.C, 1, wpt)
    if parts == 1:
        failed = conv_backward_samples(g, x, w, partials, gx, sums, s, 0, s.N, direct, wpt)
    else:
        job.direct = direct
        job.wp = wpt
        job.s = s
        job.single = floating is float
        job.step = step
        job.g = g
        job.x = x
        job.w = w
        job.partials = partials
        job.out = gx
        job.sums = sums
        run_parts(_backward_part, &job, parts)
        for t in range(parts):
            failed = failed | job.status[t]
    if failed:
        return -1
    for t in range(parts):
        part = partials + t * s.O * ckk
        if by_rows:
            for q in range(ckk):
                for o in range(s.O):
                    gw[o * ckk + q] += part[q * s.O + o]
        else:
            for i in range(s.O * ckk):
                gw[i] += part[i]
    if gb != NULL:
        for o in range(s.O):
            acc = 0
            for n in range(s.N):
                acc = acc + sums[n * s.O + o]
            gb[o] += acc
    return 0


# ---------------------------------------------------------------------------------------------
# Python wrappers

cdef tuple _pair(str name, object v, Py_ssize_t minimum):
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        v = (int(v), int(v))
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_))
                       for e in v)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if v[0] < minimum or v[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(v)}")
    if v[0] > MAX_WINDOW or v[1] > MAX_WINDOW:
        raise ValueError(f"{name} must be <= {MAX_WINDOW}, got {tuple(v)}")
    return int(v[0]), int(v[1])


cdef ConvShape _conv_shape(x, w, stride, padding):
    cdef ConvShape s
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w must be 4-D (O, C, KH, KW), got shape {w.shape}")
    s.N, s.C, s.H, s.W = x.shape
    s.O, wc, s.KH, s.KW = w.shape
    if wc != s.C:
        raise ValueError(f"w has {wc} input channels (shape {w.shape}) but x has {s.C}")
    if s.KH < 1 or s.KW < 1:
        raise ValueError(f"w: kernel size must be >= 1, got {(s.KH, s.KW)}")
    s.sh, s.sw = _pair("stride", stride, 1)
    s.ph, s.pw = _pair("padding", padding, 0)
    s.relu_x = False
    s.OH = (s.H + 2 * s.ph - s.KH) // s.sh + 1 if s.H + 2 * s.ph >= s.KH else 0
    s.OW = (s.W + 2 * s.pw - s.KW) // s.sw + 1 if s.W + 2 * s.pw >= s.KW else 0
    if s.OH < 1 or s.OW < 1:
        raise ValueError(f"x: input {s.H}x{s.W} with padding {(s.ph, s.pw)} is smaller than "
                         f"the kernel {s.KH}x{s.KW}")
    return s


cdef _check_bias(str name, b, Py_ssize_t o, dtype):
    if b is None:
        return None
    b = as_float_array(name, b, 1)
    check_same_dtype(name, b, dtype)
    if b.shape[0] != o:
        raise ValueError(f"{name} has shape {b.shape}, expected ({o},)")
    return b


cdef _forward_typed(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    const floating[::1] b, floating[:, :, :, ::1] out, ConvShape s):
    cdef int threads = num_threads(), status
    if s.N == 0 or s.O == 0:
        return
    if s.C == 0 or s.H == 0 or s.W == 0:
        # no input values (every window lies in the padding): each output is its bias,
        # set by the wrapper
        return
    with nogil:
        status = conv_forward(&x[0, 0, 0, 0], &w[0, 0, 0, 0],
                              &b[0] if b is not None else NULL, &out[0, 0, 0, 0], s, threads)
    if status != 0:
        raise MemoryError("conv2d_forward: cannot allocate the column buffer")


def conv2d_forward(x, w, b, out=None, *, stride=1, padding=0):
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d), NCHW.

    x (N, C, H, W), w (O, C, KH, KW), b (O,) or None -> out (N, O, OH, OW),
    OH = (H + 2 ph - KH) // sh + 1 (OW likewise);
    out[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * xpad[n, c, i sh + kh, j sw + kw].
    stride, padding: an int or a pair (h, w).
    """
    x = as_float_array("x", x)
    w = as_float_array("w", w)
    check_same_dtype("w", w, x.dtype)
    cdef ConvShape s = _conv_shape(x, w, stride, padding)
    b = _check_bias("b", b, s.O, x.dtype)
    y = output("out", out, (s.N, s.O, s.OH, s.OW), x.dtype)
    if out is not None:
        refuse_overlap("out", y, "x", x)
        refuse_overlap("out", y, "w", w)
        refuse_overlap("out", y, "b", b)
    if s.C == 0 or s.H == 0 or s.W == 0:
        # no products (no channels, or windows only over padding): each output is its bias
        y[...] = 0 if b is None else b[:, None, None]
    elif x.dtype == np.float32:
        _forward_typed[float](x, w, b, y, s)
    else:
        _forward_typed[double](x, w, b, y, s)
    return y if out is None else out        # (the caller's object: a subclass was viewed)


cdef _backward_typed(const floating[:, :, :, ::1] g, const floating[:, :, :, ::1] x,
                     const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gw, floating[::1] gb,
                     floating[:, :, :, ::1] gx, ConvShape s):
    cdef int threads = num_threads(), status
    cdef Py_ssize_t parts = _conv_parts(s, threads)
    cdef Py_ssize_t ckk = s.C * s.KH * s.KW
    cdef floating *partials
    global _s2_gx_calls
    if s.N == 0 or s.O == 0 or s.C == 0 or s.H == 0 or s.W == 0:
        if gx is not None:
            gx[...] = 0
        if gb is not None and s.N > 0 and s.O > 0:
            np.add(gb, np.asarray(g).sum(axis=(0, 2, 3)), out=np.asarray(gb))
        return
    if floating is float and gx is not None and _is_direct_s2_gx(s):
        _s2_gx_calls += 1
    with nogil:
        partials = <floating *> nn_scratch(1, (parts * s.O * ckk + (s.N * s.O if gb is not None
                                                                   else 0)) * sizeof(floating))
        if partials == NULL:
            status = -1
        else:
            status = conv_backward(&g[0, 0, 0, 0], &x[0, 0, 0, 0], &w[0, 0, 0, 0],
                                   &gw[0, 0, 0, 0], &gb[0] if gb is not None else NULL,
                                   &gx[0, 0, 0, 0] if gx is not None else NULL, partials, s,
                                   parts)
    if status != 0:
        raise MemoryError("conv2d_backward: cannot allocate the column buffers")


def conv2d_backward(grad_out, x, w, grad_w, grad_b, grad_x=None, *, stride=1, padding=0,
                    compute_grad_x=True, relu_x=False):
    """Backward of conv2d_forward, accumulating the parameter gradients (as PyTorch's .grad).

    grad_out (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW):
        grad_w (O, C, KH, KW) += dL/dw        grad_b (O,) += grad_out.sum((0, 2, 3))
        grad_x (N, C, H, W)    = dL/dx        (returned; None when compute_grad_x is False)
    grad_b may be None (no bias).

    relu_x=True: x is a ReLU's output, and grad_x is taken on through it -- dL/dx where
    x > 0, else 0: the bits of relu_backward(dL/dx, x), each sample's as it is written.
    """
    x = as_float_array("x", x)
    w = as_float_array("w", w)
    check_same_dtype("w", w, x.dtype)
    grad_out = as_float_array("grad_out", grad_out)
    check_same_dtype("grad_out", grad_out, x.dtype)
    cdef ConvShape s = _conv_shape(x, w, stride, padding)
    check_same_shape("grad_out", grad_out, (s.N, s.O, s.OH, s.OW))
    s.relu_x = bool(relu_x)
    grad_w = check_buffer("grad_w", grad_w, w.shape, x.dtype)
    if grad_b is not None:
        grad_b = check_buffer("grad_b", grad_b, (s.O,), x.dtype)
    given = compute_grad_x and grad_x is not None
    gx = output("grad_x", grad_x, x.shape, x.dtype) if compute_grad_x else None
    refuse_overlaps((("grad_w", grad_w, ()), ("grad_b", grad_b, ()),
                     ("grad_x", gx if given else None, ())),
                    (("grad_out", grad_out), ("x", x), ("w", w)))
    if x.dtype == np.float32:
        _backward_typed[float](grad_out, x, w, grad_w, grad_b, gx, s)
    else:
        _backward_typed[double](grad_out, x, w, grad_w, grad_b, gx, s)
    return grad_x if given else gx


# ---------------------------------------------------------------------------------------------
# max pooling

cdef inline void _take(floating v, Py_ssize_t pos, floating *best,
                       Py_ssize_t *best_pos) noexcept nogil:
    # the window scan's step: v wins if larger, or if it is a NaN and the best is not
    cdef bint take = (v > best[0]) | ((v != v) & (best[0] == best[0]))
    best[0] = v if take else best[0]
    best_pos[0] = pos if take else best_pos[0]


cdef void maxpool_planes_2x2(const floating *x, floating *out, int64_t *idx, Py_ssize_t planes,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                             Py_ssize_t OW) noexcept nogil:
    # the common 2x2 window with stride 2, unrolled: the same scan order and tie rule
    cdef Py_ssize_t q, oh, ow, c, base, best_pos
    cdef floating best
    cdef const floating *r0
    cdef const floating *r1
    if floating is float:
        if _pool_avx512 and H * W <= INT32_MAX:
            # 16 outputs at a time, same scan order and rule (src/nn_pool.h)
            for q in range(planes):
                for oh in range(OH):
                    r0 = x + q * H * W + 2 * oh * W
                    nn_maxpool2x2_row_avx512(r0, r0 + W, OW, 2 * oh * W, W,
                                             out + (q * OH + oh) * OW, idx + (q * OH + oh) * OW)
            return
    for q in range(planes):
        for oh in range(OH):
            base = 2 * oh * W
            r0 = x + q * H * W + base
            r1 = r0 + W
            for ow in range(OW):
                c = 2 * ow
                best = r0[c]
                best_pos = base + c
                _take(r0[c + 1], base + c + 1, &best, &best_pos)
                _take(r1[c], base + W + c, &best, &best_pos)
                _take(r1[c + 1], base + W + c + 1, &best, &best_pos)
                out[(q * OH + oh) * OW + ow] = best
                idx[(q * OH + oh) * OW + ow] = best_pos


cdef void maxpool_planes(const floating *x, floating *out, int64_t *idx, Py_ssize_t planes,
                         Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                         Py_ssize_t sw, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    # for each (H, W) plane: out[i, j] = max of the KH x KW window at (i sh, j sw), idx its
    # flat position; the first maximum wins ties, a NaN wins over numbers (as PyTorch)
    cdef Py_ssize_t q, oh, ow, kh, kw, pos, best_pos
    cdef floating v, best
    cdef bint take
    cdef const floating *plane
    if KH == 2 and KW == 2 and sh == 2 and sw == 2:
        maxpool_planes_2x2(x, out, idx, planes, H, W, OH, OW)
        return
    for q in range(planes):
        plane = x + q * H * W
        for oh in range(OH):
            for ow in range(OW):
                best_pos = (oh * sh) * W + ow * sw
                best = plane[best_pos]
                for kh in range(KH):
                    for kw in range(KW):
                        pos = (oh * sh + kh) * W + ow * sw + kw
                        v = plane[pos]
                        # selects, not branches (random data would mispredict half of them)
                        take = (v > best) | ((v != v) & (best == best))
                        best = v if take else best
                        best_pos = pos if take else best_pos
                out[(q * OH + oh) * OW + ow] = best
                idx[(q * OH + oh) * OW + ow] = best_pos


cdef Py_ssize_t maxpool_backward_planes(const floating *g, const int64_t *idx, floating *gx,
                                        Py_ssize_t planes, Py_ssize_t HW,
                                        Py_ssize_t OHW) noexcept nogil:
    # gx plane = zeros, plus g routed to the recorded argmax positions. An index outside
    # [0, HW) (not from maxpool2d_forward) is skipped and counted: the caller raises.
    cdef Py_ssize_t q, i, bad = 0
    cdef int64_t j
    for q in range(planes):
        memset(gx + q * HW, 0, HW * sizeof(floating))
        for i in range(OHW):
            j = idx[q * OHW + i]
            if 0 <= j < HW:
                gx[q * HW + j] += g[q * OHW + i]
            else:
                bad += 1
    return bad


ctypedef struct _PoolJob:
    # pooling (or its backward) over planes in spans of `step`, a part each
    bint single
    bint backward          # average pooling: the backward pass (x: grad_out, out: grad_x)
    Py_ssize_t planes
    Py_ssize_t step
    const void *x          # forward: x -> out, idx; backward: g (here), idx -> gx (out)
    void *out
    int64_t *idx           # max pooling's indices (NULL for average pooling)
    Py_ssize_t H
    Py_ssize_t W
    Py_ssize_t KH
    Py_ssize_t KW
    Py_ssize_t sh
    Py_ssize_t sw
    Py_ssize_t OH
    Py_ssize_t OW
    Py_ssize_t bad[MAX_PARTS]    # backward: indices out of range, per part


cdef void _pool_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _PoolJob *j = <_PoolJob *> ctx
    cdef Py_ssize_t q0 = t * j.step, count = _span_end(q0, j.step, j.planes) - q0
    if count <= 0:
        return
    if j.single:
        maxpool_planes(<const float *> j.x + q0 * j.H * j.W, <float *> j.out + q0 * j.OH * j.OW,
                       j.idx + q0 * j.OH * j.OW, count, j.H, j.W, j.KH, j.KW, j.sh, j.sw, j.OH,
                       j.OW)
    else:
        maxpool_planes(<const double *> j.x + q0 * j.H * j.W,
                       <double *> j.out + q0 * j.OH * j.OW, j.idx + q0 * j.OH * j.OW, count, j.H,
                       j.W, j.KH, j.KW, j.sh, j.sw, j.OH, j.OW)


cdef _pool_typed(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                 int64_t[:, :, :, ::1] idx, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                 Py_ssize_t sw):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3], planes = N * C
    cdef Py_ssize_t parts = span_parts(planes, POOL_PLANES_PER_THREAD, num_threads())
    cdef _PoolJob j
    if planes == 0:
        return
    with nogil:
        if parts == 1:
            maxpool_planes(&x[0, 0, 0, 0], &out[0, 0, 0, 0], &idx[0, 0, 0, 0], planes, H, W,
                           KH, KW, sh, sw, OH, OW)
        else:
            j.single = floating is float
            j.planes = planes
            j.step = (planes + parts - 1) // parts
            j.x = &x[0, 0, 0, 0]
            j.out = &out[0, 0, 0, 0]
            j.idx = &idx[0, 0, 0, 0]
            j.H, j.W, j.KH, j.KW, j.sh, j.sw, j.OH, j.OW = H, W, KH, KW, sh, sw, OH, OW
            run_parts(_pool_part, &j, parts)


def maxpool2d_forward(x, kernel_size, stride=None, out=None, indices=None):
    """2-D max pooling, NCHW, no padding, floor mode (PyTorch's defaults).

    x (N, C, H, W) -> (out (N, C, OH, OW), indices int64 (N, C, OH, OW)),
    OH = (H - KH) // sh + 1; stride defaults to kernel_size. indices holds the flat
    position ih * W + iw of each maximum within its plane (torch's return_indices).
    """
    x = as_float_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    kh, kw = _pair("kernel_size", kernel_size, 1)
    sh, sw = _pair("stride", kernel_size if stride is None else stride, 1)
    N, C, H, W = x.shape
    if H < kh or W < kw:
        raise ValueError(f"x: input {H}x{W} is smaller than the pooling window {kh}x{kw}")
    shape = (N, C, (H - kh) // sh + 1, (W - kw) // sw + 1)
    y = output("out", out, shape, x.dtype)
    idx = output("indices", indices, shape, np.dtype(np.int64))
    if out is not None or indices is not None:
        refuse_overlaps((("out", y if out is not None else None, ()),
                         ("indices", idx if indices is not None else None, ())), (("x", x),))
    if x.dtype == np.float32:
        _pool_typed[float](x, y, idx, kh, kw, sh, sw)
    else:
        _pool_typed[double](x, y, idx, kh, kw, sh, sw)
    return (y if out is None else out), (idx if indices is None else indices)


cdef void _pool_backward_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _PoolJob *j = <_PoolJob *> ctx
    cdef Py_ssize_t q0 = t * j.step, count = _span_end(q0, j.step, j.planes) - q0
    cdef Py_ssize_t HW = j.H * j.W, OHW = j.OH * j.OW
    j.bad[t] = 0
    if count <= 0:
        return
    if j.single:
        j.bad[t] = maxpool_backward_planes(<const float *> j.x + q0 * OHW, j.idx + q0 * OHW,
                                           <float *> j.out + q0 * HW, count, HW, OHW)
    else:
        j.bad[t] = maxpool_backward_planes(<const double *> j.x + q0 * OHW, j.idx + q0 * OHW,
                                           <double *> j.out + q0 * HW, count, HW, OHW)


cdef Py_ssize_t _pool_backward_typed(const floating[:, :, :, ::1] g,
                                     const int64_t[:, :, :, ::1] idx, floating[:, :, :, ::1] gx):
    # returns how many indices were out of range (skipped)
    cdef Py_ssize_t planes = gx.shape[0] * gx.shape[1], HW = gx.shape[2] * gx.shape[3]
    cdef Py_ssize_t OHW = g.shape[2] * g.shape[3]
    cdef Py_ssize_t parts = span_parts(planes, POOL_PLANES_PER_THREAD, num_threads())
    cdef Py_ssize_t t, bad = 0
    cdef _PoolJob j
    if planes == 0:
        return 0
    with nogil:
        if parts == 1:
            bad = maxpool_backward_planes(&g[0, 0, 0, 0], &idx[0, 0, 0, 0], &gx[0, 0, 0, 0],
                                          planes, HW, OHW)
        else:
            j.single = floating is float
            j.planes = planes
            j.step = (planes + parts - 1) // parts
            j.x = &g[0, 0, 0, 0]
            j.out = &gx[0, 0, 0, 0]
            j.idx = <int64_t *> &idx[0, 0, 0, 0]
            j.H, j.W, j.OH, j.OW = gx.shape[2], gx.shape[3], g.shape[2], g.shape[3]
            run_parts(_pool_backward_part, &j, parts)
            for t in range(parts):
                bad += j.bad[t]
    return bad


def maxpool2d_backward(grad_out, indices, x_shape, out=None):
    """Backward of max pooling: zeros of x_shape, plus grad_out added at each window's argmax.

    grad_out (N, C, OH, OW), indices int64 (N, C, OH, OW) from maxpool2d_forward,
    x_shape (N, C, H, W) -> grad_x (N, C, H, W). An index outside [0, H*W) raises
    ValueError (checked while scattering: a given `out` is then partly written).
    """
    grad_out = as_float_array("grad_out", grad_out)
    if grad_out.ndim != 4:
        raise ValueError(f"grad_out must be 4-D (N, C, OH, OW), got shape {grad_out.shape}")
    indices = plain(indices)
    if type(indices) is not np.ndarray:
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype != np.int64:
        raise TypeError(f"indices must be int64 (from maxpool2d_forward), got {indices.dtype}")
    check_same_shape("indices", indices, grad_out.shape)
    try:
        x_shape = tuple(int(d) for d in x_shape)
    except TypeError:
        raise TypeError(f"x_shape must be a tuple of 4 ints, got {x_shape!r}") from None
    if len(x_shape) != 4 or x_shape[:2] != grad_out.shape[:2]:
        raise ValueError(f"x_shape {x_shape} does not match grad_out's {grad_out.shape}")
    if not (indices.flags.c_contiguous and indices.flags.aligned):
        indices = np.array(indices, order="C")
    hw = x_shape[2] * x_shape[3]
    gx = output("out", out, x_shape, grad_out.dtype)
    if out is not None:
        refuse_overlap("out", gx, "grad_out", grad_out)
        refuse_overlap("out", gx, "indices", indices)
    if gx.size == 0:
        if indices.size:   # windows into an empty plane: no index can be valid
            raise ValueError(f"indices must be in [0, {hw}) for x_shape {x_shape}")
    else:
        # the kernel checks every index as it scatters (no separate min/max passes)
        if grad_out.dtype == np.float32:
            bad = _pool_backward_typed[float](grad_out, indices, gx)
        else:
            bad = _pool_backward_typed[double](grad_out, indices, gx)
        if bad:
            raise ValueError(f"indices must be in [0, {hw}) for x_shape {x_shape}: {bad} "
                             f"are not")
    return gx if out is None else out


# ---------------------------------------------------------------------------------------------
# average pooling

cdef void avgpool_planes(const floating *x, floating *out, Py_ssize_t planes, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                         Py_ssize_t sw, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    # for each (H, W) plane: out[i, j] = (sum of the KH x KW window at (i sh, j sw)) / (KH KW),
    # the window summed from 0 row by row, left to right (PyTorch's order): a fixed order,
    # whichever thread has the plane
    cdef Py_ssize_t q, oh, ow, kh, kw
    cdef floating count = <floating> (KH * KW), total
    cdef const floating *plane
    cdef const floating *row
    for q in range(planes):
        plane = x + q * H * W
        for oh in range(OH):
            for ow in range(OW):
                total = 0
                for kh in range(KH):
                    row = plane + (oh * sh + kh) * W + ow * sw
                    for kw in range(KW):
                        total = total + row[kw]
                out[(q * OH + oh) * OW + ow] = total / count


cdef void avgpool_backward_planes(const floating *g, floating *gx, Py_ssize_t planes,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                                  Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t OH,
                                  Py_ssize_t OW) noexcept nogil:
    # gx plane = zeros, plus g[i, j] / (KH KW) added to every input of window (i, j); the
    # windows in row-major order (PyTorch's), so that where they overlap the shares of one
    # input add up in a fixed order
    cdef Py_ssize_t q, oh, ow, kh, kw
    cdef floating count = <floating> (KH * KW), share
    cdef floating *plane
    cdef floating *row
    for q in range(planes):
        plane = gx + q * H * W
        memset(plane, 0, H * W * sizeof(floating))
        for oh in range(OH):
            for ow in range(OW):
                share = g[(q * OH + oh) * OW + ow] / count
                for kh in range(KH):
                    row = plane + (oh * sh + kh) * W + ow * sw
                    for kw in range(KW):
                        row[kw] += share


cdef void avgpool_run(const floating *src, floating *dst, Py_ssize_t planes,
                      const _PoolJob *j) noexcept nogil:
    # `planes` planes of j's pooling: forward x -> out, or backward grad_out -> grad_x
    if j.backward:
        avgpool_backward_planes(src, dst, planes, j.H, j.W, j.KH, j.KW, j.sh, j.sw, j.OH,
                                j.OW)
    else:
        avgpool_planes(src, dst, planes, j.H, j.W, j.KH, j.KW, j.sh, j.sw, j.OH, j.OW)


cdef void _avgpool_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _PoolJob *j = <_PoolJob *> ctx
    cdef Py_ssize_t q0 = t * j.step, count = _span_end(q0, j.step, j.planes) - q0
    # plane sizes: forward (H, W) -> (OH, OW), backward the other way round
    cdef Py_ssize_t src_plane = j.OH * j.OW if j.backward else j.H * j.W
    cdef Py_ssize_t dst_plane = j.H * j.W if j.backward else j.OH * j.OW
    if count <= 0:
        return
    if j.single:
        avgpool_run(<const float *> j.x + q0 * src_plane, <float *> j.out + q0 * dst_plane,
                    count, j)
    else:
        avgpool_run(<const double *> j.x + q0 * src_plane, <double *> j.out + q0 * dst_plane,
                    count, j)


cdef _avgpool_typed(const floating[:, :, :, ::1] src, floating[:, :, :, ::1] dst,
                    Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                    Py_ssize_t sw, Py_ssize_t OH, Py_ssize_t OW, bint backward):
    # forward: src = x, dst = out; backward: src = grad_out, dst = grad_x
    cdef Py_ssize_t planes = src.shape[0] * src.shape[1]
    cdef Py_ssize_t parts = span_parts(planes, POOL_PLANES_PER_THREAD, num_threads())
    cdef _PoolJob j
    if planes == 0:
        return
    j.single, j.backward = floating is float, backward
    j.planes, j.step = planes, (planes + parts - 1) // parts
    j.x, j.out, j.idx = &src[0, 0, 0, 0], &dst[0, 0, 0, 0], NULL
    j.H, j.W, j.KH, j.KW, j.sh, j.sw, j.OH, j.OW = H, W, KH, KW, sh, sw, OH, OW
    with nogil:
        if parts == 1:
            avgpool_run(&src[0, 0, 0, 0], &dst[0, 0, 0, 0], planes, &j)
        else:
            run_parts(_avgpool_part, &j, parts)


cdef tuple _pool_geometry(str what, H, W, kernel_size, stride):
    # (kh, kw, sh, sw, OH, OW) of a pooling window over (H, W) planes, the stride defaulting
    # to the kernel size; `what` names the planes when the window does not fit
    kh, kw = _pair("kernel_size", kernel_size, 1)
    sh, sw = _pair("stride", kernel_size if stride is None else stride, 1)
    if H < kh or W < kw:
        raise ValueError(f"{what}: input {H}x{W} is smaller than the pooling window {kh}x{kw}")
    return kh, kw, sh, sw, (H - kh) // sh + 1, (W - kw) // sw + 1


cdef _avgpool(src, dst, tuple geometry, bint backward):
    # the typed kernel for src's dtype; forward: src = x, dst = out; backward: src =
    # grad_out, dst = grad_x (both of the dtype, C-contiguous)
    kh, kw, sh, sw, oh, ow = geometry
    H, W = (dst if backward else src).shape[2:]
    if src.dtype == np.float32:
        _avgpool_typed[float](src, dst, H, W, kh, kw, sh, sw, oh, ow, backward)
    else:
        _avgpool_typed[double](src, dst, H, W, kh, kw, sh, sw, oh, ow, backward)


cdef tuple _x_shape(x_shape):
    # the forward input's shape given to a backward: 4 ints >= 0
    try:
        dims = tuple(x_shape)
    except TypeError:
        raise TypeError(f"x_shape must be a tuple of 4 ints, got {x_shape!r}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))
               for d in dims):
        raise TypeError(f"x_shape must be a tuple of 4 ints, got {x_shape!r}")
    if len(dims) != 4 or min(dims) < 0:
        raise ValueError(f"x_shape must be 4 sizes >= 0 (N, C, H, W), got {x_shape!r}")
    return tuple(int(d) for d in dims)


def avgpool2d_forward(x, kernel_size, stride=None, out=None):
    """2-D average pooling, NCHW, no padding, floor mode (PyTorch's defaults).

    x (N, C, H, W) -> out (N, C, OH, OW), OH = (H - KH) // sh + 1 (OW likewise); stride
    defaults to kernel_size. out[n, c, i, j] = (sum_{p < KH, q < KW} x[n, c, i sh + p,
    j sw + q]) / (KH KW), each window summed from 0 row by row (the same bits on any
    thread count).
    """
    x = as_float_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    geometry = _pool_geometry("x", H, W, kernel_size, stride)
    y = output("out", out, (N, C) + geometry[4:], x.dtype)
    if out is not None:
        refuse_overlap("out", y, "x", x)
    _avgpool(x, y, geometry, False)
    return y if out is None else out


def avgpool2d_backward(grad_out, x_shape, kernel_size, stride=None, out=None):
    """Backward of average pooling: each input gets grad_out / (KH KW) from every window
    that covers it (overlapping windows add).

    grad_out (N, C, OH, OW), x_shape (N, C, H, W), kernel_size and stride as given to
    avgpool2d_forward -> grad_x (N, C, H, W); grad_out must have the shape the forward
    gives for x_shape. Inputs no window covers (floor mode) get 0.
    """
    grad_out = as_float_array("grad_out", grad_out)
    if grad_out.ndim != 4:
        raise ValueError(f"grad_out must be 4-D (N, C, OH, OW), got shape {grad_out.shape}")
    x_shape = _x_shape(x_shape)
    N, C, H, W = x_shape
    geometry = _pool_geometry(f"x_shape {x_shape}", H, W, kernel_size, stride)
    if grad_out.shape != (N, C) + geometry[4:]:
        raise ValueError(f"grad_out has shape {grad_out.shape}, but x_shape {x_shape} with "
                         f"kernel_size {geometry[:2]} and stride {geometry[2:4]} gives "
                         f"{(N, C) + geometry[4:]}")
    gx = output("out", out, x_shape, grad_out.dtype)
    if out is not None:
        refuse_overlap("out", gx, "grad_out", grad_out)
    _avgpool(grad_out, gx, geometry, True)
    return gx if out is None else out
