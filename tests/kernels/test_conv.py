"""conv2d, maxpool2d and avgpool2d (NCHW), forward and backward: compiled kernels vs the
NumPy twin.

The twin is checked against the definition written as plain loops (small shapes), against
values worked out by hand and, for the backward passes, against central differences.
"""
import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, strided

# (N, C, H, W), (O, KH, KW), stride, padding
CONV_CASES = [
    ((1, 1, 1, 1), (1, 1, 1), 1, 0),
    ((2, 3, 5, 5), (4, 3, 3), 1, 0),
    ((2, 3, 5, 5), (4, 3, 3), 1, 1),
    ((3, 2, 7, 9), (5, 3, 2), 2, 1),
    ((2, 3, 8, 7), (3, 2, 3), (2, 1), (0, 2)),
    ((1, 4, 6, 6), (7, 1, 1), 1, 0),               # pointwise: a plain GEMM
    ((2, 4, 7, 7), (3, 1, 1), 2, 0),               # strided 1x1
    ((5, 1, 13, 11), (2, 5, 5), 3, 2),
    ((1, 2, 4, 4), (3, 4, 4), 1, 0),               # the kernel covers the whole input
    ((2, 2, 3, 3), (2, 5, 5), 1, 1),               # the kernel is larger than the input
    ((16, 3, 9, 9), (8, 3, 3), 1, 1),              # enough samples to split over threads
    # more than 32 output channels, where (pixels x channels) products waste less of the
    # tiles: blocks transposed into place, and the weight gradient summed as its transpose
    # (6 samples of 100 pixels per product, then a partial group; a row stride of 2)
    ((7, 8, 10, 10), (64, 3, 3), 1, 1),
    ((3, 2, 6, 7), (40, 2, 3), (2, 1), (1, 0)),
    ((6, 9, 7, 7), (32, 1, 1), 1, 0),              # 1x1: the weight gradient transposed
]
CNN_CASES = [                                      # a small MNIST CNN, batch 64
    ((64, 1, 28, 28), (8, 3, 3), 1, 1),
    ((64, 8, 14, 14), (16, 3, 3), 1, 1),
]
# (N, C, H, W), kernel_size, stride
POOL_CASES = [
    ((1, 1, 2, 2), 2, None),
    ((2, 3, 6, 6), 2, None),
    ((2, 3, 7, 9), 2, None),                       # floor mode: the last row/column is dropped
    ((2, 3, 7, 7), 3, 2),                          # overlapping windows
    ((1, 2, 9, 8), (3, 2), (1, 2)),
    ((3, 4, 5, 5), 1, 1),
    ((2, 2, 5, 6), (5, 6), None),                  # one window covers the whole plane
    ((64, 8, 28, 28), 2, None),
]

