"""Fuzzing the compiled kernels: thousands of random calls, in a child process.

A seeded random driver builds a valid call of every public function of `cnn_core` (random
shapes, zero-size ones included, dtypes, buffers, hyper-parameters), then breaks zero to
three of its arguments at random: wrong type, dtype, ndim or shape; non-contiguous,
negative-stride, broadcast (zero-stride), Fortran-ordered, unaligned or read-only arrays;
NaN/inf/huge values; out-of-range labels; bad strides and paddings (0, negative, 2**62,
floats, wrong length); wrong `out=` buffers; unknown or missing keywords; ndarray
subclasses whose properties lie (shape, strides, dtype, itemsize, ndim, flags: about the
array itself, or a smaller, other-typed, strided or read-only array told to be the valid
one); a buffer written that is exactly, or one element off, an array the kernel reads or
another buffer (tricky_arrays.py).

Every call must return or raise TypeError, ValueError or MemoryError; anything else is
printed with a reproducer (seed, call number, arguments) and fails the test. Calls left
valid, or only laid out differently in memory (strided, Fortran, broadcast, unaligned,
read-only, a subclass lying about itself, or a buffer overlapping an input), are also run
on the NumPy twin (`cnn_core.reference`): both must return the same values or raise the
same exception, so a kernel that silently computes garbage on an odd layout fails as well. The driver runs in a child process (this file, run as a script,
from a temporary directory so that the checkout's uncompiled `cnn_core/` cannot shadow the
built one) so that a crash — a segfault, an abort, a sanitizer report — fails the test
instead of killing pytest. `tools/sanitize.sh` runs this test under ASan/UBSan.

Huge integer arguments (beyond C's long) and 0-d arrays have their own tests at the end.

    python tests/kernels/test_fuzz.py [seed] [calls]     # the child by hand, e.g. to reproduce
"""
import inspect
import json
import os
import subprocess
import sys
import time
import traceback
import warnings

import numpy as np
import pytest

from tricky_arrays import (OVERLAPS, description, get, lies_about, lying, overlapping, put,
                           shift_for)

HERE = os.path.abspath(__file__)
ALLOWED = (TypeError, ValueError, MemoryError)

# Address space the child may use beyond what it holds after the imports: a call that
# asks for more gets MemoryError instead of swapping the machine (not under ASan, which
# reserves terabytes of shadow memory; tools/sanitize.sh caps its allocations instead).
EXTRA_ADDRESS_SPACE = 1 << 30
MAX_THREADS = 4
CALLS = 12000                              # ~5 s here; ~10 s under tools/sanitize.sh


# ---------------------------------------------------------------------------------------
# Valid calls, one maker per kernel: (rng, dtype) -> {argument: value}

def _dims(rng, count, low=1, high=6):
    """`count` small sizes, now and then a zero."""
    dims = [int(rng.integers(low, high + 1)) for _ in range(count)]
    if count and rng.random() < 0.1:
        dims[int(rng.integers(count))] = 0
    return dims


def _arr(rng, shape, dtype, scale=1.0):
    return np.asarray(scale * rng.standard_normal(shape), dtype=dtype)


def _maybe(rng, p=0.5):
    return rng.random() < p


def _buffer(rng, shape, dtype):
    """An out= buffer of the exact shape, filled with NaN (the kernel must not read it)."""
    return np.full(shape, np.nan, dtype=dtype)


def _big_or_small(rng, small):
    """Mostly `small` elements; sometimes enough to take the threaded paths (2**15 per
    span), sometimes a long thin shape."""
    r = rng.random()
    if r < 0.08:
        return int(rng.integers(70_000, 140_000))
    return small


def make_gemm(rng, dt):
    m, k, n = _dims(rng, 3, 1, 40)
    if rng.random() < 0.1:
        m, k, n = (int(rng.integers(lo, hi)) for lo, hi in ((100, 300), (100, 500), (1, 300)))
    trans_a, trans_b = bool(rng.integers(2)), bool(rng.integers(2))
    kw = dict(a=_arr(rng, (k, m) if trans_a else (m, k), dt),
              b=_arr(rng, (n, k) if trans_b else (k, n), dt),
              trans_a=trans_a, trans_b=trans_b, alpha=float(rng.normal()))
    if _maybe(rng):
        kw["out"] = _arr(rng, (m, n), dt)
        kw["beta"] = float(rng.choice([0.0, 1.0, -0.5]))
        if kw["beta"] == 0:
            kw["out"][...] = np.nan
    return kw


def make_linear_forward(rng, dt):
    n, d, m = _dims(rng, 3, 1, 40)
    kw = dict(x=_arr(rng, (n, d), dt), w=_arr(rng, (d, m), dt),
              b=_arr(rng, (m,), dt) if _maybe(rng, 0.8) else None,
              activation=[None, "relu"][int(rng.integers(2))])
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, (n, m), dt)
    return kw


