"""Losses, each returning the mean loss over the batch and its gradient from one call: the
NumPy twin of ``cnn_core/_losses.pyx``."""
import numpy as np

from cnn_core.reference import _checks
from cnn_core.reference.activations import sigmoid_forward


def softmax_cross_entropy(logits, labels, grad=None):
    """Cross-entropy of the row softmax against integer labels, and its gradient.

    For row i with label ``y_i``::

        loss_i = logsumexp(logits[i]) - logits[i, y_i]        (= -log softmax(logits[i])[y_i])
        loss   = mean_i loss_i
        grad   = (softmax(logits) - onehot(labels)) / N        (= dloss/dlogits)

    ``logsumexp`` is taken after subtracting the row maximum, so any finite logits work.

    Parameters
    ----------
    logits : ndarray (N, C)
    labels : ndarray (N,), any integer dtype, values in [0, C)
    grad : ndarray (N, C), optional
        May be logits itself (in place: the loss is taken before it is written); it shares
        no memory with logits otherwise, nor with labels.

    Returns
    -------
    loss : float
    grad : ndarray (N, C)
    """
    # logits (N, C), labels (N,) -> loss (), grad (N, C)
    logits, labels, g = _checks.cross_entropy_args(logits, labels, grad)
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)   # each row's max becomes 0
    e = np.exp(shifted)
    sum_e = e.sum(axis=1)
    loss = np.mean(np.log(sum_e) - shifted[rows, labels], dtype=np.float64)
    g[...] = e / sum_e[:, None]                             # softmax
    g[rows, labels] -= 1                                    # - onehot
    g /= n
    return float(loss), _checks.given(grad, g)


def mse(pred, target, grad=None):
    """Mean squared error over all elements, and its gradient.

    ::

        loss = mean((pred - target)**2)
        grad = 2 * (pred - target) / pred.size

    Parameters
    ----------
    pred : ndarray, any shape
    target : ndarray of pred's shape and dtype
    grad : ndarray, optional
        May be pred or target itself (in place), and shares no memory with them otherwise.

    Returns
    -------
    loss : float
    grad : ndarray of pred's shape
    """
    # pred (...), target (...) -> loss (), grad (...)
    pred, target, g = _checks.mean_loss_args("pred", pred, target, grad)
    diff = pred - target
    loss = np.mean(diff * diff, dtype=np.float64)
    g[...] = 2 * diff / pred.size
    return float(loss), _checks.given(grad, g)


def bce_with_logits(logits, target, grad=None):
    """Binary cross-entropy of ``sigmoid(logits)`` against targets in [0, 1], and its gradient.

    ``-(t log s + (1 - t) log(1 - s))`` with ``s = sigmoid(z)`` simplifies to
    ``max(z, 0) - z t + log(1 + exp(-|z|))``, which never overflows::

        loss = mean(max(z, 0) - z * t + log1p(exp(-|z|)))
        grad = (sigmoid(z) - t) / z.size

    Parameters
    ----------
    logits : ndarray, any shape
    target : ndarray of logits' shape and dtype
    grad : ndarray, optional
        May be logits or target itself (in place), and shares no memory with them otherwise.

    Returns
    -------
    loss : float
    grad : ndarray of logits' shape
    """
    # logits (...), target (...) -> loss (), grad (...)
    z, t, g = _checks.mean_loss_args("logits", logits, target, grad)
    losses = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    loss = np.mean(losses, dtype=np.float64)
    g[...] = (sigmoid_forward(z) - t) / z.size
    return float(loss), _checks.given(grad, g)
