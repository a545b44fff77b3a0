"""Activation functions, forward and backward side by side, dropout's mask multiply and the
sum of two arrays: the NumPy twin of ``cnn_core/_activations.pyx``."""
import numpy as np

from cnn_core.reference import _checks


def relu_forward(x, out=None):
    """Rectified linear unit, ``out = max(x, 0)``, elementwise.

    Parameters
    ----------
    x : ndarray, any shape
    out : ndarray of x's shape, optional
        May be x itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray of x's shape
    """
    # x (...) -> out (...)
    x, result = _checks.elementwise("x", x, out)
    result[...] = np.maximum(x, 0)
    return _checks.given(out, result)


def relu_backward(grad_out, x, out=None, *, plus=None):
    """Gradient of ReLU, ``out = grad_out * (x > 0)``.

    The derivative is 1 where the input was positive and 0 elsewhere (0 at x == 0 too).

    Parameters
    ----------
    grad_out : ndarray, any shape
    x : ndarray of grad_out's shape
        The forward input (or its output: positive at the same places).
    out : ndarray, optional
        May be grad_out, plus or x itself (in place); no other view of its memory.
    plus : ndarray of grad_out's shape and dtype, optional
        The output's gradient in two parts (a residual block's input, where the body's and
        the shortcut's gradients meet): ``out = (grad_out + plus) * (x > 0)``.

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), x (...) [, plus (...)] -> out (...)
    grad_out, x, result = _checks.elementwise("grad_out", grad_out, out, "x", x)
    if plus is not None:
        plus = _checks.as_like("plus", plus, grad_out.dtype, grad_out.shape)
        if out is not None:
            _checks.refuse_overlap("out", result, ("plus", plus), how=_checks.IN_PLACE)
        grad_out = grad_out + plus
    result[...] = grad_out * (x > 0)
    return _checks.given(out, result)


def leaky_relu_forward(x, negative_slope=0.01, out=None):
    """Leaky ReLU, ``out = x if x > 0 else negative_slope * x``, elementwise.

    Parameters
    ----------
    x : ndarray, any shape
    negative_slope : float
    out : ndarray, optional
        May be x itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray of x's shape
    """
    # x (...) -> out (...)
    x, slope, result = _checks.elementwise("x", x, out, negative_slope=negative_slope)
    result[...] = np.where(x > 0, x, slope * x)
    return _checks.given(out, result)


def leaky_relu_backward(grad_out, x, negative_slope=0.01, out=None):
    """Gradient of leaky ReLU, ``out = grad_out * (1 if x > 0 else negative_slope)``.

    Parameters
    ----------
    grad_out : ndarray, any shape
    x : ndarray of grad_out's shape
        The forward input.
    negative_slope : float
    out : ndarray, optional
        May be grad_out or x itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), x (...) -> out (...)
    grad_out, x, slope, result = _checks.elementwise("grad_out", grad_out, out, "x", x,
                                                  negative_slope=negative_slope)
    result[...] = np.where(x > 0, grad_out, slope * grad_out)
    return _checks.given(out, result)


def sigmoid_forward(x, out=None):
    """Logistic sigmoid, ``out = 1 / (1 + exp(-x))``, elementwise.

    Written so that no exponential can overflow: with ``e = exp(-|x|)`` (always in (0, 1]),
    ``sigmoid(x) = 1 / (1 + e)`` for x >= 0 and ``e / (1 + e)`` for x < 0.

    Parameters
    ----------
    x : ndarray, any shape
    out : ndarray, optional
        May be x itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray of x's shape, values in [0, 1]
    """
    # x (...) -> out (...)
    x, result = _checks.elementwise("x", x, out)
    e = np.exp(-np.abs(x))
    result[...] = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return _checks.given(out, result)


def sigmoid_backward(grad_out, y, out=None):
    """Gradient of the sigmoid from its output: ``out = grad_out * y * (1 - y)``.

    Since ``sigmoid'(x) = sigmoid(x) * (1 - sigmoid(x))``, the forward output ``y`` is all
    the backward pass needs.

    Parameters
    ----------
    grad_out : ndarray, any shape
    y : ndarray of grad_out's shape
        The forward output, ``sigmoid(x)``.
    out : ndarray, optional
        May be grad_out or y itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), y (...) -> out (...)
    grad_out, y, result = _checks.elementwise("grad_out", grad_out, out, "y", y)
    result[...] = grad_out * y * (1 - y)
    return _checks.given(out, result)


def tanh_forward(x, out=None):
    """Hyperbolic tangent, ``out = tanh(x)``, elementwise.

    Parameters
    ----------
    x : ndarray, any shape
    out : ndarray, optional
        May be x itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray of x's shape, values in [-1, 1]
    """
    # x (...) -> out (...)
    x, result = _checks.elementwise("x", x, out)
    result[...] = np.tanh(x)
    return _checks.given(out, result)


def tanh_backward(grad_out, y, out=None):
    """Gradient of tanh from its output: ``out = grad_out * (1 - y**2)``.

    Parameters
    ----------
    grad_out : ndarray, any shape
    y : ndarray of grad_out's shape
        The forward output, ``tanh(x)``.
    out : ndarray, optional
        May be grad_out or y itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), y (...) -> out (...)
    grad_out, y, result = _checks.elementwise("grad_out", grad_out, out, "y", y)
    result[...] = grad_out * (1 - y * y)
    return _checks.given(out, result)