def make_linear_chain_forward(rng, dt):
    layers = int(rng.integers(1, 5))
    dims = _dims(rng, layers + 2, 1, 30)
    r = rng.random()
    if r < 0.05:                # large enough for the threaded paths: halves of k
        dims = [int(rng.choice([1, 3, 40]))] + [int(v) for v in rng.integers(200, 700, layers + 1)]
    elif r < 0.08:              # slabs along m: a tall batch of narrow layers
        dims = [int(rng.integers(300, 700))] + [int(v) for v in rng.integers(20, 60, layers + 1)]
    elif r < 0.1:               # slabs of the row kernel's columns: one very wide layer
        dims = [int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(2**17, 2**17 + 40))]
        dims += [int(v) for v in rng.integers(1, 4, layers - 1)]
    n, features = dims[0], dims[1:]
    kw = dict(x=_arr(rng, (n, features[0]), dt),
              weights=[_arr(rng, (a, b), dt, 0.1) for a, b in zip(features, features[1:])],
              biases=[_arr(rng, (b,), dt) if _maybe(rng, 0.8) else None for b in features[1:]],
              activations=[[None, "relu"][int(rng.integers(2))] for _ in range(layers)])
    if _maybe(rng, 0.3):
        kw["outs"] = [_buffer(rng, (n, b), dt) if _maybe(rng) else None for b in features[1:]]
    return kw


def make_linear_backward(rng, dt):
    n, d, m = _dims(rng, 3, 1, 30)
    kw = dict(grad_out=_arr(rng, (n, m), dt), x=_arr(rng, (n, d), dt), w=_arr(rng, (d, m), dt),
              grad_w=_arr(rng, (d, m), dt),
              grad_b=_arr(rng, (m,), dt) if _maybe(rng, 0.8) else None,
              compute_grad_x=bool(rng.integers(2)))
    if kw["compute_grad_x"] and _maybe(rng, 0.3):
        kw["grad_x"] = _buffer(rng, (n, d), dt)
    return kw


def make_linear_chain_backward(rng, dt):
    layers = int(rng.integers(1, 5))
    dims = _dims(rng, layers + 2, 1, 30)
    r = rng.random()
    if r < 0.05:                # large enough for the threaded paths: slabs of both products
        dims = [int(rng.choice([1, 3, 40]))] + [int(v) for v in rng.integers(200, 700, layers + 1)]
    elif r < 0.08:              # a tall batch of narrow layers: the weight gradient by halves
        dims = [int(rng.integers(300, 700))] + [int(v) for v in rng.integers(20, 60, layers + 1)]
    n, features = dims[0], dims[1:]
    xs = [_arr(rng, (n, f), dt) for f in features[:-1]]
    # a ReLU's mask is the next layer's input (as in Sequential), or an array of its own
    masks = [xs[l + 1] if l + 1 < layers and _maybe(rng, 0.6) else
             (_arr(rng, (n, features[l + 1]), dt) if _maybe(rng, 0.3) else None)
             for l in range(layers)]
    kw = dict(grad_out=_arr(rng, (n, features[-1]), dt), xs=xs,
              weights=[_arr(rng, (a, b), dt, 0.1) for a, b in zip(features, features[1:])],
              grads_w=[_arr(rng, (a, b), dt) for a, b in zip(features, features[1:])],
              grads_b=[_arr(rng, (b,), dt) if _maybe(rng, 0.8) else None for b in features[1:]],
              masks=masks, compute_grad_x=bool(rng.integers(2)))
    kw["accumulate"] = (bool(rng.integers(2)) if _maybe(rng) else
                        [bool(v) for v in rng.integers(0, 2, layers)])
    if _maybe(rng, 0.3):
        kw["work"] = [_buffer(rng, (n, b), dt) if _maybe(rng) else None for b in features[1:]]
    if kw["compute_grad_x"] and _maybe(rng, 0.3):
        kw["grad_x"] = _buffer(rng, (n, features[0]), dt)
    return kw


def _elementwise_shape(rng):
    ndim = int(rng.integers(0, 5))
    shape = _dims(rng, ndim, 1, 7)
    size = _big_or_small(rng, None)
    if size is not None:
        shape = [size] if rng.random() < 0.5 else [size // 7, 7]
    return tuple(shape)


def _unary_forward(rng, dt, scalar=None):
    shape = _elementwise_shape(rng)
    kw = dict(x=_arr(rng, shape, dt, 3.0))
    if scalar:
        kw[scalar] = float(rng.uniform(0, 0.5))
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, shape, dt)
    return kw


def _unary_backward(rng, dt, saved, scalar=None):
    kw = _unary_forward(rng, dt, scalar)
    x = kw.pop("x")
    kw["grad_out"] = _arr(rng, x.shape, dt)
    kw[saved] = np.asarray(np.tanh(x)) if saved == "y" else x
    return kw


def _add(rng, dt):
    kw = _unary_forward(rng, dt)
    x = kw.pop("x")
    kw["a"], kw["b"] = x, _arr(rng, x.shape, dt)
    return kw


def make_softmax_forward(rng, dt):
    n, c = _dims(rng, 2, 1, 20)
    if rng.random() < 0.05:
        n, c = 3000, 31
    kw = dict(x=_arr(rng, (n, c), dt, 5.0))
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, (n, c), dt)
    return kw


def make_softmax_backward(rng, dt):
    kw = make_softmax_forward(rng, dt)
    x = kw.pop("x")
    e = np.exp(x - x.max(axis=1, keepdims=True)) if x.size else x
    kw["y"] = (e / e.sum(axis=1, keepdims=True)).astype(dt) if x.size else x
    kw["grad_out"] = _arr(rng, x.shape, dt)
    return kw


