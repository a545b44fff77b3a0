"""The kernel contract, checked: the argument validation that every NumPy twin shares.

Each check names the argument it rejects, as the compiled kernels' checks do
(``cnn_core/_checks.pyx``): a ``TypeError`` for a wrong type or dtype, a ``ValueError`` for
a wrong shape, value or buffer. It returns the argument prepared: an input that is not
C-contiguous as a contiguous copy, a scalar as a float, an ``out=`` buffer checked or
newly allocated -- and an ndarray subclass as a plain ndarray over the same memory
(``plain``), whose shape, strides, dtype and flags are the memory's own, whatever the
subclass's properties say. A twin computes on what the checks return, and returns the
caller's own object where it returns a given buffer.

A buffer written may not share memory with what is read (an input as it is read: one that
is not C-contiguous was copied) or with another buffer written (``refuse_overlap``,
``refuse_overlaps``), except exactly (same memory, same layout) the input it is computed
from where the kernel allows it in place: the compiled kernels check the same pairs in the
same order, so both refuse the same calls with the same message.

The first section holds the single checks. The sections after it, in the order of the
twins' modules, combine them into the one call that opens each twin, e.g.
``x, out = _checks.elementwise("x", x, out)``; they check in the same order as the
compiled kernels, so that both name the same argument when several are wrong.
"""
import math

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
MAX_WINDOW = 1 << 24   # the largest kernel size, stride or padding, as the compiled kernels


# --------------------------------------------------------------------------------------
# Single checks: each one names the argument it rejects.
# --------------------------------------------------------------------------------------

def plain(x):
    """x itself, unless it is an ndarray subclass: then a plain ndarray over its memory
    (``np.asarray`` makes it from the array itself, not from the subclass's properties)."""
    if isinstance(x, np.ndarray) and type(x) is not np.ndarray:
        return np.asarray(x)
    return x


def given(buf, made):
    """What a twin returns for an optional buffer: the caller's `buf` when one was given
    (a subclass was written through its plain view `made`), else the new array `made`."""
    return made if buf is None else buf


def as_float_array(name, x, ndim=None):
    """x as a C-contiguous float32/float64 ndarray (copied only when not contiguous)."""
    x = plain(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOATS:
        raise TypeError(f"{name} has dtype {x.dtype}; the kernels take float32 or float64")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if x.flags.c_contiguous and x.flags.aligned:
        return x
    return np.array(x, order="C")     # keeps a 0-d array 0-d (ascontiguousarray would not)


def check_same_dtype(name, x, dtype):
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other inputs are {np.dtype(dtype)}")


def check_same_shape(name, x, shape):
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape}")


def as_like(name, x, dtype, shape, ndim=None):
    """An input that must have the given dtype and shape: `as_float_array`, then the dtype,
    then the shape."""
    x = as_float_array(name, x, ndim)
    check_same_dtype(name, x, dtype)
    check_same_shape(name, x, shape)
    return x


def check_buffer(name, buf, shape, dtype):
    """An array written in place: exact shape and dtype, C-contiguous, writeable. Returns it
    (a subclass as its plain view: write through that)."""
    buf = plain(buf)
    if not isinstance(buf, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.shape != shape:
        raise ValueError(f"{name} has shape {buf.shape}, expected {shape}")
    if buf.dtype != dtype:
        raise ValueError(f"{name} has dtype {buf.dtype}, expected {np.dtype(dtype)}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is written in place)")
    if not buf.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype (it is written in place)")
    if not buf.flags.writeable:
        raise ValueError(f"{name} is read-only (it is written in place)")
    return buf


READ, WRITTEN, IN_PLACE = "read", "written", "in place"    # how the other array is used


def overlap_error(name, other, how=READ):
    """The ValueError for buffer `name` sharing memory with `other`, in the compiled
    kernels' words."""
    if how == IN_PLACE:
        why = f"in place, {name} may be {other} itself, but no other view of its memory"
    elif how == WRITTEN:
        why = "both are written"
    else:
        why = "it is written while that is read"
    return ValueError(f"{name} overlaps {other} ({why})")


def same_layout(a, b):
    """One memory in one layout: the same first byte, dtype and shape (both C-contiguous)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.dtype == b.dtype and a.shape == b.shape)


def refuse_overlap(name, buf, *named, how=READ):
    """`buf` is written while the arrays of `named` ((name, array or None) pairs) are read
    (how=READ) or written too (WRITTEN): the compiled kernels refuse one that shares memory
    with any of them (a silent wrong answer there), and so does the twin. With
    how=IN_PLACE, `buf` may be exactly one of them (the same memory, same layout)."""
    for other, array in named:
        if (array is not None and np.shares_memory(buf, array)
                and not (how == IN_PLACE and same_layout(buf, array))):
            raise overlap_error(name, other, how)


def refuse_overlaps(written, read):
    """refuse_overlap for several buffers at once. written: (name, buffer or None, the
    names of the arrays read that it may be exactly, in place) triples; read: (name, array
    or None) pairs. Each buffer against every array read, then every other buffer, in the
    order given: the first overlap is the error (as the compiled kernels search)."""
    for i, (name, buf, in_place) in enumerate(written):
        if buf is None:
            continue
        for other, array in read:
            if array is not None and np.shares_memory(buf, array):
                if other not in in_place:
                    raise overlap_error(name, other, READ)
                if not same_layout(buf, array):
                    raise overlap_error(name, other, IN_PLACE)
        for j, (other, array, _) in enumerate(written):
            if j != i and array is not None and np.shares_memory(buf, array):
                raise overlap_error(name, other, WRITTEN)


def output(name, buf, shape, dtype):
    """The caller's buffer, checked, or a new empty array."""
    if buf is None:
        return np.empty(shape, dtype=dtype)
    return check_buffer(name, buf, shape, dtype)


def as_param(name, param):
    """The parameter array updated in place: a float array the caller will see change."""
    param = plain(param)
    if not isinstance(param, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(param).__name__}")
    if param.dtype not in FLOATS:
        raise TypeError(f"{name} has dtype {param.dtype}; the kernels take float32 or float64")
    return check_buffer(name, param, param.shape, param.dtype)


def as_labels(name, labels, n, n_classes):
    """Integer class labels of shape (n,), each in [0, n_classes), as int64 (the array
    itself when it is a C-contiguous int64 one, as the compiled kernel reads it)."""
    labels = plain(labels)
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    lo, hi = (labels.min(), labels.max()) if n > 0 else (0, -1)
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} must be in [0, {n_classes}), found {bad}")
    if labels.dtype == np.int64 and labels.flags.c_contiguous and labels.flags.aligned:
        return labels
    return np.array(labels, dtype=np.int64, order="C")


