"""Optimizer steps (sgd_update, adam_update): compiled kernels vs the NumPy twin, in place.

Several steps with a different gradient each time, so that momentum, the moment
estimates and the bias corrections all matter. The comparison with torch.optim is in
test_kernels_torch.py; here the twin is checked against single steps worked out by hand.
"""
import math

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, randn, strided

SHAPES = [(1,), (7,), (13, 31), (97,), (3, 5, 7), (784, 256)]
N_STEPS = 5

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=0.01),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.02, momentum=0.5, weight_decay=0.1),
    dict(lr=0.02, momentum=0.99, weight_decay=1e-3, nesterov=True),
    dict(lr=0.0, momentum=0.9),
]

ADAM_CONFIGS = [
    dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
    dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
    dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, decoupled=True),
    dict(lr=3e-3, beta1=0.0, beta2=0.5, eps=0.0),
    dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, decoupled=True),
]


def _run_sgd(mod, param, grads, config):
    param = param.copy()
    velocity = np.zeros_like(param)
    for g in grads:
        assert mod.sgd_update(param, g, velocity=velocity, **config) is None
    return param, velocity


def _run_adam(mod, param, grads, config):
    param = param.copy()
    m, v = np.zeros_like(param), np.zeros_like(param)
    config = dict(config)
    lr = config.pop("lr")
    b1, b2, eps = config.pop("beta1"), config.pop("beta2"), config.pop("eps")
    for step, g in enumerate(grads, start=1):
        assert mod.adam_update(param, g, m, v, step, lr, b1, b2, eps, **config) is None
    return param, m, v


# ----------------------------------------------------------------------------------------
# The twin by hand
# ----------------------------------------------------------------------------------------

def test_reference_sgd_by_hand():
    p = np.array([1.0, -2.0])
    reference.sgd_update(p, np.array([0.5, 1.0]), 0.1)
    np.testing.assert_allclose(p, [0.95, -2.1], rtol=1e-15)
    # weight decay adds wd * param to the gradient: d = 0.5 + 0.1 * 1 = 0.6
    p = np.array([1.0])
    reference.sgd_update(p, np.array([0.5]), 0.1, weight_decay=0.1)
    np.testing.assert_allclose(p, [0.94], rtol=1e-15)
    # momentum 0.9, grads 1 then 1: velocity 1 then 1.9; param 0 -> -0.1 -> -0.29
    p, vel = np.zeros(1), np.zeros(1)
    for _ in range(2):
        reference.sgd_update(p, np.ones(1), 0.1, momentum=0.9, velocity=vel)
    np.testing.assert_allclose(vel, [1.9], rtol=1e-15)
    np.testing.assert_allclose(p, [-0.29], rtol=1e-14)
    # nesterov: the step uses g + momentum * velocity: 1 + 0.9 * 1 = 1.9, then 1 + 0.9 * 1.9
    p, vel = np.zeros(1), np.zeros(1)
    for _ in range(2):
        reference.sgd_update(p, np.ones(1), 0.1, momentum=0.9, velocity=vel, nesterov=True)
    np.testing.assert_allclose(p, [-0.1 * (1.9 + 2.71)], rtol=1e-14)


