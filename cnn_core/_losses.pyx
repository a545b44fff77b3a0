"""Losses, each returning (mean loss, gradient w.r.t. its input) from one pass.

    softmax_cross_entropy   loss = mean_i (logsumexp(z_i) - z_i[y_i])
                            grad = (softmax(z) - onehot(y)) / N
    mse                     loss = mean((p - t)^2)          grad = 2 (p - t) / size
    bce_with_logits         loss = mean(max(z, 0) - z t + log(1 + exp(-|z|)))
                            grad = (sigmoid(z) - t) / size

Sums are accumulated in double, in a fixed order (contiguous spans per thread, partial sums
added in span order), so the loss is reproducible for a given thread count.

In place: `grad` may be the logits (pred) array itself -- each row, or value, is read
before it is written -- and, for mse and bce_with_logits, the target itself; any other
overlap with them, and any overlap with the labels, is a ValueError.
"""
import numpy as np

from cython cimport floating
from libc.math cimport exp, expf, log, log1p, fabs
from libc.stdint cimport int64_t

from cnn_core._checks cimport (as_float_array, check_same_dtype, check_same_shape, output,
                               as_labels, label_range_error, plain, refuse_overlap, READ,
                               IN_PLACE)
from cnn_core._parallel cimport num_threads, span_parts, run_parts, MAX_PARTS, SPAN_MIN

cdef double sce_rows(const floating *z, const int64_t *labels, floating *grad, Py_ssize_t n,
                     Py_ssize_t c, double inv_batch, Py_ssize_t *bad) noexcept nogil:
    # rows n of logits z (n x c): returns sum_i (lse_i - z[i, y_i]) and writes
    # grad[i, j] = (softmax(z_i)_j - [j == y_i]) * inv_batch, softmax as exp(z - max) / total
    # (exact to rounding even for huge logits, where exp(z - lse) would lose digits).
    # A label outside [0, c) is counted in *bad and its row skipped (the caller raises).
    # (in place, grad = z: each value of the row is read before it is written over)
    cdef Py_ssize_t i, j
    cdef double mx, e, total, lse, scale, zy, loss = 0
    for i in range(n):
        if labels[i] < 0 or labels[i] >= c:
            bad[0] += 1
            continue
        zy = z[i * c + labels[i]]
        mx = z[i * c]
        for j in range(1, c):
            if z[i * c + j] > mx:
                mx = z[i * c + j]
        total = 0
        for j in range(c):
            if floating is float:
                e = expf(<float> (z[i * c + j] - mx))   # (float32: libm expf, 1.4x faster)
            else:
                e = exp(z[i * c + j] - mx)
            total += e
            grad[i * c + j] = <floating> e
        lse = mx + log(total)
        loss += lse - zy
        scale = inv_batch / total
        for j in range(c):
            grad[i * c + j] = <floating> (grad[i * c + j] * scale)
        grad[i * c + labels[i]] -= <floating> inv_batch
    return loss


ctypedef struct _Sce:
    # sce_rows over `step` rows a part; each part's loss and bad labels in its own slot
    bint single
    const void *z
    const int64_t *labels
    void *grad
    Py_ssize_t n
    Py_ssize_t c
    Py_ssize_t step
    double inv_batch
    double partial[MAX_PARTS]
    Py_ssize_t bad[MAX_PARTS]


cdef void _sce_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _Sce *j = <_Sce *> ctx
    cdef Py_ssize_t start = t * j.step, rows = j.n - start, at
    j.partial[t] = 0
    j.bad[t] = 0
    if rows > j.step:
        rows = j.step
    if rows <= 0:
        return
    at = start * j.c
    if j.single:
        j.partial[t] = sce_rows(<const float *> j.z + at, j.labels + start,
                                <float *> j.grad + at, rows, j.c, j.inv_batch, &j.bad[t])
    else:
        j.partial[t] = sce_rows(<const double *> j.z + at, j.labels + start,
                                <double *> j.grad + at, rows, j.c, j.inv_batch, &j.bad[t])


