"""Optimizer updates, in place, one pass over the parameter: torch.optim's SGD and Adam(W).

    SGD    d = g + wd * p
           v = mu * v + d                               (momentum mu > 0)
           d = d + mu * v (Nesterov)  or  d = v
           p = p - lr * d
    Adam   g = g + wd * p                               (AdamW instead: p = p * (1 - lr * wd))
           m = b1 * m + (1 - b1) * g
           v = b2 * v + (1 - b2) * g^2
           p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Subnormal numbers are flushed to zero inside these loops (as torch.set_flush_denormal(True)):
momentum and moment buffers of weights that get no gradient decay into them, and x86
arithmetic on subnormals is ~100x slower.

The arithmetic is done in the parameter's dtype, in the order torch.optim does it, so a
float64 step equals PyTorch's to rounding.

No array of an update shares memory with another: a parameter, velocity or moment written
while a gradient (or another of them) is read would change what the rest of the update
reads (ValueError naming the two). Gradients may share memory with each other (two
parameters with one gradient array): they are only read.
"""
import numpy as np

from cython cimport floating
from libc.math cimport sqrt, sqrtf
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, free, qsort
from libc.stdint cimport uintptr_t
cimport numpy as cnp

from cnn_core._checks cimport (as_float_array, check_same_dtype, check_same_shape, check_buffer,
                              check_scalar, plain, refuse_overlaps)
from cnn_core._parallel cimport num_threads, span_parts, run_parts, SPAN_MIN, MAX_PARTS
from cnn_core._finite cimport all_finite_span

cnp.import_array()

cdef object _F32 = np.dtype(np.float32)
cdef object _F64 = np.dtype(np.float64)

cdef extern from "nn_cpu.h" nogil:
    unsigned nn_ftz_begin()
    void nn_ftz_end(unsigned old)

cdef void sgd_span(floating *p, const floating *g, floating *vel, Py_ssize_t n, floating lr,
                   floating mu, floating wd, bint nesterov) noexcept nogil:
    # the caller flushes subnormals to zero around it (nn_ftz_begin/end, see _sgd)
    cdef Py_ssize_t i
    cdef floating d
    if mu == 0:
        for i in range(n):
            d = g[i] + wd * p[i]
            p[i] = p[i] - lr * d
    elif nesterov:
        for i in range(n):
            d = g[i] + wd * p[i]
            vel[i] = mu * vel[i] + d
            p[i] = p[i] - lr * (d + mu * vel[i])
    else:
        for i in range(n):
            d = g[i] + wd * p[i]
            vel[i] = mu * vel[i] + d
            p[i] = p[i] - lr * vel[i]


cdef void adam_span(floating *p, const floating *g, floating *m, floating *v, Py_ssize_t n,
                    floating step_size, floating bc2_sqrt, floating b1, floating b2,
                    floating eps, floating wd, floating decay) noexcept nogil:
    # decay = 1 - lr * wd for AdamW (wd = 0 then), 1 for Adam; the caller flushes
    # subnormals to zero around it (nn_ftz_begin/end, see _sgd)
    cdef Py_ssize_t i
    cdef floating gi, denom
    for i in range(n):
        if decay != 1:
            p[i] = p[i] * decay
        gi = g[i] + wd * p[i]
        m[i] = b1 * m[i] + (1 - b1) * gi
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        if floating is float:
            denom = sqrtf(v[i]) / bc2_sqrt + eps
        else:
            denom = sqrt(v[i]) / bc2_sqrt + eps
        p[i] = p[i] - step_size * (m[i] / denom)


cdef _sgd(floating[::1] p, const floating[::1] g, floating[::1] vel, double lr, double mu,
          double wd, bint nesterov):
    # one array: the whole-model machinery (below) on a list of one
    cdef char *vp = NULL
    if p.shape[0] == 0:
        return
    if vel is not None:
        vp = <char *> &vel[0]
    with nogil:
        _one_array(<char *> &p[0], <char *> &g[0], vp, NULL, p.shape[0], KIND_SGD, lr, mu, wd,
                   nesterov, 0, 0, 0, 0, 0, 1, <floating> 0)


