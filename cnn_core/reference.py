"""The NumPy twin of every compiled kernel in ``cnn_core``: the math, in a few readable lines.

Each function here has the same name, signature and argument checks as its compiled
counterpart (``cnn_core.gemm`` <-> ``cnn_core.reference.gemm``, ...), so that

* a student can read the formula of every forward and backward pass in plain NumPy,
* the tests can hold the compiled kernels against these lines, dtype by dtype and
  shape by shape, and
* the Python layer can run a whole model on either backend (``nnscratch.set_backend``).

The contract both backends follow (DESIGN.md, "Kernel contract"):

* arrays are ``numpy.ndarray`` of float32 or float64, one dtype per call (labels: any
  integer dtype); anything else is a ``TypeError`` that names the argument;
* shapes that do not fit are a ``ValueError`` that names the argument;
* ``out=`` / ``grad=`` buffers are optional; when given they must be C-contiguous,
  writeable, of the exact shape and dtype, are written in place and returned, so a
  training step allocates nothing. Parameters updated in place (``param``, ``velocity``,
  ``m``, ``v``, ``grad_w``, ``grad_b``) follow the same rule. The GEMM family's buffers
  (``gemm``, ``linear_forward``, ``linear_backward``, ``linear_chain_forward``) must not
  share memory with the inputs they are computed from or with each other (``ValueError``);
* zero-size dimensions give NumPy's result, except that a loss over an empty batch is an
  error.

The checks sit in the small private helpers just below, so that each public function
reads as: check the arguments, then the math.
"""
import math

import numpy as np

__all__ = [
    "gemm", "gemm_naive", "linear_forward", "linear_backward", "linear_chain_forward",
    "linear_chain_backward",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "softmax_forward", "softmax_backward", "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "mse", "bce_with_logits", "sgd_update", "adam_update",
    "sgd_step", "adam_step", "all_finite", "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "batchnorm_forward", "batchnorm_backward", "take_rows",
    "set_num_threads", "get_num_threads", "openmp_enabled", "cpu_features",
    "gemm_kernel_name",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------------------
# Argument checks: each one names the argument it rejects.
# --------------------------------------------------------------------------------------

def _as_float_array(name, x, ndim=None):
    """x as a C-contiguous float32/float64 ndarray (copied only when not contiguous)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {x.dtype}; the kernels take float32 or float64")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if x.flags.c_contiguous and x.flags.aligned:
        return x
    return np.array(x, order="C")     # keeps a 0-d array 0-d (ascontiguousarray would not)


def _check_same_dtype(name, x, dtype):
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other inputs are {np.dtype(dtype)}")


def _check_same_shape(name, x, shape):
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape}")


def _check_buffer(name, buf, shape, dtype):
    """An array written in place: exact shape and dtype, C-contiguous, writeable."""
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


def _refuse_overlap(name, buf, *named):
    """`buf` is written while the arrays of `named` ((name, array or None) pairs) are read:
    the compiled kernels refuse one that shares memory with any of them (a silent wrong
    answer there), and so does the twin."""
    for other, array in named:
        if array is not None and np.shares_memory(buf, array):
            raise ValueError(f"{name} overlaps {other} (it is written while that is read)")


def _output(name, buf, shape, dtype):
    """The caller's buffer, checked, or a new empty array."""
    if buf is None:
        return np.empty(shape, dtype=dtype)
    return _check_buffer(name, buf, shape, dtype)


def _as_param(name, param):
    """The parameter array updated in place: a float array the caller will see change."""
    if not isinstance(param, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(param).__name__}")
    if param.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {param.dtype}; the kernels take float32 or float64")
    return _check_buffer(name, param, param.shape, param.dtype)


def _as_labels(name, labels, n, n_classes):
    """Integer class labels of shape (n,), each in [0, n_classes)."""
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
    return labels.astype(np.intp)


def _as_mask(name, mask, shape):
    """A dropout keep-mask: uint8 or bool, of the input's shape."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(mask).__name__}")
    if mask.dtype not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise TypeError(f"{name} must have dtype uint8 or bool, got {mask.dtype}")
    _check_same_shape(name, mask, shape)
    return mask


def _check_scalar(name, value, low=-math.inf, high=math.inf, *, low_open=False, high_open=False):
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


def _check_not_empty(name, x, count):
    """The loss is a mean over `count` terms (samples or elements): it needs at least one."""
    if count == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape}); the mean is undefined")


def _elementwise_args(x_name, x, other_name=None, other=None):
    """The checks of an elementwise kernel: x, and another input of x's shape and dtype."""
    x = _as_float_array(x_name, x)
    if other_name is None:
        return x
    other = _as_float_array(other_name, other)
    _check_same_dtype(other_name, other, x.dtype)
    _check_same_shape(other_name, other, x.shape)
    return x, other


def _pair(name, value, minimum):
    """An int or a pair of ints (height, width), each >= minimum."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    if is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(is_int, value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if value[0] < minimum or value[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(value)}")
    if value[0] > _MAX_WINDOW or value[1] > _MAX_WINDOW:
        raise ValueError(f"{name} must be <= {_MAX_WINDOW}, got {tuple(value)}")
    return int(value[0]), int(value[1])


_MAX_WINDOW = 1 << 24   # as the compiled kernels: far beyond any image


def _conv_args(x, w, stride, padding):
    """Checks shared by conv2d_forward/backward; returns x, w, (sh, sw), (ph, pw), (OH, OW)."""
    x = _as_float_array("x", x)
    w = _as_float_array("w", w)
    _check_same_dtype("w", w, x.dtype)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w must be 4-D (O, C, KH, KW), got shape {w.shape}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w has {w.shape[1]} input channels (shape {w.shape}) but x has {x.shape[1]}")
    if w.shape[2] < 1 or w.shape[3] < 1:
        raise ValueError(f"w: kernel size must be >= 1, got {w.shape[2:]}")
    (sh, sw), (ph, pw) = _pair("stride", stride, 1), _pair("padding", padding, 0)
    (h, wd), (kh, kw) = x.shape[2:], w.shape[2:]
    if h + 2 * ph < kh or wd + 2 * pw < kw:
        raise ValueError(f"x: input {h}x{wd} with padding {(ph, pw)} is smaller than the kernel {kh}x{kw}")
    out_hw = ((h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1)
    return x, w, (sh, sw), (ph, pw), out_hw


# --------------------------------------------------------------------------------------
# Matrix products
# --------------------------------------------------------------------------------------

def gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """General matrix product, ``out = alpha * op(a) @ op(b) + beta * out``.

    ``op(a)`` is ``a.T`` when ``trans_a`` is true, else ``a`` (the same for ``b``).

    Parameters
    ----------
    a : ndarray, (M, K), or (K, M) when ``trans_a``
    b : ndarray, (K, N), or (N, K) when ``trans_b``
    out : ndarray (M, N), optional
        Written in place and returned. Required when ``beta != 0``. With ``beta == 0``
        its old contents are never read (they may be NaN).
    trans_a, trans_b : bool
    alpha, beta : float

    Returns
    -------
    out : ndarray (M, N)
    """
    # op(a) (M, K) @ op(b) (K, N) -> out (M, N)
    a = _as_float_array("a", a, ndim=2)
    b = _as_float_array("b", b, ndim=2)
    _check_same_dtype("b", b, a.dtype)
    alpha = _check_scalar("alpha", alpha)
    beta = _check_scalar("beta", beta)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    if op_b.shape[0] != op_a.shape[1]:
        raise ValueError(f"b: op(b) has shape {op_b.shape} but op(a) has shape {op_a.shape}; "
                         f"the inner dimensions must agree")
    if beta != 0 and out is None:
        raise ValueError("out is required when beta != 0 (out = alpha * a @ b + beta * out)")
    out = _output("out", out, (op_a.shape[0], op_b.shape[1]), a.dtype)
    _refuse_overlap("out", out, ("a", a), ("b", b))

    if beta == 0:
        out[...] = alpha * (op_a @ op_b)       # never reads out: it may hold NaN
    else:
        out[...] = alpha * (op_a @ op_b) + beta * out
    return out


# The compiled module keeps a plain triple loop beside its blocked GEMM; here the two are one.
gemm_naive = gemm


def linear_forward(x, w, b, out=None, *, activation=None):
    """Fully connected layer, ``out = act(x @ w + b)``.

    Parameters
    ----------
    x : ndarray (N, D)
        A batch of N inputs of D features.
    w : ndarray (D, M)
        Weights, read left to right: feature d feeds output m through ``w[d, m]``.
    b : ndarray (M,) or None
        Bias, added to every row; None for a layer without bias.
    out : ndarray (N, M), optional
    activation : None or "relu"
        ``"relu"`` applies ``max(z, 0)`` in the same pass.

    Returns
    -------
    out : ndarray (N, M)
    """
    # x (N, D) @ w (D, M) + b (M,) -> out (N, M)
    x = _as_float_array("x", x, ndim=2)
    w = _as_float_array("w", w, ndim=2)
    _check_same_dtype("w", w, x.dtype)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w has shape {w.shape}, expected ({x.shape[1]}, M) for x of shape {x.shape}")
    if b is not None:
        b = _as_float_array("b", b, ndim=1)
        _check_same_dtype("b", b, x.dtype)
        _check_same_shape("b", b, (w.shape[1],))
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    out = _output("out", out, (x.shape[0], w.shape[1]), x.dtype)
    _refuse_overlap("out", out, ("x", x), ("w", w), ("b", b))

    z = x @ w
    if b is not None:
        z = z + b                              # broadcast: the same bias for every row
    out[...] = np.maximum(z, 0) if activation == "relu" else z
    return out


def _sequence(name, value):
    """One entry per layer, as a tuple."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    if isinstance(value, (str, bytes, np.ndarray, dict, set, frozenset)) or not hasattr(
            value, "__iter__"):
        raise TypeError(f"{name} must be a list or tuple (one entry per layer), got "
                        f"{type(value).__name__}")
    return tuple(value)


