"""gemm, gemm_naive, linear_forward and linear_backward: compiled kernels vs the NumPy twin.

Shapes include 1, odd and prime sizes (they end in partial micro-tiles), sizes around the
register tile (12 x 32 float, 12 x 16 double on AVX-512; 6 x 16 / 6 x 8 on AVX2) and around
the cache blocks, and the MLP's own products.
"""
import itertools

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, strided

# (M, K, N)
SHAPES = [
    (1, 1, 1), (1, 7, 1), (3, 1, 5), (7, 13, 3), (13, 31, 7), (31, 97, 13), (1, 97, 31),
    (97, 1, 31), (97, 31, 97), (5, 3, 97),
    (11, 17, 31), (12, 16, 32), (13, 33, 33), (6, 8, 16), (25, 9, 65), (47, 5, 15),
]
# K across the cache block along K, M and N across several micro-tiles
BLOCK_SHAPES = [(37, 383, 45), (29, 385, 70), (50, 769, 33), (130, 64, 200)]

# (alpha, beta); beta != 0 needs an out to add to
SCALES = [(1.0, 0.0), (0.5, 0.0), (-1.5, 0.25), (1.0, 1.0), (0.0, 2.0), (2.0, -1.0)]
TRANSPOSES = list(itertools.product([False, True], repeat=2))

# The 2-layer MLP on MNIST, batch 128: the forward product and its two backward products.
MLP_N, MLP_D, MLP_H = 128, 784, 256


def operands(rng, m, k, n, dtype, trans_a, trans_b):
    """a, b stored so that op(a) is (m, k) and op(b) is (k, n)."""
    a = randn(rng, (k, m) if trans_a else (m, k), dtype)
    b = randn(rng, (n, k) if trans_b else (k, n), dtype)
    return a, b


def numpy_gemm(a, b, c, trans_a, trans_b, alpha, beta):
    """The definition, in float64: alpha * op(a) @ op(b) + beta * c."""
    op_a = (a.T if trans_a else a).astype(np.float64)
    op_b = (b.T if trans_b else b).astype(np.float64)
    result = alpha * (op_a @ op_b)
    if beta != 0:
        result = result + beta * c.astype(np.float64)
    return result


# ----------------------------------------------------------------------------------------
# The twin against the definition and against values worked out by hand
# ----------------------------------------------------------------------------------------

def test_reference_gemm_by_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[5.0, 6.0], [7.0, 8.0]])
    np.testing.assert_array_equal(reference.gemm(a, b), [[19, 22], [43, 50]])
    np.testing.assert_array_equal(reference.gemm(a, b, trans_a=True), [[26, 30], [38, 44]])
    np.testing.assert_array_equal(reference.gemm(a, b, trans_b=True), [[17, 23], [39, 53]])
    np.testing.assert_array_equal(reference.gemm(a, b, trans_a=True, trans_b=True),
                                  [[23, 31], [34, 46]])
    out = np.ones((2, 2))
    result = reference.gemm(a, b, out, alpha=2.0, beta=0.5)
    assert result is out
    np.testing.assert_array_equal(out, [[38.5, 44.5], [86.5, 100.5]])


def test_reference_gemm_rectangular_by_hand():
    a = np.array([[1.0, 0.0, -1.0]])                     # (1, 3)
    b = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])   # (3, 2)
    np.testing.assert_array_equal(reference.gemm(a, b), [[-4.0, -4.0]])
    np.testing.assert_array_equal(reference.gemm(b, a, trans_a=True, trans_b=True),
                                  [[-4.0], [-4.0]])


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("alpha,beta", SCALES)
def test_reference_gemm_matches_definition(rng, dtype, trans_a, trans_b, alpha, beta):
    m, k, n = 7, 13, 5
    a, b = operands(rng, m, k, n, dtype, trans_a, trans_b)
    c = randn(rng, (m, n), dtype)
    expected = numpy_gemm(a, b, c, trans_a, trans_b, alpha, beta)
    out = c.copy()
    reference.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    assert_close(out, expected.astype(dtype), k=k)


def test_reference_gemm_naive_is_gemm():
    assert reference.gemm_naive is reference.gemm


