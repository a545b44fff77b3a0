"""The parallel paths: every threaded kernel, at sizes above its threading threshold and with
odd sizes that split unevenly, run with 1, 2, 3 and 5 threads against the NumPy twin.

Also the GEMM micro-kernel fallbacks (AVX2, portable) on this machine, through the
testing hook `cnn_core._gemm._set_isa`.
"""
import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, use_isa_or_skip

THREADS = [1, 2, 3, 5]



def test_gemm_threads(rng, dtype, threads):
    # (m, k, n) with m >= n and m < n: the two ways the output is cut into slabs
    for m, k, n in [(257, 67, 131), (61, 83, 517)]:
        a, b = randn(rng, (k, m), dtype), randn(rng, (n, k), dtype)
        c = randn(rng, (m, n), dtype)
        out = c.copy()
        cnn_core.gemm(a, b, out, trans_a=True, trans_b=True, alpha=0.5, beta=2.0)
        assert_close(out, reference.gemm(a, b, c.copy(), trans_a=True, trans_b=True,
                                         alpha=0.5, beta=2.0), k=k)


def test_gemm_bits_do_not_depend_on_threads(rng, dtype):
    # _gemm.pyx: "every element of C is summed by one thread in the same k order"
    a, b = randn(rng, (301, 409), dtype), randn(rng, (409, 233), dtype)
    before = cnn_core.get_num_threads()
    try:
        results = []
        for n in THREADS:
            cnn_core.set_num_threads(n)
            results.append(cnn_core.gemm(a, b))
            results.append(cnn_core.linear_forward(a, b, b[0], activation="relu"))
    finally:
        cnn_core.set_num_threads(before)
    for r in results[2::2]:
        np.testing.assert_array_equal(r, results[0])
    for r in results[3::2]:
        np.testing.assert_array_equal(r, results[1])


def test_linear_threads(rng, dtype, threads):
    x, w, b = randn(rng, (203, 311), dtype), randn(rng, (311, 97), dtype), randn(rng, (97,), dtype)
    assert_close(cnn_core.linear_forward(x, w, b, activation="relu"),
                 reference.linear_forward(x, w, b, activation="relu"), k=311)
    g = randn(rng, (203, 97), dtype)
    grads = []
    for mod in (cnn_core, reference):
        gw, gb = np.zeros_like(w), np.zeros_like(b)
        grads.append((gw, gb, mod.linear_backward(g, x, w, gw, gb)))
    for actual, expected in zip(*grads):
        assert_close(actual, expected, k=203)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activations_threads(rng, dtype, threads, name):
    x = randn(rng, (70001,), dtype, scale=3.0)            # ~2 spans of 2**15, odd length
    g = randn(rng, (70001,), dtype)
    y = getattr(cnn_core, f"{name}_forward")(x)
    assert_close(y, getattr(reference, f"{name}_forward")(x))
    arg = x if "relu" in name else y
    assert_close(getattr(cnn_core, f"{name}_backward")(g, arg),
                 getattr(reference, f"{name}_backward")(g, arg))


def test_softmax_and_dropout_threads(rng, dtype, threads):
    x = randn(rng, (1031, 97), dtype, scale=3.0)
    y = cnn_core.softmax_forward(x)
    assert_close(y, reference.softmax_forward(x))
    g = randn(rng, x.shape, dtype)
    assert_close(cnn_core.softmax_backward(g, y), reference.softmax_backward(g, y))
    mask = (rng.random(x.shape) > 0.5).astype(np.uint8)
    assert_close(cnn_core.dropout_forward(x, mask, 2.0), reference.dropout_forward(x, mask, 2.0))