cdef _adam(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
           double step_size, double bc2_sqrt, double b1, double b2, double eps, double wd,
           double decay):
    if p.shape[0] == 0:
        return
    with nogil:
        _one_array(<char *> &p[0], <char *> &g[0], <char *> &m[0], <char *> &v[0], p.shape[0],
                   KIND_ADAM, 0, 0, wd, False, step_size, bc2_sqrt, b1, b2, eps, decay,
                   <floating> 0)


cdef Py_ssize_t _one_array(char *p, char *g, char *a, char *b, Py_ssize_t n, int kind, double lr,
                           double mu, double wd, bint nesterov, double step_size, double bc2_sqrt,
                           double b1, double b2, double eps, double decay,
                           floating dummy) noexcept nogil:
    # sgd_update / adam_update / all_finite: one array, cut into one span per thread;
    # returns what _step_all does (KIND_CHECK: 0 if g has a NaN/inf, else -1)
    cdef _Tensors t
    cdef Py_ssize_t offset[2]
    offset[0], offset[1] = 0, n
    t.count = 1
    t.p, t.g, t.a, t.b = &p, &g, &a, &b
    t.offset = offset
    t.parts = span_parts(n, SPAN_MIN, num_threads())
    return _step_all(&t, kind, False, lr, mu, wd, nesterov, step_size, bc2_sqrt, b1, b2, eps,
                     decay, dummy)


cdef tuple _param_and_grad(param, grad):
    # (param, grad) checked: a subclass's base-class view, a gradient copied if need be
    param = plain(param)
    if type(param) is not np.ndarray:
        raise TypeError(f"param must be a numpy.ndarray, got {type(param).__name__}")
    if param.dtype != np.float32 and param.dtype != np.float64:
        raise TypeError(f"param has dtype {param.dtype}; the kernels take float32 or float64")
    check_buffer("param", param, param.shape, param.dtype)
    grad = as_float_array("grad", grad)
    check_same_dtype("grad", grad, param.dtype)
    check_same_shape("grad", grad, param.shape)
    return param, grad


def sgd_update(param, grad, lr, *, momentum=0.0, velocity=None, weight_decay=0.0,
               nesterov=False):
    """One step of SGD (torch.optim.SGD, dampening 0), in place on `param` (and `velocity`).

    d = grad + weight_decay * param; with momentum: velocity = momentum * velocity + d and
    d = d + momentum * velocity (Nesterov) or d = velocity; param -= lr * d.
    `velocity` (zeros at the start, owned by the caller) is required when momentum != 0.
    No two of param, grad and velocity may share memory.
    """
    param, grad = _param_and_grad(param, grad)
    lr = check_scalar("lr", lr, 0.0)
    mu = check_scalar("momentum", momentum, 0.0)
    wd = check_scalar("weight_decay", weight_decay, 0.0)
    if nesterov and mu == 0:
        raise ValueError("nesterov requires momentum > 0")
    if mu != 0:
        if velocity is None:
            raise ValueError("velocity is required when momentum != 0")
        velocity = check_buffer("velocity", velocity, param.shape, param.dtype)
    else:
        velocity = None
    refuse_overlaps((("param", param, ()), ("velocity", velocity, ())), (("grad", grad),))
    if velocity is not None:
        velocity = velocity.reshape(-1)
    if param.dtype == np.float32:
        _sgd[float](param.reshape(-1), grad.reshape(-1), velocity, lr, mu, wd, bool(nesterov))
    else:
        _sgd[double](param.reshape(-1), grad.reshape(-1), velocity, lr, mu, wd, bool(nesterov))