# ----------------------------------------------------------------------------------------
# Compiled vs twin
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,k,n", SHAPES + BLOCK_SHAPES)
def test_gemm_shapes(rng, dtype, m, k, n):
    a, b = operands(rng, m, k, n, dtype, False, False)
    out = cnn_core.gemm(a, b)
    assert out.shape == (m, n) and out.dtype == dtype and out.flags.c_contiguous
    assert_close(out, reference.gemm(a, b), k=k)
    assert_close(out, (a.astype(np.float64) @ b).astype(dtype), k=k)


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("alpha,beta", SCALES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (13, 31, 7), (31, 97, 45)])
def test_gemm_transposes_and_scales(rng, dtype, m, k, n, trans_a, trans_b, alpha, beta):
    a, b = operands(rng, m, k, n, dtype, trans_a, trans_b)
    c = randn(rng, (m, n), dtype)
    kwargs = dict(trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    out = c.copy()
    result = cnn_core.gemm(a, b, out, **kwargs)
    assert result is out
    expected = reference.gemm(a, b, c.copy(), **kwargs)
    assert_close(out, expected, k=k)
    assert_close(out, numpy_gemm(a, b, c, trans_a, trans_b, alpha, beta).astype(dtype), k=k)


@pytest.mark.parametrize("k", [1, 15, 16, 17, 32, 47, 64, 257])
@pytest.mark.parametrize("n", [31, 32, 64, 70])
def test_gemm_transposed_b_panels(rng, dtype, k, n):
    # op(B) = W^T: whole 32-column panels are packed 16 rows of k at a time by an in-register
    # transpose (AVX-512 float), the last k % 16 rows and partial panels by gathers
    m = 13
    a = randn(rng, (m, k), dtype)
    w = randn(rng, (n, k), dtype)
    assert_close(cnn_core.gemm(a, w, trans_b=True), reference.gemm(a, w, trans_b=True), k=k)
    # a row stride that is not a multiple of the vector (every row starts misaligned)
    wide = randn(rng, (n, k + 3), dtype)
    view = wide[:, 1:k + 1]
    assert_close(cnn_core.gemm(a, view, trans_b=True), reference.gemm(a, view, trans_b=True),
                 k=k)


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_gemm_out_none_allocates(rng, dtype, trans_a, trans_b):
    a, b = operands(rng, 9, 10, 11, dtype, trans_a, trans_b)
    kwargs = dict(trans_a=trans_a, trans_b=trans_b, alpha=0.75)
    out = cnn_core.gemm(a, b, **kwargs)
    assert isinstance(out, np.ndarray) and out.shape == (9, 11) and out.dtype == dtype
    assert_close(out, reference.gemm(a, b, **kwargs), k=10)


@pytest.mark.parametrize("backend_name", ["gemm", "gemm_naive"])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (13, 31, 7), (40, 3, 37)])
def test_gemm_beta_zero_never_reads_out(rng, dtype, backend_name, trans_a, trans_b, m, k, n):
    a, b = operands(rng, m, k, n, dtype, trans_a, trans_b)
    for alpha in (1.0, -2.0):
        out = nan_array((m, n), dtype)
        result = getattr(cnn_core, backend_name)(a, b, out, trans_a=trans_a, trans_b=trans_b,
                                                 alpha=alpha, beta=0.0)
        assert result is out
        assert np.isfinite(out).all()
        assert_close(out, reference.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha), k=k)


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 13, 3), (31, 97, 13), (13, 33, 33)])
def test_gemm_naive(rng, dtype, m, k, n, trans_a, trans_b):
    a, b = operands(rng, m, k, n, dtype, trans_a, trans_b)
    c = randn(rng, (m, n), dtype)
    kwargs = dict(trans_a=trans_a, trans_b=trans_b, alpha=1.25, beta=-0.5)
    out = c.copy()
    assert cnn_core.gemm_naive(a, b, out, **kwargs) is out
    assert_close(out, reference.gemm_naive(a, b, c.copy(), **kwargs), k=k)
    assert_close(cnn_core.gemm_naive(a, b, trans_a=trans_a, trans_b=trans_b),
                 cnn_core.gemm(a, b, trans_a=trans_a, trans_b=trans_b), k=k)


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_gemm_non_contiguous_inputs(rng, dtype, trans_a, trans_b):
    m, k, n = 13, 29, 17
    a = strided(rng, (k, m) if trans_a else (m, k), dtype)
    b = strided(rng, (n, k) if trans_b else (k, n), dtype)
    kwargs = dict(trans_a=trans_a, trans_b=trans_b)
    assert_close(cnn_core.gemm(a, b, **kwargs), reference.gemm(a, b, **kwargs), k=k)