def _dropout(rng, dt, first):
    shape = _elementwise_shape(rng)
    kw = {first: _arr(rng, shape, dt), "mask": np.asarray(rng.random(shape) < 0.5),
          "scale": float(rng.uniform(1, 3))}
    if _maybe(rng):
        kw["mask"] = kw["mask"].astype(np.uint8)
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, shape, dt)
    return kw


def make_softmax_cross_entropy(rng, dt):
    n, c = _dims(rng, 2, 1, 12)
    n, c = max(n, 1), max(c, 1)
    if rng.random() < 0.05:
        n, c = 4000, 17
    kw = dict(logits=_arr(rng, (n, c), dt, 4.0),
              labels=rng.integers(0, c, size=n).astype(
                  rng.choice(["int64", "int32", "uint8", "int16", "uint64"])))
    if _maybe(rng, 0.3):
        kw["grad"] = _buffer(rng, (n, c), dt)
    return kw


def _pointwise_loss(rng, dt, first, second, probabilities=False):
    shape = _elementwise_shape(rng)
    if 0 in shape or shape == ():
        shape = (3,)
    target = np.asarray(rng.random(shape), dt) if probabilities else _arr(rng, shape, dt)
    kw = {first: _arr(rng, shape, dt, 2.0), second: target}
    if _maybe(rng, 0.3):
        kw["grad"] = _buffer(rng, shape, dt)
    return kw


def make_sgd_update(rng, dt):
    shape = _elementwise_shape(rng)
    kw = dict(param=_arr(rng, shape, dt), grad=_arr(rng, shape, dt), lr=float(rng.uniform(0, 0.5)),
              weight_decay=float(rng.choice([0.0, 1e-3])))
    if _maybe(rng):
        kw["momentum"] = 0.9
        kw["velocity"] = _arr(rng, shape, dt)
        kw["nesterov"] = bool(rng.integers(2))
    return kw


def make_adam_update(rng, dt):
    shape = _elementwise_shape(rng)
    return dict(param=_arr(rng, shape, dt), grad=_arr(rng, shape, dt),
                m=_arr(rng, shape, dt, 0.1), v=np.asarray(np.abs(_arr(rng, shape, dt, 0.1))),
                step=int(rng.integers(1, 1000)), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=float(rng.choice([0.0, 1e-2])), decoupled=bool(rng.integers(2)))


def _step_lists(rng, dt, names):
    """Lists of arrays for a whole-model step: a few parameters of mixed shapes."""
    shapes = [_elementwise_shape(rng) for _ in range(int(rng.integers(1, 4)))]
    lists = {name: [_arr(rng, shape, dt, 0.1) for shape in shapes] for name in names}
    if "vs" in lists:
        lists["vs"] = [np.asarray(np.abs(v)) for v in lists["vs"]]
    return lists


def make_sgd_step(rng, dt):
    kw = dict(_step_lists(rng, dt, ["params", "grads", "velocities"]),
              lr=float(rng.uniform(0, 0.5)), weight_decay=float(rng.choice([0.0, 1e-3])),
              check_finite=bool(rng.integers(2)))
    if _maybe(rng):
        kw["momentum"] = 0.9
        kw["nesterov"] = bool(rng.integers(2))
    return kw


def make_adam_step(rng, dt):
    return dict(_step_lists(rng, dt, ["params", "grads", "ms", "vs"]),
                step=int(rng.integers(1, 1000)), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=float(rng.choice([0.0, 1e-2])), decoupled=bool(rng.integers(2)),
                check_finite=bool(rng.integers(2)))


def make_take_rows(rng, dt):
    n = int(rng.integers(1, 20))
    shape = (n,) + tuple(int(d) for d in rng.integers(1, 6, size=int(rng.integers(0, 3))))
    kw = dict(x=_arr(rng, shape, dt), rows=rng.integers(0, n, size=int(rng.integers(0, 30))))
    if _maybe(rng):
        kw["out"] = _arr(rng, (len(kw["rows"]),) + shape[1:], dt)
    return kw


def _geometry(rng):
    n, c, o = _dims(rng, 3, 1, 4)
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = (int(v) for v in rng.integers(0, 3, size=2))
    h = int(rng.integers(max(1, kh - 2 * ph), 12))
    w = int(rng.integers(max(1, kw - 2 * pw), 12))
    stride = (sh, sw) if _maybe(rng) else sh
    padding = (ph, pw) if _maybe(rng) else ph
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    if h + 2 * ph < kh or w + 2 * pw < kw:
        padding = (kh, kw)
        ph, pw = padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return (n, c, h, w), (o, c, kh, kw), (n, o, oh, ow), stride, padding


def make_conv2d_forward(rng, dt):
    xs, ws, outs, stride, padding = _geometry(rng)
    kw = dict(x=_arr(rng, xs, dt), w=_arr(rng, ws, dt),
              b=_arr(rng, (ws[0],), dt) if _maybe(rng, 0.8) else None,
              stride=stride, padding=padding)
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, outs, dt)
    return kw


def make_conv2d_backward(rng, dt):
    xs, ws, outs, stride, padding = _geometry(rng)
    kw = dict(grad_out=_arr(rng, outs, dt), x=_arr(rng, xs, dt), w=_arr(rng, ws, dt),
              grad_w=_arr(rng, ws, dt),
              grad_b=_arr(rng, (ws[0],), dt) if _maybe(rng, 0.8) else None,
              stride=stride, padding=padding, compute_grad_x=bool(rng.integers(2)))
    if kw["compute_grad_x"] and _maybe(rng, 0.3):
        kw["grad_x"] = _buffer(rng, xs, dt)
    return kw