cdef tuple _adam_scalars(step, lr, beta1, beta2, eps, weight_decay, decoupled):
    # checked hyper-parameters -> (step_size, bc2_sqrt, b1, b2, eps, wd (L2), decay) of
    # adam_span: step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t), decay = 1 - lr * wd
    # for AdamW (the L2 term is then 0), 1 for Adam
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    lr = check_scalar("lr", lr, 0.0)
    b1 = check_scalar("beta1", beta1, 0.0, True, 1.0, False)
    b2 = check_scalar("beta2", beta2, 0.0, True, 1.0, False)
    eps = check_scalar("eps", eps, 0.0)
    wd = check_scalar("weight_decay", weight_decay, 0.0)
    decay = 1 - lr * wd if decoupled else 1.0
    return (lr / (1 - b1 ** step), (1 - b2 ** step) ** 0.5, b1, b2, eps,
            0.0 if decoupled else wd, decay)


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0, *,
                decoupled=False):
    """One step of Adam (torch.optim.Adam), or AdamW with decoupled=True, in place on
    `param`, `m` and `v` (first and second moments, zeros at the start, owned by the caller).

    `step` counts from 1 and includes this update (bias corrections 1 - beta**step). No two
    of param, grad, m and v may share memory.
    """
    param, grad = _param_and_grad(param, grad)
    m = check_buffer("m", m, param.shape, param.dtype)
    v = check_buffer("v", v, param.shape, param.dtype)
    refuse_overlaps((("param", param, ()), ("m", m, ()), ("v", v, ())), (("grad", grad),))
    args = (param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1)) + \
        _adam_scalars(step, lr, beta1, beta2, eps, weight_decay, decoupled)
    if param.dtype == np.float32:
        _adam[float](*args)
    else:
        _adam[double](*args)


# ---------------------------------------------------------------------------------------------
# the NaN/inf guard of training: is every element finite?

cdef bint _all_finite(const floating[::1] x):
    # the check pass of sgd_step / sgd_update, cut the same way: each thread reads the part
    # of a gradient it will update (and, for a weight gradient, mostly the part its GEMM
    # wrote), from its own core's cache
    cdef Py_ssize_t bad
    if x.shape[0] == 0:
        return True
    with nogil:
        bad = _one_array(NULL, <char *> &x[0], NULL, NULL, x.shape[0], KIND_CHECK, 0, 0, 0,
                         False, 0, 0, 0, 0, 0, 1, <floating> 0)
    return bad < 0


def all_finite(x):
    """True when every element of x (any shape, float32 or float64) is finite: no NaN, no
    +-inf. The check fit runs on every gradient (one vectorised pass, early exit)."""
    x = as_float_array("x", x)
    if x.dtype == np.float32:
        return bool(_all_finite[float](x.reshape(-1)))
    return bool(_all_finite[double](x.reshape(-1)))


# ---------------------------------------------------------------------------------------------
# The whole model's update in one call: sgd_step / adam_step take lists of arrays (one per
# parameter), check every gradient first if asked (fit's NaN/inf guard), and then update
# them all, in one job of the team per pass however many arrays there are: each part
# takes one contiguous piece of every array (for a weight matrix, a block of whole rows).
# With two threads these are the halves of the first layer's weights that the same cores
# read in the forward product (gemm's _k_halves) and write in the weight gradient, so a
# step finds them in its own core's cache: measured on the MLP 784-256-128-10, the update
# took 107 -> 75 us of a batch-128 step and 116 -> 59 us of a batch-16 one (with the
# halves of k in the forward). Cutting the arrays as one long vector instead left each
# core updating rows the other had read; cutting weight matrices by columns was slower
# still: two cores writing interleaved halves of every row fight over cache lines the
# hardware prefetchers pull across.

cdef enum:
    KIND_CHECK = 0
    KIND_SGD = 1
    KIND_ADAM = 2


cdef struct _Tensors:
    Py_ssize_t count
    char **p          # parameters
    char **g          # gradients
    char **a          # velocities (SGD, NULL entries without momentum) / first moments
    char **b          # second moments (Adam)
    Py_ssize_t *offset      # tensor i has offset[i + 1] - offset[i] elements (offset[count]: all)
    Py_ssize_t parts        # parts of a pass (one per thread)