def test_gemm_transposed_views(rng, dtype):
    # a.T and b.T are Fortran-ordered views: the kernel copies them, the result is the same
    m, k, n = 19, 23, 29
    a = randn(rng, (k, m), dtype)
    b = randn(rng, (n, k), dtype)
    expected = reference.gemm(a, b, trans_a=True, trans_b=True)
    assert_close(cnn_core.gemm(a.T, b.T), expected, k=k)
    assert_close(cnn_core.gemm(a.T, b, trans_b=True), expected, k=k)
    assert_close(cnn_core.gemm(a, b.T, trans_a=True), expected, k=k)
    assert not a.T.flags.c_contiguous


def test_gemm_does_not_modify_inputs(rng, dtype):
    a, b = operands(rng, 13, 17, 19, dtype, False, False)
    a0, b0 = a.copy(), b.copy()
    cnn_core.gemm(a, b)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("m,k,n", [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0), (0, 5, 0), (1, 0, 1)])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_gemm_zero_size(rng, dtype, m, k, n, trans_a, trans_b):
    a, b = operands(rng, m, k, n, dtype, trans_a, trans_b)
    kwargs = dict(trans_a=trans_a, trans_b=trans_b)
    # beta == 0: out (NaN at the start) becomes alpha * op(a) @ op(b), zeros when K == 0
    out = nan_array((m, n), dtype)
    assert cnn_core.gemm(a, b, out, alpha=2.0, **kwargs) is out
    expected = 2.0 * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, reference.gemm(a, b, alpha=2.0, **kwargs))
    # beta != 0: beta * out survives
    c = randn(rng, (m, n), dtype)
    out = c.copy()
    cnn_core.gemm(a, b, out, alpha=2.0, beta=0.5, **kwargs)
    assert_close(out, reference.gemm(a, b, c.copy(), alpha=2.0, beta=0.5, **kwargs), k=k)


def test_gemm_deterministic(rng, dtype):
    # the same call gives the same bits (fixed reduction order)
    a, b = operands(rng, 67, 401, 53, dtype, False, False)
    first = cnn_core.gemm(a, b)
    for _ in range(3):
        np.testing.assert_array_equal(cnn_core.gemm(a, b), first)


def test_gemm_mlp_shapes(rng, dtype):
    # forward x @ w, then the two products of its backward pass
    x = randn(rng, (MLP_N, MLP_D), dtype)
    w = randn(rng, (MLP_D, MLP_H), dtype, scale=0.05)
    g = randn(rng, (MLP_N, MLP_H), dtype)
    z = cnn_core.gemm(x, w)                                # (128, 784) @ (784, 256)
    assert_close(z, reference.gemm(x, w), k=MLP_D)
    assert_close(z, (x.astype(np.float64) @ w).astype(dtype), k=MLP_D)
    gw = cnn_core.gemm(x, g, trans_a=True)                 # x.T (784, 128) @ g (128, 256)
    assert_close(gw, reference.gemm(x, g, trans_a=True), k=MLP_N)
    gx = cnn_core.gemm(g, w, trans_b=True)                 # g (128, 256) @ w.T (256, 784)
    assert_close(gx, reference.gemm(g, w, trans_b=True), k=MLP_H)


# ----------------------------------------------------------------------------------------
# linear_forward / linear_backward
# ----------------------------------------------------------------------------------------

def test_reference_linear_by_hand():
    x = np.array([[1.0, 2.0], [-3.0, 0.5]])
    w = np.array([[1.0, -1.0, 0.0], [2.0, 1.0, -2.0]])
    b = np.array([0.5, -4.0, 1.0])
    z = reference.linear_forward(x, w, b)
    np.testing.assert_array_equal(z, [[5.5, -3.0, -3.0], [-1.5, -0.5, 0.0]])
    np.testing.assert_array_equal(reference.linear_forward(x, w, b, activation="relu"),
                                  [[5.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(reference.linear_forward(x, w, None),
                                  [[5.0, 1.0, -4.0], [-2.0, 3.5, -1.0]])
    g = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]])
    grad_w = np.ones((2, 3))
    grad_b = np.full(3, 10.0)
    grad_x = reference.linear_backward(g, x, w, grad_w, grad_b)
    np.testing.assert_array_equal(grad_w, 1 + np.array([[1.0, 3.0, -1.0], [2.0, -0.5, 4.5]]))
    np.testing.assert_array_equal(grad_b, [11.0, 9.0, 13.0])
    np.testing.assert_array_equal(grad_x, [[1.0, -2.0], [1.0, -3.0]])


