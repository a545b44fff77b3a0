"""Activations and dropout, forward and backward: compiled kernels vs the NumPy twin.

The twin itself is checked against values worked out by hand and, for every backward,
against central differences of its own forward (so a wrong derivative fails here).
"""
import warnings

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, strided

SHAPES = [(0,), (1,), (7,), (97,), (3, 5), (13, 31), (0, 3), (2, 3, 4, 5), (300, 257)]
SOFTMAX_SHAPES = [(1, 1), (1, 7), (7, 1), (13, 31), (97, 10), (3, 97), (128, 10), (64, 1000)]
DROP_SCALE = 1.0 / (1.0 - 0.3)


def _make_inputs(rng, shape, dtype):
    """x with some exact zeros (the kinks), a gradient, a keep-mask."""
    x = randn(rng, shape, dtype, scale=3.0)
    x.reshape(-1)[::5] = 0
    g = randn(rng, shape, dtype)
    mask = (rng.random(shape) > 0.3).astype(np.uint8)
    return x, g, mask


def _sigmoid64(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# name -> the positional arguments, from (x, g, mask); backward kernels get the forward
# output where the API asks for y
ELEMENTWISE = {
    "relu_forward": lambda x, g, mask: (x,),
    "relu_backward": lambda x, g, mask: (g, x),
    "leaky_relu_forward": lambda x, g, mask: (x, 0.1),
    "leaky_relu_backward": lambda x, g, mask: (g, x, 0.2),
    "sigmoid_forward": lambda x, g, mask: (x,),
    "sigmoid_backward": lambda x, g, mask: (g, _sigmoid64(x).astype(x.dtype)),
    "tanh_forward": lambda x, g, mask: (x,),
    "tanh_backward": lambda x, g, mask: (g, np.tanh(x)),
    "dropout_forward": lambda x, g, mask: (x, mask, DROP_SCALE),
    "dropout_backward": lambda x, g, mask: (g, mask, DROP_SCALE),
    "add": lambda x, g, mask: (g, x),
}


# ----------------------------------------------------------------------------------------
# The twin by hand
# ----------------------------------------------------------------------------------------

def test_reference_by_hand():
    r = reference
    x = np.array([-2.0, -0.0, 0.0, 1.5])
    np.testing.assert_array_equal(r.relu_forward(x), [0.0, 0.0, 0.0, 1.5])
    np.testing.assert_array_equal(r.relu_backward(np.array([1.0, 2.0, 3.0, 4.0]), x),
                                  [0.0, 0.0, 0.0, 4.0])
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(r.leaky_relu_forward(x, 0.1), [-0.2, 0.0, 3.0])
    np.testing.assert_allclose(r.leaky_relu_forward(x), [-0.02, 0.0, 3.0])
    np.testing.assert_allclose(r.leaky_relu_backward(np.array([1.0, 1.0, 1.0]), x, 0.1),
                               [0.1, 0.1, 1.0])
    np.testing.assert_allclose(r.sigmoid_forward(np.array([0.0, np.log(3.0), -np.log(3.0)])),
                               [0.5, 0.75, 0.25], rtol=1e-15)
    np.testing.assert_allclose(r.sigmoid_backward(np.array([2.0]), np.array([0.25])), [0.375])
    np.testing.assert_allclose(r.tanh_forward(np.array([0.0, np.log(2.0)])), [0.0, 0.6],
                               rtol=1e-15)
    np.testing.assert_allclose(r.tanh_backward(np.array([2.0]), np.array([0.6])), [1.28])
    np.testing.assert_allclose(r.softmax_forward(np.array([[0.0, np.log(3.0)], [5.0, 5.0]])),
                               [[0.25, 0.75], [0.5, 0.5]], rtol=1e-15)
    # y = (0.25, 0.75), g = (1, 0): y * (g - <g, y>) = (0.25 * 0.75, 0.75 * -0.25)
    np.testing.assert_allclose(r.softmax_backward(np.array([[1.0, 0.0]]), np.array([[0.25, 0.75]])),
                               [[0.1875, -0.1875]])
    mask = np.array([1, 0, 1, 0], dtype=np.uint8)
    np.testing.assert_array_equal(r.dropout_forward(np.array([1.0, 2.0, 3.0, 4.0]), mask, 2.0),
                                  [2.0, 0.0, 6.0, 0.0])
    np.testing.assert_array_equal(r.dropout_backward(np.array([1.0, 2.0, 3.0, 4.0]),
                                                     mask.astype(bool), 0.5),
                                  [0.5, 0.0, 1.5, 0.0])


def _numeric_grad(f, x, g, h=1e-6):
    """d/dx of sum(g * f(x)) by central differences, one element at a time (float64)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        grad[i] = np.sum(g * (f(xp) - f(xm))) / (2 * h)
    return grad


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_reference_backward_is_derivative_of_forward(rng, act):
    x = rng.standard_normal((3, 4)) * 2
    x[np.abs(x) < 1e-3] = 0.5                       # away from the kinks of relu
    g = rng.standard_normal((3, 4))
    forward = getattr(reference, f"{act}_forward")
    backward = getattr(reference, f"{act}_backward")
    if act in ("relu", "leaky_relu"):
        analytic = backward(g, x)                   # these take the input
    else:
        analytic = backward(g, forward(x))          # these take the output
    np.testing.assert_allclose(analytic, _numeric_grad(forward, x, g), rtol=1e-6, atol=1e-8)


def test_reference_sigmoid_never_overflows():
    x = np.array([-1e4, -745.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (np.float32, np.float64):
            y = reference.sigmoid_forward(x.astype(dtype))
            np.testing.assert_allclose(y, _sigmoid64(x), rtol=1e-6, atol=1e-30)


# ----------------------------------------------------------------------------------------
# Compiled vs twin
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise(rng, dtype, name, shape):
    x, g, mask = _make_inputs(rng, shape, dtype)
    args = ELEMENTWISE[name](x, g, mask)
    expected = getattr(reference, name)(*args)
    actual = getattr(cnn_core, name)(*args)
    assert_close(actual, expected)
    out = nan_array(shape, dtype)                     # every element is written
    assert getattr(cnn_core, name)(*args, out=out) is out
    assert_close(out, expected)


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_non_contiguous(rng, dtype, name):
    x = strided(rng, (13, 17), dtype, scale=3.0)
    g = strided(rng, (13, 17), dtype)
    mask = (rng.random((27, 35)) > 0.3).astype(np.uint8)[1::2, 1::2]
    args = ELEMENTWISE[name](x, g, mask)
    if name.endswith("backward") and name.split("_")[0] in ("sigmoid", "tanh"):
        args = (args[0], np.asfortranarray(args[1]))   # y as a Fortran-ordered array
    assert_close(getattr(cnn_core, name)(*args), getattr(reference, name)(*args))


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_does_not_modify_inputs(rng, dtype, name):
    x, g, mask = _make_inputs(rng, (7, 9), dtype)
    args = ELEMENTWISE[name](x, g, mask)
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    getattr(cnn_core, name)(*args)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)


def test_leaky_relu_default_slope(rng, dtype):
    x, g, _ = _make_inputs(rng, (31,), dtype)
    assert_close(cnn_core.leaky_relu_forward(x), reference.leaky_relu_forward(x, 0.01))
    assert_close(cnn_core.leaky_relu_backward(g, x), reference.leaky_relu_backward(g, x, 0.01))


def test_relu_kinks(dtype):
    # the derivative at exactly 0 is 0 for relu and the slope for leaky relu
    x = np.array([-1.0, -0.0, 0.0, 1.0], dtype=dtype)
    g = np.array([5.0, 5.0, 5.0, 5.0], dtype=dtype)
    np.testing.assert_array_equal(cnn_core.relu_forward(x), [0, 0, 0, 1])
    np.testing.assert_array_equal(cnn_core.relu_backward(g, x), [0, 0, 0, 5])
    assert_close(cnn_core.leaky_relu_backward(g, x, 0.5), np.array([2.5, 2.5, 2.5, 5], dtype))


def test_dropout_bool_mask(rng, dtype):
    x, g, mask = _make_inputs(rng, (11, 13), dtype)
    bmask = mask.astype(bool)
    assert_close(cnn_core.dropout_forward(x, bmask, 2.5), reference.dropout_forward(x, mask, 2.5))
    assert_close(cnn_core.dropout_backward(g, bmask, 2.5), reference.dropout_backward(g, mask, 2.5))
    np.testing.assert_array_equal(cnn_core.dropout_forward(x, bmask, 2.5)[~bmask], 0)


@pytest.mark.parametrize("kernel", ["dropout_forward", "dropout_backward"])
def test_dropout_multiplies_by_the_uint8_masks_values(backend, dtype, kernel):
    # out = x * mask * scale with the mask's values as they are: [0, 1, 2, 3] -> x * [0, s,
    # 2s, 3s] (the compiled kernel took any nonzero byte for 1), rounded as (x * m) * s
    x = np.array([1.5, -2.0, 0.75, 3.25, -0.0, 7.0, 1e-3, -4.5], dtype)
    mask = np.array([0, 1, 2, 3, 3, 255, 2, 1], np.uint8)
    expected = (x * mask.astype(dtype)) * dtype(DROP_SCALE)
    got = getattr(backend, kernel)(x, mask, DROP_SCALE)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[:4], np.array([0, -2, 1.5, 9.75], dtype) * dtype(DROP_SCALE))
    # the library's 0/1 masks (uint8 or bool): x * scale where kept, x * 0 where dropped
    keep = (mask % 2).astype(np.uint8)
    for m in (keep, keep.astype(bool)):
        np.testing.assert_array_equal(getattr(backend, kernel)(x, m, DROP_SCALE),
                                      np.where(keep == 1, x * dtype(DROP_SCALE), x * dtype(0)))


@pytest.mark.parametrize("shape", [(4,), (3, 5), (300, 257)])
def test_dropout_masks_0_to_3_agree_with_the_twin_bit_for_bit(rng, dtype, shape):
    # every value of a 0..3 mask, on the threaded path too; a bool mask whose bytes are not
    # 0/1 (a view of a uint8 array) counts each nonzero byte as True, as NumPy does
    x, g, _ = _make_inputs(rng, shape, dtype)
    mask = rng.integers(0, 4, size=shape).astype(np.uint8)
    for kernel, v in (("dropout_forward", x), ("dropout_backward", g)):
        for m in (mask, mask.view(np.bool_)):
            np.testing.assert_array_equal(getattr(cnn_core, kernel)(v, m, DROP_SCALE),
                                          getattr(reference, kernel)(v, m, DROP_SCALE))
    np.testing.assert_array_equal(cnn_core.dropout_forward(x, mask.view(np.bool_), 2.0),
                                  cnn_core.dropout_forward(x, (mask > 0).astype(np.uint8), 2.0))


@pytest.mark.parametrize("name", ["sigmoid_forward", "tanh_forward"])
def test_saturating_extremes(dtype, name):
    x = np.array([-1e4, -745.0, -100.0, -89.0, -20.0, -1e-8, 0.0, 1e-8, 20.0, 89.0, 100.0, 1e4],
                 dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actual = getattr(cnn_core, name)(x)
    assert np.isfinite(actual).all()
    low = 0.0 if name == "sigmoid_forward" else -1.0
    assert (actual >= low).all() and (actual <= 1.0).all()
    assert_close(actual, getattr(reference, name)(x), atol=1e-30 if name == "sigmoid_forward" else 0)
    exact = _sigmoid64(x) if name == "sigmoid_forward" else np.tanh(x.astype(np.float64))
    assert_close(actual, exact.astype(dtype), atol=1e-30)


# ----------------------------------------------------------------------------------------
# Softmax over rows
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
def test_softmax(rng, dtype, shape):
    x = randn(rng, shape, dtype, scale=4.0)
    expected = reference.softmax_forward(x)
    y = cnn_core.softmax_forward(x)
    assert_close(y, expected)
    assert_close(y.astype(np.float64).sum(axis=1), np.ones(shape[0]), rtol=0,
                 atol=1e-5 if dtype == np.float32 else 1e-13)
    out = nan_array(shape, dtype)
    assert cnn_core.softmax_forward(x, out) is out
    assert_close(out, expected)

    g = randn(rng, shape, dtype)
    expected = reference.softmax_backward(g, y)
    assert_close(cnn_core.softmax_backward(g, y), expected)
    out = nan_array(shape, dtype)
    assert cnn_core.softmax_backward(g, y, out=out) is out
    assert_close(out, expected)


def test_softmax_matches_float64_definition(rng, dtype):
    x = randn(rng, (17, 23), dtype, scale=3.0)
    x64 = x.astype(np.float64)
    e = np.exp(x64)
    assert_close(cnn_core.softmax_forward(x), (e / e.sum(1, keepdims=True)).astype(dtype))
    assert_close(reference.softmax_forward(x), (e / e.sum(1, keepdims=True)).astype(dtype))


def test_softmax_extreme_rows(dtype):
    x = np.array([
        [1e4, 0.0, -1e4, 5.0],          # one huge
        [-1e4, -1e4, -1e4, -1e4],       # all equal and very negative
        [3.0, 3.0, 3.0, 3.0],           # all equal
        [1e4, 1e4, -1e4, 0.0],          # two tied at the top
        [-1e4, 0.0, -1e4, -1e4],
        [88.0, 89.0, 90.0, -90.0],      # exp would overflow in float32 without the shift
    ], dtype=dtype)
    expected = np.array([
        [1, 0, 0, 0], [0.25] * 4, [0.25] * 4, [0.5, 0.5, 0, 0], [0, 1, 0, 0],
        np.exp(np.array([-2.0, -1.0, 0.0, -180.0])) / np.exp(np.array([-2.0, -1.0, 0.0, -180.0])).sum(),
    ])
    for mod in (cnn_core, reference):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = mod.softmax_forward(x)
        assert np.isfinite(y).all()
        assert_close(y, expected.astype(dtype), atol=1e-7)


def test_softmax_non_contiguous(rng, dtype):
    x = strided(rng, (9, 12), dtype, scale=3.0)
    y = cnn_core.softmax_forward(x)
    assert_close(y, reference.softmax_forward(x))
    g = strided(rng, (9, 12), dtype)
    assert_close(cnn_core.softmax_backward(g, np.asfortranarray(y)), reference.softmax_backward(g, y))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)], ids=str)
def test_softmax_zero_size(dtype, shape):
    x = np.zeros(shape, dtype)
    for mod in (cnn_core, reference):
        y = mod.softmax_forward(x)
        assert y.shape == shape and y.dtype == dtype
        out = np.empty(shape, dtype)
        assert mod.softmax_forward(x, out) is out
        g = mod.softmax_backward(x, x)
        assert g.shape == shape and g.dtype == dtype


@pytest.mark.parametrize("shape", [(0,), (1,), (97,), (2, 3, 4, 5), (128, 16, 28, 28)])
def test_add_is_numpys_sum_bit_for_bit_in_place_and_on_any_thread_count(rng, dtype, shape):
    # a residual connection's sum, each way: the fast path's Residual step calls it where
    # the layer writes a + b, so the two must agree in every bit (inf - inf, NaN included)
    a = randn(rng, shape, dtype)
    b = randn(rng, shape, dtype)
    if a.size >= 4:
        a.reshape(-1)[:4] = [np.inf, -np.inf, np.nan, 1.0]
        b.reshape(-1)[:4] = [-np.inf, 2.0, 3.0, -0.0]
    with np.errstate(invalid="ignore"):
        expected = a + b
    before = cnn_core.get_num_threads()
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            np.testing.assert_array_equal(cnn_core.add(a, b), expected)
            for target in ("a", "b"):
                a2, b2 = a.copy(), b.copy()
                out = a2 if target == "a" else b2
                assert cnn_core.add(a2, b2, out=out) is out
                np.testing.assert_array_equal(out, expected)
    finally:
        cnn_core.set_num_threads(before)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(reference.add(a, b), expected)
    with pytest.raises(ValueError, match="b"):
        cnn_core.add(a, np.zeros(shape + (1,), dtype))


SPECIALS = [np.inf, -np.inf, np.nan, 1.0, -0.0, 0.0, 2.0, -3.0]


@pytest.mark.parametrize("shape", [(0,), (1,), (97,), (2, 3, 4, 5), (128, 16, 28, 28)])
def test_add_with_relu_is_relu_of_the_sum_bit_for_bit(rng, dtype, shape):
    # a residual block's output in one pass: relu_forward(add(a, b)) to the bit, with
    # infinities, NaN, signed zeros and sums that cancel to exactly 0; in place either way;
    # on 1-3 threads; the twin gives the same values
    a = randn(rng, shape, dtype)
    b = randn(rng, shape, dtype)
    if a.size >= 8:
        a.reshape(-1)[:8] = SPECIALS
        b.reshape(-1)[:8] = [-np.inf, 2.0, 3.0, -1.0, -0.0, -0.0, -2.0, 3.0]
    with np.errstate(invalid="ignore"):
        expected = cnn_core.relu_forward(cnn_core.add(a, b))
        twin = reference.add(a, b, activation="relu")
    assert (expected > 0).any() or a.size < 97
    before = cnn_core.get_num_threads()
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            np.testing.assert_array_equal(cnn_core.add(a, b, activation="relu"), expected)
            for target in ("a", "b"):
                a2, b2 = a.copy(), b.copy()
                out = a2 if target == "a" else b2
                assert cnn_core.add(a2, b2, out=out, activation="relu") is out
                assert out.tobytes() == expected.tobytes()
    finally:
        cnn_core.set_num_threads(before)
    np.testing.assert_array_equal(twin, expected)
    for mod in (cnn_core, reference):
        with pytest.raises(ValueError, match="activation"):
            mod.add(a, b, activation="tanh")


@pytest.mark.parametrize("shape", [(0,), (1,), (97,), (2, 3, 4, 5), (128, 16, 28, 28)])
def test_relu_backward_with_plus_is_the_mask_of_the_sum_bit_for_bit(rng, dtype, shape):
    # a ReLU whose output gradient arrives in two parts (a residual block's input): the
    # bits of relu_backward(add(g, p), x) in one pass; out may be g, p or x itself
    x, g, _ = _make_inputs(rng, shape, dtype)
    p = randn(rng, shape, dtype)
    if x.size >= 8:
        g.reshape(-1)[:8] = SPECIALS
        p.reshape(-1)[:8] = [-np.inf, 2.0, 3.0, -1.0, -0.0, 5.0, -2.0, 3.0]
        x.reshape(-1)[:8] = [1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 0.0, np.nan]
    with np.errstate(invalid="ignore"):
        expected = cnn_core.relu_backward(cnn_core.add(g, p), x)
        twin = reference.relu_backward(g, x, plus=p)
    before = cnn_core.get_num_threads()
    try:
        for count in (1, 2, 3):
            cnn_core.set_num_threads(count)
            assert cnn_core.relu_backward(g, x, plus=p).tobytes() == expected.tobytes()
            for target in ("g", "p", "x"):
                arrays = {"g": g.copy(), "p": p.copy(), "x": x.copy()}
                out = arrays[target]
                assert cnn_core.relu_backward(arrays["g"], arrays["x"], out,
                                              plus=arrays["p"]) is out
                assert out.tobytes() == expected.tobytes()
    finally:
        cnn_core.set_num_threads(before)
    # (the twin multiplies by the mask: -0.0 where the kernel writes 0.0, NaN * 0 = NaN)
    with np.errstate(invalid="ignore"):
        assert_close(twin, expected)


def test_relu_backward_with_plus_names_the_bad_argument(rng):
    g = randn(rng, (4, 5), np.float32)
    x = randn(rng, (4, 5), np.float32)
    for mod in (cnn_core, reference):
        with pytest.raises(ValueError, match="plus has shape"):
            mod.relu_backward(g, x, plus=g[:3])
        with pytest.raises(TypeError, match="plus"):
            mod.relu_backward(g, x, plus=g.astype(np.float64))
        with pytest.raises(ValueError, match="out.*plus"):
            shared = randn(rng, (25,), np.float32)     # out shifted by 5 over plus
            mod.relu_backward(g, x, shared[5:].reshape(4, 5), plus=shared[:20].reshape(4, 5))