def as_mask(name, mask, shape):
    """A dropout keep-mask: uint8 or bool, of the input's shape (C-contiguous: copied if
    not, as the compiled kernel reads it)."""
    mask = plain(mask)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(mask).__name__}")
    if mask.dtype not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise TypeError(f"{name} must have dtype uint8 or bool, got {mask.dtype}")
    check_same_shape(name, mask, shape)
    return np.array(mask, order="C", copy=not mask.flags.c_contiguous)


def check_scalar(name, value, low=-math.inf, high=math.inf, *, low_open=False, high_open=False):
    """A finite real number in [low, high]; an open end excludes the bound itself."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value}")
    if v < low or v > high or (v == low and low_open) or (v == high and high_open):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"Invalid {name}: {value} (must be in {interval})")
    return v


def check_not_empty(name, x, count):
    """The loss is a mean over `count` terms (samples or elements): it needs at least one."""
    if count == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape}); the mean is undefined")


def bias(name, b, size, dtype):
    """An optional bias: None, or a 1-D float array (size,) of the inputs' dtype."""
    if b is None:
        return None
    return as_like(name, b, dtype, (size,), ndim=1)


def sequence(name, value):
    """One entry per layer, as a tuple."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    if isinstance(value, (str, bytes, np.ndarray, dict, set, frozenset)) or not hasattr(
            value, "__iter__"):
        raise TypeError(f"{name} must be a list or tuple (one entry per layer), got "
                        f"{type(value).__name__}")
    return tuple(value)


def pair(name, value, minimum):
    """An int or a pair of ints (height, width), each >= minimum."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    if is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(is_int, value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if value[0] < minimum or value[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(value)}")
    if value[0] > MAX_WINDOW or value[1] > MAX_WINDOW:
        raise ValueError(f"{name} must be <= {MAX_WINDOW}, got {tuple(value)}")
    return int(value[0]), int(value[1])


# --------------------------------------------------------------------------------------
# Matrix products (gemm.py) and linear layers (linear.py)
# --------------------------------------------------------------------------------------

def gemm_args(a, b, out, trans_a, trans_b, alpha, beta):
    """gemm's arguments. Returns op(a) (M, K), op(b) (K, N), alpha, beta, out (M, N)."""
    a = as_float_array("a", a, ndim=2)
    b = as_float_array("b", b, ndim=2)
    check_same_dtype("b", b, a.dtype)
    alpha = check_scalar("alpha", alpha)
    beta = check_scalar("beta", beta)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    if op_b.shape[0] != op_a.shape[1]:
        raise ValueError(f"b: op(b) has shape {op_b.shape} but op(a) has shape {op_a.shape}; "
                         f"the inner dimensions must agree")
    if beta != 0 and out is None:
        raise ValueError("out is required when beta != 0 (out = alpha * a @ b + beta * out)")
    out = output("out", out, (op_a.shape[0], op_b.shape[1]), a.dtype)
    refuse_overlap("out", out, ("a", a), ("b", b))
    return op_a, op_b, alpha, beta, out


def linear_args(x, w, b, out, activation):
    """linear_forward's arguments. Returns x (N, D), w (D, M), b (M,) or None, out (N, M)."""
    x = as_float_array("x", x, ndim=2)
    w = as_float_array("w", w, ndim=2)
    check_same_dtype("w", w, x.dtype)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w has shape {w.shape}, expected ({x.shape[1]}, M) for x of shape {x.shape}")
    b = bias("b", b, w.shape[1], x.dtype)
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    out = output("out", out, (x.shape[0], w.shape[1]), x.dtype)
    refuse_overlap("out", out, ("x", x), ("w", w), ("b", b))
    return x, w, b, out