def linear_chain_forward(x, weights, biases, activations, outs=None):
    """Linear layers one after the other (a stack of `linear_forward` calls)::

        h_0 = x,    h_l = act_l(h_(l-1) @ weights[l-1] + biases[l-1])    (l = 1 .. L)

    Parameters
    ----------
    x : ndarray (N, D)
    weights : sequence of L ndarrays, weights[l] (D_l, D_(l+1)) with D_0 = D
    biases : sequence of L ndarrays (D_(l+1),) or None
    activations : sequence of L entries, None or "relu"
    outs : None, or a sequence of L buffers (or None) for h_1 ... h_L, sharing no memory
        with x, the weights, the biases or each other

    Returns
    -------
    (h_1, ..., h_L) : tuple of ndarrays (N, D_(l+1))
    """
    x = _as_float_array("x", x, ndim=2)
    weights = _sequence("weights", weights)
    biases = _sequence("biases", biases)
    activations = _sequence("activations", activations)
    outs = None if outs is None else _sequence("outs", outs)
    n_layers = len(weights)
    if n_layers == 0:
        raise ValueError("weights is empty: the chain needs at least one layer")
    for name, seq in (("biases", biases), ("activations", activations), ("outs", outs)):
        if seq is not None and len(seq) != n_layers:
            raise ValueError(f"{name} has {len(seq)} entries for {n_layers} weights")
    # every argument is checked before any layer is computed
    layers, features = [], x.shape[1]
    for l in range(n_layers):
        w = _as_float_array(f"weights[{l}]", weights[l], ndim=2)
        _check_same_dtype(f"weights[{l}]", w, x.dtype)
        if w.shape[0] != features:
            raise ValueError(f"weights[{l}] has shape {w.shape}; the input of layer {l} has "
                             f"{features} features, so it must be ({features}, M)")
        b = biases[l]
        if b is not None:
            b = _as_float_array(f"biases[{l}]", b, ndim=1)
            _check_same_dtype(f"biases[{l}]", b, x.dtype)
            _check_same_shape(f"biases[{l}]", b, (w.shape[1],))
        if activations[l] is not None and not (isinstance(activations[l], str)
                                               and activations[l] == "relu"):
            raise ValueError(f"activations[{l}] must be None or 'relu', got {activations[l]!r}")
        out = _output(f"outs[{l}]", None if outs is None else outs[l],
                      (x.shape[0], w.shape[1]), x.dtype)
        layers.append((w, b, activations[l], out))
        features = w.shape[1]
    # a given buffer shares no memory with an input or another layer's output
    for l, (_, _, _, out) in enumerate(layers):
        if outs is not None and outs[l] is not None:
            _refuse_overlap(f"outs[{l}]", out, ("x", x),
                            *[(f"{kind}[{j}]", array) for j, (w, b, _, _) in enumerate(layers)
                              for kind, array in (("weights", w), ("biases", b))],
                            *[(f"outs[{j}]", other) for j, (_, _, _, other) in enumerate(layers)
                              if j != l])

    h, results = x, []
    for w, b, activation, out in layers:
        h = linear_forward(h, w, b, out, activation=activation)
        results.append(h)
    return tuple(results)


