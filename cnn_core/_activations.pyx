"""Activation functions, forward and backward side by side, dropout's mask multiply, and
the sum of two arrays (a residual connection's, each way).

Elementwise ops run over the flattened arrays: one loop per op (so the compiler vectorises
it), cut into contiguous spans across threads when the array is large enough to pay for them.
Softmax works on rows of a 2-D array, threads over rows.

    relu        y = max(x, 0)                  dx = dy * (x > 0)
    leaky_relu  y = x > 0 ? x : s*x            dx = dy * (x > 0 ? 1 : s)
    sigmoid     y = 1 / (1 + exp(-x))          dx = dy * y * (1 - y)      (y: forward output)
    tanh        y = tanh(x)                    dx = dy * (1 - y*y)
    softmax     y_i = exp(x_i - max) / sum_j exp(x_j - max)
                dx_i = y_i * (dy_i - sum_j dy_j * y_j)
    dropout     y = x * mask * scale           dx = dy * mask * scale
                (a uint8 mask's values as they are: 0..255; a bool mask's as 0 and 1)
    add         y = a + b                      (NumPy's a + b, on every thread)
                with activation="relu": y = max(a + b, 0), relu_forward of that sum
    relu_backward with plus=p: dx = (dy + p) * (x > 0), relu_backward of add(dy, p):
                a ReLU whose output gradient arrives in two parts (a residual network's
                block input, where the body's and the shortcut's gradients meet)

In place: `out` may be the input array itself (relu_forward(x, out=x); a backward's out may
be grad_out, plus or its x / y; add's out a or b): every value is read before it is written, by the thread that
writes it. Any other overlap of out with an input (a shifted view of it, the dropout mask)
is a ValueError: out would overwrite values not yet read.
"""
import numpy as np

from cython cimport floating
from libc.math cimport exp, tanh as c_tanh, expf, tanhf

from cnn_core._checks cimport (as_float_array, check_same_dtype, check_same_shape, output,
                              check_scalar, plain, refuse_overlap, READ, IN_PLACE)
from cnn_core._parallel cimport num_threads, span_parts, run_parts, MAX_PARTS, SPAN_MIN

cdef enum Op:
    RELU_FWD, RELU_BWD, LEAKY_FWD, LEAKY_BWD, SIGMOID_FWD, SIGMOID_BWD, TANH_FWD, TANH_BWD
    DROPOUT, DROPOUT_BOOL, ADD, ADD_RELU, RELU_BWD_ADD


cdef inline floating _sigmoid(floating x) noexcept nogil:
    # never overflows: exp of a non-positive number only
    cdef floating e
    if floating is float:
        if x >= 0:
            return 1.0 / (1.0 + expf(-x))
        e = expf(x)
        return e / (1.0 + e)
    else:
        if x >= 0:
            return 1.0 / (1.0 + exp(-x))
        e = exp(x)
        return e / (1.0 + e)