# (N, C, H, W), kernel_size, stride: one pixel, odd and prime sizes, floor mode, overlapping
# windows (stride < kernel), gaps between windows (stride > kernel), one-row and one-column
# planes, a window over the whole plane (the global pool), enough planes for the threads
AVGPOOL_CASES = [
    ((1, 1, 1, 1), 1, None),
    ((2, 3, 6, 6), 2, None),
    ((2, 3, 7, 9), 2, None),
    ((2, 3, 7, 7), 3, 2),
    ((3, 2, 11, 13), 3, 1),
    ((1, 2, 9, 8), (3, 2), (1, 2)),
    ((3, 4, 5, 5), 1, 1),
    ((2, 5, 13, 1), (2, 1), 3),
    ((5, 3, 1, 7), (1, 3), (1, 2)),
    ((2, 2, 5, 6), (5, 6), None),
    ((4, 3, 17, 17), 17, None),
    ((64, 8, 28, 28), 2, None),
    ((19, 7, 7, 7), 7, 1),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def avgpool_loops(x, kernel_size, stride):
    """The definition: each output the mean of its window, as plain loops (float64)."""
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(kernel_size if stride is None else stride)
    n, c, h, w = x.shape
    out = np.zeros((n, c, (h - kh) // sh + 1, (w - kw) // sw + 1))
    for i_n, i_c, i, j in np.ndindex(*out.shape):
        out[i_n, i_c, i, j] = np.mean(x[i_n, i_c, i * sh:i * sh + kh, j * sw:j * sw + kw])
    return out


def avgpool_row_by_row(x, kernel_size, stride):
    """The compiled kernel's order, in x's own dtype: each window summed from 0 row by row,
    left to right, then divided by KH*KW (PyTorch's loop)."""
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(kernel_size if stride is None else stride)
    n, c, h, w = x.shape
    out = np.zeros((n, c, (h - kh) // sh + 1, (w - kw) // sw + 1), x.dtype)
    count = x.dtype.type(kh * kw)
    for i_n, i_c, i, j in np.ndindex(*out.shape):
        total = x.dtype.type(0)
        for p, q in np.ndindex(kh, kw):
            total = total + x[i_n, i_c, i * sh + p, j * sw + q]
        out[i_n, i_c, i, j] = total / count
    return out


def conv_loops(x, w, b, stride, padding):
    """The definition: one dot product per output element, as plain loops (float64)."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xpad = np.zeros((n, x.shape[1], h + 2 * ph, wd + 2 * pw))
    xpad[:, :, ph:ph + h, pw:pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i_n in range(n):
        for i_o in range(o):
            for i in range(oh):
                for j in range(ow):
                    patch = xpad[i_n, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    out[i_n, i_o, i, j] = np.sum(patch * w[i_o]) + (b[i_o] if b is not None else 0)
    return out


def _conv_inputs(rng, dtype, xshape, wdims, bias=True):
    o, kh, kw = wdims
    x = randn(rng, xshape, dtype)
    w = randn(rng, (o, xshape[1], kh, kw), dtype, scale=0.5)
    b = randn(rng, (o,), dtype) if bias else None
    return x, w, b


# ----------------------------------------------------------------------------------------
# The twin by hand, by loops and by finite differences
# ----------------------------------------------------------------------------------------

def test_reference_conv_by_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    ones = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(reference.conv2d_forward(x, ones, None),
                                  [[[[8.0, 12.0], [20.0, 24.0]]]])
    np.testing.assert_array_equal(reference.conv2d_forward(x, ones, np.array([1.0]), stride=2),
                                  [[[[9.0]]]])
    # a 1x1 kernel of 2 with padding 1: the input doubled, framed by zeros
    y = reference.conv2d_forward(x, np.full((1, 1, 1, 1), 2.0), None, padding=1)
    expected = np.zeros((1, 1, 5, 5))
    expected[0, 0, 1:4, 1:4] = 2 * x[0, 0]
    np.testing.assert_array_equal(y, expected)
    # cross-correlation, not convolution: the kernel is not flipped
    w = np.array([[[[1.0, 0.0], [0.0, 0.0]]]])
    np.testing.assert_array_equal(reference.conv2d_forward(x, w, None), x[:, :, :2, :2])


@pytest.mark.parametrize("xshape,wdims,stride,padding", CONV_CASES[:9])
def test_reference_conv_matches_loops(rng, xshape, wdims, stride, padding):
    x, w, b = _conv_inputs(rng, np.float64, xshape, wdims)
    np.testing.assert_allclose(reference.conv2d_forward(x, w, b, stride=stride, padding=padding),
                               conv_loops(x, w, b, stride, padding), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((1, 2), (2, 0))])
def test_reference_conv_backward_is_derivative(rng, stride, padding):
    x, w, b = _conv_inputs(rng, np.float64, (2, 2, 5, 4), (3, 3, 2))
    out = reference.conv2d_forward(x, w, b, stride=stride, padding=padding)
    g = rng.standard_normal(out.shape)

    def loss(x_, w_, b_):
        return np.sum(g * reference.conv2d_forward(x_, w_, b_, stride=stride, padding=padding))

    grad_w, grad_b = np.zeros_like(w), np.zeros_like(b)
    grad_x = reference.conv2d_backward(g, x, w, grad_w, grad_b, stride=stride, padding=padding)
    h = 1e-6
    for analytic, arr in ((grad_x, x), (grad_w, w), (grad_b, b)):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            saved = arr[i]
            arr[i] = saved + h
            up = loss(x, w, b)
            arr[i] = saved - h
            down = loss(x, w, b)
            arr[i] = saved
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


def test_reference_maxpool_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out, idx = reference.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(out, [[[[5.0, 7.0], [13.0, 15.0]]]])
    np.testing.assert_array_equal(idx, [[[[5, 7], [13, 15]]]])
    assert idx.dtype == np.int64
    g = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    grad = reference.maxpool2d_backward(g, idx, x.shape)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 1, 1], expected[0, 0, 1, 3], expected[0, 0, 3, 1], expected[0, 0, 3, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(grad, expected)
    # overlapping windows (3x3, stride 1) sharing a maximum: its gradient adds up
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, 1, 1] = 9.0
    out, idx = reference.maxpool2d_forward(x, 2, 1)
    np.testing.assert_array_equal(out, [[[[9, 9, 0], [9, 9, 0]]]])
    grad = reference.maxpool2d_backward(np.ones(out.shape), idx, x.shape)
    assert grad[0, 0, 1, 1] == 4.0 and grad.sum() == 6.0


# ----------------------------------------------------------------------------------------
# conv2d, compiled vs twin
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("xshape,wdims,stride,padding", CONV_CASES)
def test_conv2d_forward(rng, dtype, xshape, wdims, stride, padding, bias):
    x, w, b = _conv_inputs(rng, dtype, xshape, wdims, bias)
    kwargs = dict(stride=stride, padding=padding)
    expected = reference.conv2d_forward(x, w, b, **kwargs)
    k = xshape[1] * wdims[1] * wdims[2]
    assert_close(cnn_core.conv2d_forward(x, w, b, **kwargs), expected, k=k)
    out = nan_array(expected.shape, dtype)
    assert cnn_core.conv2d_forward(x, w, b, out, **kwargs) is out
    assert_close(out, expected, k=k)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("xshape,wdims,stride,padding", CONV_CASES)
def test_conv2d_backward(rng, dtype, xshape, wdims, stride, padding, bias):
    x, w, _ = _conv_inputs(rng, dtype, xshape, wdims, bias)
    kwargs = dict(stride=stride, padding=padding)
    g = randn(rng, reference.conv2d_forward(x, w, None, **kwargs).shape, dtype)
    gw0, gb0 = randn(rng, w.shape, dtype), randn(rng, (w.shape[0],), dtype)
    results = []
    for mod in (cnn_core, reference):
        gw, gb = gw0.copy(), (gb0.copy() if bias else None)
        gx = nan_array(x.shape, dtype)
        assert mod.conv2d_backward(g, x, w, gw, gb, gx, **kwargs) is gx
        results.append((gw, gb, gx))
    (gw, gb, gx), (rgw, rgb, rgx) = results
    k_w = g.shape[0] * g.shape[2] * g.shape[3]          # terms in each grad_w sum
    assert_close(gw, rgw, k=k_w)
    assert_close(gx, rgx, k=w.shape[0] * wdims[1] * wdims[2])
    if bias:
        assert_close(gb, rgb, k=k_w)


@pytest.mark.parametrize("xshape,wdims,stride,padding", CNN_CASES)
def test_conv2d_cnn_shapes(rng, dtype, xshape, wdims, stride, padding):
    x, w, b = _conv_inputs(rng, dtype, xshape, wdims)
    kwargs = dict(stride=stride, padding=padding)
    k = xshape[1] * wdims[1] * wdims[2]
    y = cnn_core.conv2d_forward(x, w, b, **kwargs)
    assert_close(y, reference.conv2d_forward(x, w, b, **kwargs), k=k)
    g = randn(rng, y.shape, dtype)
    results = []
    for mod in (cnn_core, reference):
        gw, gb = np.zeros_like(w), np.zeros_like(b)
        results.append((gw, gb, mod.conv2d_backward(g, x, w, gw, gb, **kwargs)))
    k_w = g.shape[0] * g.shape[2] * g.shape[3]
    for actual, expected, kk in zip(results[0], results[1], (k_w, k_w, wdims[0] * 9)):
        assert_close(actual, expected, k=kk)


def test_conv2d_backward_accumulates(rng, dtype):
    x, w, b = _conv_inputs(rng, dtype, (2, 3, 6, 6), (4, 3, 3))
    g = randn(rng, (2, 4, 4, 4), dtype)
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    gx = cnn_core.conv2d_backward(g, x, w, gw, gb)
    once = gw.copy(), gb.copy()
    assert cnn_core.conv2d_backward(g, x, w, gw, gb, compute_grad_x=False) is None
    assert_close(gw, 2 * once[0], k=32)
    assert_close(gb, 2 * once[1], k=32)
    given = nan_array(x.shape, dtype)
    cnn_core.conv2d_backward(g, x, w, gw, None, given, compute_grad_x=False)
    assert np.isnan(given).all()                          # not asked for: not written
    assert_close(cnn_core.conv2d_backward(g, x, w, np.zeros_like(w), None), gx, k=36)


def test_conv2d_non_contiguous(rng, dtype):
    x = strided(rng, (2, 3, 7, 6), dtype)
    w = strided(rng, (4, 3, 3, 2), dtype)
    b = strided(rng, (4,), dtype)
    kwargs = dict(stride=(2, 1), padding=1)
    y = cnn_core.conv2d_forward(x, w, b, **kwargs)
    assert_close(y, reference.conv2d_forward(x, w, b, **kwargs), k=18)
    g = strided(rng, y.shape, dtype)
    results = []
    for mod in (cnn_core, reference):
        gw, gb = np.zeros((4, 3, 3, 2), dtype), np.zeros(4, dtype)
        results.append((gw, gb, mod.conv2d_backward(g, x, w, gw, gb, **kwargs)))
    for actual, expected in zip(*results):
        assert_close(actual, expected, k=64)


@pytest.mark.parametrize("xshape,wshape", [
    ((0, 3, 5, 5), (4, 3, 3, 3)),      # no samples
    ((2, 3, 5, 5), (0, 3, 3, 3)),      # no output channels
    ((2, 0, 5, 5), (4, 0, 3, 3)),      # no input channels: the output is the bias
])
def test_conv2d_zero_size(rng, dtype, xshape, wshape):
    x, w = randn(rng, xshape, dtype), randn(rng, wshape, dtype)
    b = randn(rng, (wshape[0],), dtype)
    expected = reference.conv2d_forward(x, w, b, padding=1)
    out = nan_array(expected.shape, dtype)
    cnn_core.conv2d_forward(x, w, b, out, padding=1)
    assert_close(out, expected)
    g = randn(rng, expected.shape, dtype)
    results = []
    for mod in (cnn_core, reference):
        gw, gb = np.ones(wshape, dtype), np.ones(wshape[0], dtype)
        gx = nan_array(xshape, dtype)
        mod.conv2d_backward(g, x, w, gw, gb, gx, padding=1)
        results.append((gw, gb, gx))
    for actual, expected in zip(*results):
        assert_close(actual, expected, k=50)


# ----------------------------------------------------------------------------------------
# maxpool2d, compiled vs twin
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("xshape,kernel_size,stride", POOL_CASES)
def test_maxpool2d(rng, dtype, xshape, kernel_size, stride):
    x = randn(rng, xshape, dtype)
    out, idx = cnn_core.maxpool2d_forward(x, kernel_size, stride)
    ref_out, ref_idx = reference.maxpool2d_forward(x, kernel_size, stride)
    np.testing.assert_array_equal(out, ref_out)           # a max is exact
    np.testing.assert_array_equal(idx, ref_idx)
    assert out.dtype == dtype and idx.dtype == np.int64
    # given buffers, NaN / garbage at the start
    out_buf, idx_buf = nan_array(out.shape, dtype), np.full(out.shape, -7, np.int64)
    result = cnn_core.maxpool2d_forward(x, kernel_size, stride, out_buf, idx_buf)
    assert result[0] is out_buf and result[1] is idx_buf
    np.testing.assert_array_equal(out_buf, ref_out)
    np.testing.assert_array_equal(idx_buf, ref_idx)

    g = randn(rng, out.shape, dtype)
    expected = reference.maxpool2d_backward(g, ref_idx, x.shape)
    assert_close(cnn_core.maxpool2d_backward(g, idx, x.shape), expected)
    buf = nan_array(x.shape, dtype)
    assert cnn_core.maxpool2d_backward(g, idx, x.shape, buf) is buf
    assert_close(buf, expected)


def test_maxpool2d_ties_and_nan(backend, dtype):
    x = np.zeros((1, 2, 4, 4), dtype)
    # channel 0: every window constant -> the first position of each window wins
    x[0, 0] = 1.0
    # channel 1: one NaN per window, anywhere; the NaN is the max
    x[0, 1] = np.arange(16).reshape(4, 4)
    x[0, 1, 0, 1] = x[0, 1, 1, 2] = x[0, 1, 3, 0] = x[0, 1, 2, 3] = np.nan
    out, idx = backend.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(out[0, 0], np.ones((2, 2)))
    np.testing.assert_array_equal(idx[0, 0], [[0, 2], [8, 10]])
    assert np.isnan(out[0, 1]).all()
    np.testing.assert_array_equal(idx[0, 1], [[1, 6], [12, 11]])


@pytest.mark.parametrize("h,w", [(2, 2), (3, 5), (4, 31), (5, 32), (2, 33), (6, 64), (7, 81)])
def test_maxpool2d_2x2_vector_path_ties_nan_inf(rng, dtype, h, w):
    # the 2x2 / stride-2 window has a vector path (16 outputs at a time, masked tails):
    # against the twin bit for bit, on data full of ties, NaNs and infinities
    x = rng.integers(-2, 3, size=(3, 2, h, w)).astype(dtype)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.05] = np.inf
    x[rng.random(x.shape) < 0.05] = -np.inf
    out, idx = cnn_core.maxpool2d_forward(x, 2)
    ref_out, ref_idx = reference.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)


def test_maxpool2d_overlap_accumulates(rng, dtype):
    x = randn(rng, (2, 3, 9, 9), dtype)
    x[:, :, 4, 4] = 100.0                         # the max of every window that covers it
    out, idx = cnn_core.maxpool2d_forward(x, 3, 1)
    g = randn(rng, out.shape, dtype)
    grad = cnn_core.maxpool2d_backward(g, idx, x.shape)
    assert_close(grad, reference.maxpool2d_backward(g, idx, x.shape))
    assert_close(grad[:, :, 4, 4], g[:, :, 2:5, 2:5].sum(axis=(2, 3)))


def test_maxpool2d_non_contiguous(rng, dtype):
    x = strided(rng, (2, 3, 8, 6), dtype)
    out, idx = cnn_core.maxpool2d_forward(x, (2, 3), (2, 1))
    ref_out, ref_idx = reference.maxpool2d_forward(x, (2, 3), (2, 1))
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    g = strided(rng, out.shape, dtype)
    assert_close(cnn_core.maxpool2d_backward(g, np.asfortranarray(idx), x.shape),
                 reference.maxpool2d_backward(g, idx, x.shape))


@pytest.mark.parametrize("xshape", [(0, 3, 4, 4), (2, 0, 4, 4)])
def test_maxpool2d_zero_size(dtype, xshape):
    x = np.zeros(xshape, dtype)
    for mod in (cnn_core, reference):
        out, idx = mod.maxpool2d_forward(x, 2)
        assert out.shape == idx.shape == xshape[:2] + (2, 2)
        grad = mod.maxpool2d_backward(out, idx, xshape)
        assert grad.shape == xshape and grad.dtype == dtype


# ----------------------------------------------------------------------------------------
# avgpool2d: the twin by hand, by loops and by central differences; compiled vs twin
# ----------------------------------------------------------------------------------------

def test_reference_avgpool_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out = reference.avgpool2d_forward(x, 2)
    np.testing.assert_array_equal(out, [[[[2.5, 4.5], [10.5, 12.5]]]])
    # each window's gradient shared out evenly over its four inputs
    grad = reference.avgpool2d_backward(np.array([[[[4.0, 8.0], [12.0, 16.0]]]]), x.shape, 2)
    np.testing.assert_array_equal(grad[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2],
                                               [3, 3, 4, 4], [3, 3, 4, 4]])
    # overlapping 2x2 windows, stride 1: the centre is in all four, a corner in one
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(reference.avgpool2d_forward(x, 2, 1), [[[[2, 3], [5, 6]]]])
    grad = reference.avgpool2d_backward(np.ones((1, 1, 2, 2)), x.shape, 2, 1)
    np.testing.assert_array_equal(grad[0, 0], [[0.25, 0.5, 0.25], [0.5, 1, 0.5],
                                               [0.25, 0.5, 0.25]])
    # floor mode: a 5x5 input, 2x2 windows: the last row and column are in no window
    grad = reference.avgpool2d_backward(np.ones((1, 1, 2, 2)), (1, 1, 5, 5), 2)
    assert not grad[0, 0, 4].any() and not grad[0, 0, :, 4].any()
    np.testing.assert_array_equal(grad[0, 0, :4, :4], np.full((4, 4), 0.25))
    # a (1, 3) window with stride (1, 2) over one row
    x = np.array([[[[1.0, 2.0, 6.0, 4.0, 5.0]]]])
    np.testing.assert_array_equal(reference.avgpool2d_forward(x, (1, 3), (1, 2)),
                                  [[[[3.0, 5.0]]]])


@pytest.mark.parametrize("xshape,kernel_size,stride", AVGPOOL_CASES[:-3])
def test_reference_avgpool_matches_loops(rng, xshape, kernel_size, stride):
    x = rng.standard_normal(xshape)
    np.testing.assert_allclose(reference.avgpool2d_forward(x, kernel_size, stride),
                               avgpool_loops(x, kernel_size, stride), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kernel_size,stride", [(2, None), (3, 1), ((2, 3), (1, 2)), (3, 2),
                                                (2, 3), ((4, 5), None)])
def test_reference_avgpool_backward_is_derivative(rng, kernel_size, stride):
    x = rng.standard_normal((2, 2, 5, 6))
    out = reference.avgpool2d_forward(x, kernel_size, stride)
    g = rng.standard_normal(out.shape)
    grad = reference.avgpool2d_backward(g, x.shape, kernel_size, stride)
    h = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + h
        up = np.sum(g * reference.avgpool2d_forward(x, kernel_size, stride))
        x[i] = saved - h
        down = np.sum(g * reference.avgpool2d_forward(x, kernel_size, stride))
        x[i] = saved
        numeric[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)


def _window_terms(kernel_size, stride):
    """(terms in a window's sum, windows that can share an input)."""
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(kernel_size if stride is None else stride)
    return kh * kw, -(-kh // sh) * -(-kw // sw)


@pytest.mark.parametrize("xshape,kernel_size,stride", AVGPOOL_CASES)
def test_avgpool2d(rng, dtype, xshape, kernel_size, stride):
    x = randn(rng, xshape, dtype)
    terms, overlaps = _window_terms(kernel_size, stride)
    expected = reference.avgpool2d_forward(x, kernel_size, stride)
    out = cnn_core.avgpool2d_forward(x, kernel_size, stride)
    assert out.dtype == dtype
    assert_close(out, expected, k=terms)
    buf = nan_array(expected.shape, dtype)               # NaN: read instead of written?
    assert cnn_core.avgpool2d_forward(x, kernel_size, stride, buf) is buf
    np.testing.assert_array_equal(buf, out)

    g = randn(rng, out.shape, dtype)
    expected = reference.avgpool2d_backward(g, x.shape, kernel_size, stride)
    grad = cnn_core.avgpool2d_backward(g, x.shape, kernel_size, stride)
    assert grad.dtype == dtype
    assert_close(grad, expected, k=overlaps)
    buf = nan_array(x.shape, dtype)
    assert cnn_core.avgpool2d_backward(g, list(x.shape), kernel_size, stride, buf) is buf
    np.testing.assert_array_equal(buf, grad)


@pytest.mark.parametrize("xshape,kernel_size,stride", AVGPOOL_CASES[:10])
def test_avgpool2d_sums_each_window_row_by_row(rng, dtype, xshape, kernel_size, stride):
    # the documented order (from 0, row by row, then one division): bit for bit
    x = randn(rng, xshape, dtype)
    np.testing.assert_array_equal(cnn_core.avgpool2d_forward(x, kernel_size, stride),
                                  avgpool_row_by_row(x, kernel_size, stride))


@pytest.mark.parametrize("xshape,kernel_size,stride", [
    ((13, 11, 9, 9), 3, 1), ((7, 11, 10, 9), 3, 2), ((128, 16, 7, 7), 7, None),
    ((5, 40, 6, 6), 2, None)])
def test_avgpool2d_has_the_same_bits_on_any_thread_count(rng, dtype, xshape, kernel_size,
                                                         stride):
    # planes are split among threads (a partial last span), each plane wholly on one
    x = randn(rng, xshape, dtype)
    g = None
    before = cnn_core.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            out = cnn_core.avgpool2d_forward(x, kernel_size, stride)
            g = randn(rng, out.shape, dtype) if g is None else g
            results.append((out, cnn_core.avgpool2d_backward(g, x.shape, kernel_size, stride)))
    finally:
        cnn_core.set_num_threads(before)
    for out, grad in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])
    terms, overlaps = _window_terms(kernel_size, stride)
    assert_close(results[0][0], reference.avgpool2d_forward(x, kernel_size, stride), k=terms)
    assert_close(results[0][1], reference.avgpool2d_backward(g, x.shape, kernel_size, stride),
                 k=overlaps)


def test_avgpool2d_non_contiguous(rng, dtype):
    x = strided(rng, (2, 3, 8, 7), dtype)
    out = cnn_core.avgpool2d_forward(x, (3, 2), (2, 1))
    assert_close(out, reference.avgpool2d_forward(x, (3, 2), (2, 1)), k=6)
    g = strided(rng, out.shape, dtype)
    assert_close(cnn_core.avgpool2d_backward(g, x.shape, (3, 2), (2, 1)),
                 reference.avgpool2d_backward(g, x.shape, (3, 2), (2, 1)), k=4)


def test_avgpool2d_keeps_each_value_in_its_windows(backend, dtype):
    # a non-finite input reaches exactly the outputs whose windows cover it (no window
    # reads past its row or into the next plane), and a non-finite gradient exactly the
    # inputs of its window
    x = np.ones((2, 2, 5, 7), dtype)
    x[0, 1, 0, 6] = np.nan                   # last column of a row: in no 2x2 window
    x[0, 1, 3, 5] = np.inf                   # the window at (1, 2)
    x[1, 0, 0, 0] = -np.inf                  # the first window of a plane
    out = backend.avgpool2d_forward(x, 2)
    bad = np.zeros(out.shape, bool)
    bad[0, 1, 1, 2] = bad[1, 0, 0, 0] = True
    np.testing.assert_array_equal(~np.isfinite(out), bad)
    np.testing.assert_array_equal(out[~bad], 1)
    g = np.ones((2, 2, 2, 3), dtype)
    g[1, 0, 1, 2] = np.nan                   # the last window of a plane: rows 2-4, columns 4-6
    grad = backend.avgpool2d_backward(g, (2, 2, 5, 7), 3, 2)
    bad = np.zeros(grad.shape, bool)
    bad[1, 0, 2:, 4:] = True
    np.testing.assert_array_equal(np.isnan(grad), bad)


@pytest.mark.parametrize("xshape", [(0, 3, 4, 4), (2, 0, 4, 4), (0, 0, 1, 1)])
def test_avgpool2d_zero_size(dtype, xshape):
    x = np.zeros(xshape, dtype)
    for mod in (cnn_core, reference):
        out = mod.avgpool2d_forward(x, 2, 1) if xshape[2] > 1 else mod.avgpool2d_forward(x, 1)
        assert out.dtype == dtype and out.shape[:2] == xshape[:2]
        kernel, stride = (2, 1) if xshape[2] > 1 else (1, None)
        grad = mod.avgpool2d_backward(out, xshape, kernel, stride)
        assert grad.shape == xshape and grad.dtype == dtype


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n,hw,k,stride,padding", [(7, 14, 3, 1, 0), (13, 9, 2, 1, 1),
                                                   (9, 12, 5, 2, 2), (30, 6, 3, 1, 1)])
def test_conv2d_grouped_samples_match_the_twin(threads, n, hw, k, stride, padding):
    # small feature maps are convolved several samples per GEMM (a full group and a partial
    # last one per thread); every sample must still equal the one-at-a-time twin
    rng = np.random.default_rng(n * 31 + hw)
    x = rng.standard_normal((n, 3, hw, hw))
    w = rng.standard_normal((4, 3, k, k))
    b = rng.standard_normal(4)
    before = cnn_core.get_num_threads()
    try:
        cnn_core.set_num_threads(threads)
        out = cnn_core.conv2d_forward(x, w, b, stride=stride, padding=padding)
        g = rng.standard_normal(out.shape)
        gw, gb = np.zeros_like(w), np.zeros_like(b)
        gx = cnn_core.conv2d_backward(g, x, w, gw, gb, stride=stride, padding=padding)
    finally:
        cnn_core.set_num_threads(before)
    expect = reference.conv2d_forward(x, w, b, stride=stride, padding=padding)
    rgw, rgb = np.zeros_like(w), np.zeros_like(b)
    rgx = reference.conv2d_backward(g, x, w, rgw, rgb, stride=stride, padding=padding)
    np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, rgx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, rgw, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(gb, rgb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", [cnn_core, reference], ids=["cython", "numpy"])
def test_conv2d_empty_image_with_padding_is_all_bias(backend):
    # W = 0 but padding makes room for windows: every window covers only zeros
    x = np.zeros((4, 1, 8, 0), np.float32)
    w = np.ones((2, 1, 3, 2), np.float32)
    b = np.array([1.5, -2.0], np.float32)
    out = backend.conv2d_forward(x, w, b, stride=2, padding=(0, 2))
    assert out.shape == (4, 2, 3, 2)
    np.testing.assert_array_equal(out, np.broadcast_to(b[None, :, None, None], out.shape))
    g = np.ones(out.shape, np.float32)
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    gx = backend.conv2d_backward(g, x, w, gw, gb, stride=2, padding=(0, 2))
    assert gx.shape == x.shape and not gw.any()
    np.testing.assert_array_equal(gb, [24.0, 24.0])


@pytest.mark.parametrize("n, o", [(1, 3), (13, 1), (29, 6), (64, 16)])
def test_conv2d_backward_bias_gradient_has_the_same_bits_on_any_thread_count(rng, dtype, n, o):
    # each sample's sums are taken by the thread that has the sample, then added in sample
    # order by one thread: the same additions whatever the thread count
    x, w = randn(rng, (n, 3, 20, 19), dtype), randn(rng, (o, 3, 3, 3), dtype)
    g = randn(rng, (n, o, 18, 17), dtype)       # (29 and 64 samples: on 2 and 3 threads)
    before = cnn_core.get_num_threads()
    sums = []
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            gw, gb = np.zeros_like(w), np.full(o, 0.25, dtype)
            cnn_core.conv2d_backward(g, x, w, gw, gb, compute_grad_x=False)
            sums.append(gb)
    finally:
        cnn_core.set_num_threads(before)
    for gb in sums[1:]:
        np.testing.assert_array_equal(gb, sums[0])
    expected = np.full(o, 0.25) + g.astype(np.float64).sum(axis=(0, 2, 3))
    assert_close(sums[0], expected.astype(dtype), k=n * 306)


# the shapes of the vector rows of im2col (float32, unit column stride, padding) and col2im
# (float32, unit column stride):
# rows narrower and wider than a 16-lane chunk, padding wider than the kernel's reach,
# row strides, windows larger than the input
VECTOR_ROW_CASES = [
    ((2, 3, 14, 14), (5, 3, 3), (1, 1), (1, 1)),
    ((2, 2, 5, 1), (3, 2, 1), (1, 1), (1, 1)),
    ((3, 2, 9, 16), (4, 3, 3), (2, 1), (1, 1)),
    ((2, 2, 7, 17), (3, 5, 4), (3, 1), (2, 2)),
    ((1, 3, 11, 33), (2, 2, 5), (1, 1), (0, 2)),
    ((2, 1, 4, 40), (3, 3, 7), (1, 1), (2, 0)),
    ((2, 2, 3, 3), (2, 5, 5), (1, 1), (2, 2)),
    ((1, 1, 2, 2), (1, 3, 3), (2, 1), (4, 3)),
    ((1, 2, 3, 150), (3, 3, 3), (1, 1), (1, 1)),   # more than 8 chunks of 16 in a row
    ((3, 4, 12, 12), (5, 5, 5), (1, 1), (0, 0)),   # no padding: col2im's vector rows only
    ((2, 2, 9, 21), (3, 2, 4), (2, 1), (0, 0)),
]


@pytest.mark.parametrize("xshape,wdims,stride,padding", VECTOR_ROW_CASES)
def test_conv2d_vector_rows_have_the_bits_of_the_scalar_loops(rng, xshape, wdims, stride,
                                                              padding):
    # src/nn_im2col.h copies each row of col with AVX-512 masks and gathers col2im per
    # input row in a register; both must give the scalar loops' very bits
    from cnn_core import _conv

    if not _conv._set_vector_rows(None):
        pytest.skip("no AVX-512 here, or NN_ISA holds it back: the scalar loops are the "
                    "only path")
    x, w, b = _conv_inputs(rng, np.float32, xshape, wdims, True)
    kwargs = dict(stride=stride, padding=padding)
    g = randn(rng, reference.conv2d_forward(x, w, b, **kwargs).shape, np.float32)
    results = []
    try:
        for enabled in (True, False):
            assert _conv._set_vector_rows(enabled) == enabled
            out = cnn_core.conv2d_forward(x, w, b, **kwargs)
            gw, gb = np.zeros_like(w), np.zeros_like(b)
            gx = cnn_core.conv2d_backward(g, x, w, gw, gb, **kwargs)
            results.append((out, gw, gb, gx))
    finally:
        _conv._set_vector_rows(None)
    for vector, scalar in zip(*results):
        np.testing.assert_array_equal(vector, scalar)
    k = xshape[1] * wdims[1] * wdims[2]
    assert_close(results[0][0], reference.conv2d_forward(x, w, b, **kwargs), k=k)


@pytest.mark.parametrize("n", [1, 5, 16])
def test_conv2d_forward_by_pixel_rows_has_the_same_bits_on_any_thread_count(rng, dtype, n):
    # with more than 32 channels the forward's products are (pixels x channels): a thread
    # with one sample, a partial group or full ones computes each sample the same way
    x, w, b = _conv_inputs(rng, dtype, (n, 6, 10, 10), (48, 3, 3), True)
    before = cnn_core.get_num_threads()
    outs = []
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            outs.append(cnn_core.conv2d_forward(x, w, b, padding=1))
    finally:
        cnn_core.set_num_threads(before)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert_close(outs[0], reference.conv2d_forward(x, w, b, padding=1), k=54)


# ----------------------------------------------------------------------------------------
# The direct 3x3 path (src/nn_direct.h): float32, stride 1, padding 1, AVX-512
# ----------------------------------------------------------------------------------------

# (N, C, H, W), O: one pixel, one row, one column, odd and prime sizes; 7x7 and 14x14
# planes stacked 16 and 4 to a call (with a partial last stack; for the weight gradient,
# 64 channels: one stack per chunk, so chunks added up and a partial stack after them);
# channel counts that leave a partial block of 8 output channels; the largest plane the
# path takes (64x64)
DIRECT_CASES = [
    ((1, 1, 1, 1), 1),
    ((2, 3, 1, 17), 5),
    ((3, 2, 13, 1), 9),
    ((5, 7, 7, 7), 11),
    ((19, 16, 7, 7), 16),
    ((37, 64, 7, 7), 64),
    ((6, 5, 14, 14), 8),
    ((3, 4, 3, 3), 13),
    ((2, 3, 23, 29), 7),
    ((3, 16, 28, 28), 16),
    ((1, 2, 64, 64), 3),
    ((4, 1, 28, 28), 16),
]


def _direct_available():
    from cnn_core import _conv
    if not _conv._set_direct(None):
        pytest.skip("no AVX-512 here, or NN_ISA holds it back: im2col is the only path")
    return _conv


def _conv_both(x, w, b, g, need_gx=True):
    out = cnn_core.conv2d_forward(x, w, b, padding=1)
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    gx = cnn_core.conv2d_backward(g, x, w, gw, gb, padding=1, compute_grad_x=need_gx)
    return out, gw, gb, gx


@pytest.mark.parametrize("xshape,o", DIRECT_CASES)
def test_direct_3x3_matches_the_twin_and_keeps_the_forwards_bits(rng, xshape, o):
    # the forward sums c, then the nine taps, one fused multiply-add at a time from 0: the
    # GEMM of im2col's columns sums the same products in the same order, so the two paths
    # give the same bits; the gradients sum in another order (within float32 tolerance)
    _conv = _direct_available()
    x, w, b = _conv_inputs(rng, np.float32, xshape, (o, 3, 3), True)
    g = randn(rng, (xshape[0], o) + xshape[2:], np.float32)
    try:
        assert _conv._set_direct(False) is False
        by_columns = _conv_both(x, w, b, g)
        assert _conv._set_direct(True) is True
        direct = _conv_both(x, w, b, g)
    finally:
        _conv._set_direct(None)
    np.testing.assert_array_equal(direct[0], by_columns[0])
    np.testing.assert_array_equal(direct[2], by_columns[2])       # the bias: the same sums
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, w, b, g))
    rgw, rgb = np.zeros_like(w64), np.zeros_like(b64)
    rgx = reference.conv2d_backward(g64, x64, w64, rgw, rgb, padding=1)
    out64 = reference.conv2d_forward(x64, w64, b64, padding=1)
    k = xshape[1] * 9
    assert_close(direct[0], out64.astype(np.float32), k=k)
    assert_close(direct[1], rgw.astype(np.float32), k=xshape[0] * xshape[2] * xshape[3])
    assert_close(direct[3], rgx.astype(np.float32), k=o * 9)


@pytest.mark.parametrize("xshape,o", [((23, 16, 7, 7), 16), ((9, 8, 14, 14), 12),
                                      ((5, 3, 28, 28), 16)])
def test_direct_3x3_has_the_same_bits_on_any_thread_count(rng, xshape, o):
    # parts of samples per thread, stacks of planes within a part (a partial last stack
    # where the part ends): each output's sum is the same wherever its sample falls
    _direct_available()
    x, w, b = _conv_inputs(rng, np.float32, xshape, (o, 3, 3), True)
    g = randn(rng, (xshape[0], o) + xshape[2:], np.float32)
    before = cnn_core.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            results.append(_conv_both(x, w, b, g))
    finally:
        cnn_core.set_num_threads(before)
    for result in results[1:]:
        np.testing.assert_array_equal(result[0], results[0][0])     # forward
        np.testing.assert_array_equal(result[3], results[0][3])     # input gradient
    # (the weight gradient is summed per thread's part, then the parts in order: the same
    # bits for the same thread count, as the im2col path's)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_direct_3x3_keeps_each_value_in_its_own_row_and_plane(rng, value):
    # a masked load zeroes the lanes whose tap lies in the padding: a non-finite value at
    # the end of a row, of a plane or of a stacked sample must reach exactly the outputs
    # whose 3x3 window covers it, as in the twin (a tap that wrapped around to the next
    # row, or into the next sample's plane, would spread it further)
    _conv = _direct_available()
    x, w, b = _conv_inputs(rng, np.float32, (17, 2, 7, 7), (3, 3, 3), True)
    x[3, 1, 2, 6] = value          # last column of a row
    x[4, 0, 6, 3] = value          # last row of a plane (the next sample's plane follows)
    x[5, 1, 0, 0] = value          # first pixel of a plane
    g = randn(rng, (17, 3, 7, 7), np.float32)
    g[8, 2, 6, 6] = value
    out, gw, gb, gx = _conv_both(x, w, b, g)
    rgw, rgb = np.zeros_like(w), np.zeros_like(b)
    with np.errstate(invalid="ignore"):           # (inf - inf in the twin's sums)
        expect = reference.conv2d_forward(x, w, b, padding=1)
        rgx = reference.conv2d_backward(g, x, w, rgw, rgb, padding=1)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expect))
    np.testing.assert_array_equal(np.isfinite(gx), np.isfinite(rgx))
    np.testing.assert_array_equal(np.isfinite(gw), np.isfinite(rgw))   # stacked planes
    finite = np.isfinite(expect)
    assert_close(out[finite], expect[finite], np.float32, k=18)
    assert _conv._set_direct(None)