def linear_backward(grad_out, x, w, grad_w, grad_b, grad_x=None, *, compute_grad_x=True,
                    accumulate=True):
    """Backward pass of ``z = x @ w + b``: accumulate the parameter gradients, return dL/dx.

    With ``g = dL/dz``::

        grad_w += x.T @ g          (D, M)
        grad_b += g.sum(axis=0)    (M,)
        grad_x  = g @ w.T          (N, D)

    The parameter gradients are *added to* (as ``.grad`` in PyTorch), the input gradient
    is overwritten. With ``accumulate=False`` the parameter gradients are overwritten too
    (``grad_w = x.T @ g``: what a zeroed gradient plus one backward pass holds, without the
    pass that zeroes it; their old contents are never read).

    Parameters
    ----------
    grad_out : ndarray (N, M)
    x : ndarray (N, D)
        The forward input.
    w : ndarray (D, M)
    grad_w : ndarray (D, M)
        Accumulated in place.
    grad_b : ndarray (M,) or None
        Accumulated in place; None when the layer has no bias.
    grad_x : ndarray (N, D), optional
        Written in place when given.
    compute_grad_x : bool
        False for the first layer, whose input needs no gradient.
    accumulate : bool
        False: overwrite grad_w and grad_b instead of adding to them.

    Returns
    -------
    grad_x : ndarray (N, D), or None when ``compute_grad_x`` is false
    """
    # g (N, M), x (N, D), w (D, M) -> grad_w (D, M) +=, grad_b (M,) +=, grad_x (N, D)
    grad_out = _as_float_array("grad_out", grad_out, ndim=2)
    x = _as_float_array("x", x, ndim=2)
    w = _as_float_array("w", w, ndim=2)
    _check_same_dtype("x", x, grad_out.dtype)
    _check_same_dtype("w", w, grad_out.dtype)
    n, m = grad_out.shape
    if x.shape[0] != n:
        raise ValueError(f"x has shape {x.shape}, expected ({n}, D) for grad_out of shape {grad_out.shape}")
    d = x.shape[1]
    _check_same_shape("w", w, (d, m))
    _check_buffer("grad_w", grad_w, (d, m), grad_out.dtype)
    if grad_b is not None:
        _check_buffer("grad_b", grad_b, (m,), grad_out.dtype)
    if compute_grad_x:
        grad_x = _output("grad_x", grad_x, (n, d), grad_out.dtype)
    _refuse_overlap("grad_w", grad_w, ("grad_out", grad_out), ("x", x), ("w", w),
                    ("grad_b", grad_b))
    if grad_b is not None:
        _refuse_overlap("grad_b", grad_b, ("grad_out", grad_out), ("x", x), ("w", w))
    if compute_grad_x:
        _refuse_overlap("grad_x", grad_x, ("grad_out", grad_out), ("x", x), ("w", w),
                        ("grad_w", grad_w), ("grad_b", grad_b))

    if not accumulate:
        grad_w[...] = 0
        if grad_b is not None:
            grad_b[...] = 0
    grad_w += x.T @ grad_out
    if grad_b is not None:
        grad_b += grad_out.sum(axis=0)
    if not compute_grad_x:
        return None
    grad_x[...] = grad_out @ w.T
    return grad_x


def linear_chain_backward(grad_out, xs, weights, grads_w, grads_b, masks, grad_x=None, *,
                          compute_grad_x=True, accumulate=True, work=None, check_finite=False):
    """The backward of `linear_chain_forward` (a stack of `relu_backward` and
    `linear_backward` calls, from the last layer down)::

        g = grad_out
        for l = L-1, ..., 0:
            g_l = g * (masks[l] > 0)       when layer l's output went through a ReLU
            grads_w[l] += xs[l].T @ g_l    grads_b[l] += g_l.sum(axis=0)
            g = g_l @ weights[l].T         dL/d(xs[l]); for l = 0 the returned grad_x

    Parameters
    ----------
    grad_out : ndarray (N, D_L)
        dL/d(the last layer's output).
    xs : sequence of L ndarrays, xs[l] (N, D_l)
        Each layer's forward input.
    weights : sequence of L ndarrays, weights[l] (D_l, D_(l+1))
    grads_w : sequence of L buffers of the weights' shapes
        Accumulated in place.
    grads_b : sequence of L buffers (D_(l+1),) or None
        Accumulated in place.
    masks : sequence of L entries, None or an ndarray (N, D_(l+1))
        What layer l's ReLU keeps (its output); None when layer l has no ReLU.
    grad_x : ndarray (N, D_0), optional
        Written in place when given (and compute_grad_x).
    compute_grad_x : bool
        False: the first layer's input gradient is not computed (None is returned).
    accumulate : bool, or a sequence of L bools
        False (for layer l): overwrite grads_w[l] and grads_b[l] instead of adding to them.
    work : None, or a sequence of L buffers (N, D_(l+1)) (or None)
        Where g_l is written.
    check_finite : bool
        Also return, per layer, whether its gradients hold no NaN/inf.

    Returns
    -------
    (grad_x, gs) : grad_x (N, D_0) or None, and the tuple (g_0, ..., g_(L-1)); g_(L-1) is
        grad_out itself when the last layer has no ReLU.
    (grad_x, gs, finite) with check_finite: finite[l] is the pair (grads_w[l] is all finite,
        grads_b[l] is all finite or None).
    """
    grad_out = _as_float_array("grad_out", grad_out, ndim=2)
    xs, weights = _sequence("xs", xs), _sequence("weights", weights)
    grads_w, grads_b = _sequence("grads_w", grads_w), _sequence("grads_b", grads_b)
    masks = _sequence("masks", masks)
    work = None if work is None else _sequence("work", work)
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
        accumulate = _sequence("accumulate", accumulate)
        if len(accumulate) != n_layers:
            raise ValueError(f"accumulate has {len(accumulate)} entries for {n_layers} weights")
        for l, flag in enumerate(accumulate):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"accumulate[{l}] must be True or False, got {flag!r}")
    # every argument is checked before anything is written
    n, dtype = grad_out.shape[0], grad_out.dtype
    layers, reads, writes = [], [("grad_out", grad_out)], []
    for l in range(n_layers):
        w = _as_float_array(f"weights[{l}]", weights[l], ndim=2)
        _check_same_dtype(f"weights[{l}]", w, dtype)
        if l > 0 and w.shape[0] != layers[-1][0].shape[1]:
            above = layers[-1][0].shape[1]
            raise ValueError(f"weights[{l}] has shape {w.shape}; layer {l - 1} has {above} "
                             f"outputs, so it must be ({above}, M)")
        x = _as_float_array(f"xs[{l}]", xs[l], ndim=2)
        _check_same_dtype(f"xs[{l}]", x, dtype)
        _check_same_shape(f"xs[{l}]", x, (n, w.shape[0]))
        _check_buffer(f"grads_w[{l}]", grads_w[l], w.shape, dtype)
        if grads_b[l] is not None:
            _check_buffer(f"grads_b[{l}]", grads_b[l], (w.shape[1],), dtype)
        mask = masks[l]
        if mask is not None:
            mask = _as_float_array(f"masks[{l}]", mask, ndim=2)
            _check_same_dtype(f"masks[{l}]", mask, dtype)
            _check_same_shape(f"masks[{l}]", mask, (n, w.shape[1]))
        layers.append((w, x, mask))
        reads += [(f"weights[{l}]", w), (f"xs[{l}]", x), (f"masks[{l}]", mask)]
        writes += [(f"grads_w[{l}]", grads_w[l]), (f"grads_b[{l}]", grads_b[l])]
    if grad_out.shape[1] != layers[-1][0].shape[1]:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected ({n}, "
                         f"{layers[-1][0].shape[1]}) (the last layer's output)")
    gs = []
    for l, (w, _, mask) in enumerate(layers):
        if l == n_layers - 1 and mask is None:
            gs.append(grad_out)
            continue
        given = work is not None and work[l] is not None
        gs.append(_output(f"work[{l}]", work[l] if given else None, (n, w.shape[1]), dtype))
        if given:
            writes.append((f"work[{l}]", gs[l]))
    if compute_grad_x:
        given = grad_x is not None
        grad_x = _output("grad_x", grad_x, (n, layers[0][0].shape[0]), dtype)
        if given:
            writes.append(("grad_x", grad_x))
    else:
        grad_x = None
    for i, (name, buf) in enumerate(writes):
        if buf is not None:
            _refuse_overlap(name, buf, *reads, *[other for j, other in enumerate(writes)
                                                 if j != i])

    g = grad_out
    for l in range(n_layers - 1, -1, -1):
        w, x, mask = layers[l]
        if mask is not None:
            g = relu_backward(g, mask, out=gs[l])      # the ReLU's backward first
        elif g is not gs[l]:
            gs[l][...] = g
        g = linear_backward(gs[l], x, w, grads_w[l], grads_b[l], compute_grad_x=compute_grad_x
                            or l > 0, accumulate=accumulate[l])
    if grad_x is not None:
        grad_x[...] = g
    if not check_finite:
        return grad_x, tuple(gs)
    finite = tuple((bool(np.isfinite(grads_w[l]).all()),
                    grads_b[l] is None or bool(np.isfinite(grads_b[l]).all()))
                   for l in range(n_layers))
    return grad_x, tuple(gs), finite