cdef void unary_span(Op op, const floating *x, const floating *g, const floating *h,
                     const unsigned char *mask, floating *y, Py_ssize_t n,
                     floating s) noexcept nogil:
    # y[i] = f(x[i]) (forward) or g[i] * f'(...) (backward), for i < n; s: the op's scalar;
    # h: a second gradient added to g (RELU_BWD_ADD)
    # every loop body loads its operands unconditionally and selects between values (never
    # between computations, which the compiler may not speculate), so that it becomes vector
    # compares and masks instead of unpredictable branches
    cdef Py_ssize_t i
    cdef floating gi, xi
    if op == RELU_FWD:
        for i in range(n):
            xi = x[i]
            y[i] = 0 if xi <= 0 else xi           # NaN stays NaN (as NumPy, PyTorch)
    elif op == RELU_BWD:
        for i in range(n):
            gi = g[i]
            y[i] = gi if x[i] > 0 else 0
    elif op == LEAKY_FWD:
        for i in range(n):
            xi = x[i]
            gi = s * xi                         # both candidates computed, then selected
            y[i] = xi if xi > 0 else gi
    elif op == LEAKY_BWD:
        for i in range(n):
            xi = 1 if x[i] > 0 else s
            y[i] = g[i] * xi
    elif op == SIGMOID_FWD:
        for i in range(n):
            y[i] = _sigmoid(x[i])
    elif op == SIGMOID_BWD:           # x holds the forward output here
        for i in range(n):
            y[i] = g[i] * x[i] * (1 - x[i])
    elif op == TANH_FWD:
        for i in range(n):
            if floating is float:
                y[i] = tanhf(x[i])
            else:
                y[i] = c_tanh(x[i])
    elif op == TANH_BWD:              # x holds the forward output here
        for i in range(n):
            y[i] = g[i] * (1 - x[i] * x[i])
    elif op == DROPOUT:
        for i in range(n):
            xi = mask[i]                        # (x * mask) * scale, as the twin: for a
            y[i] = x[i] * xi * s                # 0/1 mask, x * scale (x * 1 is exact)
    elif op == DROPOUT_BOOL:
        for i in range(n):
            xi = 1 if mask[i] else 0            # a bool's byte may be any nonzero: True
            y[i] = x[i] * xi * s
    elif op == ADD:                   # g holds a, x holds b: a + b in that order
        for i in range(n):
            y[i] = g[i] + x[i]
    elif op == ADD_RELU:              # relu(a + b): ADD's sum, then RELU_FWD's select
        for i in range(n):
            xi = g[i] + x[i]
            y[i] = 0 if xi <= 0 else xi
    elif op == RELU_BWD_ADD:          # ADD's sum of g and h, then RELU_BWD's select
        for i in range(n):
            gi = g[i] + h[i]
            y[i] = gi if x[i] > 0 else 0


ctypedef struct _Unary:
    # unary_span over [0, n) in contiguous spans of `step`, a part each (float32 or float64
    # behind the pointers)
    Op op
    bint single
    const void *x
    const void *g
    const void *h
    const unsigned char *mask
    void *y
    Py_ssize_t n
    Py_ssize_t step
    double s


cdef void _unary_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _Unary *u = <_Unary *> ctx
    cdef Py_ssize_t start = t * u.step, count = u.n - start
    if count > u.step:
        count = u.step
    if count <= 0:
        return
    cdef const unsigned char *mask = u.mask + start if u.mask != NULL else NULL
    if u.single:
        unary_span(u.op, <const float *> u.x + start,
                   <const float *> u.g + start if u.g != NULL else NULL,
                   <const float *> u.h + start if u.h != NULL else NULL, mask,
                   <float *> u.y + start, count, <float> u.s)
    else:
        unary_span(u.op, <const double *> u.x + start,
                   <const double *> u.g + start if u.g != NULL else NULL,
                   <const double *> u.h + start if u.h != NULL else NULL, mask,
                   <double *> u.y + start, count, u.s)


cdef void unary(Op op, const floating *x, const floating *g, const floating *h,
                const unsigned char *mask, floating *y, Py_ssize_t n, floating s,
                int threads) noexcept nogil:
    # unary_span over [0, n), in `parts` contiguous spans, one per thread
    cdef Py_ssize_t parts = span_parts(n, SPAN_MIN, threads)
    if parts <= 1:
        unary_span(op, x, g, h, mask, y, n, s)
        return
    cdef _Unary u
    u.op = op
    u.single = floating is float
    u.x = x
    u.g = g
    u.h = h
    u.mask = mask
    u.y = y
    u.n = n
    u.step = (n + parts - 1) // parts
    u.s = s
    run_parts(_unary_part, &u, parts)