def test_direct_3x3_is_off_for_other_shapes_and_float64(rng):
    # padding 0 or 2, a 5x5 kernel, float64 and planes past 64x64 take im2col:
    # the same bits with the direct path switched off
    _conv = _direct_available()
    cases = [((2, 3, 9, 9), (4, 3, 3), 2, 0, np.float32),
             ((2, 3, 9, 9), (4, 3, 3), 2, 1, np.float64),
             ((2, 3, 9, 9), (4, 3, 3), 1, 0, np.float32),
             ((2, 3, 9, 9), (4, 5, 5), 1, 2, np.float32),
             ((2, 3, 9, 9), (4, 3, 3), 1, 1, np.float64),
             ((1, 2, 65, 64), (3, 3, 3), 1, 1, np.float32)]
    for xshape, wdims, stride, padding, dtype in cases:
        x, w, b = _conv_inputs(rng, dtype, xshape, wdims, True)
        results = []
        try:
            for enabled in (True, False):
                _conv._set_direct(enabled)
                out = cnn_core.conv2d_forward(x, w, b, stride=stride, padding=padding)
                g = randn(rng, out.shape, dtype) if not results else results[0][1]
                gw, gb = np.zeros_like(w), np.zeros_like(b)
                gx = cnn_core.conv2d_backward(g, x, w, gw, gb, stride=stride, padding=padding)
                results.append((out, g, gw, gb, gx))
        finally:
            _conv._set_direct(None)
        for a, c in zip(results[0], results[1]):
            np.testing.assert_array_equal(a, c)


