"""Batch normalisation (torch.nn.BatchNorm1d / BatchNorm2d semantics), forward and backward.

x is (N, C) or (N, C, H, W); statistics are per channel c over the M = N*H*W values:

    training:  mean_c = mean(x[:, c]);  var_c = mean((x[:, c] - mean_c)^2)       (biased)
               running_mean = (1 - momentum) running_mean + momentum mean_c
               running_var  = (1 - momentum) running_var  + momentum var_c M / (M - 1)
    eval:      mean_c, var_c = running_mean, running_var
    both:      invstd_c = 1 / sqrt(var_c + eps);  xhat = (x - mean_c) invstd_c
               y = gamma_c xhat + beta_c

    backward:  grad_gamma_c += sum(g xhat);  grad_beta_c += sum(g)
               training: dx = gamma_c invstd_c / M (M g - sum(g) - xhat sum(g xhat))
               eval:     dx = gamma_c invstd_c g

Channels are independent: threads take contiguous ranges of channels; sums are in double,
in 8 interleaved lanes (_lanes.pxd).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from cnn_core._checks cimport as_float_array, check_same_dtype, check_same_shape, check_buffer, output, check_scalar
from cnn_core._parallel cimport num_threads
from cnn_core._lanes cimport lane_sum, LANE_SUM, LANE_SUM_SQ_DEV, LANE_SUM_G_DEV

cdef enum:
    MIN_WORK_PER_THREAD = 1 << 14


cdef void bn_forward_channel(const floating *x, floating *y, long N, long C, long S, long c,
                             floating gamma, floating beta, floating *rmean, floating *rvar,
                             floating *smean, floating *sinvstd, bint training,
                             double momentum, double eps) noexcept nogil:
    # one channel c of x (N, C, S)
    cdef long n, s
    cdef const floating *xp
    cdef floating *yp
    cdef double total = 0, sq = 0, mean, var, d, invstd, scale, shift
    cdef long M = N * S
    if training:
        for n in range(N):
            total += lane_sum(x, x + (n * C + c) * S, S, 0, LANE_SUM)
        mean = total / M
        for n in range(N):
            sq += lane_sum(x, x + (n * C + c) * S, S, mean, LANE_SUM_SQ_DEV)
        var = sq / M
        rmean[c] = <floating> ((1 - momentum) * rmean[c] + momentum * mean)
        rvar[c] = <floating> ((1 - momentum) * rvar[c] + momentum * var * M / (M - 1))
    else:
        mean = rmean[c]
        var = rvar[c]
    invstd = 1 / sqrt(var + eps)
    smean[c] = <floating> mean
    sinvstd[c] = <floating> invstd
    scale = gamma * invstd
    shift = beta - mean * scale
    for n in range(N):
        xp = x + (n * C + c) * S
        yp = y + (n * C + c) * S
        for s in range(S):
            yp[s] = <floating> (xp[s] * scale + shift)


cdef void bn_backward_channel(const floating *g, const floating *x, floating *dx, long N,
                              long C, long S, long c, floating gamma, floating mean,
                              floating invstd, floating *dgamma, floating *dbeta,
                              bint training) noexcept nogil:
    cdef long n, s
    cdef const floating *gp
    cdef const floating *xp
    cdef floating *dp
    cdef double sum_g = 0, sum_gx = 0, xhat, k, M = N * S
    for n in range(N):
        gp = g + (n * C + c) * S
        sum_g += lane_sum(gp, gp, S, 0, LANE_SUM)
        sum_gx += lane_sum(gp, x + (n * C + c) * S, S, mean, LANE_SUM_G_DEV)
    sum_gx *= invstd                                   # sum(g * xhat)
    dgamma[c] += <floating> sum_gx
    dbeta[c] += <floating> sum_g
    if dx == NULL:
        return
    k = gamma * invstd
    for n in range(N):
        gp = g + (n * C + c) * S
        xp = x + (n * C + c) * S
        dp = dx + (n * C + c) * S
        if training:
            for s in range(S):
                xhat = (xp[s] - mean) * invstd
                dp[s] = <floating> (k * (gp[s] - sum_g / M - xhat * sum_gx / M))
        else:
            for s in range(S):
                dp[s] = <floating> (k * gp[s])


cdef _forward_typed(const floating[::1] x, floating[::1] y, long N, long C, long S,
                    const floating[::1] gamma, const floating[::1] beta, floating[::1] rmean,
                    floating[::1] rvar, floating[::1] smean, floating[::1] sinvstd,
                    bint training, double momentum, double eps):
    cdef long c
    cdef int threads = num_threads()
    if N * C * S < MIN_WORK_PER_THREAD * 2 or C < 2:
        threads = 1
    with nogil:
        for c in prange(C, num_threads=threads, schedule="static"):
            bn_forward_channel(&x[0], &y[0], N, C, S, c, gamma[c], beta[c], &rmean[0],
                               &rvar[0], &smean[0], &sinvstd[0], training, momentum, eps)


cdef _backward_typed(const floating[::1] g, const floating[::1] x, floating[::1] dx, long N, long C, long S,
                     const floating[::1] gamma, const floating[::1] smean, const floating[::1] sinvstd,
                     floating[::1] dgamma, floating[::1] dbeta, bint training):
    cdef long c
    cdef int threads = num_threads()
    cdef floating *dxp = &dx[0] if dx is not None else NULL
    if N * C * S < MIN_WORK_PER_THREAD * 2 or C < 2:
        threads = 1
    with nogil:
        for c in prange(C, num_threads=threads, schedule="static"):
            bn_backward_channel(&g[0], &x[0], dxp, N, C, S, c, gamma[c], smean[c], sinvstd[c],
                                &dgamma[0], &dbeta[0], training)


cdef tuple _ncs(x):
    if x.ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {x.shape}")
    cdef long S = 1 if x.ndim == 2 else x.shape[2] * x.shape[3]
    return x.shape[0], x.shape[1], S


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1,
                      eps=1e-5, out=None, save_mean=None, save_invstd=None):
    """Batch normalisation over the channels of x (N, C) or (N, C, H, W).

    gamma, beta, running_mean, running_var: (C,). training=True normalises with the batch's
    statistics and updates the running ones in place; training=False uses the running ones.
    Returns (out, save_mean, save_invstd): the normalised output (x's shape) and the mean
    and 1/sqrt(var + eps) used, (C,) each, which batchnorm_backward needs.
    """
    x = as_float_array("x", x)
    N, C, S = _ncs(x)
    dtype = x.dtype
    gamma = check_same_dtype("gamma", as_float_array("gamma", gamma, 1), dtype)
    beta = check_same_dtype("beta", as_float_array("beta", beta, 1), dtype)
    check_same_shape("gamma", gamma, (C,))
    check_same_shape("beta", beta, (C,))
    check_buffer("running_mean", running_mean, (C,), dtype)
    check_buffer("running_var", running_var, (C,), dtype)
    m = check_scalar("momentum", momentum, 0.0, True, 1.0, True)
    e = check_scalar("eps", eps, 0.0, False)
    if training and N * S <= 1 and C > 0:
        raise ValueError(f"x: batch normalisation in training mode needs more than 1 value "
                         f"per channel, got shape {x.shape}")
    out = output("out", out, x.shape, dtype)
    save_mean = output("save_mean", save_mean, (C,), dtype)
    save_invstd = output("save_invstd", save_invstd, (C,), dtype)
    if C == 0:
        return out, save_mean, save_invstd
    if N * S == 0:
        # nothing to normalise; eval-mode statistics still describe the layer
        np.copyto(save_mean, running_mean)
        np.copyto(save_invstd, 1 / np.sqrt(running_var + e))
        return out, save_mean, save_invstd
    args = (x.reshape(-1), out.reshape(-1), N, C, S, gamma, beta, running_mean, running_var,
            save_mean, save_invstd, bool(training), m, e)
    if dtype == np.float32:
        _forward_typed[float](*args)
    else:
        _forward_typed[double](*args)
    return out, save_mean, save_invstd


def batchnorm_backward(grad_out, x, gamma, save_mean, save_invstd, grad_gamma, grad_beta,
                       grad_x=None, *, training=True, compute_grad_x=True):
    """Backward of batchnorm_forward, accumulating grad_gamma and grad_beta (C,) in place.

    grad_out and x: (N, C) or (N, C, H, W); save_mean, save_invstd: from the forward pass.
    Returns grad_x (x's shape), or None when compute_grad_x is False.
    """
    grad_out = as_float_array("grad_out", grad_out)
    dtype = grad_out.dtype
    x = check_same_dtype("x", as_float_array("x", x), dtype)
    check_same_shape("x", x, grad_out.shape)
    N, C, S = _ncs(x)
    gamma = check_same_dtype("gamma", as_float_array("gamma", gamma, 1), dtype)
    save_mean = check_same_dtype("save_mean", as_float_array("save_mean", save_mean, 1), dtype)
    save_invstd = check_same_dtype("save_invstd", as_float_array("save_invstd", save_invstd, 1),
                                   dtype)
    for name, arr in (("gamma", gamma), ("save_mean", save_mean), ("save_invstd", save_invstd)):
        check_same_shape(name, arr, (C,))
    check_buffer("grad_gamma", grad_gamma, (C,), dtype)
    check_buffer("grad_beta", grad_beta, (C,), dtype)
    grad_x = output("grad_x", grad_x, x.shape, dtype) if compute_grad_x else None
    if C == 0 or N * S == 0:
        return grad_x
    args = (grad_out.reshape(-1), x.reshape(-1), grad_x.reshape(-1) if grad_x is not None else None,
            N, C, S, gamma, save_mean, save_invstd, grad_gamma, grad_beta, bool(training))
    if dtype == np.float32:
        _backward_typed[float](*args)
    else:
        _backward_typed[double](*args)
    return grad_x