cdef _apply(Op op, x, g, mask, y, double s, h=None):
    # typed dispatch: views over the flattened arrays
    cdef Py_ssize_t n = x.size
    if n == 0:
        return y
    cdef int threads = num_threads()
    cdef const float[::1] xf, gf, hf
    cdef const double[::1] xd, gd, hd
    cdef float[::1] yf
    cdef double[::1] yd
    cdef const unsigned char[::1] m
    cdef const unsigned char *mp = NULL
    if mask is not None:
        m = mask.reshape(-1)
        mp = &m[0]
    if x.dtype == np.float32:
        xf = x.reshape(-1)
        yf = y.reshape(-1)
        gf = g.reshape(-1) if g is not None else None
        hf = h.reshape(-1) if h is not None else None
        with nogil:
            unary(op, &xf[0], &gf[0] if gf is not None else NULL,
                  &hf[0] if hf is not None else NULL, mp, &yf[0], n, <float> s, threads)
    else:
        xd = x.reshape(-1)
        yd = y.reshape(-1)
        gd = g.reshape(-1) if g is not None else None
        hd = h.reshape(-1) if h is not None else None
        with nogil:
            unary(op, &xd[0], &gd[0] if gd is not None else NULL,
                  &hd[0] if hd is not None else NULL, mp, &yd[0], n, s, threads)
    return y


cdef _forward(Op op, x, out, double s=0):
    x = as_float_array("x", x)
    y = output("out", out, x.shape, x.dtype)
    if out is None:
        return _apply(op, x, None, None, y, s)
    refuse_overlap("out", y, "x", x, IN_PLACE)
    _apply(op, x, None, None, y, s)
    return out                  # the caller's object (a subclass was written through a view)


cdef tuple _pair(str a_name, a, str b_name, b, out, int ndim=-1):
    # two inputs of one dtype and shape and the output: (a, b, the array to write), out
    # checked against both (it may be either of them itself)
    a = as_float_array(a_name, a, ndim)
    b = as_float_array(b_name, b, ndim)
    check_same_dtype(b_name, b, a.dtype)
    check_same_shape(b_name, b, a.shape)
    y = output("out", out, a.shape, a.dtype)
    if out is not None:
        refuse_overlap("out", y, a_name, a, IN_PLACE)
        refuse_overlap("out", y, b_name, b, IN_PLACE)
    return a, b, y


cdef _backward(Op op, grad_out, str name, saved, out, double s=0):
    grad_out, saved, y = _pair("grad_out", grad_out, name, saved, out)
    _apply(op, saved, grad_out, None, y, s)
    return y if out is None else out


def relu_forward(x, out=None):
    """ReLU: out = max(x, 0), elementwise. x any shape -> out same shape; out may be x
    itself (in place: relu_forward(x, out=x)), and must not overlap x otherwise."""
    return _forward(RELU_FWD, x, out)


def relu_backward(grad_out, x, out=None, *, plus=None):
    """ReLU backward: out = grad_out * (x > 0); x is the forward input (or output: the same
    mask). out may be grad_out or x itself (in place), and must not overlap them otherwise.

    plus: an array of grad_out's shape and dtype, when the output's gradient arrives in two
    parts: out = (grad_out + plus) * (x > 0), the bits of relu_backward(add(grad_out, plus),
    x) in one pass (out may be plus itself too)."""
    if plus is None:
        return _backward(RELU_BWD, grad_out, "x", x, out)
    # (checked in the twin's order: grad_out, x, out, plus)
    grad_out, x, y = _pair("grad_out", grad_out, "x", x, out)
    plus = as_float_array("plus", plus)
    check_same_dtype("plus", plus, grad_out.dtype)
    check_same_shape("plus", plus, grad_out.shape)
    if out is not None:
        refuse_overlap("out", y, "plus", plus, IN_PLACE)
    _apply(RELU_BWD_ADD, x, grad_out, None, y, 0, plus)
    return y if out is None else out


def leaky_relu_forward(x, negative_slope=0.01, out=None):
    """Leaky ReLU: out = x if x > 0 else negative_slope * x. out may be x itself."""
    s = check_scalar("negative_slope", negative_slope)
    return _forward(LEAKY_FWD, x, out, s)


def leaky_relu_backward(grad_out, x, negative_slope=0.01, out=None):
    """Leaky ReLU backward: out = grad_out * (1 if x > 0 else negative_slope). out may be
    grad_out or x itself."""
    s = check_scalar("negative_slope", negative_slope)
    return _backward(LEAKY_BWD, grad_out, "x", x, out, s)