def softmax_forward(x, out=None):
    """Softmax of each row, ``out[i, j] = exp(x[i, j]) / sum_k exp(x[i, k])``.

    Subtracting the row maximum first changes nothing mathematically (it cancels between
    numerator and denominator) but keeps every exponential in (0, 1]: no overflow.

    Parameters
    ----------
    x : ndarray (N, C)
        One row of C scores per sample.
    out : ndarray (N, C), optional
        May be x itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray (N, C), each row sums to 1
    """
    # x (N, C) -> out (N, C)
    x, result = _checks.elementwise("x", x, out, ndim=2)
    if x.size == 0:                            # no row has a maximum; nothing to compute
        return _checks.given(out, result)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    result[...] = e / e.sum(axis=1, keepdims=True)
    return _checks.given(out, result)


def softmax_backward(grad_out, y, out=None):
    """Gradient of the row softmax from its output.

    With ``y = softmax(x)`` the Jacobian of a row is ``diag(y) - y y^T``, so::

        out = y * (grad_out - sum(grad_out * y, axis=1, keepdims=True))

    Parameters
    ----------
    grad_out : ndarray (N, C)
    y : ndarray (N, C)
        The forward output.
    out : ndarray (N, C), optional
        May be grad_out or y itself (in place); no other view of its memory.

    Returns
    -------
    out : ndarray (N, C), dL/dx
    """
    # grad_out (N, C), y (N, C) -> out (N, C)
    grad_out, y, result = _checks.elementwise("grad_out", grad_out, out, "y", y, ndim=2)
    result[...] = y * (grad_out - np.sum(grad_out * y, axis=1, keepdims=True))
    return _checks.given(out, result)


def dropout_forward(x, mask, scale, out=None):
    """Inverted dropout with a given keep-mask: ``out = x * mask * scale``.

    The caller draws ``mask`` (1 = keep, 0 = drop, with probability ``1 - p`` of a 1) and
    passes ``scale = 1 / (1 - p)`` so that the expected output equals the input.

    Parameters
    ----------
    x : ndarray, any shape
    mask : ndarray of x's shape, uint8 or bool
    scale : float
    out : ndarray, optional
        May be x itself (in place); no other view of its memory (not the mask).

    Returns
    -------
    out : ndarray of x's shape
    """
    # x (...), mask (...) -> out (...)
    x, mask, scale, result = _checks.dropout_args("x", x, mask, scale, out)
    result[...] = x * mask * scale
    return _checks.given(out, result)


def dropout_backward(grad_out, mask, scale, out=None):
    """Gradient of dropout: the same mask and scale, ``out = grad_out * mask * scale``.

    Parameters
    ----------
    grad_out : ndarray, any shape
    mask : ndarray of grad_out's shape, uint8 or bool
        The mask of the forward pass.
    scale : float
    out : ndarray, optional
        May be grad_out itself (in place); no other view of its memory (not the mask).

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), mask (...) -> out (...)
    grad_out, mask, scale, result = _checks.dropout_args("grad_out", grad_out, mask, scale, out)
    result[...] = grad_out * mask * scale
    return _checks.given(out, result)


def add(a, b, out=None, *, activation=None):
    """Elementwise sum, ``out = a + b`` -- a residual connection's sum, each way.

    Parameters
    ----------
    a : ndarray, any shape
    b : ndarray of a's shape and dtype (no broadcasting)
    out : ndarray, optional
        May be a or b itself (in place); no other view of their memory.
    activation : None or "relu"
        "relu": ``out = max(a + b, 0)`` (a residual block's output).

    Returns
    -------
    out : ndarray of a's shape
    """
    # a (...), b (...) -> out (...)
    if activation not in (None, "relu"):
        raise ValueError(f"activation: None or 'relu', got {activation!r}")
    a, b, result = _checks.elementwise("a", a, out, "b", b)
    result[...] = a + b if activation is None else np.maximum(a + b, 0)
    return _checks.given(out, result)