# --------------------------------------------------------------------------------------
# Activations: forward, then its backward right below
# --------------------------------------------------------------------------------------

def relu_forward(x, out=None):
    """Rectified linear unit, ``out = max(x, 0)``, elementwise.

    Parameters
    ----------
    x : ndarray, any shape
    out : ndarray of x's shape, optional

    Returns
    -------
    out : ndarray of x's shape
    """
    # x (...) -> out (...)
    x = _elementwise_args("x", x)
    out = _output("out", out, x.shape, x.dtype)
    out[...] = np.maximum(x, 0)
    return out


def relu_backward(grad_out, x, out=None):
    """Gradient of ReLU, ``out = grad_out * (x > 0)``.

    The derivative is 1 where the input was positive and 0 elsewhere (0 at x == 0 too).

    Parameters
    ----------
    grad_out : ndarray, any shape
    x : ndarray of grad_out's shape
        The forward input.
    out : ndarray, optional

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), x (...) -> out (...)
    grad_out, x = _elementwise_args("grad_out", grad_out, "x", x)
    out = _output("out", out, x.shape, x.dtype)
    out[...] = grad_out * (x > 0)
    return out


def leaky_relu_forward(x, negative_slope=0.01, out=None):
    """Leaky ReLU, ``out = x if x > 0 else negative_slope * x``, elementwise.

    Parameters
    ----------
    x : ndarray, any shape
    negative_slope : float
    out : ndarray, optional

    Returns
    -------
    out : ndarray of x's shape
    """
    # x (...) -> out (...)
    x = _elementwise_args("x", x)
    slope = _check_scalar("negative_slope", negative_slope)
    out = _output("out", out, x.shape, x.dtype)
    out[...] = np.where(x > 0, x, slope * x)
    return out


def leaky_relu_backward(grad_out, x, negative_slope=0.01, out=None):
    """Gradient of leaky ReLU, ``out = grad_out * (1 if x > 0 else negative_slope)``.

    Parameters
    ----------
    grad_out : ndarray, any shape
    x : ndarray of grad_out's shape
        The forward input.
    negative_slope : float
    out : ndarray, optional

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), x (...) -> out (...)
    grad_out, x = _elementwise_args("grad_out", grad_out, "x", x)
    slope = _check_scalar("negative_slope", negative_slope)
    out = _output("out", out, x.shape, x.dtype)
    out[...] = np.where(x > 0, grad_out, slope * grad_out)
    return out


def sigmoid_forward(x, out=None):
    """Logistic sigmoid, ``out = 1 / (1 + exp(-x))``, elementwise.

    Written so that no exponential can overflow: with ``e = exp(-|x|)`` (always in (0, 1]),
    ``sigmoid(x) = 1 / (1 + e)`` for x >= 0 and ``e / (1 + e)`` for x < 0.

    Parameters
    ----------
    x : ndarray, any shape
    out : ndarray, optional

    Returns
    -------
    out : ndarray of x's shape, values in [0, 1]
    """
    # x (...) -> out (...)
    x = _elementwise_args("x", x)
    out = _output("out", out, x.shape, x.dtype)
    e = np.exp(-np.abs(x))
    out[...] = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return out


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

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), y (...) -> out (...)
    grad_out, y = _elementwise_args("grad_out", grad_out, "y", y)
    out = _output("out", out, y.shape, y.dtype)
    out[...] = grad_out * y * (1 - y)
    return out


def tanh_forward(x, out=None):
    """Hyperbolic tangent, ``out = tanh(x)``, elementwise.

    Parameters
    ----------
    x : ndarray, any shape
    out : ndarray, optional

    Returns
    -------
    out : ndarray of x's shape, values in [-1, 1]
    """
    # x (...) -> out (...)
    x = _elementwise_args("x", x)
    out = _output("out", out, x.shape, x.dtype)
    out[...] = np.tanh(x)
    return out