def _pool_geometry(rng):
    n, c = _dims(rng, 2, 1, 5)
    if rng.random() < 0.05:
        n, c = 8, 40                                    # enough planes for the threads
    k = int(rng.integers(1, 4))
    s = int(rng.integers(1, 4))
    h, w = (int(v) for v in rng.integers(k, 12, size=2))
    return (n, c, h, w), k, s, (n, c, (h - k) // s + 1, (w - k) // s + 1)


def _pool_forward(rng, dt):
    """A pooling forward's x, kernel_size and stride (None now and then), and the output
    shape."""
    xs, k, s, outs = _pool_geometry(rng)
    kw = dict(x=_arr(rng, xs, dt), kernel_size=k, stride=s if _maybe(rng, 0.7) else None)
    if kw["stride"] is None:
        outs = (xs[0], xs[1], (xs[2] - k) // k + 1, (xs[3] - k) // k + 1)
    return kw, outs


def make_maxpool2d_forward(rng, dt):
    kw, outs = _pool_forward(rng, dt)
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, outs, dt)
        kw["indices"] = np.full(outs, -1, np.int64)
    return kw


def make_maxpool2d_backward(rng, dt):
    xs, k, s, outs = _pool_geometry(rng)
    plane = xs[2] * xs[3]
    kw = dict(grad_out=_arr(rng, outs, dt),
              indices=rng.integers(0, plane, size=outs).astype(np.int64),
              x_shape=xs if _maybe(rng) else list(xs))
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, xs, dt)
    return kw


def make_avgpool2d_forward(rng, dt):
    kw, outs = _pool_forward(rng, dt)
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, outs, dt)
    return kw


def make_avgpool2d_backward(rng, dt):
    xs, k, s, outs = _pool_geometry(rng)
    kw = dict(grad_out=_arr(rng, outs, dt), x_shape=xs if _maybe(rng) else list(xs),
              kernel_size=k if _maybe(rng) else (k, k), stride=s)
    if _maybe(rng, 0.3):
        kw["out"] = _buffer(rng, xs, dt)
    return kw


def _bn_shape(rng):
    if _maybe(rng):
        n, c = _dims(rng, 2, 1, 8)
        shape = (max(n, 2), c)
    else:
        n, c, h, w = _dims(rng, 4, 1, 5)
        shape = (max(n, 2), c, h, w)
    if rng.random() < 0.05:
        shape = (16, 8, 16, 16)                         # above the threading threshold
    return shape


def make_batchnorm_forward(rng, dt):
    shape = _bn_shape(rng)
    c = shape[1]
    training = bool(rng.integers(2))
    if training and np.prod(shape) == 0 and c > 0:
        shape = (2, c) + (1,) * (len(shape) - 2)     # training needs 2 values per channel
    kw = dict(x=_arr(rng, shape, dt), gamma=_arr(rng, (c,), dt), beta=_arr(rng, (c,), dt),
              running_mean=np.zeros(c, dt), running_var=np.ones(c, dt),
              training=training, momentum=float(rng.uniform(0, 1)),
              eps=float(rng.choice([1e-5, 1e-3])))
    if _maybe(rng, 0.3):
        kw.update(out=_buffer(rng, shape, dt), save_mean=_buffer(rng, (c,), dt),
                  save_invstd=_buffer(rng, (c,), dt))
    return kw


def make_batchnorm_backward(rng, dt):
    shape = _bn_shape(rng)
    c = shape[1]
    kw = dict(grad_out=_arr(rng, shape, dt), x=_arr(rng, shape, dt), gamma=_arr(rng, (c,), dt),
              save_mean=_arr(rng, (c,), dt), save_invstd=np.abs(_arr(rng, (c,), dt)) + 0.5,
              grad_gamma=np.zeros(c, dt), grad_beta=np.zeros(c, dt),
              training=bool(rng.integers(2)), compute_grad_x=bool(rng.integers(2)))
    if kw["compute_grad_x"] and _maybe(rng, 0.3):
        kw["grad_x"] = _buffer(rng, shape, dt)
    return kw


