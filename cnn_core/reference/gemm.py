"""Matrix products, ``out = alpha * op(a) @ op(b) + beta * out``: the NumPy twin of
``cnn_core/_gemm.pyx`` (whose blocked GEMM with its micro-kernels is here one ``@``)."""
import numpy as np

from cnn_core.reference import _checks


def gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """General matrix product, ``out = alpha * op(a) @ op(b) + beta * out``.

    ``op(a)`` is ``a.T`` when ``trans_a`` is true, else ``a`` (the same for ``b``).

    Parameters
    ----------
    a : ndarray, (M, K), or (K, M) when ``trans_a``
    b : ndarray, (K, N), or (N, K) when ``trans_b``
    out : ndarray (M, N), optional
        Written in place and returned. Required when ``beta != 0``. With ``beta == 0``
        its old contents are never read (they may be NaN). It shares no memory with a or b.
    trans_a, trans_b : bool
    alpha, beta : float

    Returns
    -------
    out : ndarray (M, N)
    """
    # op(a) (M, K) @ op(b) (K, N) -> out (M, N)
    op_a, op_b, alpha, beta, c = _checks.gemm_args(a, b, out, trans_a, trans_b, alpha, beta)
    if beta == 0:
        c[...] = alpha * (op_a @ op_b)         # never reads out: it may hold NaN
    else:
        c[...] = alpha * (op_a @ op_b) + beta * c
    return _checks.given(out, c)


# The compiled module keeps a plain triple loop beside its blocked GEMM; here the two are one.
gemm_naive = gemm


def gemm_kernel_name(dtype=np.float32):
    """The name of the GEMM behind ``gemm`` for ``dtype``: here always "numpy" (``@``)."""
    return "numpy"