def tanh_backward(grad_out, y, out=None):
    """Gradient of tanh from its output: ``out = grad_out * (1 - y**2)``.

    Parameters
    ----------
    grad_out : ndarray, any shape
    y : ndarray of grad_out's shape
        The forward output, ``tanh(x)``.
    out : ndarray, optional

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), y (...) -> out (...)
    grad_out, y = _elementwise_args("grad_out", grad_out, "y", y)
    out = _output("out", out, y.shape, y.dtype)
    out[...] = grad_out * (1 - y * y)
    return out


def softmax_forward(x, out=None):
    """Softmax of each row, ``out[i, j] = exp(x[i, j]) / sum_k exp(x[i, k])``.

    Subtracting the row maximum first changes nothing mathematically (it cancels between
    numerator and denominator) but keeps every exponential in (0, 1]: no overflow.

    Parameters
    ----------
    x : ndarray (N, C)
        One row of C scores per sample.
    out : ndarray (N, C), optional

    Returns
    -------
    out : ndarray (N, C), each row sums to 1
    """
    # x (N, C) -> out (N, C)
    x = _as_float_array("x", x, ndim=2)
    out = _output("out", out, x.shape, x.dtype)
    if x.size == 0:                            # no row has a maximum; nothing to compute
        return out
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out[...] = e / e.sum(axis=1, keepdims=True)
    return out


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

    Returns
    -------
    out : ndarray (N, C), dL/dx
    """
    # grad_out (N, C), y (N, C) -> out (N, C)
    grad_out = _as_float_array("grad_out", grad_out, ndim=2)
    y = _as_float_array("y", y, ndim=2)
    _check_same_dtype("y", y, grad_out.dtype)
    _check_same_shape("y", y, grad_out.shape)
    out = _output("out", out, y.shape, y.dtype)
    out[...] = y * (grad_out - np.sum(grad_out * y, axis=1, keepdims=True))
    return out


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

    Returns
    -------
    out : ndarray of x's shape
    """
    # x (...), mask (...) -> out (...)
    x = _as_float_array("x", x)
    mask = _as_mask("mask", mask, x.shape)
    scale = _check_scalar("scale", scale)
    out = _output("out", out, x.shape, x.dtype)
    out[...] = x * mask * scale
    return out


def dropout_backward(grad_out, mask, scale, out=None):
    """Gradient of dropout: the same mask and scale, ``out = grad_out * mask * scale``.

    Parameters
    ----------
    grad_out : ndarray, any shape
    mask : ndarray of grad_out's shape, uint8 or bool
        The mask of the forward pass.
    scale : float
    out : ndarray, optional

    Returns
    -------
    out : ndarray, dL/dx
    """
    # grad_out (...), mask (...) -> out (...)
    grad_out = _as_float_array("grad_out", grad_out)
    mask = _as_mask("mask", mask, grad_out.shape)
    scale = _check_scalar("scale", scale)
    out = _output("out", out, grad_out.shape, grad_out.dtype)
    out[...] = grad_out * mask * scale
    return out


# --------------------------------------------------------------------------------------
# Losses: the mean loss over the batch and its gradient, in one call
# --------------------------------------------------------------------------------------

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

    Returns
    -------
    loss : float
    grad : ndarray (N, C)
    """
    # logits (N, C), labels (N,) -> loss (), grad (N, C)
    logits = _as_float_array("logits", logits, ndim=2)
    n, c = logits.shape
    _check_not_empty("logits", logits, n)
    labels = _as_labels("labels", labels, n, c)
    grad = _output("grad", grad, logits.shape, logits.dtype)

    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)   # each row's max becomes 0
    e = np.exp(shifted)
    sum_e = e.sum(axis=1)
    loss = np.mean(np.log(sum_e) - shifted[rows, labels], dtype=np.float64)
    grad[...] = e / sum_e[:, None]                          # softmax
    grad[rows, labels] -= 1                                 # - onehot
    grad /= n
    return float(loss), grad


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

    Returns
    -------
    loss : float
    grad : ndarray of pred's shape
    """
    # pred (...), target (...) -> loss (), grad (...)
    pred, target = _elementwise_args("pred", pred, "target", target)
    _check_not_empty("pred", pred, pred.size)
    grad = _output("grad", grad, pred.shape, pred.dtype)

    diff = pred - target
    loss = np.mean(diff * diff, dtype=np.float64)
    grad[...] = 2 * diff / pred.size
    return float(loss), grad


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

    Returns
    -------
    loss : float
    grad : ndarray of logits' shape
    """
    # logits (...), target (...) -> loss (), grad (...)
    z, t = _elementwise_args("logits", logits, "target", target)
    _check_not_empty("logits", z, z.size)
    grad = _output("grad", grad, z.shape, z.dtype)

    losses = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    loss = np.mean(losses, dtype=np.float64)
    grad[...] = (sigmoid_forward(z) - t) / z.size
    return float(loss), grad


# --------------------------------------------------------------------------------------
# Convolution and max pooling, NCHW
# --------------------------------------------------------------------------------------

def _windows(x, kernel_hw, stride):
    """Every (KH, KW) window of x (N, C, H, W) at the strided positions: (N, C, OH, OW, KH, KW).

    A read-only view (no copy): windows[n, c, i, j] is x[n, c, i*sh : i*sh+KH, j*sw : j*sw+KW].
    """
    view = np.lib.stride_tricks.sliding_window_view(x, kernel_hw, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1]]


def conv2d_forward(x, w, b, out=None, *, stride=1, padding=0):
    """2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``), NCHW.

    ::

        out[n, o, i, j] = b[o] + sum_{c, p, q} w[o, c, p, q] * xpad[n, c, i*sh + p, j*sw + q]

    where ``xpad`` is x with ``padding`` zeros around each plane, and
    ``OH = (H + 2*ph - KH) // sh + 1`` (OW likewise).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (O, C, KH, KW)
        One (C, KH, KW) filter per output channel.
    b : ndarray (O,) or None
    out : ndarray (N, O, OH, OW), optional
    stride : int or (int, int), >= 1
    padding : int or (int, int), >= 0

    Returns
    -------
    out : ndarray (N, O, OH, OW)
    """
    # x (N, C, H, W) * w (O, C, KH, KW) + b (O,) -> out (N, O, OH, OW)
    x, w, stride, (ph, pw), out_hw = _conv_args(x, w, stride, padding)
    if b is not None:
        b = _as_float_array("b", b, ndim=1)
        _check_same_dtype("b", b, x.dtype)
        _check_same_shape("b", b, (w.shape[0],))
    out = _output("out", out, (x.shape[0], w.shape[0]) + out_hw, x.dtype)

    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = _windows(xpad, w.shape[2:], stride)                   # (N, C, OH, OW, KH, KW)
    z = np.einsum("nchwpq,ocpq->nohw", windows, w, optimize=True)  # one dot per window
    if b is not None:
        z += b[:, None, None]                                        # one bias per channel
    out[...] = z
    return out