cdef class _TensorList:
    # the raw pointers of a list of (param, grad, a, b) arrays, held alive by `keep` (the
    # gradients as read) and `views` (the views of subclasses); `single`: float32
    cdef _Tensors t
    cdef list keep
    cdef list views
    cdef bint single

    def __dealloc__(self):
        free(self.t.p)
        free(self.t.g)
        free(self.t.a)
        free(self.t.b)
        free(self.t.offset)


cdef inline char *_data(object arr):
    return <char *> cnp.PyArray_DATA(<cnp.ndarray> arr)


cdef inline bint _like(object x, cnp.ndarray param, bint written):
    # x: an ndarray (not a subclass) of param's dtype object and shape, C-contiguous and
    # aligned (and writeable when written in place) -- what the named checks below accept
    # unchanged
    if not cnp.PyArray_CheckExact(x):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> x
    cdef int i, nd = cnp.PyArray_NDIM(param)
    if cnp.PyArray_DESCR(a) != cnp.PyArray_DESCR(param) or cnp.PyArray_NDIM(a) != nd:
        return False
    for i in range(nd):
        if cnp.PyArray_DIM(a, i) != cnp.PyArray_DIM(param, i):
            return False
    return (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
            and (not written or cnp.PyArray_ISWRITEABLE(a)))


cdef bint _all_ready(list params, list grads, list a_list, list b_list, Py_ssize_t n,
                     _TensorList tl):
    # The usual call, answered through NumPy's C API without a name made for a message:
    # every array of params[0]'s dtype object, each of its parameter's shape, contiguous
    # and aligned (the written ones writeable). Fills tl's pointers and offsets; False
    # (tl to be filled again) when anything would need the named checks.
    cdef Py_ssize_t i, total = 0
    cdef cnp.ndarray param
    if not cnp.PyArray_CheckExact(params[0]):
        return False
    cdef object dtype = <object> cnp.PyArray_DESCR(<cnp.ndarray> params[0])
    if dtype is not _F32 and dtype is not _F64:
        return False
    for i in range(n):
        if not cnp.PyArray_CheckExact(params[i]):
            return False
        param = <cnp.ndarray> params[i]
        if (<object> cnp.PyArray_DESCR(param) is not dtype or not _like(param, param, True)
                or not _like(grads[i], param, False)
                or (a_list is not None and not _like(a_list[i], param, True))
                or (b_list is not None and not _like(b_list[i], param, True))):
            return False
        tl.t.p[i] = _data(param)
        tl.t.g[i] = _data(grads[i])
        tl.t.a[i] = _data(a_list[i]) if a_list is not None else NULL
        tl.t.b[i] = _data(b_list[i]) if b_list is not None else NULL
        tl.t.offset[i] = total
        total += cnp.PyArray_SIZE(param)
    tl.t.offset[n] = total
    tl.keep = grads
    tl.single = dtype is _F32
    return True