def test_reference_linear_matches_definition(rng, dtype):
    x, w, b = randn(rng, (6, 5), dtype), randn(rng, (5, 4), dtype), randn(rng, (4,), dtype)
    assert_close(reference.linear_forward(x, w, b),
                 (x.astype(np.float64) @ w + b).astype(dtype), k=5)
    g = randn(rng, (6, 4), dtype)
    grad_w, grad_b = np.zeros_like(w), np.zeros_like(b)
    grad_x = reference.linear_backward(g, x, w, grad_w, grad_b)
    assert_close(grad_w, (x.T.astype(np.float64) @ g).astype(dtype), k=6)
    assert_close(grad_b, g.astype(np.float64).sum(0).astype(dtype), k=6)
    assert_close(grad_x, (g.astype(np.float64) @ w.T).astype(dtype), k=4)


LINEAR_SHAPES = [(1, 1, 1), (3, 7, 13), (13, 31, 7), (31, 1, 97), (97, 13, 3), (64, 400, 45)]


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,d,m", LINEAR_SHAPES)
def test_linear_forward(rng, dtype, n, d, m, bias, activation):
    x, w = randn(rng, (n, d), dtype), randn(rng, (d, m), dtype)
    b = randn(rng, (m,), dtype) if bias else None
    expected = reference.linear_forward(x, w, b, activation=activation)
    assert_close(cnn_core.linear_forward(x, w, b, activation=activation), expected, k=d)
    out = nan_array((n, m), dtype)                     # old contents never read
    assert cnn_core.linear_forward(x, w, b, out, activation=activation) is out
    assert_close(out, expected, k=d)
    if activation == "relu":
        assert (out >= 0).all()


def test_linear_forward_non_contiguous(rng, dtype):
    x, w, b = strided(rng, (9, 14), dtype), strided(rng, (14, 11), dtype), strided(rng, (11,), dtype)
    assert_close(cnn_core.linear_forward(x, w, b, activation="relu"),
                 reference.linear_forward(x, w, b, activation="relu"), k=14)
    wt = randn(rng, (11, 14), dtype).T                  # a transposed view as w
    assert_close(cnn_core.linear_forward(x, wt, b), reference.linear_forward(x, wt, b), k=14)


@pytest.mark.parametrize("n,d,m", [(0, 3, 4), (3, 0, 4), (3, 4, 0)])
def test_linear_forward_zero_size(rng, dtype, n, d, m):
    x, w, b = randn(rng, (n, d), dtype), randn(rng, (d, m), dtype), randn(rng, (m,), dtype)
    out = nan_array((n, m), dtype)
    cnn_core.linear_forward(x, w, b, out, activation="relu")
    np.testing.assert_array_equal(out, np.maximum(x @ w + b, 0))
    np.testing.assert_array_equal(out, reference.linear_forward(x, w, b, activation="relu"))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,d,m", LINEAR_SHAPES)
def test_linear_backward(rng, dtype, n, d, m, bias):
    g, x, w = randn(rng, (n, m), dtype), randn(rng, (n, d), dtype), randn(rng, (d, m), dtype)
    gw0 = randn(rng, (d, m), dtype)                     # gradients accumulate into these
    gb0 = randn(rng, (m,), dtype) if bias else None
    grads = {}
    for mod in (cnn_core, reference):
        gw = gw0.copy()
        gb = gb0.copy() if bias else None
        gx = mod.linear_backward(g, x, w, gw, gb)
        grads[mod] = (gw, gb, gx)
    gw, gb, gx = grads[cnn_core]
    rgw, rgb, rgx = grads[reference]
    assert_close(gw, rgw, k=n)
    assert_close(gx, rgx, k=m)
    if bias:
        assert_close(gb, rgb, k=n)