def linear_chain_args(x, weights, biases, activations, outs):
    """linear_chain_forward's arguments, every one checked before any layer is computed.

    Returns x (N, D) and one (w, b, activation, out) per layer: out is the caller's buffer
    outs[l], which shares no memory with an input or another layer's output, or a new one.
    """
    x = as_float_array("x", x, ndim=2)
    weights = sequence("weights", weights)
    biases = sequence("biases", biases)
    activations = sequence("activations", activations)
    outs = None if outs is None else sequence("outs", outs)
    n_layers = len(weights)
    if n_layers == 0:
        raise ValueError("weights is empty: the chain needs at least one layer")
    for name, seq in (("biases", biases), ("activations", activations), ("outs", outs)):
        if seq is not None and len(seq) != n_layers:
            raise ValueError(f"{name} has {len(seq)} entries for {n_layers} weights")
    layers, features = [], x.shape[1]
    for l in range(n_layers):
        w = as_float_array(f"weights[{l}]", weights[l], ndim=2)
        check_same_dtype(f"weights[{l}]", w, x.dtype)
        if w.shape[0] != features:
            raise ValueError(f"weights[{l}] has shape {w.shape}; the input of layer {l} has "
                             f"{features} features, so it must be ({features}, M)")
        b = bias(f"biases[{l}]", biases[l], w.shape[1], x.dtype)
        if activations[l] is not None and not (isinstance(activations[l], str)
                                               and activations[l] == "relu"):
            raise ValueError(f"activations[{l}] must be None or 'relu', got {activations[l]!r}")
        out = output(f"outs[{l}]", None if outs is None else outs[l],
                     (x.shape[0], w.shape[1]), x.dtype)
        layers.append((w, b, activations[l], out))
        features = w.shape[1]
    # a given buffer shares no memory with an input or another layer's output
    for l, (_, _, _, out) in enumerate(layers):
        if outs is not None and outs[l] is not None:
            refuse_overlap(f"outs[{l}]", out, ("x", x),
                           *[(f"{kind}[{j}]", array) for j, (w, b, _, _) in enumerate(layers)
                             for kind, array in (("weights", w), ("biases", b))])
            refuse_overlap(f"outs[{l}]", out, *[(f"outs[{j}]", other) for j, (_, _, _, other)
                                                in enumerate(layers) if j != l], how=WRITTEN)
    return x, layers


def linear_backward_args(grad_out, x, w, grad_w, grad_b, grad_x, compute_grad_x):
    """linear_backward's arguments. Returns grad_out (N, M), x (N, D), w (D, M), grad_w
    (D, M), grad_b (M,) or None, checked in place and sharing no memory with what is read,
    and grad_x (N, D), checked or new (as given when not compute_grad_x)."""
    grad_out = as_float_array("grad_out", grad_out, ndim=2)
    x = as_float_array("x", x, ndim=2)
    w = as_float_array("w", w, ndim=2)
    check_same_dtype("x", x, grad_out.dtype)
    check_same_dtype("w", w, grad_out.dtype)
    n, m = grad_out.shape
    if x.shape[0] != n:
        raise ValueError(f"x has shape {x.shape}, expected ({n}, D) for grad_out of shape {grad_out.shape}")
    d = x.shape[1]
    check_same_shape("w", w, (d, m))
    grad_w = check_buffer("grad_w", grad_w, (d, m), grad_out.dtype)
    if grad_b is not None:
        grad_b = check_buffer("grad_b", grad_b, (m,), grad_out.dtype)
    if compute_grad_x:
        grad_x = output("grad_x", grad_x, (n, d), grad_out.dtype)
    refuse_overlap("grad_w", grad_w, ("grad_out", grad_out), ("x", x), ("w", w),
                   ("grad_b", grad_b))
    if grad_b is not None:
        refuse_overlap("grad_b", grad_b, ("grad_out", grad_out), ("x", x), ("w", w))
    if compute_grad_x:
        refuse_overlap("grad_x", grad_x, ("grad_out", grad_out), ("x", x), ("w", w),
                       ("grad_w", grad_w), ("grad_b", grad_b))
    return grad_out, x, w, grad_w, grad_b, grad_x