# stride 2, padding 1 (a ResNet's downsampling 3x3) from phase planes: input planes of
# 1 pixel, odd and even sides, prime sizes; outputs of 7x7 and 4x4 stacked 4 and 16 to a
# call with partial last stacks; 64 channels (chunks of the weight gradient added up); an
# output of 64x64, the largest the path takes
DIRECT_S2_CASES = [
    ((1, 1, 1, 1), 1),
    ((2, 3, 1, 17), 5),
    ((3, 2, 2, 2), 3),
    ((5, 7, 13, 13), 11),
    ((17, 2, 7, 7), 3),
    ((6, 16, 28, 28), 32),
    ((19, 32, 14, 14), 64),
    ((3, 5, 8, 31), 9),
    ((37, 64, 15, 15), 64),
    ((1, 2, 128, 128), 3),
]


@pytest.mark.parametrize("xshape,o", DIRECT_S2_CASES)
def test_direct_3x3_stride_2_keeps_the_bits_and_matches_the_twin(rng, xshape, o):
    # the forward from phase planes sums the products of im2col's column in its order: the
    # same bits; so does the input gradient from grad_out's phase-plane taps (each tap's sum
    # over the output channels, then the taps in col2im's order); the weight gradient from
    # the phase planes is summed in its own order (float32 tolerance against the twin)
    _conv = _direct_available()
    x, w, b = _conv_inputs(rng, np.float32, xshape, (o, 3, 3), True)
    out = cnn_core.conv2d_forward(x, w, b, stride=2, padding=1)
    g = randn(rng, out.shape, np.float32)
    results, calls = [], [_conv._direct_s2_gx_calls()]
    try:
        for enabled in (False, True):
            assert _conv._set_direct(enabled) is enabled
            out = cnn_core.conv2d_forward(x, w, b, stride=2, padding=1)
            gw, gb = np.zeros_like(w), np.zeros_like(b)
            gx = cnn_core.conv2d_backward(g, x, w, gw, gb, stride=2, padding=1)
            gw_only = np.zeros_like(w)
            cnn_core.conv2d_backward(g, x, w, gw_only, None, stride=2, padding=1,
                                     compute_grad_x=False)
            results.append((out, gw, gb, gx, gw_only))
            calls.append(_conv._direct_s2_gx_calls())
    finally:
        _conv._set_direct(None)
    by_columns, direct = results
    assert np.diff(calls).tolist() == [0, 1]        # the input gradient took the direct path
    np.testing.assert_array_equal(direct[0], by_columns[0])
    np.testing.assert_array_equal(direct[2], by_columns[2])
    np.testing.assert_array_equal(direct[3], by_columns[3])
    np.testing.assert_array_equal(direct[4], direct[1])
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, w, b, g))
    rgw, rgb = np.zeros_like(w64), np.zeros_like(b64)
    reference.conv2d_backward(g64, x64, w64, rgw, rgb, stride=2, padding=1)
    assert_close(direct[1], rgw.astype(np.float32), k=xshape[0] * g.shape[2] * g.shape[3])