cdef _TensorList _tensor_list(list params, list grads, list a_list, str a_name, list b_list,
                              str b_name):
    # validate every array (named with its index), collect the pointers, plan the threads
    cdef Py_ssize_t n = len(params), i, total = 0
    cdef _TensorList tl = _TensorList()
    if n == 0:
        raise ValueError("params is empty")
    if len(grads) != n:
        raise ValueError(f"grads has {len(grads)} arrays, params {n}")
    if a_list is not None and len(a_list) != n:
        raise ValueError(f"{a_name} has {len(a_list)} arrays, params {n}")
    if b_list is not None and len(b_list) != n:
        raise ValueError(f"{b_name} has {len(b_list)} arrays, params {n}")
    tl.keep = []
    tl.views = []
    tl.t.count = n
    tl.t.p = <char **> malloc(n * sizeof(char *))
    tl.t.g = <char **> malloc(n * sizeof(char *))
    tl.t.a = <char **> malloc(n * sizeof(char *))
    tl.t.b = <char **> malloc(n * sizeof(char *))
    tl.t.offset = <Py_ssize_t *> malloc((n + 1) * sizeof(Py_ssize_t))
    if (tl.t.p == NULL or tl.t.g == NULL or tl.t.a == NULL or tl.t.b == NULL
            or tl.t.offset == NULL):
        raise MemoryError()
    if not _all_ready(params, grads, a_list, b_list, n, tl):
        # the named checks (a subclass through its base-class view, kept alive in tl.views)
        first = plain(params[0])
        if type(first) is not np.ndarray:
            raise TypeError(f"params[0] must be a numpy.ndarray, got {type(first).__name__}")
        dtype = first.dtype
        if dtype != np.float32 and dtype != np.float64:
            raise TypeError(f"params[0] has dtype {dtype}; the kernels take float32 or float64")
        for i in range(n):
            param = plain(params[i])
            if type(param) is not np.ndarray:
                raise TypeError(f"params[{i}] must be a numpy.ndarray, got "
                                f"{type(param).__name__}")
            param = check_buffer(f"params[{i}]", param, param.shape, dtype)
            grad = as_float_array(f"grads[{i}]", grads[i])     # copied if not contiguous
            check_same_dtype(f"grads[{i}]", grad, dtype)
            check_same_shape(f"grads[{i}]", grad, param.shape)
            tl.keep.append(grad)
            tl.views.append(param)
            tl.t.p[i] = _data(param)
            tl.t.g[i] = _data(grad)
            tl.t.a[i] = NULL
            tl.t.b[i] = NULL
            if a_list is not None:
                a = check_buffer(f"{a_name}[{i}]", a_list[i], param.shape, dtype)
                tl.views.append(a)
                tl.t.a[i] = _data(a)
            if b_list is not None:
                b = check_buffer(f"{b_name}[{i}]", b_list[i], param.shape, dtype)
                tl.views.append(b)
                tl.t.b[i] = _data(b)
            tl.t.offset[i] = total
            total += param.size
        tl.t.offset[n] = total
        tl.single = dtype == np.float32
    tl.t.parts = span_parts(tl.t.offset[n], SPAN_MIN, num_threads())
    cdef int met = _spans_meet(&tl.t, sizeof(float) if tl.single else sizeof(double))
    if met < 0:
        raise MemoryError()
    if met:         # name the first overlap, in the order the NumPy twin searches
        written = [(f"params[{i}]", plain(params[i]), ()) for i in range(n)]
        for name, arrays in ((a_name, a_list), (b_name, b_list)):
            if arrays is not None:
                written += [(f"{name}[{i}]", plain(arrays[i]), ()) for i in range(n)]
        refuse_overlaps(tuple(written), tuple((f"grads[{i}]", tl.keep[i]) for i in range(n)))
    return tl


cdef struct _Span:
    uintptr_t lo
    uintptr_t hi
    bint written


cdef int _by_start(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const _Span *> a).lo, y = (<const _Span *> b).lo
    return -1 if x < y else (1 if x > y else 0)


cdef int _spans_meet(_Tensors *t, size_t itemsize) noexcept nogil:
    # 1 when an array the step writes (a parameter, velocity or moment) shares memory with
    # any other array of the lists (gradients may share with each other: they are only
    # read); -1 when out of memory. The spans sorted by start: each one meets a span before
    # it exactly when it starts before the farthest end of those (of the written ones, for
    # a gradient).
    cdef Py_ssize_t n = t.count, i, k = 0, which
    cdef size_t size
    cdef char *ptr
    cdef uintptr_t reach_all = 0, reach_written = 0
    cdef int met = 0
    cdef _Span *s = <_Span *> malloc(4 * n * sizeof(_Span) + 1)
    if s == NULL:
        return -1
    for i in range(n):
        size = (t.offset[i + 1] - t.offset[i]) * itemsize
        for which in range(4):
            ptr = (t.p[i] if which == 0 else t.g[i] if which == 1 else
                   t.a[i] if which == 2 else t.b[i])
            if ptr != NULL and size > 0:
                s[k].lo = <uintptr_t> ptr
                s[k].hi = <uintptr_t> ptr + size
                s[k].written = which != 1
                k += 1
    qsort(s, k, sizeof(_Span), _by_start)
    for i in range(k):
        if s[i].lo < (reach_all if s[i].written else reach_written):
            met = 1
            break
        if s[i].hi > reach_all:
            reach_all = s[i].hi
        if s[i].written and s[i].hi > reach_written:
            reach_written = s[i].hi
    free(s)
    return met