def linear_chain_backward_args(grad_out, xs, weights, grads_w, grads_b, masks, grad_x,
                               compute_grad_x, accumulate, work):
    """linear_chain_backward's arguments, every one checked before anything is written.

    Returns grad_out (N, D_L); one (w, x, mask, grad_w, grad_b, accumulate) per layer; the
    buffers g_l (N, D_(l+1)) of the layers' gradients (work[l] or new; grad_out itself for
    a last layer without ReLU); grad_x (N, D_0), or None when not compute_grad_x; and what
    the kernel returns, (grad_x, (g_0, ...)) as the caller's objects. No buffer written
    shares memory with another one or with what is read.
    """
    grad_out_given = grad_out
    grad_out = as_float_array("grad_out", grad_out, ndim=2)
    xs, weights = sequence("xs", xs), sequence("weights", weights)
    grads_w, grads_b = sequence("grads_w", grads_w), sequence("grads_b", grads_b)
    masks = sequence("masks", masks)
    work = None if work is None else sequence("work", work)
    n_layers = len(weights)
    if n_layers == 0:
        raise ValueError("weights is empty: the chain needs at least one layer")
    for name, seq in (("xs", xs), ("grads_w", grads_w), ("grads_b", grads_b),
                      ("masks", masks), ("work", work)):
        if seq is not None and len(seq) != n_layers:
            raise ValueError(f"{name} has {len(seq)} entries for {n_layers} weights")
    if isinstance(accumulate, (bool, np.bool_)):
        accumulate = (bool(accumulate),) * n_layers
    else:
        accumulate = sequence("accumulate", accumulate)
        if len(accumulate) != n_layers:
            raise ValueError(f"accumulate has {len(accumulate)} entries for {n_layers} weights")
        for l, flag in enumerate(accumulate):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"accumulate[{l}] must be True or False, got {flag!r}")
    n, dtype = grad_out.shape[0], grad_out.dtype
    layers, reads, writes = [], [("grad_out", grad_out)], []
    for l in range(n_layers):
        w = as_float_array(f"weights[{l}]", weights[l], ndim=2)
        check_same_dtype(f"weights[{l}]", w, dtype)
        if l > 0 and w.shape[0] != layers[-1][0].shape[1]:
            above = layers[-1][0].shape[1]
            raise ValueError(f"weights[{l}] has shape {w.shape}; layer {l - 1} has {above} "
                             f"outputs, so it must be ({above}, M)")
        x = as_like(f"xs[{l}]", xs[l], dtype, (n, w.shape[0]), ndim=2)
        grad_w = check_buffer(f"grads_w[{l}]", grads_w[l], w.shape, dtype)
        grad_b = grads_b[l]
        if grad_b is not None:
            grad_b = check_buffer(f"grads_b[{l}]", grad_b, (w.shape[1],), dtype)
        mask = masks[l]
        if mask is not None:
            mask = as_like(f"masks[{l}]", mask, dtype, (n, w.shape[1]), ndim=2)
        layers.append((w, x, mask, grad_w, grad_b, accumulate[l]))
        reads += [(f"weights[{l}]", w), (f"xs[{l}]", x), (f"masks[{l}]", mask)]
        writes += [(f"grads_w[{l}]", grad_w), (f"grads_b[{l}]", grad_b)]
    if grad_out.shape[1] != layers[-1][0].shape[1]:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected ({n}, "
                         f"{layers[-1][0].shape[1]}) (the last layer's output)")
    gs, returned = [], []
    for l, (w, _, mask, _, _, _) in enumerate(layers):
        if l == n_layers - 1 and mask is None:
            gs.append(grad_out)         # itself: the caller's object, unless it was copied
            itself = same_layout(plain(grad_out_given), grad_out)
            returned.append(grad_out_given if itself else grad_out)
            continue
        is_given = work is not None and work[l] is not None
        gs.append(output(f"work[{l}]", work[l] if is_given else None, (n, w.shape[1]), dtype))
        returned.append(work[l] if is_given else gs[l])
        if is_given:
            writes.append((f"work[{l}]", gs[l]))
    grad_x_given = grad_x
    if compute_grad_x:
        grad_x = output("grad_x", grad_x, (n, layers[0][0].shape[0]), dtype)
        if grad_x_given is not None:
            writes.append(("grad_x", grad_x))
    else:
        grad_x = None
    for i, (name, buf) in enumerate(writes):
        if buf is not None:
            refuse_overlap(name, buf, *reads)
            refuse_overlap(name, buf, *[other for j, other in enumerate(writes) if j != i],
                           how=WRITTEN)
    returned = (None if grad_x is None else given(grad_x_given, grad_x), tuple(returned))
    return grad_out, layers, gs, grad_x, returned


# --------------------------------------------------------------------------------------
# Activations and dropout (activations.py)
# --------------------------------------------------------------------------------------

def elementwise(x_name, x, out, other_name=None, other=None, *, ndim=None, **scalars):
    """An elementwise kernel's arguments, checked in this order: x; another input of x's
    shape and dtype (when named); the real numbers given by keyword (``negative_slope=``);
    out of x's shape and dtype. ``ndim`` fixes the number of axes of x and the other input.
    A given out may be x or the other input itself (in place), but no other view of them.

    Returns them in that order: ``x, out``, ``x, other, out``, ``x, slope, out``, ...
    """
    x = as_float_array(x_name, x, ndim)
    checked = [x]
    if other_name is not None:
        checked.append(as_like(other_name, other, x.dtype, x.shape, ndim))
    checked += [check_scalar(name, value) for name, value in scalars.items()]
    y = output("out", out, x.shape, x.dtype)
    if out is not None:
        refuse_overlap("out", y, (x_name, x), (other_name, checked[1] if other_name else None),
                       how=IN_PLACE)
    return tuple(checked) + (y,)