MAKERS = {
    "gemm": make_gemm,
    "gemm_naive": make_gemm,
    "linear_forward": make_linear_forward,
    "linear_backward": make_linear_backward,
    "linear_chain_forward": make_linear_chain_forward,
    "linear_chain_backward": make_linear_chain_backward,
    "relu_forward": lambda r, d: _unary_forward(r, d),
    "relu_backward": lambda r, d: _unary_backward(r, d, "x"),
    "leaky_relu_forward": lambda r, d: _unary_forward(r, d, "negative_slope"),
    "leaky_relu_backward": lambda r, d: _unary_backward(r, d, "x", "negative_slope"),
    "sigmoid_forward": lambda r, d: _unary_forward(r, d),
    "sigmoid_backward": lambda r, d: _unary_backward(r, d, "y"),
    "tanh_forward": lambda r, d: _unary_forward(r, d),
    "tanh_backward": lambda r, d: _unary_backward(r, d, "y"),
    "softmax_forward": make_softmax_forward,
    "softmax_backward": make_softmax_backward,
    "dropout_forward": lambda r, d: _dropout(r, d, "x"),
    "dropout_backward": lambda r, d: _dropout(r, d, "grad_out"),
    "add": lambda r, d: _add(r, d),
    "softmax_cross_entropy": make_softmax_cross_entropy,
    "mse": lambda r, d: _pointwise_loss(r, d, "pred", "target"),
    "bce_with_logits": lambda r, d: _pointwise_loss(r, d, "logits", "target", True),
    "sgd_update": make_sgd_update,
    "adam_update": make_adam_update,
    "sgd_step": make_sgd_step,
    "take_rows": make_take_rows,
    "adam_step": make_adam_step,
    "all_finite": lambda r, d: dict(x=_arr(r, _elementwise_shape(r), d)),
    "conv2d_forward": make_conv2d_forward,
    "conv2d_backward": make_conv2d_backward,
    "maxpool2d_forward": make_maxpool2d_forward,
    "maxpool2d_backward": make_maxpool2d_backward,
    "avgpool2d_forward": make_avgpool2d_forward,
    "avgpool2d_backward": make_avgpool2d_backward,
    "batchnorm_forward": make_batchnorm_forward,
    "batchnorm_backward": make_batchnorm_backward,
    "set_num_threads": lambda r, d: dict(n=int(r.integers(1, MAX_THREADS + 1))),
    "get_num_threads": lambda r, d: {},
    "openmp_enabled": lambda r, d: {},
    "cpu_features": lambda r, d: {},
    "gemm_kernel_name": lambda r, d: dict(dtype=d),
}


# ---------------------------------------------------------------------------------------
# Breaking an argument

HUGE_INTS = (2**31, 2**62, 2**63, 2**64 + 1)
FLAGS = ("training", "trans_a", "trans_b", "nesterov", "compute_grad_x", "decoupled",
         "check_finite", "accumulate")


def _unaligned(a):
    """A copy of `a` whose data starts one byte past an aligned address."""
    raw = np.empty(a.nbytes + 1, np.uint8)
    view = raw[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


def _strided(a):
    """A non-contiguous view with a's contents (every other element along each axis)."""
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def break_array(rng, a):
    """(description, a broken version of the array `a`)."""
    a = np.asarray(a)                       # an earlier break may have made an np.matrix
    kind = rng.integers(30)
    other = np.float64 if a.dtype == np.float32 else np.float32
    if kind == 0:
        return "list", a.tolist()
    if kind == 1:
        return "python float", 1.5
    if kind == 2:
        return "None", None
    if kind == 3:
        dt = rng.choice(["int64", "int32", "uint8", "bool", "float16", "complex64", "longdouble",
                         "object"])
        try:
            return f"dtype {dt}", a.astype(dt)
        except (TypeError, ValueError):
            return "dtype object", a.astype(object)
    if kind == 4 and a.dtype.kind == "f":
        return "big-endian", a.astype(a.dtype.newbyteorder(">"))
    if kind == 5 and a.dtype.kind == "f":
        return "other float dtype", a.astype(other)
    if kind == 6:
        return "one more axis", a[None] if rng.random() < 0.5 else a[..., None]
    if kind == 7 and a.ndim > 0:
        return "one axis fewer", a.reshape(-1) if a.ndim > 1 else np.array(0.5, a.dtype)
    if kind == 8:
        return "0-d", np.array(0.5, a.dtype)
    if kind in (9, 10) and a.ndim > 0:
        shape = list(a.shape)
        axis = int(rng.integers(a.ndim))
        shape[axis] = max(0, shape[axis] + int(rng.choice([-1, 1, 2])))
        resized = np.resize(a, shape).astype(a.dtype) if a.size else np.zeros(shape, a.dtype)
        return f"shape {tuple(shape)}", resized
    if kind == 11 and a.ndim > 0:
        shape = list(a.shape)
        shape[int(rng.integers(a.ndim))] = 0
        return "empty", np.zeros(shape, a.dtype)
    if kind == 12 and a.ndim > 0:
        return "strided view", _strided(a)
    if kind == 13 and a.ndim > 0:
        return "negative strides", a[(slice(None, None, -1),) * a.ndim]
    if kind == 14 and a.ndim >= 2:
        return "Fortran order", np.asfortranarray(a)
    if kind == 15 and a.ndim >= 2:
        return "transposed", a.T
    if kind == 16 and a.ndim > 0 and a.size:
        first = a.reshape(-1)[:1].reshape((1,) * a.ndim)
        return "broadcast (zero strides)", np.broadcast_to(first, a.shape)
    if kind == 17:
        return "read-only", _readonly(a)
    if kind == 18 and a.dtype.kind in "fiu":
        return "unaligned", _unaligned(a)
    if kind in (19, 20) and a.dtype.kind == "f" and a.size:
        b = a.copy()
        flat = np.asarray(b).reshape(-1)
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 3))] = rng.choice(
            [np.nan, np.inf, -np.inf, np.finfo(a.dtype).max, -np.finfo(a.dtype).max,
             np.finfo(a.dtype).tiny / 4])
        return "non-finite / extreme values", b
    if kind == 21 and a.ndim >= 1:
        flat = a.reshape(a.shape[0], -1) if a.size else np.zeros((0, 1), a.dtype)
        return "np.matrix", np.asmatrix(flat)
    if kind == 22:
        return "string", "array"
    if kind == 23 and a.dtype.kind in "iu" and a.size:
        b = a.astype(np.int64)
        b.reshape(-1)[int(rng.integers(b.size))] = rng.choice([-1, 2**40, -(2**62), 10**6])
        return "integer out of range", b
    if kind == 24 and a.ndim > 0:
        return "huge size-0 array", np.zeros(((0, 2**40) + (1,) * (a.ndim - 2))[:a.ndim], a.dtype)
    if kind == 25 and a.dtype.kind in "iu":
        return "float labels", a.astype(np.float64)
    if kind == 26:              # lies about the array itself: it still means the same
        lies = lies_about(a)[int(rng.integers(6))][2]
        return "lying subclass", lying(a, lies)
    if kind == 27 and a.size:   # another array (smaller, other dtype, strided, read-only)
        _, real, _ = lies_about(a)[int(rng.integers(6, 10))]
        return "another array told to be valid", lying(real(), description(a))
    return "unchanged", a