def sigmoid_forward(x, out=None):
    """Logistic sigmoid: out = 1 / (1 + exp(-x)), computed without overflow for any x. out
    may be x itself."""
    return _forward(SIGMOID_FWD, x, out)


def sigmoid_backward(grad_out, y, out=None):
    """Sigmoid backward from its output y: out = grad_out * y * (1 - y). out may be grad_out
    or y itself."""
    return _backward(SIGMOID_BWD, grad_out, "y", y, out)


def tanh_forward(x, out=None):
    """Hyperbolic tangent, elementwise. out may be x itself."""
    return _forward(TANH_FWD, x, out)


def tanh_backward(grad_out, y, out=None):
    """Tanh backward from its output y: out = grad_out * (1 - y**2). out may be grad_out or y
    itself."""
    return _backward(TANH_BWD, grad_out, "y", y, out)


def dropout_forward(x, mask, scale, out=None):
    """Dropout with a given keep-mask: out = x * mask * scale (inverted dropout: scale = 1/(1-p)).

    mask: uint8 or bool array of x's shape (1 keeps, 0 drops; a uint8 mask's other values
    multiply as they are, 2 doubles). out may be x itself (in place), and must not overlap
    x otherwise, nor the mask."""
    x = as_float_array("x", x)
    return _dropout(x, "x", mask, scale, out)


def dropout_backward(grad_out, mask, scale, out=None):
    """Dropout backward: out = grad_out * mask * scale. out may be grad_out itself."""
    grad_out = as_float_array("grad_out", grad_out)
    return _dropout(grad_out, "grad_out", mask, scale, out)


cdef _dropout(x, str name, mask, scale, out):
    mask = plain(mask)
    if type(mask) is not np.ndarray:
        raise TypeError(f"mask must be a numpy.ndarray, got {type(mask).__name__}")
    if mask.dtype != np.uint8 and mask.dtype != np.bool_:
        raise TypeError(f"mask must be uint8 or bool, got {mask.dtype}")
    check_same_shape("mask", mask, x.shape)
    s = check_scalar("scale", scale, 0.0)
    cdef Op op = DROPOUT_BOOL if mask.dtype == np.bool_ else DROPOUT
    mask = np.array(mask, order="C", copy=not mask.flags.c_contiguous).view(np.uint8)
    y = output("out", out, x.shape, x.dtype)
    if out is None:
        return _apply(op, x, None, mask, y, s)
    refuse_overlap("out", y, name, x, IN_PLACE)
    refuse_overlap("out", y, "mask", mask, READ)
    _apply(op, x, None, mask, y, s)
    return out


# ---------------------------------------------------------------------------------------------
# softmax over rows