def test_linear_backward_buffers_and_accumulation(rng, dtype):
    n, d, m = 13, 31, 7
    g, x, w = randn(rng, (n, m), dtype), randn(rng, (n, d), dtype), randn(rng, (d, m), dtype)
    gw, gb = np.zeros((d, m), dtype), np.zeros((m,), dtype)
    gx = nan_array((n, d), dtype)
    assert cnn_core.linear_backward(g, x, w, gw, gb, gx) is gx
    assert_close(gx, reference.linear_backward(g, x, w, np.zeros_like(gw), None), k=m)
    # a second call adds the same amount again
    once_w, once_b = gw.copy(), gb.copy()
    assert cnn_core.linear_backward(g, x, w, gw, gb, compute_grad_x=False) is None
    assert_close(gw, 2 * once_w, k=n)
    assert_close(gb, 2 * once_b, k=n)
    # compute_grad_x=False leaves a given grad_x alone
    gx_before = gx.copy()
    cnn_core.linear_backward(g, x, w, gw, None, gx, compute_grad_x=False)
    np.testing.assert_array_equal(gx, gx_before)


@pytest.mark.parametrize("n,d,m", [(1, 1, 1), (13, 31, 7), (128, 97, 33)])
def test_linear_backward_overwrite(rng, dtype, n, d, m):
    # accumulate=False: grad_w and grad_b are written (never read: NaN stays out)
    g, x, w = randn(rng, (n, m), dtype), randn(rng, (n, d), dtype), randn(rng, (d, m), dtype)
    for mod in (cnn_core, reference):
        gw, gb = nan_array((d, m), dtype), nan_array((m,), dtype)
        gx = mod.linear_backward(g, x, w, gw, gb, accumulate=False)
        rgw, rgb = np.zeros((d, m), dtype), np.zeros((m,), dtype)
        rgx = reference.linear_backward(g, x, w, rgw, rgb)
        assert_close(gw, rgw, k=n)
        assert_close(gb, rgb, k=n)
        assert_close(gx, rgx, k=m)
        mod.linear_backward(g, x, w, gw, None, accumulate=False, compute_grad_x=False)
        assert_close(gw, rgw, k=n)


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 15, 17, 127, 128, 130, 257])
def test_row_kernel_column_chunks(rng, dtype, m, n):
    # m < 4: the unpacked row kernel takes columns 8 vectors, then 1 vector, then 1 at a
    # time; every n splits differently among the three (and among threads when large)
    k = 211
    x, w, bias = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
    assert_close(cnn_core.gemm(x, w), reference.gemm(x, w), k=k)
    assert_close(cnn_core.linear_forward(x, w, bias, activation="relu"),
                 reference.linear_forward(x, w, bias, activation="relu"), k=k)
    c = randn(rng, (m, n), dtype)
    out = c.copy()
    cnn_core.gemm(x, w, out, alpha=0.5, beta=2.0)
    assert_close(out, reference.gemm(x, w, c, alpha=0.5, beta=2.0), k=k)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_row_kernel_last_columns(rng, dtype, m):
    # the last n % VL columns (all of them for n < VL: a 10-class output layer) go as one
    # vector running on into the next row of B while it stays inside B, then row by row:
    # every k around that limit, every width of the rest; each column gets the bits the
    # full vectors give it (the same sum in the same order); B is never read past its end
    # (checked by ASan: tools/sanitize.sh runs this file)
    for k in (1, 2, 3, 4, 5, 9, 16, 17, 33):
        for n in (1, 2, 3, 5, 7, 10, 15, 17, 26, 31, 33):
            x, w = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype)
            bias = randn(rng, (n,), dtype)
            got = cnn_core.linear_forward(x, w, bias, activation="relu")
            assert_close(got, reference.linear_forward(x, w, bias, activation="relu"), k=k)
            wide = np.concatenate([w, randn(rng, (k, 48), dtype)], axis=1)
            full = cnn_core.linear_forward(x, wide, np.concatenate([bias, np.zeros(48, dtype)]),
                                           activation="relu")[:, :n]
            assert np.array_equal(got, full), (k, n)
            c = randn(rng, (m, n), dtype)
            out = c.copy()
            cnn_core.gemm(x, w, out, alpha=-0.5, beta=1.5)
            assert_close(out, reference.gemm(x, w, c, alpha=-0.5, beta=1.5), k=k)