cdef double sce_parallel(const floating *z, const int64_t *labels, floating *grad, Py_ssize_t n,
                         Py_ssize_t c, int threads, Py_ssize_t *bad) noexcept nogil:
    cdef Py_ssize_t parts = span_parts(n * c, SPAN_MIN, threads)
    cdef double inv_batch = 1.0 / n
    if parts <= 1:
        return sce_rows(z, labels, grad, n, c, inv_batch, bad)
    cdef _Sce j
    cdef Py_ssize_t t
    cdef double loss = 0
    j.single = floating is float
    j.z = z
    j.labels = labels
    j.grad = grad
    j.n = n
    j.c = c
    j.step = (n + parts - 1) // parts
    j.inv_batch = inv_batch
    run_parts(_sce_part, &j, parts)
    for t in range(parts):                       # (in part order: the same sum every time)
        loss += j.partial[t]
        bad[0] += j.bad[t]
    return loss


cdef double _sce(const floating[:, ::1] z, const int64_t[::1] labels, floating[:, ::1] grad,
                 Py_ssize_t *bad):
    cdef Py_ssize_t n = z.shape[0], c = z.shape[1], i
    cdef int threads = num_threads()
    cdef double loss = 0
    with nogil:
        # every label checked before anything is written (a rejected call changes nothing)
        for i in range(n):
            if labels[i] < 0 or labels[i] >= c:
                bad[0] += 1
        if bad[0] == 0:
            loss = sce_parallel(&z[0, 0], &labels[0], &grad[0, 0], n, c, threads, bad)
    return loss / n


def softmax_cross_entropy(logits, labels, grad=None):
    """Softmax followed by cross-entropy, fused: (mean loss, d loss / d logits).

    logits (N, C) float, labels (N,) integer in [0, C) -> (float, grad (N, C)).
    loss = mean_i (log sum_j exp(z_ij) - z_i,y_i); grad = (softmax(z) - onehot(y)) / N.
    Stable for any finite logits (the row maximum is subtracted before exp). grad may be
    logits itself (in place), and must not overlap logits otherwise, nor the labels.
    """
    logits = as_float_array("logits", logits, 2)
    cdef Py_ssize_t n = logits.shape[0], c = logits.shape[1]
    if n == 0:
        raise ValueError("logits: empty batch (N = 0); the mean loss is undefined")
    if c == 0:
        raise ValueError("logits: no classes (C = 0)")
    # the label range is checked in C before the kernel runs (no NumPy min/max passes)
    labels_in = plain(labels)
    labels = as_labels("labels", labels_in, n, c, False)
    g = output("grad", grad, logits.shape, logits.dtype)
    if grad is not None:
        refuse_overlap("grad", g, "logits", logits, IN_PLACE)
        refuse_overlap("grad", g, "labels", labels, READ)
    cdef Py_ssize_t bad = 0
    if logits.dtype == np.float32:
        loss = _sce[float](logits, labels, g, &bad)
    else:
        loss = _sce[double](logits, labels, g, &bad)
    if bad:
        raise label_range_error("labels", labels_in, c)
    return loss, (g if grad is None else grad)


cdef double mse_span(const floating *p, const floating *t, floating *g, Py_ssize_t n,
                     double scale) noexcept nogil:
    # returns sum (p - t)^2 and writes g = scale * (p - t), scale = 2 / size
    cdef Py_ssize_t i
    cdef double d, total = 0
    for i in range(n):
        d = <double> p[i] - <double> t[i]
        total += d * d
        g[i] = <floating> (scale * d)
    return total


cdef double bce_span(const floating *z, const floating *t, floating *g, Py_ssize_t n,
                     double scale) noexcept nogil:
    # returns sum max(z,0) - z t + log1p(exp(-|z|)) and writes g = scale * (sigmoid(z) - t)
    cdef Py_ssize_t i
    cdef double zi, e, s, total = 0
    for i in range(n):
        zi = z[i]
        e = exp(-fabs(zi))                      # in (0, 1]: never overflows
        total += (zi if zi > 0 else 0) - zi * t[i] + log1p(e)
        s = 1 / (1 + e) if zi >= 0 else e / (1 + e)
        g[i] = <floating> (scale * (s - t[i]))
    return total


