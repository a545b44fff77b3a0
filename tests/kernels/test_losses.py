"""Losses (softmax_cross_entropy, mse, bce_with_logits): compiled kernels vs the NumPy twin.

Each returns (mean loss as a Python float, gradient of that mean). The twin is checked
against a float64 log-sum-exp written out here and against values worked out by hand.
"""
import math
import warnings

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, strided, tol

SCE_SHAPES = [(1, 1), (1, 7), (7, 1), (3, 13), (13, 31), (97, 10), (128, 10), (31, 97)]
LABEL_DTYPES = [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32, np.uint64]
LOSS_SHAPES = [(1,), (7,), (13, 31), (97, 3), (2, 3, 5), (128, 10)]


def sce_float64(logits, labels):
    """Mean cross-entropy and its gradient, in float64, with a log-sum-exp written out."""
    z = np.asarray(logits, dtype=np.float64)
    n = z.shape[0]
    top = z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    loss = np.mean(lse - z[np.arange(n), labels])
    grad = np.exp(z - lse[:, None])
    grad[np.arange(n), labels] -= 1
    return loss, grad / n


def loss_close(actual, expected, dtype):
    """Losses are means: compare with the dtype's tolerances, relative to the loss size."""
    t = tol(dtype)
    assert isinstance(actual, float)
    assert math.isclose(actual, expected, rel_tol=10 * t["rtol"], abs_tol=10 * t["atol"]), (actual, expected)


# ----------------------------------------------------------------------------------------
# The twin by hand
# ----------------------------------------------------------------------------------------

def test_reference_sce_by_hand():
    # softmax of (0, ln 3) is (1/4, 3/4)
    logits = np.array([[0.0, np.log(3.0)], [0.0, np.log(3.0)]])
    loss, grad = reference.softmax_cross_entropy(logits, np.array([1, 0]))
    assert math.isclose(loss, (-np.log(0.75) - np.log(0.25)) / 2, rel_tol=1e-14)
    np.testing.assert_allclose(grad, [[0.125, -0.125], [-0.375, 0.375]], rtol=1e-14)
    # C == 1: the only class is always right
    loss, grad = reference.softmax_cross_entropy(np.array([[5.0], [-3.0]]), np.array([0, 0]))
    assert loss == 0.0
    np.testing.assert_array_equal(grad, [[0.0], [0.0]])


def test_reference_mse_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    target = np.array([[1.0, 0.0], [5.0, 4.0]])
    loss, grad = reference.mse(pred, target)
    assert loss == 2.0                                  # (0 + 4 + 4 + 0) / 4
    np.testing.assert_array_equal(grad, [[0.0, 1.0], [-1.0, 0.0]])   # 2 * diff / 4


def test_reference_bce_by_hand():
    z = np.array([0.0, np.log(3.0), -np.log(3.0), 0.0])
    t = np.array([1.0, 1.0, 0.0, 0.5])
    loss, grad = reference.bce_with_logits(z, t)
    # -log(1/2), -log(3/4), -log(1 - 1/4), and t = 1/2 at z = 0: log 2
    expected = (np.log(2.0) - np.log(0.75) - np.log(0.75) + np.log(2.0)) / 4
    assert math.isclose(loss, expected, rel_tol=1e-14)
    np.testing.assert_allclose(grad, np.array([-0.5, -0.25, 0.25, 0.0]) / 4, atol=1e-16)


def test_reference_sce_matches_float64(rng, dtype):
    logits = randn(rng, (13, 7), dtype, scale=3.0)
    labels = rng.integers(0, 7, size=13)
    loss, grad = reference.softmax_cross_entropy(logits, labels)
    loss64, grad64 = sce_float64(logits, labels)
    loss_close(loss, loss64, dtype)
    assert_close(grad, grad64.astype(dtype))


# ----------------------------------------------------------------------------------------
# softmax_cross_entropy, compiled vs twin
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SCE_SHAPES, ids=str)
def test_sce(rng, dtype, shape):
    n, c = shape
    logits = randn(rng, shape, dtype, scale=3.0)
    labels = rng.integers(0, c, size=n)
    loss, grad = cnn_core.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    loss_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad)
    loss64, grad64 = sce_float64(logits, labels)
    loss_close(loss, loss64, dtype)
    assert_close(grad, grad64.astype(dtype))
    # the gradient of each row sums to 0 (softmax sums to 1, minus one onehot)
    assert_close(grad.astype(np.float64).sum(axis=1), np.zeros(n), atol=1e-6)


def test_sce_grad_buffer(rng, dtype):
    logits = randn(rng, (17, 5), dtype)
    labels = rng.integers(0, 5, size=17)
    grad = nan_array((17, 5), dtype)
    loss, result = cnn_core.softmax_cross_entropy(logits, labels, grad)
    assert result is grad
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    loss_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad)
    grad2 = nan_array((17, 5), dtype)
    assert cnn_core.softmax_cross_entropy(logits, labels, grad=grad2)[1] is grad2


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_sce_label_dtypes(rng, dtype, label_dtype):
    logits = randn(rng, (9, 6), dtype)
    labels = rng.integers(0, 6, size=9).astype(label_dtype)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels.astype(np.int64))
    for mod in (cnn_core, reference):
        loss, grad = mod.softmax_cross_entropy(logits, labels)
        loss_close(loss, ref_loss, dtype)
        assert_close(grad, ref_grad)