@pytest.mark.parametrize("xshape,o", [((4, 9, 13, 11), 17), ((3, 8, 2, 3), 8),
                                      ((3, 8, 4, 6), 5), ((2, 3, 5, 5), 1025)])
def test_direct_3x3_stride_2_input_gradient_keeps_the_bits_with_non_finite_values(
        rng, xshape, o):
    # a non-finite grad_out or weight reaches exactly the input-gradient values it reaches
    # on im2col's path, with the same bits elsewhere: a lane whose tap falls off grad_out's
    # plane adds nothing (even where the weight is infinite), as col2im adds nothing there;
    # -0.0 and +0.0 as there too (an even height and width: the lanes whose tap falls off the
    # plane's last row or column are pixels of the image, not dropped phase pixels). More
    # than 1024 output channels (more than one block of the GEMM's k) take im2col's path
    _conv = _direct_available()
    x, w, b = _conv_inputs(rng, np.float32, xshape, (o, 3, 3), True)
    oh, ow = (xshape[2] + 1) // 2, (xshape[3] + 1) // 2
    for value in (np.inf, -np.inf, np.nan):
        g = randn(rng, (xshape[0], o, oh, ow), np.float32)
        wv = w.copy()
        g[0, 0, -1, -1] = value                 # the last pixel of a plane
        g[-1, -1, 0, ow - 1] = value            # the end of the first row
        wv[0, 0, 0, 0] = value                  # a tap that falls off at the plane's edge
        wv[-1, -1, 2, 2] = value
        g[1 % xshape[0], 0] = -0.0              # a whole plane of -0.0
        results, calls = [], []
        try:
            for enabled in (False, True):
                assert _conv._set_direct(enabled) is enabled
                for relu in (False, True):
                    gw = np.zeros_like(wv)
                    before = _conv._direct_s2_gx_calls()
                    with np.errstate(invalid="ignore"):
                        results.append(cnn_core.conv2d_backward(g, x, wv, gw, None, stride=2,
                                                                padding=1, relu_x=relu))
                    calls.append(_conv._direct_s2_gx_calls() - before)
        finally:
            _conv._set_direct(None)
        # im2col's path twice, then the direct one twice (not with 1025 channels)
        assert calls == [0, 0] + [int(o <= 1024)] * 2
        for by_columns, direct in zip(results[:2], results[2:]):
            assert direct.tobytes() == by_columns.tobytes()
        assert not np.isfinite(results[0]).all()