@pytest.mark.parametrize("m,k,n", [(1, 2, 131082), (3, 17, 50011), (2, 5, 70001)])
def test_row_kernel_slabs_end_in_a_partial_vector(rng, dtype, m, k, n):
    # more than 2**17 outputs for the row kernel: column slabs on multiples of 128, the last
    # one ending in n % VL columns whose vector runs on into B's next row; the same bits on
    # 1, 2 and 3 threads, and the twin's values
    x, w, bias = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
    expected = reference.linear_forward(x, w, bias, activation="relu")
    before = cnn_core.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            cnn_core.set_num_threads(threads)
            results.append(cnn_core.linear_forward(x, w, bias, activation="relu"))
            assert_close(results[-1], expected, k=k)
        assert all(np.array_equal(r, results[0]) for r in results)
    finally:
        cnn_core.set_num_threads(before)


@pytest.mark.parametrize("m,k,n", [(1, 784, 256), (2, 1001, 300), (3, 257, 170), (1, 2, 70000),
                                   (1, 3, 50000), (2, 4099, 17),
                                   (16, 784, 256), (128, 784, 256), (37, 2001, 45), (5, 20, 3001),
                                   (13, 1025, 33)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-1.5, 0.25), (0.0, 2.0)])
def test_products_in_two_halves_of_k(rng, dtype, m, k, n, alpha, beta):
    # few rows for the k of a product worth two threads (the row kernel's m < 4, or
    # 4 * m <= k with row-major B): each half of k summed into its own partial C (by the
    # row kernel or the micro-kernels, B in place or packed, several k blocks), then
    # alpha * (first + last) + beta * C + bias, ReLU; with one thread as with three
    x, w, bias = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
    c = randn(rng, (m, n), dtype)
    expected = reference.gemm(x, w, c.copy(), alpha=alpha, beta=beta)   # (written in place)
    expected_relu = reference.linear_forward(x, w, bias, activation="relu")
    before = cnn_core.get_num_threads()
    try:
        for threads in (1, 2, 3):
            cnn_core.set_num_threads(threads)
            out = c.copy()
            cnn_core.gemm(x, w, out, alpha=alpha, beta=beta)
            assert_close(out, expected, k=k)
            assert_close(cnn_core.linear_forward(x, w, bias, activation="relu"), expected_relu,
                         k=k)
    finally:
        cnn_core.set_num_threads(before)


@pytest.mark.parametrize("m", [1, 3])
def test_row_path_with_k_1_and_a_wide_b(rng, dtype, m):
    # k = 1 has no halves to cut (a product worth two threads all the same)
    x, w = randn(rng, (m, 1), dtype), randn(rng, (1, 1 << 17), dtype)
    assert_close(cnn_core.gemm(x, w), reference.gemm(x, w), k=1)


@pytest.mark.parametrize("m", [1, 40])
def test_halves_of_k_keep_nan_through_relu(dtype, m):
    # NaN in one half of the sum, or in the bias, stays NaN through the fused ReLU
    k, n = 1000, 200
    x = np.ones((m, k), dtype)
    w = np.full((k, n), -1.0, dtype)
    w[k - 1, 3] = np.nan                    # in the second half's rows
    w[0, 5] = np.nan                        # in the first half's
    bias = np.zeros(n, dtype)
    bias[7] = np.nan
    out = cnn_core.linear_forward(x, w, bias, activation="relu")
    assert np.isnan(out[:, [3, 5, 7]]).all()
    assert (np.delete(out, [3, 5, 7], axis=1) == 0).all()     # -k + 0 -> ReLU -> 0


def test_linear_backward_non_contiguous(rng, dtype):
    n, d, m = 10, 12, 9
    g, x, w = strided(rng, (n, m), dtype), strided(rng, (n, d), dtype), strided(rng, (d, m), dtype)
    out = {}
    for mod in (cnn_core, reference):
        gw, gb = np.zeros((d, m), dtype), np.zeros((m,), dtype)
        out[mod] = (gw, gb, mod.linear_backward(g, x, w, gw, gb))
    for actual, expected in zip(out[cnn_core], out[reference]):
        assert_close(actual, expected, k=max(n, m))


@pytest.mark.parametrize("n,d,m", [(0, 3, 4), (3, 0, 4), (3, 4, 0)])
def test_linear_backward_zero_size(rng, dtype, n, d, m):
    g, x, w = randn(rng, (n, m), dtype), randn(rng, (n, d), dtype), randn(rng, (d, m), dtype)
    gw, gb = np.ones((d, m), dtype), np.ones((m,), dtype)
    gx = nan_array((n, d), dtype)
    cnn_core.linear_backward(g, x, w, gw, gb, gx)
    assert_close(gw, 1 + x.T @ g, k=n)
    assert_close(gb, 1 + g.sum(0), k=n)
    assert_close(gx, g @ w.T, k=m)