def overlap_buffers(rng, name, kw):
    """A buffer of the call made exactly, or one element off, an array the kernel reads or
    another buffer (OVERLAPS); a description, or None when the call has no such pair."""
    def present(arg):
        try:
            return isinstance(get(kw, arg), np.ndarray)
        except (KeyError, IndexError, TypeError, ValueError):
            return False

    pairs = [(buf, other) for buf, other, _ in OVERLAPS.get(name, ())
             if present(buf) and present(other)]
    if not pairs:
        return None
    buf, other = pairs[int(rng.integers(len(pairs)))]
    b, o = np.asarray(get(kw, buf)), np.asarray(get(kw, other))
    if b.dtype.kind not in "fiub" or o.dtype.kind not in "fiub":
        return None                 # (an earlier break made one an object array)
    if b.shape == o.shape and b.dtype == o.dtype and rng.random() < 0.5:
        put(kw, buf, get(kw, other))
        return f"{buf}, {other}: the same array"
    shift = shift_for(b, o)
    if shift is None:
        return None
    b, o, _ = overlapping(b, o, shift if rng.random() < 0.5 else -shift)
    put(kw, buf, b)
    put(kw, other, o)
    return f"{buf}, {other}: overlapping"


def break_scalar(rng, v):
    choices = [np.nan, np.inf, -np.inf, -1.0, 0.0, 1e300, -1e300, "0.1", None, True,
               np.float32(0.5), complex(1, 1), 2**70, -(2**70), np.int64(3), [0.1],
               np.array(0.5), np.array([0.5]), 5e-324]
    return "scalar", choices[int(rng.integers(len(choices)))]


def break_int(rng, v):
    choices = [0, -1, -(2**40), 1.5, "2", None, True, np.int64(2), np.uint8(3), (1,), (1, 2, 3),
               (1, -1), [2, 2], (2.0, 2), np.array([2, 2]), (0, 0)] + list(HUGE_INTS)
    choices += [(h, 1) for h in HUGE_INTS]
    return "int", choices[int(rng.integers(len(choices)))]


def break_flag(rng, v):
    choices = [None, 0, 1, "yes", "", np.bool_(True), [], np.array([1, 2]), 2.5]
    return "flag", choices[int(rng.integers(len(choices)))]


def break_other(rng, v):
    choices = [None, "relu", "RELU", "sigmoid", 1, np.float32, "float32", np.int32, "x",
               (4, 4), (1, 1, 4, 4), (-1, 1, 4, 4), (1, 1, 2**40, 2**40), (1, 1, 4), 4.0,
               (1.5, 1, 4, 4), ("1", "1", "4", "4")]
    return "value", choices[int(rng.integers(len(choices)))]


def break_call(rng, name, kw, kernel):
    """Break 1-3 arguments of the valid call `kw` in place; a list of what was done."""
    done = []
    params = inspect.signature(kernel).parameters
    for _ in range(int(rng.integers(1, 4))):
        r = rng.random()
        if r < 0.05:
            kw["bogus"] = 1
            done.append("unknown keyword bogus")
            continue
        if r < 0.1 and kw:
            key = list(kw)[int(rng.integers(len(kw)))]
            if key in params and params[key].default is inspect.Parameter.empty:
                del kw[key]
                done.append(f"missing {key}")
                continue
        if 0.2 <= r < 0.28:
            what = overlap_buffers(rng, name, kw)
            if what:
                done.append(what)
                continue
        if r < 0.2:
            # an optional buffer that was not given: a random array
            free = [p for p, v in params.items() if v.default is None and p not in kw]
            if free:
                key = free[int(rng.integers(len(free)))]
                shape = tuple(int(s) for s in rng.integers(0, 5, size=int(rng.integers(0, 4))))
                kw[key] = np.zeros(shape, rng.choice([np.float32, np.float64, np.int64]))
                done.append(f"{key}: a random buffer of shape {shape}")
                continue
        if not kw:
            break
        key = list(kw)[int(rng.integers(len(kw)))]
        value = kw[key]
        if isinstance(value, np.ndarray):
            try:
                what, kw[key] = break_array(rng, value)
            except (ValueError, MemoryError):     # a break of a break that NumPy refuses
                what = "unchanged"
        elif (isinstance(value, list) and value and isinstance(value[0], np.ndarray)
              and rng.random() < 0.8):
            # a list of arrays (a whole-model step): break one of them, or the list's length
            value = list(value)
            kw[key] = value
            if rng.random() < 0.1:
                value.pop()
                what = "one array fewer"
            else:
                i = int(rng.integers(len(value)))
                try:
                    what, value[i] = break_array(rng, value[i])
                except (ValueError, MemoryError):
                    what = "unchanged"
                what = f"[{i}] {what}"
        elif key in FLAGS:
            what, kw[key] = break_flag(rng, value)
        elif isinstance(value, bool) or value is None or isinstance(value, (str, type, np.dtype)):
            what, kw[key] = break_other(rng, value)
        elif isinstance(value, float):
            what, kw[key] = break_scalar(rng, value)
        elif isinstance(value, (int, tuple, list)):
            if key == "x_shape":
                what, kw[key] = break_other(rng, value)
            else:
                what, kw[key] = break_int(rng, value)
        else:
            what, kw[key] = "value", None
        done.append(f"{key}: {what}")
    return done


