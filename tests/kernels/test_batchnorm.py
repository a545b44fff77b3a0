"""Batch normalisation, forward (training and eval) and backward: compiled vs the NumPy twin.

The twin is checked against values worked out by hand and, for the backward pass, against
central differences of its own forward (in training mode the batch statistics depend on
every input, which is what the backward formula has to get right).
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, strided

SHAPES = [(2, 1), (8, 3), (128, 64), (4, 3, 5, 5), (2, 1, 1, 2), (16, 8, 7, 7), (3, 97)]


def _params(rng, c, dtype):
    gamma = randn(rng, (c,), dtype)
    beta = randn(rng, (c,), dtype)
    running_mean = randn(rng, (c,), dtype)
    running_var = (rng.random(c) + 0.5).astype(dtype)
    return gamma, beta, running_mean, running_var


# ----------------------------------------------------------------------------------------
# The twin by hand and by finite differences
# ----------------------------------------------------------------------------------------

def test_reference_by_hand():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    rm, rv = np.zeros(1), np.ones(1)
    out, mean, invstd = reference.batchnorm_forward(x, np.array([2.0]), np.array([0.5]), rm, rv,
                                                    training=True, momentum=0.1, eps=1e-5)
    # mean 2.5, biased var 1.25; the running var takes the unbiased 1.25 * 4 / 3
    np.testing.assert_allclose(mean, [2.5])
    np.testing.assert_allclose(invstd, [1 / math.sqrt(1.25 + 1e-5)])
    np.testing.assert_allclose(out[:, 0], 2.0 * (x[:, 0] - 2.5) / math.sqrt(1.25 + 1e-5) + 0.5)
    np.testing.assert_allclose(rm, [0.25])
    np.testing.assert_allclose(rv, [0.9 + 0.1 * 1.25 * 4 / 3])
    # eval mode: the running statistics, which stay as they are
    out, mean, invstd = reference.batchnorm_forward(x, np.array([1.0]), np.array([0.0]), rm, rv,
                                                    training=False, eps=1e-5)
    np.testing.assert_allclose(out[:, 0], (x[:, 0] - rm[0]) / math.sqrt(rv[0] + 1e-5))
    np.testing.assert_allclose(rm, [0.25])
    # a constant channel normalises to 0 (then beta)
    out, _, _ = reference.batchnorm_forward(np.full((3, 1), 7.0), np.ones(1), np.array([3.0]),
                                            np.zeros(1), np.ones(1), training=True)
    np.testing.assert_allclose(out, 3.0)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3)])
def test_reference_backward_is_derivative(rng, shape, training):
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta, rm, rv = _params(rng, c, np.float64)
    g = rng.standard_normal(shape)

    def loss(x_, gamma_, beta_):
        out, _, _ = reference.batchnorm_forward(x_, gamma_, beta_, rm.copy(), rv.copy(),
                                                training=training)
        return np.sum(g * out)

    _, mean, invstd = reference.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(),
                                                  training=training)
    grad_gamma, grad_beta = np.zeros(c), np.zeros(c)
    grad_x = reference.batchnorm_backward(g, x, gamma, mean, invstd, grad_gamma, grad_beta,
                                          training=training)
    h = 1e-6
    for analytic, arr in ((grad_x, x), (grad_gamma, gamma), (grad_beta, beta)):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            saved = arr[i]
            arr[i] = saved + h
            up = loss(x, gamma, beta)
            arr[i] = saved - h
            down = loss(x, gamma, beta)
            arr[i] = saved
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------
# Compiled vs twin
# ----------------------------------------------------------------------------------------

def _run_forward(mod, x, params, training, **buffers):
    gamma, beta, rm, rv = params
    rm, rv = rm.copy(), rv.copy()
    out, mean, invstd = mod.batchnorm_forward(x, gamma, beta, rm, rv, training=training,
                                              momentum=0.2, eps=1e-4, **buffers)
    return out, mean, invstd, rm, rv


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batchnorm(rng, dtype, shape, training):
    c = shape[1]
    x = randn(rng, shape, dtype, scale=3.0) + 2
    params = _params(rng, c, dtype)
    actual = _run_forward(cnn_core, x, params, training)
    expected = _run_forward(reference, x, params, training)
    for a, e in zip(actual, expected):
        assert_close(a, e)

    g = randn(rng, shape, dtype)
    grads = []
    for mod, (_, mean, invstd, _, _) in ((cnn_core, actual), (reference, expected)):
        gg, gb = np.ones(c, dtype), np.ones(c, dtype)          # accumulated into
        gx = mod.batchnorm_backward(g, x, params[0], mean, invstd, gg, gb, training=training)
        grads.append((gg, gb, gx))
    m = x.size // c
    for a, e in zip(*grads):
        assert_close(a, e, k=m)


def test_batchnorm_buffers(rng, dtype):
    x = randn(rng, (6, 4, 3, 3), dtype)
    params = _params(rng, 4, dtype)
    bufs = dict(out=nan_array(x.shape, dtype), save_mean=nan_array(4, dtype),
                save_invstd=nan_array(4, dtype))
    out, mean, invstd, rm, rv = _run_forward(cnn_core, x, params, True, **bufs)
    assert out is bufs["out"] and mean is bufs["save_mean"] and invstd is bufs["save_invstd"]
    for a, e in zip((out, mean, invstd, rm, rv), _run_forward(reference, x, params, True)):
        assert_close(a, e)
    g = randn(rng, x.shape, dtype)
    gg, gb, gx = np.zeros(4, dtype), np.zeros(4, dtype), nan_array(x.shape, dtype)
    assert cnn_core.batchnorm_backward(g, x, params[0], mean, invstd, gg, gb, gx) is gx
    rgg, rgb = np.zeros(4, dtype), np.zeros(4, dtype)
    assert_close(gx, reference.batchnorm_backward(g, x, params[0], mean, invstd, rgg, rgb), k=54)
    assert_close(gg, rgg, k=54)
    assert_close(gb, rgb, k=54)
    # compute_grad_x=False: the parameter gradients only
    assert cnn_core.batchnorm_backward(g, x, params[0], mean, invstd, gg, gb,
                                       compute_grad_x=False) is None
    assert_close(gg, 2 * rgg, k=54)


def test_batchnorm_running_stats_over_steps(rng, dtype):
    params = list(_params(rng, 5, dtype))
    rm = {mod: params[2].copy() for mod in (cnn_core, reference)}
    rv = {mod: params[3].copy() for mod in (cnn_core, reference)}
    for step in range(5):
        x = randn(rng, (10, 5, 2, 2), dtype, scale=1 + step) - step
        for mod in (cnn_core, reference):
            mod.batchnorm_forward(x, params[0], params[1], rm[mod], rv[mod], training=True)
    assert_close(rm[cnn_core], rm[reference])
    assert_close(rv[cnn_core], rv[reference])


def test_batchnorm_non_contiguous(rng, dtype):
    x = strided(rng, (5, 3, 4, 4), dtype)
    gamma, beta = strided(rng, (3,), dtype), strided(rng, (3,), dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    results = []
    for mod in (cnn_core, reference):
        out, mean, invstd = mod.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training=True)
        g = np.asfortranarray(x * 0.5)
        gg, gb = np.zeros(3, dtype), np.zeros(3, dtype)
        gx = mod.batchnorm_backward(g, x, gamma, mean[::1], invstd, gg, gb)
        results.append((out, mean, invstd, gg, gb, gx))
    for a, e in zip(*results):
        assert_close(a, e, k=80)


def test_batchnorm_large_mean(dtype):
    # a large offset and a small spread: a one-pass sum of squares would lose it all
    rng = np.random.default_rng(7)
    x = (1000.0 + 0.01 * rng.standard_normal((256, 2))).astype(dtype)
    params = (np.ones(2, dtype), np.zeros(2, dtype), np.zeros(2, dtype), np.ones(2, dtype))
    out, mean, invstd, _, _ = _run_forward(cnn_core, x, params, True)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-4)
    assert_close(out, expected.astype(dtype), rtol=1e-3 if dtype == np.float32 else 1e-9,
                 atol=1e-3 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2, 2), (4, 0), (4, 0, 2, 2)])
def test_batchnorm_zero_size_eval(rng, dtype, shape):
    c = shape[1]
    x = np.zeros(shape, dtype)
    params = _params(rng, c, dtype)
    for a, e in zip(_run_forward(cnn_core, x, params, False), _run_forward(reference, x, params, False)):
        assert a.shape == e.shape
        assert_close(a, e)
    if c == 0:                  # no channel: training mode has nothing to normalise either
        for a, e in zip(_run_forward(cnn_core, x, params, True), _run_forward(reference, x, params, True)):
            assert a.shape == e.shape


@pytest.mark.parametrize("shape", [(64, 8, 12, 12), (37, 5, 13, 11), (3, 4, 40, 40),
                                   (4096, 16)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_same_bits_on_any_thread_count(rng, dtype, shape, training):
    # threads take whole samples; each channel's sums add the per-sample sums in sample order
    # on one thread: the same additions whatever the thread count (these shapes are large
    # enough to run on 2 and 3 threads; 3 samples on 3 threads: one each)
    x = randn(rng, shape, dtype) * 3 + 1
    g = randn(rng, shape, dtype)
    c = shape[1]
    gamma, beta = randn(rng, (c,), dtype), randn(rng, (c,), dtype)
    before = cnn_core.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3) + (2,) * 8:    # (again and again: a race shows sometimes)
            cnn_core.set_num_threads(count)
            rm, rv = np.full(c, 0.5, dtype), np.full(c, 2.0, dtype)
            y, mean, invstd = cnn_core.batchnorm_forward(x, gamma, beta, rm, rv,
                                                         training=training)
            dgamma, dbeta = np.full(c, 0.1, dtype), np.zeros(c, dtype)
            dx = cnn_core.batchnorm_backward(g, x, gamma, mean, invstd, dgamma, dbeta,
                                             training=training)
            results.append((y, mean, invstd, rm, rv, dgamma, dbeta, dx))
    finally:
        cnn_core.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    rm, rv = np.full(c, 0.5, dtype), np.full(c, 2.0, dtype)
    y, mean, invstd = reference.batchnorm_forward(x, gamma, beta, rm, rv, training=training)
    assert_close(results[0][0], y, k=shape[0] * 30)
    dgamma, dbeta = np.full(c, 0.1, dtype), np.zeros(c, dtype)
    dx = reference.batchnorm_backward(g, x, gamma, mean, invstd, dgamma, dbeta,
                                      training=training)
    assert_close(results[0][7], dx, k=shape[0] * 30)
    assert_close(results[0][5], dgamma, k=math.prod(shape) // c)


# the run lengths of the lane sums (src/nn_lanes.h: 32 lanes, then the tail in order): none
# but the tail, a tail of one, exactly the lanes, both, 7x7 and 14x14 planes, the CNN's
# feature maps; 3 channels (one run at a time), 11 (eight runs side by side, then three)
# and 70 (batch norm's gradient sums take 64 channels at a time)
_LANE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, cnn_core
    out = {}
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(7)
        for s, c in ((1, 3), (7, 11), (31, 3), (32, 11), (33, 11), (49, 70), (64, 3),
                     (95, 11), (196, 11), (511, 9), (784, 11)):
            # magnitudes 1e-9 .. 1e9: sums that round in double too, so that their order
            # shows in the bits (values of one scale would add up exactly in any order)
            scale = 10.0 ** rng.integers(-9, 10, (5, c, s))
            x = ((rng.standard_normal((5, c, s)) * 3 + 1) * scale).astype(dtype)
            g = (rng.standard_normal(x.shape) * scale[:, ::-1]).astype(dtype)
            gamma, beta = np.full(c, 1.5, dtype), np.full(c, -0.5, dtype)
            rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
            y, mean, invstd = cnn_core.batchnorm_forward(x.reshape(5, c, s, 1), gamma, beta,
                                                         rm, rv, training=True)
            gg, gb = np.zeros(c, dtype), np.zeros(c, dtype)
            gx = cnn_core.batchnorm_backward(g.reshape(y.shape), x.reshape(y.shape), gamma,
                                             mean, invstd, gg, gb)
            w = rng.standard_normal((4, c, 1, 1)).astype(dtype)
            cg = rng.standard_normal((5, 4, s, 1)).astype(dtype)
            cgw, cgb = np.zeros_like(w), np.zeros(4, dtype)
            cnn_core.conv2d_backward(cg, x.reshape(5, c, s, 1), w, cgw, cgb)
            key = f"{np.dtype(dtype).name}_{s}"
            for name, value in (("y", y), ("mean", mean), ("invstd", invstd), ("rm", rm),
                                ("rv", rv), ("gx", gx), ("gg", gg), ("gb", gb), ("cgb", cgb)):
                out[f"{key}_{name}"] = value
    np.savez(sys.argv[1], **out)
""")


