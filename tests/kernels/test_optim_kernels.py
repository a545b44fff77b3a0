"""Optimizer steps (sgd_update, adam_update): compiled kernels vs the NumPy twin, in place.

Several steps with a different gradient each time, so that momentum, the moment
estimates and the bias corrections all matter. The comparison with torch.optim is in
test_kernels_torch.py; here the twin is checked against single steps worked out by hand.
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


@pytest.mark.parametrize("isa", ["generic", "best"])
def test_all_finite_finds_every_position_on_every_isa(isa):
    # every position of short arrays (the vector loop's tails) and around the chunk
    # boundaries of long ones, with the portable bit test and the CPU's vector one
    # (src/nn_finite.h, chosen at import: NN_ISA=generic forces the portable one)
    script = textwrap.dedent("""
        import numpy as np, cnn_core
        for dtype in (np.float32, np.float64):
            for n in list(range(1, 70)) + [4095, 4096, 4097, 4127, 8200, 65537]:
                x = np.linspace(-1e30, 1e30, n).astype(dtype)
                assert cnn_core.all_finite(x), n
                positions = range(n) if n < 70 else {0, 31, 4095, 4096, n // 2, n - 33, n - 1}
                for pos in positions:
                    if pos >= n:
                        continue
                    for bad in (np.nan, np.inf, -np.inf):
                        y = x.copy()
                        y[pos] = bad
                        assert not cnn_core.all_finite(y), (dtype, n, pos, bad)
        print("ok")
    """)
    env = dict(os.environ)
    env.pop("NN_ISA", None)
    if isa == "generic":
        env["NN_ISA"] = "generic"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_all_finite_rejects_non_float_arrays():
    for backend in (cnn_core, reference):
        with pytest.raises(TypeError, match="x"):
            backend.all_finite(np.arange(3))
        with pytest.raises(TypeError, match="x"):
            backend.all_finite([1.0, 2.0])


# ----------------------------------------------------------------------------------------
# Whole-model steps: sgd_step / adam_step over lists of arrays, one call
# ----------------------------------------------------------------------------------------

STEP_SHAPES = [[(1,)], [(7,), (3, 5), (1, 1)], [(0,), (13,), (2, 0)],
               [(50_000,), (17,), (40_001,), (3,)]]   # the last spans two threads' parts


def _step_arrays(rng, dtype, shapes, names):
    arrays = {name: [randn(rng, s, dtype) for s in shapes] for name in names}
    if "vs" in arrays:
        arrays["vs"] = [np.abs(v) for v in arrays["vs"]]
    return arrays


@pytest.mark.parametrize("shapes", STEP_SHAPES)
@pytest.mark.parametrize("config", [dict(momentum=0.0), dict(momentum=0.9, weight_decay=1e-2),
                                    dict(momentum=0.9, nesterov=True)])
def test_sgd_step_equals_sgd_update_per_array(rng, dtype, threads, shapes, config):
    a = _step_arrays(rng, dtype, shapes, ["params", "grads", "velocities"])
    results = []
    for mod in (cnn_core, reference):
        params = [p.copy() for p in a["params"]]
        vels = [v.copy() for v in a["velocities"]] if config["momentum"] else None
        assert mod.sgd_step(params, a["grads"], vels, 0.05, check_finite=True, **config) == -1
        results.append((params, vels))
    # and the per-array kernel: the same arithmetic in the same order, so the same bits
    params = [p.copy() for p in a["params"]]
    vels = [v.copy() for v in a["velocities"]]
    for i in range(len(params)):
        cnn_core.sgd_update(params[i], a["grads"][i], 0.05,
                            velocity=vels[i] if config["momentum"] else None, **config)
    for got, ref, one in zip(results[0][0], results[1][0], params):
        np.testing.assert_array_equal(got, one)
        assert_close(got, ref)
    if config["momentum"]:
        for got, one in zip(results[0][1], vels):
            np.testing.assert_array_equal(got, one)


@pytest.mark.parametrize("shapes", STEP_SHAPES)
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_step_equals_adam_update_per_array(rng, dtype, threads, shapes, decoupled):
    a = _step_arrays(rng, dtype, shapes, ["params", "grads", "ms", "vs"])
    args = (7, 1e-3, 0.9, 0.999, 1e-8, 1e-2)
    copies = []
    for mod in (cnn_core, reference):
        c = {k: [x.copy() for x in v] for k, v in a.items()}
        assert mod.adam_step(c["params"], c["grads"], c["ms"], c["vs"], *args,
                             decoupled=decoupled) == -1
        copies.append(c)
    one = {k: [x.copy() for x in v] for k, v in a.items()}
    for i in range(len(shapes)):
        cnn_core.adam_update(one["params"][i], one["grads"][i], one["ms"][i], one["vs"][i],
                             *args, decoupled=decoupled)
    for key in ("params", "ms", "vs"):
        for got, ref, single in zip(copies[0][key], copies[1][key], one[key]):
            np.testing.assert_array_equal(got, single)
            assert_close(got, ref)


@pytest.mark.parametrize("where", [0, 2, 3])
def test_step_with_a_non_finite_gradient_updates_nothing(rng, dtype, threads, where):
    shapes = STEP_SHAPES[-1]
    for bad in (np.nan, np.inf, -np.inf):
        a = _step_arrays(rng, dtype, shapes, ["params", "grads", "velocities", "ms", "vs"])
        a["grads"][where].reshape(-1)[-1] = bad          # the last element: the far end
        if where == 0:
            a["grads"][3][0] = np.nan                    # a later one too: the first is named
        for mod in (cnn_core, reference):
            c = {k: [x.copy() for x in v] for k, v in a.items()}
            assert mod.sgd_step(c["params"], c["grads"], c["velocities"], 0.1, momentum=0.9,
                                check_finite=True) == where
            assert mod.adam_step(c["params"], c["grads"], c["ms"], c["vs"], 1, 1e-3, 0.9,
                                 0.999, 1e-8, check_finite=True) == where
            for key in ("params", "velocities", "ms", "vs"):
                for got, before in zip(c[key], a[key]):
                    np.testing.assert_array_equal(got, before)
            # without the check the step runs (and spreads the NaN/inf)
            assert mod.sgd_step(c["params"], c["grads"], None, 0.1) == -1
            assert not np.isfinite(c["params"][where]).all()


def test_step_rejects_bad_lists(rng):
    p, g = randn(rng, (3, 4), np.float32), randn(rng, (3, 4), np.float32)
    for mod in (cnn_core, reference):
        cases = [
            (lambda: mod.sgd_step([], [], None, 0.1), ValueError, "params is empty"),
            (lambda: mod.sgd_step([p], [g, g], None, 0.1), ValueError, "grads has 2"),
            (lambda: mod.sgd_step([p, p.astype(np.float64)], [g, g], None, 0.1), ValueError,
             r"params\[1\]"),
            (lambda: mod.sgd_step([p], [g[:2]], None, 0.1), ValueError, r"grads\[0\]"),
            (lambda: mod.sgd_step([p], [g], None, 0.1, momentum=0.9), ValueError, "velocities"),
            (lambda: mod.sgd_step([p], [g], [np.zeros(3, np.float32)], 0.1, momentum=0.9),
             ValueError, r"velocities\[0\]"),
            (lambda: mod.sgd_step([p.T], [g.T], None, 0.1), ValueError, r"params\[0\]"),
            (lambda: mod.sgd_step(["x"], [g], None, 0.1), TypeError, r"params\[0\]"),
            (lambda: mod.adam_step([p], [g], [p.copy()], [], 1, 1e-3, 0.9, 0.999, 1e-8),
             ValueError, "vs has 0"),
            (lambda: mod.adam_step([p], [g], [p.copy()], [p.copy()], 0, 1e-3, 0.9, 0.999, 1e-8),
             ValueError, "step"),
        ]
        for call, error, match in cases:
            before = p.copy()
            with pytest.raises(error, match=match):
                call()
            np.testing.assert_array_equal(p, before)       # nothing was updated
