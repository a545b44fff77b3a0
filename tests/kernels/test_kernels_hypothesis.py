"""Property tests: random shapes (0..40), layouts and scales, compiled kernels vs the twin.

Hypothesis picks the shapes, flags and a seed; NumPy draws the values from the seed
(fast, and the failing example is still reproducible from what Hypothesis prints).
"""
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, sce_grad_atol

SETTINGS = settings(max_examples=50, deadline=None)
dims = st.integers(0, 40)
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)


def _array(rng, shape, dtype, scale=1.0, layout="C"):
    """Values of `shape` in a C, Fortran or strided layout."""
    if layout == "strided":
        big = (scale * rng.standard_normal(tuple(2 * s for s in shape))).astype(dtype)
        return big[tuple(slice(None, None, 2) for _ in shape)]
    x = (scale * rng.standard_normal(shape)).astype(dtype)
    return np.asfortranarray(x) if layout == "F" else x


layouts = st.sampled_from(["C", "F", "strided"])


@SETTINGS
@given(m=dims, k=dims, n=dims, trans_a=st.booleans(), trans_b=st.booleans(), dtype=dtypes,
       alpha=st.sampled_from([1.0, -0.5, 2.0]), beta=st.sampled_from([0.0, 1.0, -0.25]),
       layout=layouts, seed=seeds)
def test_gemm(m, k, n, trans_a, trans_b, dtype, alpha, beta, layout, seed):
    rng = np.random.default_rng(seed)
    a = _array(rng, (k, m) if trans_a else (m, k), dtype, layout=layout)
    b = _array(rng, (n, k) if trans_b else (k, n), dtype, layout=layout)
    c = _array(rng, (m, n), dtype)
    kwargs = dict(trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    out = c.copy() if beta != 0 else nan_array((m, n), dtype)
    assert cnn_core.gemm(a, b, out, **kwargs) is out
    assert_close(out, reference.gemm(a, b, c.copy(), **kwargs), k=k)


@SETTINGS
@given(n=dims, d=dims, m=dims, dtype=dtypes, bias=st.booleans(),
       activation=st.sampled_from([None, "relu"]), seed=seeds)
def test_linear(n, d, m, dtype, bias, activation, seed):
    rng = np.random.default_rng(seed)
    x, w = _array(rng, (n, d), dtype), _array(rng, (d, m), dtype)
    b = _array(rng, (m,), dtype) if bias else None
    assert_close(cnn_core.linear_forward(x, w, b, activation=activation),
                 reference.linear_forward(x, w, b, activation=activation), k=d)
    g = _array(rng, (n, m), dtype)
    grads = []
    for mod in (cnn_core, reference):
        gw = np.zeros((d, m), dtype)
        gb = np.zeros((m,), dtype) if bias else None
        grads.append((gw, gb, mod.linear_backward(g, x, w, gw, gb)))
    (gw, gb, gx), (rgw, rgb, rgx) = grads
    assert_close(gw, rgw, k=n)
    assert_close(gx, rgx, k=m)
    if bias:
        assert_close(gb, rgb, k=n)


ELEMENTWISE = ["relu", "leaky_relu", "sigmoid", "tanh"]


@SETTINGS
@given(shape=st.lists(dims, min_size=1, max_size=3).map(tuple),
       act=st.sampled_from(ELEMENTWISE), dtype=dtypes, layout=layouts,
       scale=st.sampled_from([1.0, 10.0, 1e3]), seed=seeds)
def test_elementwise_activation(shape, act, dtype, layout, scale, seed):
    rng = np.random.default_rng(seed)
    x = _array(rng, shape, dtype, scale, layout)
    g = _array(rng, shape, dtype, layout=layout)
    forward, backward = f"{act}_forward", f"{act}_backward"
    y = getattr(cnn_core, forward)(x)
    assert_close(y, getattr(reference, forward)(x))
    arg = x if act in ("relu", "leaky_relu") else y
    assert_close(getattr(cnn_core, backward)(g, arg), getattr(reference, backward)(g, arg))


@SETTINGS
@given(n=dims, c=dims, dtype=dtypes, layout=layouts,
       scale=st.sampled_from([1.0, 10.0, 1e3, 1e4]), seed=seeds)
def test_softmax(n, c, dtype, layout, scale, seed):
    rng = np.random.default_rng(seed)
    x = _array(rng, (n, c), dtype, scale, layout)
    y = cnn_core.softmax_forward(x)
    assert np.isfinite(y).all()
    assert_close(y, reference.softmax_forward(x), atol=1e-7)
    g = _array(rng, (n, c), dtype, layout=layout)
    # y * (g - <g, y>) cancels: the absolute error is that of <g, y>, ~eps * |g|
    assert_close(cnn_core.softmax_backward(g, y), reference.softmax_backward(g, y))


@SETTINGS
@given(n=st.integers(1, 40), c=st.integers(1, 40), dtype=dtypes,
       scale=st.sampled_from([1.0, 10.0, 1e3, 1e4]), seed=seeds)
def test_softmax_cross_entropy(n, c, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    logits = _array(rng, (n, c), dtype, scale)
    labels = rng.integers(0, c, size=n)
    loss, grad = cnn_core.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert np.isclose(loss, ref_loss, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-6)
    assert_close(grad, ref_grad, atol=sce_grad_atol(logits))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 4), h=st.integers(1, 12), w=st.integers(1, 12),
       o=st.integers(1, 5), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), dtype=dtypes, seed=seeds)