def dropout_args(x_name, x, mask, scale, out):
    """dropout's arguments. Returns x, mask (x's shape, uint8 or bool), scale >= 0, out
    (which may be x itself, in place, and shares no memory with the mask)."""
    x = as_float_array(x_name, x)
    mask = as_mask("mask", mask, x.shape)
    scale = check_scalar("scale", scale, low=0.0)
    y = output("out", out, x.shape, x.dtype)
    if out is not None:
        refuse_overlap("out", y, (x_name, x), how=IN_PLACE)
        refuse_overlap("out", y, ("mask", mask))
    return x, mask, scale, y


# --------------------------------------------------------------------------------------
# Losses (losses.py)
# --------------------------------------------------------------------------------------

def cross_entropy_args(logits, labels, grad):
    """softmax_cross_entropy's arguments. Returns logits (N, C), N >= 1, labels (N,) as
    int64, grad (N, C), which may be logits itself (in place) and shares no memory with
    the labels."""
    logits = as_float_array("logits", logits, ndim=2)
    n, c = logits.shape
    check_not_empty("logits", logits, n)
    labels = as_labels("labels", labels, n, c)
    g = output("grad", grad, logits.shape, logits.dtype)
    if grad is not None:
        refuse_overlap("grad", g, ("logits", logits), how=IN_PLACE)
        refuse_overlap("grad", g, ("labels", labels))
    return logits, labels, g


def mean_loss_args(x_name, x, target, grad):
    """The arguments of an elementwise loss (mse, bce_with_logits). Returns x (at least one
    element), target of x's shape and dtype, grad (which may be x or target itself)."""
    x = as_float_array(x_name, x)
    target = as_like("target", target, x.dtype, x.shape)
    check_not_empty(x_name, x, x.size)
    g = output("grad", grad, x.shape, x.dtype)
    if grad is not None:
        refuse_overlap("grad", g, (x_name, x), ("target", target), how=IN_PLACE)
    return x, target, g


# --------------------------------------------------------------------------------------
# Optimizer steps (optim.py)
# --------------------------------------------------------------------------------------

def sgd_update_args(param, grad, lr, momentum, velocity, weight_decay, nesterov):
    """sgd_update's arguments. Returns param, grad, lr, momentum, weight_decay and velocity
    (checked when momentum != 0, else None); no two of param, grad, velocity share memory."""
    param = as_param("param", param)
    grad = as_like("grad", grad, param.dtype, param.shape)
    lr = check_scalar("lr", lr, low=0.0)
    momentum = check_scalar("momentum", momentum, low=0.0)
    weight_decay = check_scalar("weight_decay", weight_decay, low=0.0)
    if nesterov and momentum == 0:
        raise ValueError("nesterov momentum requires momentum > 0")
    if momentum != 0:
        if velocity is None:
            raise ValueError("velocity (the momentum buffer) is required when momentum != 0")
        velocity = check_buffer("velocity", velocity, param.shape, param.dtype)
    else:
        velocity = None
    refuse_overlaps((("param", param, ()), ("velocity", velocity, ())), (("grad", grad),))
    return param, grad, lr, momentum, weight_decay, velocity


def adam_update_args(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """adam_update's arguments. Returns param, grad, m, v (checked in place: no two of
    param, grad, m, v share memory), lr, beta1, beta2, eps, weight_decay; step is an
    int >= 1."""
    param = as_param("param", param)
    grad = as_like("grad", grad, param.dtype, param.shape)
    m = check_buffer("m", m, param.shape, param.dtype)
    v = check_buffer("v", v, param.shape, param.dtype)
    refuse_overlaps((("param", param, ()), ("m", m, ()), ("v", v, ())), (("grad", grad),))
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"Invalid step: {step} (must be >= 1, counting this update)")
    lr = check_scalar("lr", lr, low=0.0)
    beta1 = check_scalar("beta1", beta1, low=0.0, high=1.0, high_open=True)
    beta2 = check_scalar("beta2", beta2, low=0.0, high=1.0, high_open=True)
    eps = check_scalar("eps", eps, low=0.0)
    weight_decay = check_scalar("weight_decay", weight_decay, low=0.0)
    return param, grad, m, v, lr, beta1, beta2, eps, weight_decay


def step_lists(params, grads, extra):
    """The lists of a whole-model step: as many arrays in each, one dtype, every array
    checked before any is updated, no array written sharing memory with another array of
    the lists (gradients may share with each other: they are only read). `extra` maps the
    name of each list of state buffers (or None) to it. Returns params and grads as lists."""
    params, grads = list(params), list(grads)
    if not params:
        raise ValueError("params is empty")
    if len(grads) != len(params):
        raise ValueError(f"grads has {len(grads)} arrays, params {len(params)}")
    for name, arrays in extra.items():
        if arrays is not None and len(arrays) != len(params):
            raise ValueError(f"{name} has {len(arrays)} arrays, params {len(params)}")
    first = plain(params[0])
    if not isinstance(first, np.ndarray):
        raise TypeError(f"params[0] must be a numpy.ndarray, got {type(first).__name__}")
    if first.dtype not in FLOATS:
        raise TypeError(f"params[0] has dtype {first.dtype}; the kernels take float32 or "
                        f"float64")
    dtype = first.dtype
    written, read = [], []
    for i in range(len(params)):
        p = plain(params[i])
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{i}] must be a numpy.ndarray, got {type(p).__name__}")
        written.append((f"params[{i}]", check_buffer(f"params[{i}]", p, p.shape, dtype), ()))
        read.append((f"grads[{i}]", as_like(f"grads[{i}]", grads[i], dtype, p.shape)))
        for name, arrays in extra.items():
            if arrays is not None:
                check_buffer(f"{name}[{i}]", arrays[i], p.shape, dtype)
    for name, arrays in extra.items():      # (written in the compiled kernels' order)
        if arrays is not None:
            written += [(f"{name}[{i}]", plain(a), ()) for i, a in enumerate(arrays)]
    refuse_overlaps(written, read)
    return params, grads


