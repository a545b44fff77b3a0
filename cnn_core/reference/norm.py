"""Batch normalisation over the channels (torch.nn.BatchNorm1d / BatchNorm2d), forward and
backward: the NumPy twin of ``cnn_core/_norm.pyx``."""
import numpy as np

from cnn_core.reference import _checks


def _channel_axes(x):
    """The axes a per-channel statistic of x (N, C) or (N, C, H, W) reduces over, and the
    (C,) -> broadcastable reshape."""
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    return (0, 2, 3), (1, x.shape[1], 1, 1)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1,
                      eps=1e-5, out=None, save_mean=None, save_invstd=None):
    """Batch normalisation over the channels of x (N, C) or (N, C, H, W).

    Per channel c, over the M = N*H*W values ``x[:, c]``::

        training:  mean = mean(x[:, c]);  var = mean((x[:, c] - mean)**2)     (biased)
                   running_mean = (1 - momentum) * running_mean + momentum * mean
                   running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)
        eval:      mean, var = running_mean, running_var
        both:      invstd = 1 / sqrt(var + eps)
                   out = gamma * (x - mean) * invstd + beta

    Parameters
    ----------
    x : ndarray (N, C) or (N, C, H, W)
    gamma, beta : ndarray (C,)
        Scale and shift.
    running_mean, running_var : ndarray (C,)
        Updated in place when training (the variance with Bessel's correction, as PyTorch).
    training : bool
    momentum : float in [0, 1]
    eps : float > 0
    out : ndarray of x's shape, optional
    save_mean, save_invstd : ndarray (C,), optional
        Receive the mean and invstd used, which ``batchnorm_backward`` needs.

    out may be x itself (in place: the statistics are taken first); no other two arrays of
    the call may share memory.

    Returns
    -------
    out, save_mean, save_invstd
    """
    # x (N, C[, H, W]), gamma/beta/running stats (C,) -> out (x's shape), mean (C,), invstd (C,)
    given = (out, save_mean, save_invstd)
    x, gamma, beta, running_mean, running_var, momentum, eps, out, save_mean, save_invstd = \
        _checks.batchnorm_forward_args(x, gamma, beta, running_mean, running_var, training,
                                       momentum, eps, out, save_mean, save_invstd)
    returned = tuple(map(_checks.given, given, (out, save_mean, save_invstd)))
    c = x.shape[1]
    if c == 0:
        return returned
    axes, channel_shape = _channel_axes(x)
    m = x.size // c                                  # values per channel

    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mean, var = running_mean, running_var
    invstd = 1 / np.sqrt(var + eps)
    out[...] = (gamma * invstd).reshape(channel_shape) * (x - mean.reshape(channel_shape)) \
        + beta.reshape(channel_shape)
    save_mean[...] = mean
    save_invstd[...] = invstd
    return returned


def batchnorm_backward(grad_out, x, gamma, save_mean, save_invstd, grad_gamma, grad_beta,
                       grad_x=None, *, training=True, compute_grad_x=True):
    """Backward pass of ``batchnorm_forward``: accumulate dL/dgamma, dL/dbeta, return dL/dx.

    With ``g = dL/dout``, ``xhat = (x - mean) * invstd`` and sums per channel over its M
    values::

        grad_gamma += sum(g * xhat);  grad_beta += sum(g)
        training:  grad_x = gamma * invstd / M * (M * g - sum(g) - xhat * sum(g * xhat))
        eval:      grad_x = gamma * invstd * g          (mean and invstd are constants)

    In training the batch mean and variance depend on every x, hence the two extra terms.

    Parameters
    ----------
    grad_out, x : ndarray (N, C) or (N, C, H, W)
    gamma, save_mean, save_invstd : ndarray (C,)
        ``save_mean`` and ``save_invstd`` as returned by the forward pass.
    grad_gamma, grad_beta : ndarray (C,)
        Accumulated in place.
    grad_x : ndarray of x's shape, optional
    training : bool
        The mode of the forward pass.
    compute_grad_x : bool

    grad_x may be grad_out or x itself (in place: the sums are taken first); no other two
    arrays of the call may share memory.

    Returns
    -------
    grad_x : ndarray of x's shape, or None when ``compute_grad_x`` is false
    """
    # g (N, C[, H, W]), x (same), gamma/mean/invstd (C,) -> grad_gamma +=, grad_beta +=, grad_x
    given = grad_x
    grad_out, x, gamma, mean, invstd, grad_gamma, grad_beta, grad_x = \
        _checks.batchnorm_backward_args(grad_out, x, gamma, save_mean, save_invstd, grad_gamma,
                                        grad_beta, grad_x, compute_grad_x)
    axes, channel_shape = _channel_axes(x)
    c = x.shape[1]
    m = x.size // c if c else 0                      # values per channel
    # the (C,) arrays broadcast along x's channel axis
    gamma, mean, invstd = (a.reshape(channel_shape) for a in (gamma, mean, invstd))
    xhat = (x - mean) * invstd
    sum_g = grad_out.sum(axis=axes, keepdims=True)
    sum_g_xhat = (grad_out * xhat).sum(axis=axes, keepdims=True)
    grad_gamma += sum_g_xhat.reshape(c)
    grad_beta += sum_g.reshape(c)
    if not compute_grad_x:
        return None
    if training and m > 0:
        grad_x[...] = gamma * invstd / m * (m * grad_out - sum_g - xhat * sum_g_xhat)
    else:
        grad_x[...] = gamma * invstd * grad_out
    return _checks.given(given, grad_x)