def test_direct_3x3_stride_2_same_bits_on_any_thread_count_and_non_finite_values(rng):
    # parts of samples per thread, stacks within a part: the forward's bits do not depend
    # on where a sample falls; a non-finite input at a row's or plane's end reaches exactly
    # the outputs and weight-gradient entries the twin's do
    _direct_available()
    x, w, b = _conv_inputs(rng, np.float32, (23, 4, 13, 13), (8, 3, 3), True)
    g = randn(rng, (23, 8, 7, 7), np.float32)
    before = cnn_core.get_num_threads()
    outs = []
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            outs.append(cnn_core.conv2d_forward(x, w, b, stride=2, padding=1))
    finally:
        cnn_core.set_num_threads(before)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    for value in (np.inf, np.nan):
        xv = x.copy()
        xv[3, 1, 2, 12] = value        # last column of a row
        xv[4, 0, 12, 3] = value        # last row of a plane
        xv[5, 1, 0, 0] = value         # first pixel
        xv[6, 2, 11, 11] = value       # an odd row and column (read by kh = 2, kw = 2)
        out = cnn_core.conv2d_forward(xv, w, b, stride=2, padding=1)
        gw = np.zeros_like(w)
        cnn_core.conv2d_backward(g, xv, w, gw, None, stride=2, padding=1,
                                 compute_grad_x=False)
        rgw, rgb = np.zeros_like(w), np.zeros_like(b)
        with np.errstate(invalid="ignore"):
            expect = reference.conv2d_forward(xv, w, b, stride=2, padding=1)
            reference.conv2d_backward(g, xv, w, rgw, rgb, stride=2, padding=1)
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expect))
        np.testing.assert_array_equal(np.isfinite(gw), np.isfinite(rgw))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("xshape,wdims,stride,padding", CONV_CASES + [
    (xshape, (o, 3, 3), 1, 1) for xshape, o in DIRECT_CASES[3:]] + [
    ((3, 4, 9, 9), (5, 3, 3), 2, 1), ((5, 16, 28, 28), (32, 3, 3), 2, 1)])   # stride 2