def sgd_step_args(params, grads, velocities, momentum):
    """sgd_step's lists (velocities only when momentum != 0). Returns params, grads."""
    if momentum and velocities is None:
        raise ValueError("velocities are required when momentum != 0")
    return step_lists(params, grads, {"velocities": list(velocities) if momentum else None})


def adam_step_args(params, grads, ms, vs):
    """adam_step's lists. Returns params, grads."""
    return step_lists(params, grads, {"ms": list(ms), "vs": list(vs)})


# --------------------------------------------------------------------------------------
# Convolution and max pooling, NCHW (conv.py)
# --------------------------------------------------------------------------------------

def conv_args(x, w, stride, padding):
    """Checks shared by conv2d_forward/backward; returns x, w, (sh, sw), (ph, pw), (OH, OW)."""
    x = as_float_array("x", x)
    w = as_float_array("w", w)
    check_same_dtype("w", w, x.dtype)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w must be 4-D (O, C, KH, KW), got shape {w.shape}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w has {w.shape[1]} input channels (shape {w.shape}) but x has {x.shape[1]}")
    if w.shape[2] < 1 or w.shape[3] < 1:
        raise ValueError(f"w: kernel size must be >= 1, got {w.shape[2:]}")
    (sh, sw), (ph, pw) = pair("stride", stride, 1), pair("padding", padding, 0)
    (h, wd), (kh, kw) = x.shape[2:], w.shape[2:]
    if h + 2 * ph < kh or wd + 2 * pw < kw:
        raise ValueError(f"x: input {h}x{wd} with padding {(ph, pw)} is smaller than the kernel {kh}x{kw}")
    out_hw = ((h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1)
    return x, w, (sh, sw), (ph, pw), out_hw


def conv2d_forward_args(x, w, b, out, stride, padding):
    """conv2d_forward's arguments. Returns x, w, b (O,) or None, out (N, O, OH, OW),
    sharing no memory with them, (sh, sw), (ph, pw)."""
    x, w, stride, padding, out_hw = conv_args(x, w, stride, padding)
    b = bias("b", b, w.shape[0], x.dtype)
    y = output("out", out, (x.shape[0], w.shape[0]) + out_hw, x.dtype)
    if out is not None:
        refuse_overlaps([("out", y, ())], [("x", x), ("w", w), ("b", b)])
    return x, w, b, y, stride, padding


def conv2d_backward_args(grad_out, x, w, grad_w, grad_b, grad_x, stride, padding,
                         compute_grad_x):
    """conv2d_backward's arguments. Returns grad_out (N, O, OH, OW), x, w, grad_w, grad_b
    (checked in place), grad_x (as given when not compute_grad_x), (sh, sw), (ph, pw). No
    buffer shares memory with what is read or with another buffer."""
    x, w, stride, padding, out_hw = conv_args(x, w, stride, padding)
    grad_out = as_like("grad_out", grad_out, x.dtype, (x.shape[0], w.shape[0]) + out_hw)
    grad_w = check_buffer("grad_w", grad_w, w.shape, x.dtype)
    if grad_b is not None:
        grad_b = check_buffer("grad_b", grad_b, (w.shape[0],), x.dtype)
    given_x = compute_grad_x and grad_x is not None
    if compute_grad_x:
        grad_x = output("grad_x", grad_x, x.shape, x.dtype)
    refuse_overlaps([("grad_w", grad_w, ()), ("grad_b", grad_b, ()),
                     ("grad_x", grad_x if given_x else None, ())],
                    [("grad_out", grad_out), ("x", x), ("w", w)])
    return grad_out, x, w, grad_w, grad_b, grad_x, stride, padding


def maxpool_forward_args(x, kernel_size, stride, out, indices):
    """maxpool2d_forward's arguments. Returns x (N, C, H, W), (kh, kw), (sh, sw) (stride
    None: the kernel size), out and indices (N, C, OH, OW)."""
    x = as_float_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    kh, kw = pair("kernel_size", kernel_size, 1)
    sh, sw = pair("stride", kernel_size if stride is None else stride, 1)
    n, c, h, w = x.shape
    if h < kh or w < kw:
        raise ValueError(f"x: input {h}x{w} is smaller than the pooling window {kh}x{kw}")
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = output("out", out, (n, c, oh, ow), x.dtype)
    idx = output("indices", indices, (n, c, oh, ow), np.dtype(np.int64))
    refuse_overlaps([("out", y if out is not None else None, ()),
                     ("indices", idx if indices is not None else None, ())], [("x", x)])
    return x, (kh, kw), (sh, sw), y, idx


def maxpool_backward_args(grad_out, indices, x_shape, out):
    """maxpool2d_backward's arguments. Returns grad_out (N, C, OH, OW), indices (int64, of
    grad_out's shape, each in [0, H*W)), x_shape as a tuple (N, C, H, W), out of x_shape."""
    grad_out = as_float_array("grad_out", grad_out)
    if grad_out.ndim != 4:
        raise ValueError(f"grad_out must be 4-D (N, C, OH, OW), got shape {grad_out.shape}")
    indices = plain(indices)
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype != np.int64:
        raise TypeError(f"indices must be int64 (from maxpool2d_forward), got {indices.dtype}")
    check_same_shape("indices", indices, grad_out.shape)
    try:
        x_shape = tuple(int(d) for d in x_shape)
    except TypeError:
        raise TypeError(f"x_shape must be a tuple of 4 ints, got {x_shape!r}") from None
    if len(x_shape) != 4 or x_shape[:2] != grad_out.shape[:2]:
        raise ValueError(f"x_shape {x_shape} does not match grad_out's {grad_out.shape}")
    if not (indices.flags.c_contiguous and indices.flags.aligned):
        indices = np.array(indices, order="C")      # (as the compiled kernel reads them)
    n, c, h, w = x_shape
    grad_x = output("out", out, x_shape, grad_out.dtype)
    if out is not None:
        refuse_overlaps([("out", grad_x, ())], [("grad_out", grad_out), ("indices", indices)])
    if indices.size and (indices.min() < 0 or indices.max() >= h * w):
        raise ValueError(f"indices must be in [0, {h * w}) for x_shape {x_shape}")
    return grad_out, indices, x_shape, grad_x


def pool_geometry(what, h, w, kernel_size, stride):
    """``(kh, kw, sh, sw, OH, OW)`` of a pooling window over (h, w) planes, the stride
    defaulting to the kernel size; `what` names the planes when the window does not fit."""
    kh, kw = pair("kernel_size", kernel_size, 1)
    sh, sw = pair("stride", kernel_size if stride is None else stride, 1)
    if h < kh or w < kw:
        raise ValueError(f"{what}: input {h}x{w} is smaller than the pooling window {kh}x{kw}")
    return kh, kw, sh, sw, (h - kh) // sh + 1, (w - kw) // sw + 1


def shape4(x_shape):
    """The forward input's shape given to a backward pass: 4 ints >= 0, as a tuple."""
    try:
        dims = tuple(x_shape)
    except TypeError:
        raise TypeError(f"x_shape must be a tuple of 4 ints, got {x_shape!r}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))
               for d in dims):
        raise TypeError(f"x_shape must be a tuple of 4 ints, got {x_shape!r}")
    if len(dims) != 4 or min(dims) < 0:
        raise ValueError(f"x_shape must be 4 sizes >= 0 (N, C, H, W), got {x_shape!r}")
    return tuple(int(d) for d in dims)


def avgpool_forward_args(x, kernel_size, stride, out):
    """avgpool2d_forward's arguments. Returns x (N, C, H, W), (kh, kw), (sh, sw) (stride
    None: the kernel size) and out (N, C, OH, OW)."""
    x = as_float_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    kh, kw, sh, sw, oh, ow = pool_geometry("x", h, w, kernel_size, stride)
    y = output("out", out, (n, c, oh, ow), x.dtype)
    if out is not None:
        refuse_overlap("out", y, ("x", x))
    return x, (kh, kw), (sh, sw), y


def avgpool_backward_args(grad_out, x_shape, kernel_size, stride, out):
    """avgpool2d_backward's arguments. Returns grad_out (N, C, OH, OW: the forward's output
    shape for x_shape), (kh, kw), (sh, sw), out of x_shape."""
    grad_out = as_float_array("grad_out", grad_out)
    if grad_out.ndim != 4:
        raise ValueError(f"grad_out must be 4-D (N, C, OH, OW), got shape {grad_out.shape}")
    x_shape = shape4(x_shape)
    n, c, h, w = x_shape
    kh, kw, sh, sw, oh, ow = pool_geometry(f"x_shape {x_shape}", h, w, kernel_size, stride)
    if grad_out.shape != (n, c, oh, ow):
        raise ValueError(f"grad_out has shape {grad_out.shape}, but x_shape {x_shape} with "
                         f"kernel_size {(kh, kw)} and stride {(sh, sw)} gives {(n, c, oh, ow)}")
    grad_x = output("out", out, x_shape, grad_out.dtype)
    if out is not None:
        refuse_overlap("out", grad_x, ("grad_out", grad_out))
    return grad_out, (kh, kw), (sh, sw), grad_x


# --------------------------------------------------------------------------------------
# Batch normalisation (norm.py)
# --------------------------------------------------------------------------------------

def check_channels(x):
    """Batch normalisation takes x (N, C) or (N, C, H, W)."""
    if x.ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {x.shape}")


def batchnorm_forward_args(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                           out, save_mean, save_invstd):
    """batchnorm_forward's arguments. Returns x, gamma, beta (C,), running_mean,
    running_var (checked in place), momentum in [0, 1], eps > 0, out (x's shape),
    save_mean, save_invstd (C,). Training needs more than one value per channel. out may
    be x itself (in place); no other two arrays share memory."""
    x = as_float_array("x", x)
    check_channels(x)
    c = x.shape[1]
    gamma = as_float_array("gamma", gamma, ndim=1)
    beta = as_float_array("beta", beta, ndim=1)
    for name, arr in (("gamma", gamma), ("beta", beta)):
        check_same_dtype(name, arr, x.dtype)
        check_same_shape(name, arr, (c,))
    running_mean = check_buffer("running_mean", running_mean, (c,), x.dtype)
    running_var = check_buffer("running_var", running_var, (c,), x.dtype)
    momentum = check_scalar("momentum", momentum, low=0.0, high=1.0)
    eps = check_scalar("eps", eps, low=0.0, low_open=True)
    m = x.size // c if c else 0                      # values per channel
    if training and m <= 1 and c > 0:
        raise ValueError(f"x: batch normalisation in training mode needs more than 1 value "
                         f"per channel, got shape {x.shape}")
    buffers = (out, save_mean, save_invstd)
    out = output("out", out, x.shape, x.dtype)
    save_mean = output("save_mean", save_mean, (c,), x.dtype)
    save_invstd = output("save_invstd", save_invstd, (c,), x.dtype)
    refuse_overlaps([("running_mean", running_mean, ()), ("running_var", running_var, ())]
                    + [(name, made if buf is not None else None, in_place)
                       for name, made, buf, in_place in zip(
                           ("out", "save_mean", "save_invstd"), (out, save_mean, save_invstd),
                           buffers, (("x",), (), ()))],
                    [("x", x), ("gamma", gamma), ("beta", beta)])
    return x, gamma, beta, running_mean, running_var, momentum, eps, out, save_mean, save_invstd


def batchnorm_backward_args(grad_out, x, gamma, save_mean, save_invstd, grad_gamma,
                            grad_beta, grad_x, compute_grad_x):
    """batchnorm_backward's arguments. Returns grad_out, x (one shape), gamma, save_mean,
    save_invstd (C,), grad_gamma and grad_beta (checked in place) and grad_x (as given
    when not compute_grad_x), which may be grad_out or x itself (in place); no other two
    arrays share memory."""
    grad_out = as_float_array("grad_out", grad_out)
    x = as_like("x", x, grad_out.dtype, grad_out.shape)
    check_channels(x)
    c = x.shape[1]
    gamma, save_mean, save_invstd = (
        as_like(name, arr, x.dtype, (c,), ndim=1)
        for name, arr in (("gamma", gamma), ("save_mean", save_mean),
                          ("save_invstd", save_invstd)))
    grad_gamma = check_buffer("grad_gamma", grad_gamma, (c,), x.dtype)
    grad_beta = check_buffer("grad_beta", grad_beta, (c,), x.dtype)
    given_x = compute_grad_x and grad_x is not None
    if compute_grad_x:
        grad_x = output("grad_x", grad_x, x.shape, x.dtype)
    refuse_overlaps([("grad_gamma", grad_gamma, ()), ("grad_beta", grad_beta, ()),
                     ("grad_x", grad_x if given_x else None, ("grad_out", "x"))],
                    [("grad_out", grad_out), ("x", x), ("gamma", gamma),
                     ("save_mean", save_mean), ("save_invstd", save_invstd)])
    return grad_out, x, gamma, save_mean, save_invstd, grad_gamma, grad_beta, grad_x


# --------------------------------------------------------------------------------------
# Batch gathering (data.py) and the thread count (parallel.py)
# --------------------------------------------------------------------------------------

def take_rows_args(x, rows, out):
    """take_rows' arguments. x (N, ...) must already be C-contiguous and aligned (it is not
    copied); rows (B,) int64 in [0, N) (copied if not contiguous, as the compiled kernel
    reads them); out (B, ...) shares no memory with x or rows."""
    x = plain(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOATS:
        raise TypeError(f"x has dtype {x.dtype}; the kernels take float32 or float64")
    if x.ndim < 1:
        raise ValueError(f"x must have at least one axis (the samples), got shape {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):
        raise ValueError("x must be C-contiguous and aligned")
    rows = plain(rows)
    if not isinstance(rows, np.ndarray):
        raise TypeError(f"rows must be a numpy.ndarray, got {type(rows).__name__}")
    if rows.dtype != np.int64:
        raise TypeError(f"rows must be int64, got {rows.dtype}")
    if rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
    if not (rows.flags.c_contiguous and rows.flags.aligned):
        rows = np.array(rows, order="C")
    batch = output("out", out, (len(rows),) + x.shape[1:], x.dtype)
    if out is not None:
        refuse_overlaps([("out", batch, ())], [("x", x), ("rows", rows)])
    out = batch
    if len(rows) and (rows.min() < 0 or rows.max() >= len(x)):
        raise ValueError(f"rows must be in [0, {len(x)})")
    return x, rows, out


def thread_count(n):
    """A thread count: an int in [1, 4096]."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1 or n > 4096:
        raise ValueError(f"n must be in [1, 4096], got {n}")
    return int(n)