cdef bint _piece(_Tensors *t, Py_ssize_t i, Py_ssize_t off, Py_ssize_t n, int kind, floating lr,
                 floating mu, floating wd, bint nesterov, floating step_size, floating bc2_sqrt,
                 floating b1, floating b2, floating eps, floating decay) noexcept nogil:
    # elements [off, off + n) of tensor i: checked (False if one is NaN/inf) or updated
    if kind == KIND_CHECK:
        return all_finite_span(<floating *> t.g[i] + off, n)
    if kind == KIND_SGD:
        sgd_span(<floating *> t.p[i] + off, <floating *> t.g[i] + off,
                 <floating *> t.a[i] + off if t.a[i] != NULL else NULL, n, lr, mu, wd, nesterov)
    else:
        adam_span(<floating *> t.p[i] + off, <floating *> t.g[i] + off,
                  <floating *> t.a[i] + off, <floating *> t.b[i] + off, n, step_size, bc2_sqrt,
                  b1, b2, eps, wd, decay)
    return True


cdef Py_ssize_t _visit(_Tensors *t, Py_ssize_t part, int kind, floating lr, floating mu,
                       floating wd, bint nesterov, floating step_size, floating bc2_sqrt,
                       floating b1, floating b2, floating eps, floating decay) noexcept nogil:
    # part `part`'s share: the part-th of `parts` contiguous pieces of every tensor (for a
    # weight matrix, a block of whole rows), tensor by tensor, in tensor order; returns the
    # first tensor index with a NaN/inf gradient there (KIND_CHECK), else t.count.
    # With two threads each updates one half of every weight matrix: the rows that the
    # same core reads again in the next forward pass (gemm's _k_halves) and, for the
    # first layer, writes in the backward's weight gradient -- so they stay in its cache.
    cdef Py_ssize_t i, size, lo, hi, bad = t.count
    # optimizer state decays into subnormals: flush them to zero (x86 arithmetic on them is
    # ~100x slower), once per thread and pass
    cdef unsigned csr = nn_ftz_begin()
    for i in range(t.count):
        size = t.offset[i + 1] - t.offset[i]
        lo = size * part // t.parts
        hi = size * (part + 1) // t.parts
        if hi > lo and not _piece(t, i, lo, hi - lo, kind, lr, mu, wd, nesterov,
                                  step_size, bc2_sqrt, b1, b2, eps, decay):
            bad = i
            break
    nn_ftz_end(csr)
    return bad


ctypedef struct _StepJob:
    # a pass over every tensor, part by part (_visit); the scalars as doubles (a float's
    # value is a double's exactly), used in the tensors' precision
    _Tensors *t
    int kind
    bint single
    double lr
    double mu
    double wd
    bint nesterov
    double step_size
    double bc2_sqrt
    double b1
    double b2
    double eps
    double decay
    Py_ssize_t found[MAX_PARTS]


cdef void _visit_part(void *ctx, Py_ssize_t part) noexcept nogil:
    cdef _StepJob *j = <_StepJob *> ctx
    if j.single:
        j.found[part] = _visit(j.t, part, j.kind, <float> j.lr, <float> j.mu, <float> j.wd,
                               j.nesterov, <float> j.step_size, <float> j.bc2_sqrt,
                               <float> j.b1, <float> j.b2, <float> j.eps, <float> j.decay)
    else:
        j.found[part] = _visit(j.t, part, j.kind, j.lr, j.mu, j.wd, j.nesterov, j.step_size,
                               j.bc2_sqrt, j.b1, j.b2, j.eps, j.decay)