def test_losses_threads(rng, dtype, threads):
    logits = randn(rng, (2053, 41), dtype, scale=3.0)
    labels = rng.integers(0, 41, size=2053)
    loss, grad = cnn_core.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    assert np.isclose(loss, ref_loss, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert_close(grad, ref_grad)
    pred, target = randn(rng, (301, 257), dtype), randn(rng, (301, 257), dtype)
    for name in ("mse", "bce_with_logits"):
        loss, grad = getattr(cnn_core, name)(pred, target)
        ref_loss, ref_grad = getattr(reference, name)(pred, target)
        assert np.isclose(loss, ref_loss, rtol=1e-5 if dtype == np.float32 else 1e-12)
        assert_close(grad, ref_grad)


def test_optim_threads(rng, dtype, threads):
    param, grad = randn(rng, (100003,), dtype), randn(rng, (100003,), dtype)
    results = []
    for mod in (cnn_core, reference):
        p, vel = param.copy(), np.zeros_like(param)
        mod.sgd_update(p, grad, 0.1, momentum=0.9, velocity=vel, weight_decay=0.01)
        p2, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
        mod.adam_update(p2, grad, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.01)
        results.append((p, vel, p2, m, v))
    for actual, expected in zip(*results):
        assert_close(actual, expected)


def test_conv_pool_threads(rng, dtype, threads):
    x, w, b = randn(rng, (7, 3, 11, 10), dtype), randn(rng, (5, 3, 3, 3), dtype), randn(rng, (5,), dtype)
    y = cnn_core.conv2d_forward(x, w, b, padding=1)
    assert_close(y, reference.conv2d_forward(x, w, b, padding=1), k=27)
    g = randn(rng, y.shape, dtype)
    grads = []
    for mod in (cnn_core, reference):
        gw, gb = np.zeros_like(w), np.zeros_like(b)
        grads.append((gw, gb, mod.conv2d_backward(g, x, w, gw, gb, padding=1)))
    for actual, expected in zip(*grads):
        assert_close(actual, expected, k=7 * 110)
    x = randn(rng, (7, 11, 9, 9), dtype)                # 77 planes
    out, idx = cnn_core.maxpool2d_forward(x, 3, 2)
    ref_out, ref_idx = reference.maxpool2d_forward(x, 3, 2)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    g = randn(rng, out.shape, dtype)
    assert_close(cnn_core.maxpool2d_backward(g, idx, x.shape),
                 reference.maxpool2d_backward(g, idx, x.shape))
    out = cnn_core.avgpool2d_forward(x, 3, 1)
    assert_close(out, reference.avgpool2d_forward(x, 3, 1), k=9)
    g = randn(rng, out.shape, dtype)
    assert_close(cnn_core.avgpool2d_backward(g, x.shape, 3, 1),
                 reference.avgpool2d_backward(g, x.shape, 3, 1), k=9)


def test_batchnorm_threads(rng, dtype, threads):
    x = randn(rng, (37, 13, 9, 11), dtype)             # 47619 values, 13 channels
    gamma, beta = randn(rng, (13,), dtype), randn(rng, (13,), dtype)
    results = []
    for mod in (cnn_core, reference):
        rm, rv = np.zeros(13, dtype), np.ones(13, dtype)
        out, mean, invstd = mod.batchnorm_forward(x, gamma, beta, rm, rv, training=True)
        gg, gb = np.zeros(13, dtype), np.zeros(13, dtype)
        gx = mod.batchnorm_backward(x, x, gamma, mean, invstd, gg, gb)
        results.append((out, mean, invstd, rm, rv, gg, gb, gx))
    for actual, expected in zip(*results):
        assert_close(actual, expected, k=x.size // 13)


# ----------------------------------------------------------------------------------------
# Micro-kernel fallbacks
# ----------------------------------------------------------------------------------------

ISAS = ["generic", "avx2", "avx512"]


@pytest.fixture(params=ISAS)
def isa(request):
    use_isa_or_skip(request.param)
    yield request.param
    use_isa_or_skip(None)


def test_gemm_micro_kernels(rng, dtype, isa):
    assert cnn_core.gemm_kernel_name(dtype).startswith(isa)
    # sizes around every tile (4x16 / 4x8, 6x16 / 6x8, 12x32 / 12x16) and k blocks (1100:
    # two of 550 for float32, three for float64)
    for m, k, n in [(1, 1, 1), (3, 5, 7), (4, 16, 16), (5, 17, 17), (6, 8, 8), (7, 9, 15),
                    (12, 32, 32), (13, 33, 33), (25, 257, 49), (50, 400, 70), (13, 1100, 40)]:
        for trans_a, trans_b in [(False, False), (False, True), (True, True), (True, False)]:
            a = randn(rng, (k, m) if trans_a else (m, k), dtype)
            b = randn(rng, (n, k) if trans_b else (k, n), dtype)
            c = randn(rng, (m, n), dtype)
            kwargs = dict(trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=-0.5)
            out = c.copy()
            cnn_core.gemm(a, b, out, **kwargs)
            assert_close(out, reference.gemm(a, b, c.copy(), **kwargs), k=k)
            out = nan_array((m, n), dtype)
            cnn_core.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b)
            assert_close(out, reference.gemm(a, b, trans_a=trans_a, trans_b=trans_b), k=k)
        # the fused epilogue: bias and ReLU, over several k blocks
        x, w, bias = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
        assert_close(cnn_core.linear_forward(x, w, bias, activation="relu"),
                     reference.linear_forward(x, w, bias, activation="relu"), k=k)


def test_row_kernel_last_columns(rng, dtype, isa):
    # the row kernel's last n % VL columns (one vector running on into B's next row, then
    # row by row) on every ISA: the twin's values, and the bits full vectors give
    for k in (1, 2, 3, 9, 17):
        for n in (1, 3, 7, 10, 15, 17, 26):
            x, w = randn(rng, (2, k), dtype), randn(rng, (k, n), dtype)
            got = cnn_core.linear_forward(x, w, None)
            assert_close(got, reference.linear_forward(x, w, None), k=k)
            wide = np.concatenate([w, randn(rng, (k, 40), dtype)], axis=1)
            assert np.array_equal(got, cnn_core.linear_forward(x, wide, None)[:, :n]), (k, n)


def test_concurrent_calls_from_python_threads(dtype):
    # predict() may run in several Python threads at once: each thread packs into its own
    # scratch buffers, so concurrent calls of different sizes must not disturb each other
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    jobs = []
    for i in range(8):
        m, k, n = 40 + 17 * i, 300 + 50 * i, 30 + 11 * i
        a, b = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype)
        x, w = randn(rng, (2 + i, 3, 12, 12), dtype), randn(rng, (4, 3, 3, 3), dtype)
        jobs.append((a, b, x, w, reference.gemm(a, b), reference.conv2d_forward(x, w, None, padding=1)))

    def run(job):
        a, b, x, w, _, _ = job
        results = []
        for _ in range(5):
            results.append((cnn_core.gemm(a, b), cnn_core.conv2d_forward(x, w, None, padding=1)))
        return results

    with ThreadPoolExecutor(max_workers=4) as pool:
        all_results = list(pool.map(run, jobs))
    for job, results in zip(jobs, all_results):
        for product, conv in results:
            assert_close(product, job[4], k=job[0].shape[1])
            assert_close(conv, job[5], k=27)