# ---------------------------------------------------------------------------------------
# The child

def _describe(v):
    if isinstance(v, np.ndarray):
        kind, v = type(v).__name__, np.asarray(v)        # (what a Lying array really is)
        flags = "".join(f for f, on in (("C", v.flags.c_contiguous), ("F", v.flags.f_contiguous),
                                        ("W", v.flags.writeable), ("A", v.flags.aligned)) if on)
        return (f"ndarray{v.shape} {v.dtype} strides={v.strides} flags={flags} "
                f"type={kind}")
    if isinstance(v, (list, tuple)) and any(isinstance(e, np.ndarray) for e in v):
        return "[" + ", ".join(map(_describe, v)) + "]"     # (never a Lying array's repr)
    text = repr(v)
    return text if len(text) < 80 else text[:77] + "..."


def _close(actual, expected, dtype):
    if isinstance(expected, tuple):
        return (isinstance(actual, tuple) and len(actual) == len(expected)
                and all(_close(a, e, dtype) for a, e in zip(actual, expected)))
    if expected is None or isinstance(expected, (bool, str, dict)):
        return actual == expected
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return False
    if expected.dtype.kind in "iu":
        return np.array_equal(actual, expected)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if np.dtype(dtype) == np.float32:
        return np.allclose(actual, expected, rtol=2e-3, atol=2e-4 * scale, equal_nan=True)
    return np.allclose(actual, expected, rtol=1e-8, atol=1e-10 * scale, equal_nan=True)


# Breaks after which the call means the same thing (only the memory layout differs, or a
# subclass lies about itself), or after which both backends must refuse or compute the
# same (a buffer overlapping another array): the kernel and its twin must then agree (both
# return the same values, or both raise).
LAYOUT_ONLY = {"strided view", "negative strides", "Fortran order", "broadcast (zero strides)",
               "read-only", "unaligned", "lying subclass", "the same array", "overlapping"}
NOT_COMPARED = {"set_num_threads", "get_num_threads", "openmp_enabled", "cpu_features",
                "gemm_kernel_name"}


def _writeable_arrays(kw):
    """{name: array} of the writeable arrays of a call, those in lists as name[i]."""
    found = {}
    for k, v in kw.items():
        for i, a in enumerate(v if isinstance(v, list) else [v]):
            if isinstance(a, np.ndarray) and np.asarray(a).flags.writeable:
                found[f"{k}[{i}]" if isinstance(v, list) else k] = a
    return found


def _outcome(function, kw):
    """("returned", result, {argument: contents after}) or ("raised", exception)."""
    try:
        result = function(**kw)
    except Exception as err:
        return ("raised", err)
    frozen = tuple(np.array(r, copy=True) if isinstance(r, np.ndarray) else r
                   for r in (result if isinstance(result, tuple) else (result,)))
    after = {k: v.copy() for k, v in _writeable_arrays(kw).items()}
    return ("returned", frozen, after)


def one_call(cnn_core, reference, name, kw, broken, dt, counts, by_type):
    """Call the kernel; compare with the twin when the call is valid or only re-laid-out.
    Returns None, or a dict describing the problem."""
    arrays = _writeable_arrays(kw)
    before = {k: v.copy() for k, v in arrays.items()}
    got = _outcome(getattr(cnn_core, name), kw)
    if got[0] == "raised":
        err = got[1]
        if not isinstance(err, ALLOWED):     # the finding: not TypeError/ValueError/MemoryError
            return dict(problem="unexpected exception", error=f"{type(err).__name__}: {err}",
                        traceback="".join(traceback.format_exception(err)))
        counts["raised"] += 1
        by_type[type(err).__name__] = by_type.get(type(err).__name__, 0) + 1
        if not broken and name != "set_num_threads":
            return dict(problem="a valid call raised", error=f"{type(err).__name__}: {err}")
    else:
        counts["returned"] += 1
    layout_only = all(b.split(": ", 1)[-1] in LAYOUT_ONLY for b in broken)
    if not layout_only or name in NOT_COMPARED:
        return None
    for k, v in before.items():               # undo the kernel's in-place writes
        arrays[k][...] = v
    expected = _outcome(getattr(reference, name), kw)
    counts["checked_against_twin"] += 1
    if got[0] != expected[0]:
        detail = got[1] if got[0] == "raised" else expected[1]
        return dict(problem=f"the kernel {got[0]}, its NumPy twin {expected[0]}",
                    error=f"{type(detail).__name__}: {detail}")
    if got[0] == "raised":
        if type(got[1]) is not type(expected[1]):
            return dict(problem="the kernel and its twin raise different exceptions",
                        error=f"{type(got[1]).__name__}: {got[1]} / "
                              f"{type(expected[1]).__name__}: {expected[1]}")
        return None
    if not (_close(got[1], expected[1], dt) and got[2].keys() == expected[2].keys()
            and all(_close(got[2][k], expected[2][k], dt) for k in got[2])):
        return dict(problem="differs from the NumPy twin")
    return None