def test_lane_sums_have_the_same_bits_on_every_isa(tmp_path):
    # batch norm's statistics and gradients, and the convolution's bias gradient, summed by
    # the portable loop (NN_ISA=generic), AVX2 and AVX-512 (src/nn_lanes.h, chosen at the
    # first call): the same lanes, each product and sum rounded alike, so the same bits
    runs = {}
    for isa in ("generic", "avx2", None):
        feature = {"avx2": "avx2"}.get(isa)
        if feature is not None and not cnn_core.cpu_features().get(feature):
            continue
        env = dict(os.environ)
        env.pop("NN_ISA", None)
        if isa is not None:
            env["NN_ISA"] = isa
        path = tmp_path / f"{isa}.npz"
        proc = subprocess.run([sys.executable, "-c", _LANE_SCRIPT, str(path)], env=env,
                              capture_output=True, text=True, timeout=120, cwd="/")
        assert proc.returncode == 0, proc.stderr
        runs[isa] = dict(np.load(path))
    assert "generic" in runs and None in runs
    base = runs["generic"]
    for isa, values in runs.items():
        assert values.keys() == base.keys()
        for key, value in values.items():
            np.testing.assert_array_equal(value, base[key], err_msg=f"{isa}: {key}")
    # (that the sums are right, against the twin, is every other test of this file's)


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 49, 95, 196, 511, 784])
def test_lane_sums_side_by_side_have_the_same_bits_as_one_run_at_a_time(rng, n):
    # batch norm sums eight float32 runs at a time (src/nn_lanes.h, nn_lane_sums_f32): each
    # run's additions in its own order, so the double totals are those of one run at a time
    # -- checked in double, before any rounding to float32 hides a difference, on values of
    # magnitudes 1e-9 .. 1e9 whose sums round (in one order they would not)
    from cnn_core import _norm
    for count in (1, 7, 8, 9, 17, 70):
        scale = 10.0 ** rng.integers(-9, 10, (count, n))
        v = (rng.standard_normal((count, n)) * scale).astype(np.float32)
        g = (rng.standard_normal((count, n)) * scale[:, ::-1]).astype(np.float32)
        means = rng.standard_normal(count) * 1e3
        for kind in (0, 1, 2):
            together = _norm._lane_sums(g, v, means, kind, True)
            alone = _norm._lane_sums(g, v, means, kind, False)
            np.testing.assert_array_equal(together, alone, err_msg=f"kind {kind}, {count} runs")
            if count == 70 and kind == 0 and n > 32:
                # (and the order is not one that any order would match)
                assert not np.array_equal(alone, v.astype(np.float64)[:, ::-1].sum(axis=1))