def conv2d_backward(grad_out, x, w, grad_w, grad_b, grad_x=None, *, stride=1, padding=0,
                    compute_grad_x=True):
    """Backward pass of ``conv2d_forward``: accumulate the parameter gradients, return dL/dx.

    With ``g = dL/dout`` (N, O, OH, OW): the filter ``w[o]`` receives ``g[n, o, i, j]``
    times the window it met, and that window receives ``g[n, o, i, j] * w[o]``::

        grad_w[o, c, p, q] += sum_{n, i, j} g[n, o, i, j] * xpad[n, c, i*sh + p, j*sw + q]
        grad_b[o]          += sum_{n, i, j} g[n, o, i, j]
        grad_xpad[n, c, i*sh + p, j*sw + q] += g[n, o, i, j] * w[o, c, p, q]   (all n, o, i, j, p, q)
        grad_x = grad_xpad without its padding

    Parameters
    ----------
    grad_out : ndarray (N, O, OH, OW)
    x : ndarray (N, C, H, W)
        The forward input.
    w : ndarray (O, C, KH, KW)
    grad_w : ndarray (O, C, KH, KW)
        Accumulated in place.
    grad_b : ndarray (O,) or None
        Accumulated in place; None when the layer has no bias.
    grad_x : ndarray (N, C, H, W), optional
    stride, padding : as in ``conv2d_forward``
    compute_grad_x : bool

    Returns
    -------
    grad_x : ndarray (N, C, H, W), or None when ``compute_grad_x`` is false
    """
    # g (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW) -> grad_w +=, grad_b +=, grad_x
    x, w, (sh, sw), (ph, pw), (oh, ow) = _conv_args(x, w, stride, padding)
    grad_out = _as_float_array("grad_out", grad_out)
    _check_same_dtype("grad_out", grad_out, x.dtype)
    _check_same_shape("grad_out", grad_out, (x.shape[0], w.shape[0], oh, ow))
    _check_buffer("grad_w", grad_w, w.shape, x.dtype)
    if grad_b is not None:
        _check_buffer("grad_b", grad_b, (w.shape[0],), x.dtype)
    if compute_grad_x:
        grad_x = _output("grad_x", grad_x, x.shape, x.dtype)

    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = _windows(xpad, w.shape[2:], (sh, sw))
    grad_w += np.einsum("nohw,nchwpq->ocpq", grad_out, windows, optimize=True)
    if grad_b is not None:
        grad_b += grad_out.sum(axis=(0, 2, 3))
    if not compute_grad_x:
        return None
    # Kernel tap (p, q) saw the pixels xpad[:, :, p::sh, q::sw] (OH x OW of them): each gets
    # back g times that tap's weights, summed over the output channels.
    grad_xpad = np.zeros(xpad.shape, dtype=x.dtype)
    for p, q in np.ndindex(*w.shape[2:]):
        grad_xpad[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += np.einsum(
            "nohw,oc->nchw", grad_out, w[:, :, p, q], optimize=True)
    grad_x[...] = grad_xpad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return grad_x


def maxpool2d_forward(x, kernel_size, stride=None, out=None, indices=None):
    """2-D max pooling, NCHW, no padding, floor mode (PyTorch's defaults).

    ::

        out[n, c, i, j] = max_{p < KH, q < KW} x[n, c, i*sh + p, j*sw + q]

    with ``OH = (H - KH) // sh + 1`` (OW likewise). ``indices`` records where each maximum
    was, as the flat position ``ih * W + iw`` within its (H, W) plane (as PyTorch's
    ``return_indices``): the backward pass routes the gradient there. Ties go to the first
    maximum in row-major window order; a NaN counts as the maximum.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size : int or (int, int), >= 1
    stride : int or (int, int), >= 1; default ``kernel_size``
    out : ndarray (N, C, OH, OW), optional
    indices : ndarray (N, C, OH, OW) of int64, optional

    Returns
    -------
    out : ndarray (N, C, OH, OW)
    indices : ndarray (N, C, OH, OW), int64
    """
    # x (N, C, H, W) -> out (N, C, OH, OW), indices (N, C, OH, OW)
    x = _as_float_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    kh, kw = _pair("kernel_size", kernel_size, 1)
    sh, sw = _pair("stride", kernel_size if stride is None else stride, 1)
    n, c, h, w = x.shape
    if h < kh or w < kw:
        raise ValueError(f"x: input {h}x{w} is smaller than the pooling window {kh}x{kw}")
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = _output("out", out, (n, c, oh, ow), x.dtype)
    indices = _output("indices", indices, (n, c, oh, ow), np.dtype(np.int64))

    windows = _windows(x, (kh, kw), (sh, sw)).reshape(n, c, oh, ow, kh * kw)
    best = np.argmax(windows, axis=-1)            # first maximum (or first NaN) per window
    out[...] = np.take_along_axis(windows, best[..., None], axis=-1)[..., 0]
    rows = np.arange(oh)[:, None] * sh + best // kw          # where in x the maximum was
    cols = np.arange(ow)[None, :] * sw + best % kw
    indices[...] = rows * w + cols
    return out, indices


def maxpool2d_backward(grad_out, indices, x_shape, out=None):
    """Backward pass of max pooling: each window's gradient goes to its maximum.

    ::

        grad_x = zeros(x_shape);  grad_x[n, c].flat[indices[n, c, i, j]] += grad_out[n, c, i, j]

    (added, not assigned: overlapping windows may share a maximum).

    Parameters
    ----------
    grad_out : ndarray (N, C, OH, OW)
    indices : ndarray (N, C, OH, OW), int64, from ``maxpool2d_forward``
    x_shape : tuple (N, C, H, W)
        The forward input's shape.
    out : ndarray of x_shape, optional

    Returns
    -------
    grad_x : ndarray of x_shape
    """
    # grad_out (N, C, OH, OW), indices (N, C, OH, OW) -> grad_x (N, C, H, W)
    grad_out = _as_float_array("grad_out", grad_out)
    if grad_out.ndim != 4:
        raise ValueError(f"grad_out must be 4-D (N, C, OH, OW), got shape {grad_out.shape}")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype != np.int64:
        raise TypeError(f"indices must be int64 (from maxpool2d_forward), got {indices.dtype}")
    _check_same_shape("indices", indices, grad_out.shape)
    try:
        x_shape = tuple(int(d) for d in x_shape)
    except TypeError:
        raise TypeError(f"x_shape must be a tuple of 4 ints, got {x_shape!r}") from None
    if len(x_shape) != 4 or x_shape[:2] != grad_out.shape[:2]:
        raise ValueError(f"x_shape {x_shape} does not match grad_out's {grad_out.shape}")
    n, c, h, w = x_shape
    if indices.size and (indices.min() < 0 or indices.max() >= h * w):
        raise ValueError(f"indices must be in [0, {h * w}) for x_shape {x_shape}")
    out = _output("out", out, x_shape, grad_out.dtype)

    planes = out.reshape(n, c, h * w)             # a view: writing it writes out
    planes[...] = 0
    batch, channel = np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None]
    np.add.at(planes, (batch, channel, indices), grad_out)   # add.at: repeated indices add up
    return out