def test_conv2d(n, c, h, w, o, kh, kw, stride, padding, dtype, seed):
    if h + 2 * padding[0] < kh or w + 2 * padding[1] < kw:
        return                                   # no output position: rejected, tested elsewhere
    rng = np.random.default_rng(seed)
    x, wt, b = _array(rng, (n, c, h, w), dtype), _array(rng, (o, c, kh, kw), dtype), _array(rng, (o,), dtype)
    kwargs = dict(stride=stride, padding=padding)
    y = cnn_core.conv2d_forward(x, wt, b, **kwargs)
    assert_close(y, reference.conv2d_forward(x, wt, b, **kwargs), k=c * kh * kw)
    g = _array(rng, y.shape, dtype)
    results = []
    for mod in (cnn_core, reference):
        gw, gb = np.zeros_like(wt), np.zeros_like(b)
        results.append((gw, gb, mod.conv2d_backward(g, x, wt, gw, gb, **kwargs)))
    k = max(n * y.shape[2] * y.shape[3], o * kh * kw)
    for actual, expected in zip(*results):
        assert_close(actual, expected, k=k)


# a pooling call: planes, a window that may not fit (then skipped), a stride or None
POOLING = dict(n=st.integers(0, 3), c=st.integers(0, 4), h=st.integers(1, 12),
               w=st.integers(1, 12), kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
               stride=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))),
               dtype=dtypes, seed=seeds)


def _pool_input(n, c, h, w, kernel, dtype, seed):
    """(rng, x) for a pooling call; an example whose window does not fit is rejected."""
    assume(h >= kernel[0] and w >= kernel[1])
    rng = np.random.default_rng(seed)
    return rng, _array(rng, (n, c, h, w), dtype)


@settings(max_examples=30, deadline=None)
@given(**POOLING)
def test_maxpool2d(n, c, h, w, kernel, stride, dtype, seed):
    rng, x = _pool_input(n, c, h, w, kernel, dtype, seed)
    x = np.round(x, 1)                           # ties are likely: the first maximum must win
    out, idx = cnn_core.maxpool2d_forward(x, kernel, stride)
    ref_out, ref_idx = reference.maxpool2d_forward(x, kernel, stride)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    g = _array(rng, out.shape, dtype)
    assert_close(cnn_core.maxpool2d_backward(g, idx, x.shape),
                 reference.maxpool2d_backward(g, ref_idx, x.shape))


@settings(max_examples=30, deadline=None)
@given(**POOLING)
def test_avgpool2d(n, c, h, w, kernel, stride, dtype, seed):
    rng, x = _pool_input(n, c, h, w, kernel, dtype, seed)
    out = cnn_core.avgpool2d_forward(x, kernel, stride)
    assert_close(out, reference.avgpool2d_forward(x, kernel, stride), k=kernel[0] * kernel[1])
    g = _array(rng, out.shape, dtype)
    assert_close(cnn_core.avgpool2d_backward(g, x.shape, kernel, stride),
                 reference.avgpool2d_backward(g, x.shape, kernel, stride),
                 k=kernel[0] * kernel[1])