@pytest.mark.parametrize("m,k,n", [(26, 2000, 8), (5, 1000, 3), (3, 700, 2000), (1, 513, 1000),
                                   (130, 900, 7), (1, 784, 256), (2, 300, 250)])
def test_gemm_bits_do_not_depend_on_threads_at_slab_edges(m, k, n):
    # slabs of few rows or of row-kernel columns must sum like the whole product does
    rng = np.random.default_rng(m * 7 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    before = cnn_core.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 4):
            cnn_core.set_num_threads(threads)
            results.append(cnn_core.gemm(a, b))
    finally:
        cnn_core.set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_relu_keeps_nan_everywhere():
    x = np.array([[np.nan, -1.0, 2.0, 0.0]], dtype=np.float32)
    for backend in (cnn_core, cnn_core.reference):
        y = backend.relu_forward(x)
        assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 2 and y[0, 3] == 0
    # the fused ReLU of linear_forward (NaN input row, and a NaN bias in one column)
    w = np.eye(4, dtype=np.float32)
    b = np.array([0, np.nan, 0, 0], dtype=np.float32)
    y = cnn_core.linear_forward(np.array([[1.0, -1.0, 2.0, -3.0]], np.float32), w, b,
                                activation="relu")
    assert np.isnan(y[0, 1]) and y[0, 0] == 1 and y[0, 2] == 2 and y[0, 3] == 0
    big = np.full((20, 40), -1.0, np.float32)
    big[3, 5] = np.nan
    wb = np.eye(40, dtype=np.float32)
    yb = cnn_core.linear_forward(big, wb, None, activation="relu")
    assert np.isnan(yb[3]).sum() == 40 and np.isnan(yb).sum() == 40