# --------------------------------------------------------------------------------------
# Batch normalisation (torch.nn.BatchNorm1d / BatchNorm2d)
# --------------------------------------------------------------------------------------

def _channel_axes(x):
    """The axes a per-channel statistic reduces over, and the (C,) -> broadcastable reshape."""
    if x.ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {x.shape}")
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

    Returns
    -------
    out, save_mean, save_invstd
    """
    # x (N, C[, H, W]), gamma/beta/running stats (C,) -> out (x's shape), mean (C,), invstd (C,)
    x = _as_float_array("x", x)
    axes, channel_shape = _channel_axes(x)
    c = x.shape[1]
    gamma = _as_float_array("gamma", gamma, ndim=1)
    beta = _as_float_array("beta", beta, ndim=1)
    for name, arr in (("gamma", gamma), ("beta", beta)):
        _check_same_dtype(name, arr, x.dtype)
        _check_same_shape(name, arr, (c,))
    _check_buffer("running_mean", running_mean, (c,), x.dtype)
    _check_buffer("running_var", running_var, (c,), x.dtype)
    momentum = _check_scalar("momentum", momentum, low=0.0, high=1.0)
    eps = _check_scalar("eps", eps, low=0.0, low_open=True)
    m = x.size // c if c else 0                      # values per channel
    if training and m <= 1 and c > 0:
        raise ValueError(f"x: batch normalisation in training mode needs more than 1 value "
                         f"per channel, got shape {x.shape}")
    out = _output("out", out, x.shape, x.dtype)
    save_mean = _output("save_mean", save_mean, (c,), x.dtype)
    save_invstd = _output("save_invstd", save_invstd, (c,), x.dtype)
    if c == 0:
        return out, save_mean, save_invstd

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
    return out, save_mean, save_invstd


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

    Returns
    -------
    grad_x : ndarray of x's shape, or None when ``compute_grad_x`` is false
    """
    # g (N, C[, H, W]), x (same), gamma/mean/invstd (C,) -> grad_gamma +=, grad_beta +=, grad_x
    grad_out = _as_float_array("grad_out", grad_out)
    x = _as_float_array("x", x)
    _check_same_dtype("x", x, grad_out.dtype)
    _check_same_shape("x", x, grad_out.shape)
    axes, channel_shape = _channel_axes(x)
    c = x.shape[1]
    per_channel = []
    for name, arr in (("gamma", gamma), ("save_mean", save_mean), ("save_invstd", save_invstd)):
        arr = _as_float_array(name, arr, ndim=1)
        _check_same_dtype(name, arr, x.dtype)
        _check_same_shape(name, arr, (c,))
        per_channel.append(arr.reshape(channel_shape))    # broadcasts along x's channel axis
    gamma, mean, invstd = per_channel
    _check_buffer("grad_gamma", grad_gamma, (c,), x.dtype)
    _check_buffer("grad_beta", grad_beta, (c,), x.dtype)
    if compute_grad_x:
        grad_x = _output("grad_x", grad_x, x.shape, x.dtype)

    m = x.size // c if c else 0
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
    return grad_x


# --------------------------------------------------------------------------------------
# Optimizer steps: in place, as torch.optim
# --------------------------------------------------------------------------------------

def sgd_update(param, grad, lr, *, momentum=0.0, velocity=None, weight_decay=0.0,
               nesterov=False):
    """One step of stochastic gradient descent, in place (``torch.optim.SGD``, dampening 0).

    ::

        d = grad + weight_decay * param
        if momentum:
            velocity = momentum * velocity + d
            d = d + momentum * velocity   if nesterov else   velocity
        param -= lr * d

    Parameters
    ----------
    param : ndarray
        Updated in place.
    grad : ndarray of param's shape and dtype
        Not modified.
    lr, momentum, weight_decay : float, >= 0
    velocity : ndarray of param's shape and dtype
        The momentum buffer, zeros before the first step, owned by the caller and updated
        in place. Required when ``momentum != 0``.
    nesterov : bool
        Needs ``momentum > 0``.
    """
    # param (...), grad (...), velocity (...) -> param, velocity updated in place
    param = _as_param("param", param)
    grad = _as_float_array("grad", grad)
    _check_same_dtype("grad", grad, param.dtype)
    _check_same_shape("grad", grad, param.shape)
    lr = _check_scalar("lr", lr, low=0.0)
    momentum = _check_scalar("momentum", momentum, low=0.0)
    weight_decay = _check_scalar("weight_decay", weight_decay, low=0.0)
    if nesterov and momentum == 0:
        raise ValueError("nesterov momentum requires momentum > 0")
    if momentum != 0:
        if velocity is None:
            raise ValueError("velocity (the momentum buffer) is required when momentum != 0")
        _check_buffer("velocity", velocity, param.shape, param.dtype)

    d = grad + weight_decay * param if weight_decay != 0 else grad
    if momentum != 0:
        velocity[...] = momentum * velocity + d
        d = d + momentum * velocity if nesterov else velocity
    param -= lr * d


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0, *,
                decoupled=False):
    """One Adam step, in place (``torch.optim.Adam``, or ``AdamW`` when ``decoupled``).

    ::

        if decoupled: param *= 1 - lr * weight_decay;  g = grad       (AdamW)
        else:         g = grad + weight_decay * param                   (Adam, L2)
        m = beta1 * m + (1 - beta1) * g                 first moment
        v = beta2 * v + (1 - beta2) * g * g             second moment
        bc1 = 1 - beta1**step;  bc2 = 1 - beta2**step   bias corrections
        param -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    Parameters
    ----------
    param : ndarray
        Updated in place.
    grad : ndarray of param's shape and dtype
        Not modified.
    m, v : ndarray of param's shape and dtype
        The moment estimates, zeros before the first step, updated in place.
    step : int
        The number of this step, counting from 1.
    lr, eps, weight_decay : float, >= 0
    beta1, beta2 : float, in [0, 1)
    decoupled : bool
        Decoupled weight decay (AdamW) instead of an L2 term in the gradient.
    """
    # param (...), grad (...), m (...), v (...) -> param, m, v updated in place
    param = _as_param("param", param)
    grad = _as_float_array("grad", grad)
    _check_same_dtype("grad", grad, param.dtype)
    _check_same_shape("grad", grad, param.shape)
    _check_buffer("m", m, param.shape, param.dtype)
    _check_buffer("v", v, param.shape, param.dtype)
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"Invalid step: {step} (must be >= 1, counting this update)")
    lr = _check_scalar("lr", lr, low=0.0)
    beta1 = _check_scalar("beta1", beta1, low=0.0, high=1.0, high_open=True)
    beta2 = _check_scalar("beta2", beta2, low=0.0, high=1.0, high_open=True)
    eps = _check_scalar("eps", eps, low=0.0)
    weight_decay = _check_scalar("weight_decay", weight_decay, low=0.0)

    if decoupled:
        param *= 1 - lr * weight_decay
        g = grad
    else:
        g = grad + weight_decay * param if weight_decay != 0 else grad
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    param -= (lr / bias_correction1) * m / (np.sqrt(v) / math.sqrt(bias_correction2) + eps)