cdef Py_ssize_t _step_all(_Tensors *t, int kind, bint check, double lr, double mu, double wd,
                          bint nesterov, double step_size, double bc2_sqrt, double b1, double b2,
                          double eps, double decay, floating dummy) noexcept nogil:
    # a check pass first (if asked), then a pass of `kind` (an update, or a check); returns
    # the first tensor index with a NaN/inf gradient a check pass found (nothing updated
    # then), or -1
    cdef Py_ssize_t parts = t.parts, part, bad = t.count
    cdef _StepJob j
    cdef int run
    j.t = t
    j.single = floating is float
    j.lr, j.mu, j.wd, j.nesterov, j.step_size = lr, mu, wd, nesterov, step_size
    j.bc2_sqrt, j.b1, j.b2, j.eps, j.decay = bc2_sqrt, b1, b2, eps, decay
    for run in range(2):
        if run == 0 and not check:
            continue
        j.kind = KIND_CHECK if run == 0 else kind
        if parts == 1:
            _visit_part(&j, 0)
        else:
            run_parts(_visit_part, &j, parts)
        for part in range(parts):       # (an update pass finds none: _visit gives count)
            if j.found[part] < bad:
                bad = j.found[part]
        if bad < t.count:
            return bad
    return -1


cdef Py_ssize_t _run_step(_TensorList tl, int kind, bint check, double lr, double mu, double wd,
                          bint nesterov, double step_size, double bc2_sqrt, double b1, double b2,
                          double eps, double decay):
    cdef Py_ssize_t result
    cdef bint single = tl.single
    with nogil:
        if single:
            result = _step_all(&tl.t, kind, check, lr, mu, wd, nesterov, step_size, bc2_sqrt,
                               b1, b2, eps, decay, <float> 0)
        else:
            result = _step_all(&tl.t, kind, check, lr, mu, wd, nesterov, step_size, bc2_sqrt,
                               b1, b2, eps, decay, <double> 0)
    return result


def sgd_step(params, grads, velocities, lr, *, momentum=0.0, weight_decay=0.0,
             nesterov=False, check_finite=False):
    """`sgd_update` on every array of the lists ``params`` / ``grads`` / ``velocities`` (one
    per parameter, each pair of the same shape; velocities None when momentum == 0) in one
    call. With check_finite, every gradient is checked for NaN/inf first and, if one has
    any, nothing is updated and its index is returned. Returns -1 after updating.
    """
    params, grads = list(params), list(grads)
    lr = check_scalar("lr", lr, 0.0)
    mu = check_scalar("momentum", momentum, 0.0)
    wd = check_scalar("weight_decay", weight_decay, 0.0)
    if nesterov and mu == 0:
        raise ValueError("nesterov requires momentum > 0")
    if mu != 0 and velocities is None:
        raise ValueError("velocities are required when momentum != 0")
    vel = list(velocities) if mu != 0 else None
    cdef _TensorList tl = _tensor_list(params, grads, vel, "velocities", None, "")
    return _run_step(tl, KIND_SGD, bool(check_finite), lr, mu, wd,
                     bool(nesterov), 0, 0, 0, 0, 0, 1)


def adam_step(params, grads, ms, vs, step, lr, beta1, beta2, eps, weight_decay=0.0, *,
              decoupled=False, check_finite=False):
    """`adam_update` on every array of the lists ``params`` / ``grads`` / ``ms`` / ``vs``
    (one per parameter, all at the same `step`) in one call. With check_finite, every
    gradient is checked for NaN/inf first and, if one has any, nothing is updated and its
    index is returned. Returns -1 after updating.
    """
    params, grads = list(params), list(grads)
    step_size, bc2_sqrt, b1, b2, eps, wd, decay = _adam_scalars(
        step, lr, beta1, beta2, eps, weight_decay, decoupled)
    cdef _TensorList tl = _tensor_list(params, grads, list(ms), "ms", list(vs), "vs")
    return _run_step(tl, KIND_ADAM, bool(check_finite), 0, 0, wd, False,
                     step_size, bc2_sqrt, b1, b2, eps, decay)