ctypedef struct _Pointwise:
    # mse_span or bce_span over spans of `step`; each part's sum in its own slot
    bint bce
    bint single
    const void *a
    const void *b
    void *g
    Py_ssize_t n
    Py_ssize_t step
    double scale
    double partial[MAX_PARTS]


cdef void _pointwise_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _Pointwise *j = <_Pointwise *> ctx
    cdef Py_ssize_t start = t * j.step, size = j.n - start
    j.partial[t] = 0
    if size > j.step:
        size = j.step
    if size <= 0:
        return
    if j.single:
        if j.bce:
            j.partial[t] = bce_span(<const float *> j.a + start, <const float *> j.b + start,
                                    <float *> j.g + start, size, j.scale)
        else:
            j.partial[t] = mse_span(<const float *> j.a + start, <const float *> j.b + start,
                                    <float *> j.g + start, size, j.scale)
    else:
        if j.bce:
            j.partial[t] = bce_span(<const double *> j.a + start, <const double *> j.b + start,
                                    <double *> j.g + start, size, j.scale)
        else:
            j.partial[t] = mse_span(<const double *> j.a + start, <const double *> j.b + start,
                                    <double *> j.g + start, size, j.scale)


cdef double pointwise_parallel(bint bce, const floating *a, const floating *b, floating *g,
                               Py_ssize_t n, int threads) noexcept nogil:
    cdef Py_ssize_t parts = span_parts(n, SPAN_MIN, threads)
    cdef double scale = (1.0 if bce else 2.0) / n
    if parts <= 1:
        return bce_span(a, b, g, n, scale) if bce else mse_span(a, b, g, n, scale)
    cdef _Pointwise j
    cdef Py_ssize_t t
    cdef double total = 0
    j.bce = bce
    j.single = floating is float
    j.a = a
    j.b = b
    j.g = g
    j.n = n
    j.step = (n + parts - 1) // parts
    j.scale = scale
    run_parts(_pointwise_part, &j, parts)
    for t in range(parts):                       # (in part order: the same sum every time)
        total += j.partial[t]
    return total


cdef double _pointwise(bint bce, const floating[::1] a, const floating[::1] b, floating[::1] g):
    cdef Py_ssize_t n = a.shape[0]
    cdef int threads = num_threads()
    cdef double total
    with nogil:
        total = pointwise_parallel(bce, &a[0], &b[0], &g[0], n, threads)
    return total / n


cdef _pointwise_loss(bint bce, str name_a, a, str name_b, b, grad):
    a = as_float_array(name_a, a)
    b = as_float_array(name_b, b)
    check_same_dtype(name_b, b, a.dtype)
    check_same_shape(name_b, b, a.shape)
    if a.size == 0:
        raise ValueError(f"{name_a}: empty input; the mean loss is undefined")
    g = output("grad", grad, a.shape, a.dtype)
    if grad is not None:
        refuse_overlap("grad", g, name_a, a, IN_PLACE)
        refuse_overlap("grad", g, name_b, b, IN_PLACE)
    if a.dtype == np.float32:
        loss = _pointwise[float](bce, a.reshape(-1), b.reshape(-1), g.reshape(-1))
    else:
        loss = _pointwise[double](bce, a.reshape(-1), b.reshape(-1), g.reshape(-1))
    return loss, (g if grad is None else grad)


def mse(pred, target, grad=None):
    """Mean squared error: (mean((pred - target)^2), 2 (pred - target) / pred.size).

    pred and target: the same shape and dtype. grad may be pred or target itself (in
    place), and must not overlap them otherwise."""
    return _pointwise_loss(False, "pred", pred, "target", target, grad)


def bce_with_logits(logits, target, grad=None):
    """Binary cross-entropy on logits, fused with the sigmoid and stable for any finite z:
    (mean(max(z, 0) - z t + log(1 + exp(-|z|))), (sigmoid(z) - t) / size).

    logits and target (probabilities in [0, 1]): the same shape and dtype. grad may be
    logits or target itself (in place), and must not overlap them otherwise."""
    return _pointwise_loss(True, "logits", logits, "target", target, grad)