def _limit_address_space():
    if "asan" in os.environ.get("LD_PRELOAD", "") or not sys.platform.startswith("linux"):
        return
    import resource
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + EXTRA_ADDRESS_SPACE
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child(seed, calls):
    """Run `calls` random calls; print a JSON summary; exit 1 on an unexpected outcome."""
    import cnn_core
    from cnn_core import reference

    assert sorted(MAKERS) == sorted(cnn_core.__all__), sorted(set(MAKERS) ^ set(cnn_core.__all__))
    # start the OpenMP workers now, before the address space is capped
    cnn_core.set_num_threads(MAX_THREADS)
    x = np.ones((16, 8, 16, 16), np.float32)
    cnn_core.batchnorm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32),
                               np.zeros(8, np.float32), np.ones(8, np.float32), training=True)
    cnn_core.gemm(np.ones((300, 300), np.float32), np.ones((300, 300), np.float32))
    _limit_address_space()

    warnings.simplefilter("ignore")        # casts of NaN to int, overflow to inf: intended
    rng = np.random.default_rng(seed)
    names = sorted(MAKERS)
    counts = {"returned": 0, "raised": 0, "checked_against_twin": 0}
    by_type = {}
    problems = []
    start = time.perf_counter()
    for i in range(calls):
        name = names[int(rng.integers(len(names)))]
        dt = np.float32 if rng.random() < 0.5 else np.float64
        kw = MAKERS[name](rng, dt)
        broken = break_call(rng, name, kw, getattr(cnn_core, name)) if rng.random() < 0.75 else []
        record = dict(call=i, seed=seed, kernel=name, broken=broken,
                      args={k: _describe(v) for k, v in kw.items()})
        problem = one_call(cnn_core, reference, name, kw, broken, dt, counts, by_type)
        if problem:
            problems.append(dict(record, **problem))
        if len(problems) > 20:
            break
    # the interpreter and the kernels are still fine after all that
    cnn_core.set_num_threads(2)
    a = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(cnn_core.gemm(a, a.T), a @ a.T)
    summary = dict(seed=seed, calls=calls, seconds=round(time.perf_counter() - start, 2),
                   counts=counts, raised=by_type, problems=problems,
                   cnn_core=cnn_core.__file__)
    print(json.dumps(summary, indent=1, default=str))
    return 1 if problems else 0


# ---------------------------------------------------------------------------------------
# The tests

def run_child(tmp_path, seed, calls, timeout=120):
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run([sys.executable, HERE, str(seed), str(calls)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc


def _summary(proc):
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return None


def test_thousands_of_random_kernel_calls_never_crash(tmp_path):
    proc = run_child(tmp_path, seed=20240607, calls=CALLS)
    summary = _summary(proc)
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else \
        f"exit status {proc.returncode}"
    assert proc.returncode == 0, (f"fuzz child: {how}\nstdout:\n{proc.stdout[-6000:]}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")
    assert summary is not None, proc.stdout
    assert not summary["problems"], json.dumps(summary["problems"], indent=1)
    # the driver really exercised both outcomes, and checked results against the twins
    counts = summary["counts"]
    assert counts["returned"] > CALLS // 6 and counts["raised"] > CALLS // 3, counts
    assert counts["checked_against_twin"] > CALLS // 6, counts


def test_huge_integer_arguments_are_value_errors():
    import cnn_core

    x = np.ones((1, 1, 4, 4))
    w = np.ones((1, 1, 2, 2))
    calls = [
        ("stride", lambda: cnn_core.conv2d_forward(x, w, None, stride=2**63)),
        ("padding", lambda: cnn_core.conv2d_forward(x, w, None, padding=2**63)),
        ("stride", lambda: cnn_core.maxpool2d_forward(x, 2, 2**63)),
        ("stride", lambda: cnn_core.avgpool2d_forward(x, 2, 2**63)),
        ("kernel_size", lambda: cnn_core.avgpool2d_backward(x, (1, 1, 4, 4), 2**63)),
        ("n", lambda: cnn_core.set_num_threads(2**31)),
    ]
    before = cnn_core.get_num_threads()
    try:
        for name, call in calls:
            with pytest.raises(ValueError, match=name):
                call()
    finally:
        cnn_core.set_num_threads(before)


@pytest.mark.parametrize("name", ["relu_forward", "sigmoid_forward", "tanh_forward"])
def test_twins_keep_zero_d_shapes(name):
    import cnn_core
    from cnn_core import reference

    x = np.array(-0.5)
    assert getattr(cnn_core, name)(x).shape == ()            # the compiled kernel does
    assert getattr(reference, name)(x).shape == ()
    assert getattr(reference, name)(x, out=np.empty(())).shape == ()


if __name__ == "__main__":
    sys.exit(child(int(sys.argv[1]) if len(sys.argv) > 1 else 0,
                   int(sys.argv[2]) if len(sys.argv) > 2 else 2000))