cdef void softmax_rows(const floating *x, floating *y, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    # y[i, :] = exp(x[i, :] - max_i) / sum(exp(x[i, :] - max_i)) for each row i < n
    cdef Py_ssize_t i, j
    cdef floating mx, v
    cdef double total
    for i in range(n):
        mx = x[i * c]
        for j in range(1, c):
            if x[i * c + j] > mx:
                mx = x[i * c + j]
        total = 0
        for j in range(c):
            if floating is float:
                v = expf(x[i * c + j] - mx)
            else:
                v = exp(x[i * c + j] - mx)
            y[i * c + j] = v
            total += v
        for j in range(c):
            y[i * c + j] = <floating> (y[i * c + j] / total)


cdef void softmax_backward_rows(const floating *g, const floating *y, floating *dx, Py_ssize_t n,
                                Py_ssize_t c) noexcept nogil:
    # dx[i, j] = y[i, j] * (g[i, j] - sum_k g[i, k] * y[i, k])
    cdef Py_ssize_t i, j
    cdef double dot
    for i in range(n):
        dot = 0
        for j in range(c):
            dot += g[i * c + j] * y[i * c + j]
        for j in range(c):
            dx[i * c + j] = <floating> (y[i * c + j] * (g[i * c + j] - dot))


ctypedef struct _Rows:
    # softmax (or its backward) over rows, `step` rows a part
    bint backward
    bint single
    const void *a
    const void *b
    void *y
    Py_ssize_t n
    Py_ssize_t c
    Py_ssize_t step


cdef void _rows_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _Rows *r = <_Rows *> ctx
    cdef Py_ssize_t start = t * r.step, rows = r.n - start, at
    if rows > r.step:
        rows = r.step
    if rows <= 0:
        return
    at = start * r.c
    if r.single:
        if r.backward:
            softmax_backward_rows(<const float *> r.a + at, <const float *> r.b + at,
                                  <float *> r.y + at, rows, r.c)
        else:
            softmax_rows(<const float *> r.a + at, <float *> r.y + at, rows, r.c)
    else:
        if r.backward:
            softmax_backward_rows(<const double *> r.a + at, <const double *> r.b + at,
                                  <double *> r.y + at, rows, r.c)
        else:
            softmax_rows(<const double *> r.a + at, <double *> r.y + at, rows, r.c)


cdef void rows_parallel(bint backward, const floating *a, const floating *b, floating *y,
                        Py_ssize_t n, Py_ssize_t c, int threads) noexcept nogil:
    cdef Py_ssize_t parts = span_parts(n * c, SPAN_MIN, threads)
    if parts > n:
        parts = n
    if parts <= 1:
        if backward:
            softmax_backward_rows(a, b, y, n, c)
        else:
            softmax_rows(a, y, n, c)
        return
    cdef _Rows r
    r.backward = backward
    r.single = floating is float
    r.a = a
    r.b = b
    r.y = y
    r.n = n
    r.c = c
    r.step = (n + parts - 1) // parts
    run_parts(_rows_part, &r, parts)


cdef _rows(bint backward, const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] y):
    cdef Py_ssize_t n = y.shape[0], c = y.shape[1]
    if n == 0 or c == 0:
        return
    cdef int threads = num_threads()
    with nogil:
        rows_parallel(backward, &a[0, 0], &b[0, 0] if backward else NULL, &y[0, 0], n, c,
                      threads)


def softmax_forward(x, out=None):
    """Softmax of each row: out[i] = exp(x[i] - max(x[i])) / sum(exp(x[i] - max(x[i]))).

    x (N, C) -> out (N, C); stable for any finite x. out may be x itself (each row is read
    before it is written), and must not overlap x otherwise."""
    x = as_float_array("x", x, 2)
    y = output("out", out, x.shape, x.dtype)
    if out is not None:
        refuse_overlap("out", y, "x", x, IN_PLACE)
    if x.dtype == np.float32:
        _rows[float](False, x, None, y)
    else:
        _rows[double](False, x, None, y)
    return y if out is None else out


def softmax_backward(grad_out, y, out=None):
    """Softmax backward from its output y: out = y * (grad_out - sum(grad_out * y, axis=1)).

    grad_out (N, C), y (N, C) -> out (N, C); out may be grad_out or y itself."""
    grad_out, y, dx = _pair("grad_out", grad_out, "y", y, out, 2)
    if grad_out.dtype == np.float32:
        _rows[float](True, grad_out, y, dx)
    else:
        _rows[double](True, grad_out, y, dx)
    return dx if out is None else out


def add(a, b, out=None, *, activation=None):
    """Elementwise sum: out = a + b (NumPy's a + b, bit for bit), a and b of one shape and
    dtype (no broadcasting). out may be a or b itself (in place), and must not overlap them
    otherwise. activation="relu": out = max(a + b, 0), the bits of relu_forward(add(a, b))
    in one pass (a residual block's output)."""
    if activation not in (None, "relu"):
        raise ValueError(f"activation: None or 'relu', got {activation!r}")
    a, b, y = _pair("a", a, "b", b, out)
    _apply(ADD if activation is None else ADD_RELU, b, a, None, y, 0)
    return y if out is None else out