def test_sce_non_contiguous(rng, dtype):
    logits = strided(rng, (11, 7), dtype, scale=2.0)
    labels = rng.integers(0, 7, size=22)[::2]
    loss, grad = cnn_core.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    loss_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad)
    loss, grad = cnn_core.softmax_cross_entropy(np.asfortranarray(logits), labels)
    loss_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad)


EXTREME = {
    "plus_minus_1e4": [[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]],
    "all_equal": [[2.5, 2.5, 2.5], [-7.0, -7.0, -7.0], [0.0, 0.0, 0.0]],
    "one_huge": [[0.0, 0.0, 1e4], [1e4, 0.0, 0.0], [0.0, 3e3, 0.0]],
    "all_minus_1e4": [[-1e4, -1e4, -1e4], [-1e4, -1e4, -9999.0], [-1e4, -1e4, -1e4]],
    "float32_overflow": [[100.0, 89.0, -100.0], [88.5, 88.5, 88.5], [0.0, -200.0, 90.0]],
}


@pytest.mark.parametrize("case", list(EXTREME))
@pytest.mark.parametrize("labels", [[0, 1, 2], [2, 0, 1]], ids=["labels012", "labels201"])
def test_sce_extreme_logits(dtype, backend, case, labels):
    logits = np.array(EXTREME[case], dtype=dtype)
    labels = np.array(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = backend.softmax_cross_entropy(logits, labels)
    assert math.isfinite(loss) and np.isfinite(grad).all()
    loss64, grad64 = sce_float64(logits, labels)
    # a loss near 1e4 carries float32's relative error
    assert math.isclose(loss, loss64, rel_tol=tol(dtype)["rtol"], abs_tol=1e-6), (loss, loss64)
    assert_close(grad, grad64.astype(dtype), atol=1e-7)


def test_sce_all_equal_is_log_c(dtype):
    n, c = 4, 10
    logits = np.full((n, c), 3.25, dtype)
    labels = np.arange(n)
    loss, grad = cnn_core.softmax_cross_entropy(logits, labels)
    loss_close(loss, math.log(c), dtype)
    expected = np.full((n, c), 1.0 / c)
    expected[np.arange(n), labels] -= 1
    assert_close(grad, (expected / n).astype(dtype))


def test_sce_does_not_modify_inputs(rng, dtype):
    logits = randn(rng, (5, 4), dtype)
    labels = rng.integers(0, 4, size=5)
    before = logits.copy(), labels.copy()
    cnn_core.softmax_cross_entropy(logits, labels)
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(labels, before[1])


# ----------------------------------------------------------------------------------------
# mse and bce_with_logits, compiled vs twin
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
def test_mse(rng, dtype, shape):
    pred, target = randn(rng, shape, dtype), randn(rng, shape, dtype)
    loss, grad = cnn_core.mse(pred, target)
    ref_loss, ref_grad = reference.mse(pred, target)
    loss_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad)
    diff = pred.astype(np.float64) - target
    loss_close(loss, float(np.mean(diff ** 2)), dtype)
    assert_close(grad, (2 * diff / diff.size).astype(dtype))
    buf = nan_array(shape, dtype)
    assert cnn_core.mse(pred, target, buf)[1] is buf
    assert_close(buf, ref_grad)


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
def test_bce_with_logits(rng, dtype, shape):
    z = randn(rng, shape, dtype, scale=4.0)
    t = rng.random(shape).astype(dtype)
    t.reshape(-1)[::3] = np.round(t.reshape(-1)[::3])     # hard 0/1 targets as well as soft
    loss, grad = cnn_core.bce_with_logits(z, t)
    ref_loss, ref_grad = reference.bce_with_logits(z, t)
    loss_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad)
    # the textbook formula, in float64 (fine at these moderate logits)
    z64, t64 = z.astype(np.float64), t.astype(np.float64)
    s = 1 / (1 + np.exp(-z64))
    loss_close(loss, float(np.mean(-(t64 * np.log(s) + (1 - t64) * np.log(1 - s)))), dtype)
    assert_close(grad, ((s - t64) / z.size).astype(dtype))
    buf = nan_array(shape, dtype)
    assert cnn_core.bce_with_logits(z, t, grad=buf)[1] is buf
    assert_close(buf, ref_grad)


def test_bce_extreme_logits(dtype, backend):
    z = np.array([1e4, -1e4, 1e4, -1e4, 100.0, -100.0, 0.0], dtype=dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = backend.bce_with_logits(z, t)
    # per element: 0, 0, 1e4, 1e4, ~0, ~0, log 2
    expected = (2e4 + 2 * np.log1p(np.exp(-100.0)) + np.log(2.0)) / 7
    assert math.isfinite(loss) and math.isclose(loss, expected, rel_tol=tol(dtype)["rtol"])
    expected_grad = np.array([0, 0, 1, -1, -np.exp(-100.0), np.exp(-100.0), -0.5]) / 7
    assert_close(grad, expected_grad.astype(dtype), atol=1e-7)


@pytest.mark.parametrize("name", ["mse", "bce_with_logits"])
def test_elementwise_losses_non_contiguous(rng, dtype, name):
    a = strided(rng, (9, 8), dtype)
    b = np.asfortranarray(rng.random((9, 8)).astype(dtype))
    loss, grad = getattr(cnn_core, name)(a, b)
    ref_loss, ref_grad = getattr(reference, name)(a, b)
    loss_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad)