def test_conv2d_backward_through_a_relu_has_the_bits_of_the_two_calls(
        rng, dtype, threads, xshape, wdims, stride, padding):
    # relu_x=True: x is a ReLU's output and grad_x goes on through that ReLU, each sample's
    # as it is written -- the bits of relu_backward(conv2d_backward(...), x), on every path
    # (direct 3x3 with small planes stacked, GEMM + col2im, 1x1) and thread count; the
    # parameter gradients are untouched by it
    from cnn_core import _conv
    x, w, b = _conv_inputs(rng, dtype, xshape, wdims, True)
    x = np.where(rng.random(x.shape) < 0.4, 0, x).astype(dtype)     # a ReLU's zeros...
    x.reshape(-1)[1::7] = -1                                        # ...and any x <= 0
    oh = (xshape[2] + 2 * _pair(padding)[0] - wdims[1]) // _pair(stride)[0] + 1
    ow = (xshape[3] + 2 * _pair(padding)[1] - wdims[2]) // _pair(stride)[1] + 1
    g = randn(rng, (xshape[0], wdims[0], oh, ow), dtype)
    before = cnn_core.get_num_threads()
    try:
        cnn_core.set_num_threads(threads)
        for direct in (None, False):
            _conv._set_direct(direct)
            gw1, gb1, gw2, gb2 = (np.zeros_like(a) for a in (w, b, w, b))
            plain = cnn_core.conv2d_backward(g, x, w, gw1, gb1, stride=stride, padding=padding)
            expected = cnn_core.relu_backward(plain, x)
            out = np.full(x.shape, np.nan, dtype)
            got = cnn_core.conv2d_backward(g, x, w, gw2, gb2, out, stride=stride,
                                           padding=padding, relu_x=True)
            assert got is out and got.tobytes() == expected.tobytes()
            assert gw2.tobytes() == gw1.tobytes() and gb2.tobytes() == gb1.tobytes()
            assert cnn_core.conv2d_backward(g, x, w, gw2, None, stride=stride, padding=padding,
                                            compute_grad_x=False, relu_x=True) is None
    finally:
        _conv._set_direct(None)
        cnn_core.set_num_threads(before)
    rgw, rgb = np.zeros_like(w), np.zeros_like(b)
    twin = reference.conv2d_backward(g, x, w, rgw, rgb, stride=stride, padding=padding,
                                     relu_x=True)
    assert_close(got, twin, k=wdims[0] * wdims[1] * wdims[2])
    assert ((twin == 0) | (x > 0)).all()