# --------------------------------------------------------------------------------------
# Runtime helpers: NumPy decides its own threads and instructions; these keep the API.
# --------------------------------------------------------------------------------------

_num_threads = 1


def _step_lists(params, grads, extra):
    """Check the lists of a whole-model step: as many arrays in each, one dtype."""
    params, grads = list(params), list(grads)
    if not params:
        raise ValueError("params is empty")
    if len(grads) != len(params):
        raise ValueError(f"grads has {len(grads)} arrays, params {len(params)}")
    for name, arrays in extra.items():
        if arrays is not None and len(arrays) != len(params):
            raise ValueError(f"{name} has {len(arrays)} arrays, params {len(params)}")
    if not isinstance(params[0], np.ndarray):
        raise TypeError(f"params[0] must be a numpy.ndarray, got {type(params[0]).__name__}")
    if params[0].dtype not in _FLOATS:
        raise TypeError(f"params[0] has dtype {params[0].dtype}; the kernels take float32 or "
                        f"float64")
    dtype = params[0].dtype
    for i, p in enumerate(params):      # every array checked before any is updated
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{i}] must be a numpy.ndarray, got {type(p).__name__}")
        _check_buffer(f"params[{i}]", p, p.shape, dtype)
        g = _as_float_array(f"grads[{i}]", grads[i])
        _check_same_dtype(f"grads[{i}]", g, dtype)
        _check_same_shape(f"grads[{i}]", g, p.shape)
        for name, arrays in extra.items():
            if arrays is not None:
                _check_buffer(f"{name}[{i}]", arrays[i], p.shape, dtype)
    return params, grads


def sgd_step(params, grads, velocities, lr, *, momentum=0.0, weight_decay=0.0,
             nesterov=False, check_finite=False):
    """A whole model's SGD step: `sgd_update` on each parameter of the lists.

    ``params[i]``, ``grads[i]``, ``velocities[i]`` belong to parameter i (velocities None
    when momentum is 0). With ``check_finite`` every gradient is checked first: the index
    of the first one holding NaN/inf is returned and nothing is updated. Returns -1 after
    updating every parameter.
    """
    if momentum and velocities is None:
        raise ValueError("velocities are required when momentum != 0")
    params, grads = _step_lists(params, grads,
                                {"velocities": list(velocities) if momentum else None})
    if check_finite:
        for i, g in enumerate(grads):
            if not all_finite(g):
                return i
    for i, (p, g) in enumerate(zip(params, grads)):
        sgd_update(p, g, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                   velocity=velocities[i] if momentum else None)
    return -1


def adam_step(params, grads, ms, vs, step, lr, beta1, beta2, eps, weight_decay=0.0, *,
              decoupled=False, check_finite=False):
    """A whole model's Adam (AdamW) step: `adam_update` on each parameter of the lists, all
    at the same `step`. With ``check_finite`` every gradient is checked first: the index of
    the first one holding NaN/inf is returned and nothing is updated. Returns -1 after
    updating every parameter.
    """
    params, grads = _step_lists(params, grads, {"ms": list(ms), "vs": list(vs)})
    if check_finite:
        for i, g in enumerate(grads):
            if not all_finite(g):
                return i
    for p, g, m, v in zip(params, grads, ms, vs):
        adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=decoupled)
    return -1


def all_finite(x):
    """True when every element of x is finite (no NaN, no +-inf): fit's NaN/inf guard.

    x any shape, float32 or float64 -> bool.
    """
    x = _as_float_array("x", x)
    return bool(np.isfinite(x).all())


def take_rows(x, rows, out=None):
    """The mini-batch ``x[rows]``: ``out[i] = x[rows[i]]``.

    x (N, ...) float32/float64, C-contiguous; rows (B,) int64 in [0, N);
    out (B, ...) of x's dtype, optional.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x has dtype {x.dtype}; the kernels take float32 or float64")
    if x.ndim < 1:
        raise ValueError(f"x must have at least one axis (the samples), got shape {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):
        raise ValueError("x must be C-contiguous and aligned")
    if not isinstance(rows, np.ndarray):
        raise TypeError(f"rows must be a numpy.ndarray, got {type(rows).__name__}")
    if rows.dtype != np.int64:
        raise TypeError(f"rows must be int64, got {rows.dtype}")
    if rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
    out = _output("out", out, (len(rows),) + x.shape[1:], x.dtype)
    if np.may_share_memory(out, x):
        raise ValueError("out overlaps x")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(x)):
        raise ValueError(f"rows must be in [0, {len(x)})")
    out[...] = x[rows]
    return out


def set_num_threads(n):
    """Remember ``n`` (>= 1) as the thread count; NumPy's own threading is unaffected."""
    global _num_threads
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1 or n > 4096:
        raise ValueError(f"n must be in [1, 4096], got {n}")
    _num_threads = int(n)


def get_num_threads():
    """The thread count last set (1 at the start)."""
    return _num_threads


def openmp_enabled():
    """Always False: the reference runs in NumPy, not in OpenMP threads."""
    return False


def cpu_features():
    """Always empty: the reference uses no instruction set of its own."""
    return {}


def gemm_kernel_name(dtype=np.float32):
    """The name of the GEMM behind ``gemm`` for ``dtype``: here always "numpy" (``@``)."""
    return "numpy"