def test_linear_mlp_shapes(rng, dtype):
    x = randn(rng, (MLP_N, MLP_D), dtype)
    w = randn(rng, (MLP_D, MLP_H), dtype, scale=0.05)
    b = randn(rng, (MLP_H,), dtype)
    z = cnn_core.linear_forward(x, w, b, activation="relu")
    assert_close(z, reference.linear_forward(x, w, b, activation="relu"), k=MLP_D)
    g = randn(rng, (MLP_N, MLP_H), dtype)
    grads = {}
    for mod in (cnn_core, reference):
        gw, gb = np.zeros_like(w), np.zeros_like(b)
        grads[mod] = (gw, gb, mod.linear_backward(g, x, w, gw, gb))
    for actual, expected, k in zip(grads[cnn_core], grads[reference], (MLP_N, MLP_N, MLP_H)):
        assert_close(actual, expected, k=k)


@pytest.mark.parametrize("mod", [cnn_core, reference], ids=["cython", "numpy"])
def test_buffers_sharing_memory_with_inputs_are_refused(rng, mod, dtype):
    # a buffer is written while the inputs are read (by several threads, block by block):
    # one that overlaps an input would give a silent wrong answer; a refused call writes
    # nothing
    a = randn(rng, (6, 6), dtype)
    b = randn(rng, (6, 6), dtype)
    a0, b0 = a.copy(), b.copy()
    store = np.zeros(48, dtype)
    with pytest.raises(ValueError, match="out overlaps a"):
        mod.gemm_naive(a, b, a, alpha=2.0)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)
    with pytest.raises(ValueError, match="out overlaps a"):
        mod.gemm(a, b, a)
    with pytest.raises(ValueError, match="out overlaps b"):
        mod.gemm(a, b, b, trans_b=True, beta=1.0)
    with pytest.raises(ValueError, match="out overlaps x"):
        mod.linear_forward(a, b, None, a)
    bias = store[:6]
    with pytest.raises(ValueError, match="out overlaps b"):
        mod.linear_forward(a, b, bias, store[4:40].reshape(6, 6))
    g = randn(rng, (6, 6), dtype)
    g0 = g.copy()
    gw = np.zeros((6, 6), dtype)
    with pytest.raises(ValueError, match="grad_w overlaps x"):
        mod.linear_backward(g, a, b, a, None)
    with pytest.raises(ValueError, match="grad_b overlaps grad_out"):
        mod.linear_backward(g, a, b, gw, g[0])
    with pytest.raises(ValueError, match="grad_x overlaps w"):
        mod.linear_backward(g, a, b, gw, None, b)
    with pytest.raises(ValueError, match="grad_x overlaps grad_w"):
        mod.linear_backward(g, a, b, store[:36].reshape(6, 6), None,
                            store[12:48].reshape(6, 6))
    with pytest.raises(ValueError, match="grad_w overlaps grad_b"):
        mod.linear_backward(g, a, b, store[:36].reshape(6, 6), store[30:36])
    with pytest.raises(ValueError, match="grad_x overlaps grad_b"):
        mod.linear_backward(g, a, b, gw, store[40:46], store[6:42].reshape(6, 6))
    assert np.array_equal(a, a0) and np.array_equal(b, b0) and np.array_equal(g, g0)
    assert not gw.any() and not store.any()     # nothing written by a refused call
    # side by side in one array, not overlapping: computed; so is an input that is a
    # strided view of the buffer's memory (copied before the product, in both backends)
    out = store[:36].reshape(6, 6)
    assert_close(mod.gemm(a, b, out), a @ b, k=6)
    assert_close(mod.linear_forward(a, b, store[36:42], out), a @ b + store[36:42], k=6)
    wide = randn(rng, (6, 12), dtype)
    strided = wide[:, ::2]
    expected = strided @ b
    assert_close(mod.gemm(strided, b, wide[:, :6].copy()), expected, k=6)
    # zero-size buffers share no memory
    empty = np.zeros((0, 6), dtype)
    assert mod.gemm(empty, b, empty).shape == (0, 6)
