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

Threads take contiguous ranges of samples (as the convolutions and pooling do: each thread
then reads what it wrote); each sample's sums per channel are in double, in 32 interleaved
lanes (_lanes.pxd, src/nn_lanes.h: the same bits on every ISA), and each channel's total
adds them in sample order on one thread, so the bits do not depend on the thread count.

In place: the forward's out may be x itself, the backward's grad_x may be grad_out or x
itself (the statistics and sums are taken over the whole input first, then each value is
read before it is written). Any other overlap between the arrays of a call -- a shifted
view, a statistic in another buffer, the running statistics -- is a ValueError.
"""
import numpy as np

from cython cimport floating
from libc.math cimport sqrt

from cnn_core._checks cimport (as_float_array, check_same_dtype, check_same_shape, check_buffer,
                              output, check_scalar, refuse_overlaps)
from cnn_core._parallel cimport num_threads, span_parts, run_parts
from cnn_core._lanes cimport lane_sum, lane_sums, LANE_SUM, LANE_SUM_SQ_DEV, LANE_SUM_G_DEV

cdef extern from "nn_scratch.h" nogil:
    # (this module's slot 0: the per-sample sums and the per-channel figures)
    void *nn_scratch(int slot, size_t nbytes)

cdef extern from "nn_norm.h" nogil:
    # the leading values of _normalise's and _grad_x's float32 loops, by AVX-512 where the
    # CPU has it (same bits): they return how many they did, the loops below do the rest
    Py_ssize_t nn_normalise_f32(const float *x, float *y, Py_ssize_t S, double a, double b)
    Py_ssize_t nn_grad_x_f32(const float *g, const float *x, float *dx, Py_ssize_t S, double k,
                             double mg, double mgx, float mu, float inv, int training)

cdef enum:
    MIN_WORK_PER_THREAD = 1 << 14


cdef void _sample_sums(const floating *x, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t C, Py_ssize_t S,
                       const double *mean, int kind, double *sums) noexcept nogil:
    # sums[n, c] = the lane sum `kind` of x[n, c] (about mean[c] when mean is not NULL),
    # for the samples [n0, n1)
    cdef Py_ssize_t n
    for n in range(n0, n1):
        lane_sums(x, x + n * C * S, S, S, mean, kind, C, sums + n * C)


cdef void _sample_grad_sums(const floating *g, const floating *x, Py_ssize_t n0, Py_ssize_t n1,
                            Py_ssize_t C, Py_ssize_t S, const floating *mean, double *sum_g,
                            double *sum_gx) noexcept nogil:
    # per sample and channel: sum(g) and sum(g (x - mean_c)), for the samples [n0, n1)
    cdef Py_ssize_t n, c0, c, count
    cdef double means[64]
    for c0 in range(0, C, 64):
        count = min(64, C - c0)
        for c in range(count):
            means[c] = mean[c0 + c]
        for n in range(n0, n1):
            lane_sums(g, g + (n * C + c0) * S, S, S, NULL, LANE_SUM, count, sum_g + n * C + c0)
            lane_sums(g + (n * C + c0) * S, x + (n * C + c0) * S, S, S, means, LANE_SUM_G_DEV,
                      count, sum_gx + n * C + c0)


cdef void _normalise(const floating *x, floating *y, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t C,
                     Py_ssize_t S, const double *scale, const double *shift) noexcept nogil:
    # y = x scale_c + shift_c for the samples [n0, n1)
    cdef Py_ssize_t n, c, s, s0 = 0
    cdef const floating *xp
    cdef floating *yp
    cdef double a, b
    for n in range(n0, n1):
        for c in range(C):
            xp = x + (n * C + c) * S
            yp = y + (n * C + c) * S
            a = scale[c]
            b = shift[c]
            if floating is float:
                s0 = nn_normalise_f32(xp, yp, S, a, b)     # (src/nn_norm.h)
            for s in range(s0, S):
                yp[s] = <floating> (xp[s] * a + b)


cdef void _grad_x(const floating *g, const floating *x, floating *dx, Py_ssize_t n0, Py_ssize_t n1,
                  Py_ssize_t C, Py_ssize_t S, const double *k, const double *mean_g,
                  const double *mean_gx, const floating *mean, const floating *invstd,
                  bint training) noexcept nogil:
    # dx for the samples [n0, n1): training  k_c (g - mean(g) - xhat mean(g xhat)),
    # eval  k_c g   (k_c = gamma_c invstd_c; the means per channel, worked out once: a
    # division per value was most of this loop's time)
    cdef Py_ssize_t n, c, s, s0 = 0
    cdef const floating *gp
    cdef const floating *xp
    cdef floating *dp
    cdef double xhat, kc, mg, mgx
    cdef floating mu, inv       # (xhat is (x - mean) invstd in the data's precision)
    for n in range(n0, n1):
        for c in range(C):
            gp = g + (n * C + c) * S
            xp = x + (n * C + c) * S
            dp = dx + (n * C + c) * S
            kc = k[c]
            mg = mean_g[c]
            mgx = mean_gx[c]
            mu = mean[c]
            inv = invstd[c]
            if floating is float:
                s0 = nn_grad_x_f32(gp, xp, dp, S, kc, mg, mgx, mu, inv, training)  # (nn_norm.h)
            if training:
                for s in range(s0, S):
                    xhat = (xp[s] - mu) * inv
                    dp[s] = <floating> (kc * (gp[s] - mg - xhat * mgx))
            else:
                for s in range(s0, S):
                    dp[s] = <floating> (kc * gp[s])


cdef inline double _channel_total(const double *sums, Py_ssize_t N, Py_ssize_t C,
                                  Py_ssize_t c) noexcept nogil:
    # sum over the samples, in sample order, of sums (N, C)[:, c]
    cdef double total = 0
    cdef Py_ssize_t n
    for n in range(N):
        total = total + sums[n * C + c]
    return total


cdef inline Py_ssize_t _lo(Py_ssize_t t, Py_ssize_t step, Py_ssize_t N) noexcept nogil:
    # where part t of N samples, `step` each (the last one maybe fewer), starts
    return t * step if t * step < N else N


cdef Py_ssize_t _parts(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S) noexcept nogil:
    # threads over whole samples (as the convolutions and the pooling share out their work,
    # so that each thread reads what it wrote before -- on two cores, data the other core
    # wrote last comes from its cache, line by line), when the work pays for them
    if N * C * S < MIN_WORK_PER_THREAD * 2:
        return 1
    return span_parts(N, 1, num_threads())


cdef enum Stage:
    SUMS, SQ_DEV_SUMS, NORMALISE, GRAD_SUMS, GRAD_X


ctypedef struct _NormJob:
    # one stage of a batch norm over the samples, `step` of them a part (float32 or float64
    # behind the pointers)
    Stage stage
    bint single
    Py_ssize_t N
    Py_ssize_t C
    Py_ssize_t S
    Py_ssize_t step
    const void *g
    const void *x
    void *y
    const void *mean          # (the data's precision: GRAD_SUMS, GRAD_X)
    const void *invstd
    const double *dmean       # (SQ_DEV_SUMS)
    double *sums
    const double *a           # NORMALISE: scale, shift; GRAD_X: k, mean_g, mean_gx
    const double *b
    const double *c
    bint training


cdef void _stage(_NormJob *j, const floating *g, const floating *x, floating *y,
                 const floating *mean, const floating *invstd, Py_ssize_t n0,
                 Py_ssize_t n1) noexcept nogil:
    if j.stage == SUMS:
        _sample_sums(x, n0, n1, j.C, j.S, NULL, LANE_SUM, j.sums)
    elif j.stage == SQ_DEV_SUMS:
        _sample_sums(x, n0, n1, j.C, j.S, j.dmean, LANE_SUM_SQ_DEV, j.sums)
    elif j.stage == NORMALISE:
        _normalise(x, y, n0, n1, j.C, j.S, j.a, j.b)
    elif j.stage == GRAD_SUMS:
        _sample_grad_sums(g, x, n0, n1, j.C, j.S, mean, j.sums, j.sums + j.N * j.C)
    else:
        _grad_x(g, x, y, n0, n1, j.C, j.S, j.a, j.b, j.c, mean, invstd, j.training)


cdef void _stage_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _NormJob *j = <_NormJob *> ctx
    cdef Py_ssize_t n0 = _lo(t, j.step, j.N), n1 = _lo(t + 1, j.step, j.N)
    if j.single:
        _stage(j, <const float *> j.g, <const float *> j.x, <float *> j.y,
               <const float *> j.mean, <const float *> j.invstd, n0, n1)
    else:
        _stage(j, <const double *> j.g, <const double *> j.x, <double *> j.y,
               <const double *> j.mean, <const double *> j.invstd, n0, n1)


cdef void _run_stage(_NormJob *j, Stage stage, Py_ssize_t parts) noexcept nogil:
    # the stage over all samples: on the team when there are parts, else here (no job to
    # post: a small batch's is most of its cost)
    j.stage = stage
    if parts == 1:
        _stage_part(j, 0)
    else:
        run_parts(_stage_part, j, parts)


cdef _forward_typed(const floating[::1] x, floating[::1] y, Py_ssize_t N, Py_ssize_t C,
                    Py_ssize_t S, const floating[::1] gamma, const floating[::1] beta,
                    floating[::1] rmean, floating[::1] rvar, floating[::1] smean,
                    floating[::1] sinvstd, bint training, double momentum, double eps):
    # training: per-sample sums (threads over samples), each channel's mean from them in
    # sample order (one thread); the same for the squared deviations; then y, by samples
    cdef Py_ssize_t parts = _parts(N, C, S), step = (N + parts - 1) // parts, c
    cdef double *sums = <double *> nn_scratch(0, (N * C + 3 * C) * sizeof(double))
    if sums == NULL:
        raise MemoryError("batchnorm_forward: cannot allocate the per-sample sums")
    cdef double *mean = sums + N * C
    cdef double *scale = mean + C
    cdef double *shift = scale + C
    cdef double var, invstd
    cdef Py_ssize_t M = N * S
    cdef _NormJob j
    j.single = floating is float
    j.N, j.C, j.S, j.step = N, C, S, step
    j.g = NULL
    j.x = &x[0]
    j.y = &y[0]
    j.sums = sums
    j.dmean = mean
    j.a = scale
    j.b = shift
    with nogil:
        if training:
            _run_stage(&j, SUMS, parts)
            for c in range(C):
                mean[c] = _channel_total(sums, N, C, c) / M
            _run_stage(&j, SQ_DEV_SUMS, parts)
        for c in range(C):
            if training:
                var = _channel_total(sums, N, C, c) / M
                rmean[c] = <floating> ((1 - momentum) * rmean[c] + momentum * mean[c])
                rvar[c] = <floating> ((1 - momentum) * rvar[c] + momentum * var * M / (M - 1))
            else:
                mean[c] = rmean[c]
                var = rvar[c]
            invstd = 1 / sqrt(var + eps)
            smean[c] = <floating> mean[c]
            sinvstd[c] = <floating> invstd
            scale[c] = gamma[c] * invstd
            shift[c] = beta[c] - mean[c] * scale[c]
        _run_stage(&j, NORMALISE, parts)


cdef _backward_typed(const floating[::1] g, const floating[::1] x, floating[::1] dx, Py_ssize_t N,
                     Py_ssize_t C, Py_ssize_t S, const floating[::1] gamma,
                     const floating[::1] smean, const floating[::1] sinvstd, floating[::1] dgamma,
                     floating[::1] dbeta, bint training):
    # per-sample sums of g and g (x - mean) (threads over samples), each channel's from them
    # in sample order (one thread), then dx by samples
    cdef Py_ssize_t parts = _parts(N, C, S), step = (N + parts - 1) // parts, n, c
    cdef double *sums = <double *> nn_scratch(0, (2 * N * C + 3 * C) * sizeof(double))
    if sums == NULL:
        raise MemoryError("batchnorm_backward: cannot allocate the per-sample sums")
    cdef double *k = sums + 2 * N * C
    cdef double *mean_g = k + C
    cdef double *mean_gx = mean_g + C
    cdef double sum_g, sum_gx, M = N * S
    cdef _NormJob j
    j.single = floating is float
    j.N, j.C, j.S, j.step = N, C, S, step
    j.g = &g[0]
    j.x = &x[0]
    j.y = &dx[0] if dx is not None else NULL
    j.mean = &smean[0]
    j.invstd = &sinvstd[0]
    j.sums = sums
    j.a = k
    j.b = mean_g
    j.c = mean_gx
    j.training = training
    with nogil:
        _run_stage(&j, GRAD_SUMS, parts)
        for c in range(C):
            sum_g = 0       # (the two totals in one loop: two dependency chains side by side)
            sum_gx = 0
            for n in range(N):
                sum_g = sum_g + sums[n * C + c]
                sum_gx = sum_gx + sums[N * C + n * C + c]
            sum_gx = sum_gx * sinvstd[c]                     # sum(g * xhat)
            dgamma[c] += <floating> sum_gx
            dbeta[c] += <floating> sum_g
            k[c] = gamma[c] * sinvstd[c]           # (in the data's precision, then double)
            mean_g[c] = sum_g / M
            mean_gx[c] = sum_gx / M
        if dx is not None:
            _run_stage(&j, GRAD_X, parts)


cdef tuple _ncs(x):
    if x.ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {x.shape}")
    cdef Py_ssize_t S = 1 if x.ndim == 2 else x.shape[2] * x.shape[3]
    return x.shape[0], x.shape[1], S


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1,
                      eps=1e-5, out=None, save_mean=None, save_invstd=None):
    """Batch normalisation over the channels of x (N, C) or (N, C, H, W).

    gamma, beta, running_mean, running_var: (C,). training=True normalises with the batch's
    statistics and updates the running ones in place; training=False uses the running ones.
    Returns (out, save_mean, save_invstd): the normalised output (x's shape) and the mean
    and 1/sqrt(var + eps) used, (C,) each, which batchnorm_backward needs. out may be x
    itself (in place); no other two arrays of the call may share memory.
    """
    x = as_float_array("x", x)
    N, C, S = _ncs(x)
    dtype = x.dtype
    gamma = check_same_dtype("gamma", as_float_array("gamma", gamma, 1), dtype)
    beta = check_same_dtype("beta", as_float_array("beta", beta, 1), dtype)
    check_same_shape("gamma", gamma, (C,))
    check_same_shape("beta", beta, (C,))
    running_mean = check_buffer("running_mean", running_mean, (C,), dtype)
    running_var = check_buffer("running_var", running_var, (C,), dtype)
    m = check_scalar("momentum", momentum, 0.0, True, 1.0, True)
    e = check_scalar("eps", eps, 0.0, False)
    if training and N * S <= 1 and C > 0:
        raise ValueError(f"x: batch normalisation in training mode needs more than 1 value "
                         f"per channel, got shape {x.shape}")
    given = (out, save_mean, save_invstd)
    y = output("out", out, x.shape, dtype)
    mean = output("save_mean", save_mean, (C,), dtype)
    invstd = output("save_invstd", save_invstd, (C,), dtype)
    refuse_overlaps((("running_mean", running_mean, ()), ("running_var", running_var, ()),
                     ("out", y if out is not None else None, ("x",)),
                     ("save_mean", mean if save_mean is not None else None, ()),
                     ("save_invstd", invstd if save_invstd is not None else None, ())),
                    (("x", x), ("gamma", gamma), ("beta", beta)))
    if C == 0:
        pass
    elif N * S == 0:
        # nothing to normalise; eval-mode statistics still describe the layer
        np.copyto(mean, running_mean)
        np.copyto(invstd, 1 / np.sqrt(running_var + e))
    else:
        args = (x.reshape(-1), y.reshape(-1), N, C, S, gamma, beta, running_mean, running_var,
                mean, invstd, bool(training), m, e)
        if dtype == np.float32:
            _forward_typed[float](*args)
        else:
            _forward_typed[double](*args)
    # (the caller's objects: a subclass was written through a view)
    return tuple(made if g is None else g for made, g in zip((y, mean, invstd), given))


def batchnorm_backward(grad_out, x, gamma, save_mean, save_invstd, grad_gamma, grad_beta,
                       grad_x=None, *, training=True, compute_grad_x=True):
    """Backward of batchnorm_forward, accumulating grad_gamma and grad_beta (C,) in place.

    grad_out and x: (N, C) or (N, C, H, W); save_mean, save_invstd: from the forward pass.
    Returns grad_x (x's shape), or None when compute_grad_x is False. grad_x may be grad_out
    or x itself (in place); no other two arrays of the call may share memory.
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
    grad_gamma = check_buffer("grad_gamma", grad_gamma, (C,), dtype)
    grad_beta = check_buffer("grad_beta", grad_beta, (C,), dtype)
    given = compute_grad_x and grad_x is not None
    gx = output("grad_x", grad_x, x.shape, dtype) if compute_grad_x else None
    refuse_overlaps((("grad_gamma", grad_gamma, ()), ("grad_beta", grad_beta, ()),
                     ("grad_x", gx if given else None, ("grad_out", "x"))),
                    (("grad_out", grad_out), ("x", x), ("gamma", gamma),
                     ("save_mean", save_mean), ("save_invstd", save_invstd)))
    if C > 0 and N * S > 0:
        args = (grad_out.reshape(-1), x.reshape(-1), gx.reshape(-1) if gx is not None else None,
                N, C, S, gamma, save_mean, save_invstd, grad_gamma, grad_beta, bool(training))
        if dtype == np.float32:
            _backward_typed[float](*args)
        else:
            _backward_typed[double](*args)
    return grad_x if given else gx


def _lane_sums(const float[:, ::1] g, const float[:, ::1] v, const double[::1] means, int kind,
               bint together):
    """(tests) the lane sums of kind 0, 1, 2 (sum(v), sum((v - mean)^2), sum(g (v - mean)))
    of each row of v (float32), in double: the rows side by side as batch norm takes them
    (lane_sums) or one at a time (lane_sum) -- the same bits either way."""
    cdef Py_ssize_t count = v.shape[0], n = v.shape[1], j
    if g.shape[0] != count or g.shape[1] != n or means.shape[0] != count or not 0 <= kind <= 2:
        raise ValueError("g and v: (count, n) float32; means: (count,); kind: 0, 1 or 2")
    totals = np.zeros(count, np.float64)
    cdef double[::1] t = totals
    if count == 0 or n == 0:
        return totals
    if together:
        lane_sums(&g[0, 0], &v[0, 0], n, n, &means[0], kind, count, &t[0])
    else:
        for j in range(count):
            t[j] = lane_sum(&g[j, 0], &v[j, 0], n, means[j], kind)
    return totals