def test_reference_adam_by_hand():
    # first step: m / bc1 = g and sqrt(v / bc2) = |g|, so the step is lr * g / (|g| + eps)
    p = np.array([1.0, 1.0, 1.0])
    g = np.array([0.5, -2.0, 0.0])
    m, v = np.zeros(3), np.zeros(3)
    reference.adam_update(p, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(m, 0.1 * g, rtol=1e-15)
    np.testing.assert_allclose(v, 0.001 * g * g, rtol=1e-14)
    np.testing.assert_allclose(p, 1 - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    # second step with the same gradient: still lr * g / (|g| + eps) after bias correction
    reference.adam_update(p, g, m, v, 2, 0.1, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(p, 1 - 0.2 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    # AdamW shrinks the parameter first: p * (1 - lr * wd), then the same step
    p, m, v = np.array([2.0]), np.zeros(1), np.zeros(1)
    reference.adam_update(p, np.array([1.0]), m, v, 1, 0.1, 0.9, 0.999, 0.0, 0.5, decoupled=True)
    np.testing.assert_allclose(p, [2.0 * 0.95 - 0.1], rtol=1e-14)
    # Adam (L2): g = 1 + 0.5 * 2 = 2 -> step lr * sign(g)
    p, m, v = np.array([2.0]), np.zeros(1), np.zeros(1)
    reference.adam_update(p, np.array([1.0]), m, v, 1, 0.1, 0.9, 0.999, 0.0, 0.5)
    np.testing.assert_allclose(p, [1.9], rtol=1e-14)
    np.testing.assert_allclose(m, [0.2], rtol=1e-14)


def test_reference_adam_matches_loop(rng):
    # the formula, one element at a time in plain Python floats
    p0, grads = rng.standard_normal(4), rng.standard_normal((3, 4))
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    p, m, v = p0.copy(), np.zeros(4), np.zeros(4)
    for step, g in enumerate(grads, 1):
        reference.adam_update(p, g, m, v, step, lr, b1, b2, eps, wd)
    for i in range(4):
        pi, mi, vi = p0[i], 0.0, 0.0
        for step, g in enumerate(grads[:, i], 1):
            gi = g + wd * pi
            mi = b1 * mi + (1 - b1) * gi
            vi = b2 * vi + (1 - b2) * gi * gi
            pi -= lr / (1 - b1 ** step) * mi / (math.sqrt(vi) / math.sqrt(1 - b2 ** step) + eps)
        assert math.isclose(p[i], pi, rel_tol=1e-13)


# ----------------------------------------------------------------------------------------
# Compiled vs twin
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd(rng, dtype, shape, config):
    param = randn(rng, shape, dtype)
    grads = [randn(rng, shape, dtype) for _ in range(N_STEPS)]
    grads_before = [g.copy() for g in grads]
    p, vel = _run_sgd(cnn_core, param, grads, config)
    rp, rvel = _run_sgd(reference, param, grads, config)
    assert_close(p, rp)
    if config.get("momentum"):
        assert_close(vel, rvel)
    for g, g0 in zip(grads, grads_before):              # grad is not modified
        np.testing.assert_array_equal(g, g0)


def test_sgd_without_velocity(rng, dtype):
    param = randn(rng, (31,), dtype)
    grad = randn(rng, (31,), dtype)
    p, rp = param.copy(), param.copy()
    cnn_core.sgd_update(p, grad, 0.1, weight_decay=0.01)
    reference.sgd_update(rp, grad, 0.1, weight_decay=0.01)
    assert_close(p, rp)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=str)
def test_adam(rng, dtype, shape, config):
    param = randn(rng, shape, dtype)
    grads = [randn(rng, shape, dtype, scale=10.0 ** -i) for i in range(N_STEPS)]
    grads_before = [g.copy() for g in grads]
    p, m, v = _run_adam(cnn_core, param, grads, config)
    rp, rm, rv = _run_adam(reference, param, grads, config)
    assert_close(p, rp)
    assert_close(m, rm)
    assert_close(v, rv)
    for g, g0 in zip(grads, grads_before):
        np.testing.assert_array_equal(g, g0)


def test_optim_non_contiguous_grad(rng, dtype):
    param = randn(rng, (9, 11), dtype)
    grad = strided(rng, (9, 11), dtype)
    results = []
    for mod in (cnn_core, reference):
        p, vel = param.copy(), np.zeros_like(param)
        mod.sgd_update(p, grad, 0.1, momentum=0.9, velocity=vel, nesterov=True)
        p2, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
        mod.adam_update(p2, np.asfortranarray(grad), m, v, 1, 1e-2, 0.9, 0.999, 1e-8, 0.01)
        results.append((p, vel, p2, m, v))
    for actual, expected in zip(*results):
        assert_close(actual, expected)


def test_optim_zero_size(dtype):
    for mod in (cnn_core, reference):
        p = np.zeros((0, 3), dtype)
        mod.sgd_update(p, p.copy(), 0.1, momentum=0.9, velocity=p.copy())
        mod.adam_update(p, p.copy(), p.copy(), p.copy(), 1, 1e-3, 0.9, 0.999, 1e-8)
        assert p.shape == (0, 3)


def test_adam_large_step_count(rng, dtype):
    # late in training the bias corrections are ~1
    param = randn(rng, (50,), dtype)
    grad = randn(rng, (50,), dtype)
    out = []
    for mod in (cnn_core, reference):
        p, m, v = param.copy(), np.full_like(param, 0.01), np.full_like(param, 1e-4)
        mod.adam_update(p, grad, m, v, 100000, 1e-3, 0.9, 0.999, 1e-8)
        out.append(p)
    assert_close(out[0], out[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 4095, 4096, 4097, 10007])
def test_all_finite_matches_its_twin_and_isfinite(dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 1e30).astype(dtype)
    for backend in (cnn_core, reference):
        assert backend.all_finite(x) is True
        assert backend.all_finite(x.reshape(1, -1)[:, ::-1]) is True   # any layout
    for bad in (np.nan, np.inf, -np.inf):
        for pos in sorted({0, n // 2, n - 1}) if n else []:
            y = x.copy()
            y[pos] = bad
            assert cnn_core.all_finite(y) is False and reference.all_finite(y) is False
    big = np.full(3, np.finfo(dtype).max, dtype)      # the largest finite number is finite
    assert cnn_core.all_finite(big) and reference.all_finite(big)


def test_all_finite_rejects_non_float_arrays():
    for backend in (cnn_core, reference):
        with pytest.raises(TypeError, match="x"):
            backend.all_finite(np.arange(3))
        with pytest.raises(TypeError, match="x"):
            backend.all_finite([1.0, 2.0])
