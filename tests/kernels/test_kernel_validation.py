"""Argument checking of every public kernel, on both backends.

The contract (docs/design.md, "The kernel contract"): a bad argument is a TypeError (not an ndarray, not
float32/float64, a dtype that disagrees with the first input) or a ValueError (wrong
ndim, shapes that do not fit, a bad out=/grad= or in-place buffer, labels out of range,
a bad hyper-parameter), and the message names the argument.

Each kernel is described once in CASES: a function that builds a valid call, and which
arguments are inputs (copied if needed), written in place, or special. The tests then
break one argument at a time.
"""
import inspect
from dataclasses import dataclass, field

import numpy as np
import pytest

import cnn_core
from cnn_core import reference


@dataclass
class Case:
    make: object                                   # (dtype) -> kwargs of a valid call
    inputs: tuple                                  # float inputs; the first sets the dtype
    buffers: tuple = ()                            # written in place: exact shape/dtype/layout
    param: str = None                              # updated in place, but sets the dtype
    ndims: dict = field(default_factory=dict)      # argument -> required ndim
    bad_shapes: dict = field(default_factory=dict)  # argument -> a shape that does not fit
    labels: str = None
    mask: str = None
    bad_values: list = field(default_factory=list)  # (kwargs update, exception, argument name)


def _a(dtype, *shape, value=0.5):
    return np.full(shape, value, dtype=dtype)


def _ramp(dtype, *shape):
    return (np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) % 5 - 2) / 4


def _mask(*shape):
    return (np.arange(int(np.prod(shape))).reshape(shape) % 2).astype(np.uint8)


_NONFINITE = [float("nan"), float("inf")]


def _scalar_checks(name, negative_ok=True):
    checks = [({name: v}, ValueError, name) for v in _NONFINITE]
    checks.append(({name: "0.1"}, TypeError, name))
    if not negative_ok:
        checks.append(({name: -0.5}, ValueError, name))
    return checks


def _conv_geometry_checks():
    return [
        (dict(stride=0), ValueError, "stride"),
        (dict(stride=(1, 0)), ValueError, "stride"),
        (dict(stride=1.5), TypeError, "stride"),
        (dict(stride=(1, 1, 1)), TypeError, "stride"),
        (dict(stride=True), TypeError, "stride"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(padding="same"), TypeError, "padding"),
    ]


def _pool_window_checks():
    return [
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(kernel_size=(2, 0)), ValueError, "kernel_size"),
        (dict(kernel_size=2.0), TypeError, "kernel_size"),
        (dict(kernel_size=(2,)), TypeError, "kernel_size"),
        (dict(kernel_size=None), TypeError, "kernel_size"),
        (dict(kernel_size=True), TypeError, "kernel_size"),
        (dict(kernel_size=2**25), ValueError, "kernel_size"),
        (dict(stride=0), ValueError, "stride"),
        (dict(stride=(1, -1)), ValueError, "stride"),
        (dict(stride=1.5), TypeError, "stride"),
        (dict(stride=(1, 2, 3)), TypeError, "stride"),
    ]


def _elementwise(first, second, extra=None, bad=()):
    """An elementwise kernel on (first, second) of shape (3, 4) (+ out=)."""
    def make(dtype):
        kw = {first: _ramp(dtype, 3, 4)}
        if second:
            kw[second] = _ramp(dtype, 3, 4) / 2 + 0.25
        kw.update(extra or {})
        kw["out"] = _a(dtype, 3, 4)
        return kw
    return Case(make, inputs=(first, second) if second else (first,), buffers=("out",),
                bad_shapes={second: (4, 3)} if second else {}, bad_values=list(bad))


CASES = {
    "gemm": Case(
        lambda dt: dict(a=_ramp(dt, 3, 4), b=_ramp(dt, 4, 5), out=_a(dt, 3, 5)),
        inputs=("a", "b"), buffers=("out",), ndims={"a": 2, "b": 2},
        bad_shapes={"b": (3, 5)},
        bad_values=_scalar_checks("alpha") + _scalar_checks("beta") + [
            (dict(out=None, beta=1.0), ValueError, "out"),
            (dict(trans_a=True), ValueError, "b"),       # op(a) is (4, 3): K = 3 != 4
            (dict(trans_b=True), ValueError, "b"),       # op(b) is (5, 4)
        ]),
    "linear_forward": Case(
        lambda dt: dict(x=_ramp(dt, 3, 4), w=_ramp(dt, 4, 5), b=_ramp(dt, 5), out=_a(dt, 3, 5)),
        inputs=("x", "w", "b"), buffers=("out",), ndims={"x": 2, "w": 2, "b": 1},
        bad_shapes={"w": (3, 5), "b": (4,)},
        bad_values=[(dict(activation=a), ValueError, "activation")
                    for a in ("tanh", "ReLU", "")]),
    "linear_backward": Case(
        lambda dt: dict(grad_out=_ramp(dt, 3, 5), x=_ramp(dt, 3, 4), w=_ramp(dt, 4, 5),
                        grad_w=_a(dt, 4, 5), grad_b=_a(dt, 5), grad_x=_a(dt, 3, 4)),
        inputs=("grad_out", "x", "w"), buffers=("grad_w", "grad_b", "grad_x"),
        ndims={"grad_out": 2, "x": 2, "w": 2},
        bad_shapes={"x": (2, 4), "w": (4, 6)}),
    "relu_forward": _elementwise("x", None),
    "add": _elementwise("a", "b"),
    "relu_backward": _elementwise("grad_out", "x"),
    "leaky_relu_forward": _elementwise("x", None, {"negative_slope": 0.1},
                                       bad=_scalar_checks("negative_slope")),
    "leaky_relu_backward": _elementwise("grad_out", "x", {"negative_slope": 0.1},
                                        bad=_scalar_checks("negative_slope")),
    "sigmoid_forward": _elementwise("x", None),
    "sigmoid_backward": _elementwise("grad_out", "y"),
    "tanh_forward": _elementwise("x", None),
    "tanh_backward": _elementwise("grad_out", "y"),
    "softmax_forward": Case(
        lambda dt: dict(x=_ramp(dt, 3, 4), out=_a(dt, 3, 4)),
        inputs=("x",), buffers=("out",), ndims={"x": 2}),
    "softmax_backward": Case(
        lambda dt: dict(grad_out=_ramp(dt, 3, 4), y=_a(dt, 3, 4, value=0.25), out=_a(dt, 3, 4)),
        inputs=("grad_out", "y"), buffers=("out",), ndims={"grad_out": 2, "y": 2},
        bad_shapes={"y": (3, 5)}),
    "dropout_forward": Case(
        lambda dt: dict(x=_ramp(dt, 3, 4), mask=_mask(3, 4), scale=2.0, out=_a(dt, 3, 4)),
        inputs=("x",), buffers=("out",), mask="mask", bad_values=_scalar_checks("scale")),
    "dropout_backward": Case(
        lambda dt: dict(grad_out=_ramp(dt, 3, 4), mask=_mask(3, 4), scale=2.0, out=_a(dt, 3, 4)),
        inputs=("grad_out",), buffers=("out",), mask="mask", bad_values=_scalar_checks("scale")),
    "softmax_cross_entropy": Case(
        lambda dt: dict(logits=_ramp(dt, 3, 4), labels=np.array([0, 3, 1]), grad=_a(dt, 3, 4)),
        inputs=("logits",), buffers=("grad",), ndims={"logits": 2}, labels="labels",
        bad_values=[(dict(logits=_ramp(np.float64, 0, 4), labels=np.zeros(0, np.int64),
                          grad=None), ValueError, "logits")]),
    "mse": Case(
        lambda dt: dict(pred=_ramp(dt, 3, 4), target=_a(dt, 3, 4), grad=_a(dt, 3, 4)),
        inputs=("pred", "target"), buffers=("grad",), bad_shapes={"target": (4, 3)},
        bad_values=[(dict(pred=_a(np.float64, 0, 3), target=_a(np.float64, 0, 3), grad=None),
                     ValueError, "pred")]),
    "bce_with_logits": Case(
        lambda dt: dict(logits=_ramp(dt, 3, 4), target=_a(dt, 3, 4), grad=_a(dt, 3, 4)),
        inputs=("logits", "target"), buffers=("grad",), bad_shapes={"target": (12,)},
        bad_values=[(dict(logits=_a(np.float64, 0), target=_a(np.float64, 0), grad=None),
                     ValueError, "logits")]),
    "sgd_update": Case(
        lambda dt: dict(param=_ramp(dt, 3, 4), grad=_a(dt, 3, 4), lr=0.1, momentum=0.9,
                        velocity=_a(dt, 3, 4), weight_decay=0.01, nesterov=True),
        inputs=("param", "grad"), buffers=("velocity",), param="param",
        bad_shapes={"grad": (4, 3)},
        bad_values=_scalar_checks("lr", negative_ok=False)
        + _scalar_checks("momentum", negative_ok=False)
        + _scalar_checks("weight_decay", negative_ok=False) + [
            (dict(velocity=None), ValueError, "velocity"),
            (dict(momentum=0.0), ValueError, "nesterov"),
        ]),
    "adam_update": Case(
        lambda dt: dict(param=_ramp(dt, 3, 4), grad=_a(dt, 3, 4), m=_a(dt, 3, 4), v=_a(dt, 3, 4),
                        step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                        decoupled=False),
        inputs=("param", "grad"), buffers=("m", "v"), param="param",
        bad_shapes={"grad": (12,)},
        bad_values=_scalar_checks("lr", negative_ok=False)
        + _scalar_checks("eps", negative_ok=False)
        + _scalar_checks("weight_decay", negative_ok=False)
        + _scalar_checks("beta1", negative_ok=False) + _scalar_checks("beta2", negative_ok=False)
        + [(dict(beta1=1.0), ValueError, "beta1"), (dict(beta2=1.0), ValueError, "beta2"),
           (dict(beta1=1.5), ValueError, "beta1"),
           (dict(step=0), ValueError, "step"), (dict(step=-3), ValueError, "step")]),
    "conv2d_forward": Case(
        lambda dt: dict(x=_ramp(dt, 2, 3, 5, 5), w=_ramp(dt, 4, 3, 3, 3), b=_ramp(dt, 4),
                        out=_a(dt, 2, 4, 3, 3), stride=1, padding=0),
        inputs=("x", "w", "b"), buffers=("out",), ndims={"x": 4, "w": 4, "b": 1},
        bad_shapes={"w": (4, 2, 3, 3), "b": (5,)},
        bad_values=_conv_geometry_checks() + [
            (dict(w=_ramp(np.float64, 4, 3, 7, 7), out=None), ValueError, "x"),   # too small
        ]),
    "conv2d_backward": Case(
        lambda dt: dict(grad_out=_ramp(dt, 2, 4, 3, 3), x=_ramp(dt, 2, 3, 5, 5),
                        w=_ramp(dt, 4, 3, 3, 3), grad_w=_a(dt, 4, 3, 3, 3), grad_b=_a(dt, 4),
                        grad_x=_a(dt, 2, 3, 5, 5), stride=1, padding=0),
        inputs=("x", "w", "grad_out"), buffers=("grad_w", "grad_b", "grad_x"),
        ndims={"x": 4, "w": 4, "grad_out": 4},
        bad_shapes={"w": (4, 2, 3, 3), "grad_out": (2, 4, 3, 4)},
        bad_values=_conv_geometry_checks()),
    "maxpool2d_forward": Case(
        lambda dt: dict(x=_ramp(dt, 2, 3, 6, 6), kernel_size=2, stride=None,
                        out=_a(dt, 2, 3, 3, 3), indices=np.zeros((2, 3, 3, 3), np.int64)),
        inputs=("x",), buffers=("out", "indices"), ndims={"x": 4},
        bad_values=[
            (dict(kernel_size=0), ValueError, "kernel_size"),
            (dict(kernel_size=(2, 0)), ValueError, "kernel_size"),
            (dict(kernel_size=2.0), TypeError, "kernel_size"),
            (dict(kernel_size=(2,)), TypeError, "kernel_size"),
            (dict(kernel_size=None), TypeError, "kernel_size"),
            (dict(stride=0), ValueError, "stride"),
            (dict(stride=(1, 2, 3)), TypeError, "stride"),
            (dict(kernel_size=7, out=None, indices=None), ValueError, "x"),     # too small
        ]),
    "maxpool2d_backward": Case(
        lambda dt: dict(grad_out=_ramp(dt, 2, 3, 3, 3),
                        indices=np.arange(54, dtype=np.int64).reshape(2, 3, 3, 3) % 36,
                        x_shape=(2, 3, 6, 6), out=_a(dt, 2, 3, 6, 6)),
        inputs=("grad_out",), buffers=("out",), ndims={"grad_out": 4},
        bad_values=[
            (dict(indices=np.zeros((2, 3, 3, 3), np.int32)), TypeError, "indices"),
            (dict(indices=np.zeros((2, 3, 3, 3))), TypeError, "indices"),
            (dict(indices=np.zeros((2, 3, 3, 3), np.int64).tolist()), TypeError, "indices"),
            (dict(indices=np.zeros((2, 3, 3, 4), np.int64)), ValueError, "indices"),
            (dict(indices=np.full((2, 3, 3, 3), 36, np.int64)), ValueError, "indices"),
            (dict(indices=np.full((2, 3, 3, 3), -1, np.int64)), ValueError, "indices"),
            (dict(x_shape=None), TypeError, "x_shape"),
            (dict(x_shape=6), TypeError, "x_shape"),
            (dict(x_shape=(2, 3, 6)), ValueError, "x_shape"),
            (dict(x_shape=(3, 3, 6, 6)), ValueError, "x_shape"),
        ]),
    "avgpool2d_forward": Case(
        lambda dt: dict(x=_ramp(dt, 2, 3, 7, 7), kernel_size=3, stride=2,
                        out=_a(dt, 2, 3, 3, 3)),
        inputs=("x",), buffers=("out",), ndims={"x": 4},
        bad_values=_pool_window_checks() + [
            (dict(kernel_size=8, out=None), ValueError, "x"),                  # too small
            (dict(kernel_size=(3, 8), out=None), ValueError, "x"),
        ]),
    "avgpool2d_backward": Case(
        lambda dt: dict(grad_out=_ramp(dt, 2, 3, 3, 3), x_shape=(2, 3, 7, 7), kernel_size=3,
                        stride=2, out=_a(dt, 2, 3, 7, 7)),
        inputs=("grad_out",), buffers=("out",), ndims={"grad_out": 4},
        bad_shapes={"grad_out": (2, 3, 3, 4)},
        bad_values=_pool_window_checks() + [
            (dict(x_shape=None), TypeError, "x_shape"),
            (dict(x_shape=7), TypeError, "x_shape"),
            (dict(x_shape=(2, 3, 7.0, 7)), TypeError, "x_shape"),
            (dict(x_shape=(2, 3, "7", 7)), TypeError, "x_shape"),
            (dict(x_shape=(2, True, 7, 7)), TypeError, "x_shape"),
            (dict(x_shape=(2, 3, 7)), ValueError, "x_shape"),
            (dict(x_shape=(2, 3, 7, 7, 1)), ValueError, "x_shape"),
            (dict(x_shape=(2, 3, -7, 7)), ValueError, "x_shape"),
            (dict(x_shape=(2, 3, 2, 7), out=None), ValueError, "x_shape"),     # too small
            # grad_out's shape is not what the forward gives for x_shape
            (dict(x_shape=(3, 3, 7, 7), out=None), ValueError, "x_shape"),
            (dict(x_shape=(2, 3, 9, 7), out=None), ValueError, "grad_out"),
            (dict(stride=1, out=None), ValueError, "grad_out"),
            (dict(kernel_size=4, stride=None, out=None), ValueError, "grad_out"),
        ]),
    "batchnorm_forward": Case(
        lambda dt: dict(x=_ramp(dt, 4, 3), gamma=_ramp(dt, 3), beta=_ramp(dt, 3),
                        running_mean=_a(dt, 3), running_var=_a(dt, 3), training=True,
                        momentum=0.1, eps=1e-5, out=_a(dt, 4, 3), save_mean=_a(dt, 3),
                        save_invstd=_a(dt, 3)),
        inputs=("x", "gamma", "beta"),
        buffers=("out", "running_mean", "running_var", "save_mean", "save_invstd"),
        ndims={"x": 2, "gamma": 1, "beta": 1}, bad_shapes={"gamma": (4,), "beta": (2,)},
        bad_values=_scalar_checks("momentum", negative_ok=False)
        + _scalar_checks("eps", negative_ok=False) + [
            (dict(momentum=1.5), ValueError, "momentum"),
            (dict(eps=0.0), ValueError, "eps"),
            (dict(x=_ramp(np.float64, 1, 3), out=None), ValueError, "x"),   # 1 value per channel
            (dict(x=_ramp(np.float64, 1, 3, 1, 1), out=None), ValueError, "x"),
        ]),
    "batchnorm_backward": Case(
        lambda dt: dict(grad_out=_ramp(dt, 4, 3), x=_ramp(dt, 4, 3), gamma=_ramp(dt, 3),
                        save_mean=_a(dt, 3), save_invstd=_a(dt, 3), grad_gamma=_a(dt, 3),
                        grad_beta=_a(dt, 3), grad_x=_a(dt, 4, 3), training=True),
        inputs=("grad_out", "x", "gamma", "save_mean", "save_invstd"),
        buffers=("grad_gamma", "grad_beta", "grad_x"),
        ndims={"x": 2, "gamma": 1, "save_mean": 1, "save_invstd": 1},
        bad_shapes={"x": (3, 4), "gamma": (4,), "save_mean": (2,), "save_invstd": (5,)}),
}
# gemm_naive shares gemm's signature and checks
CASES["gemm_naive"] = CASES["gemm"]

KERNELS = sorted(CASES)
RUNTIME = ["set_num_threads", "get_num_threads", "openmp_enabled", "cpu_features",
           "gemm_kernel_name"]


def named(name):
    """A regex for a message that names `name` as a word (so "out" does not match "grad_out")."""
    return rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])"


def _calls(kind):
    """(kernel, argument, ...) triples for the parametrizations below."""
    out = []
    for k in KERNELS:
        case = CASES[k]
        if kind == "inputs":
            out += [(k, a) for a in case.inputs]
        elif kind == "others":           # inputs checked against the first one
            out += [(k, a) for a in case.inputs[1:] if a != case.param]
        elif kind == "buffers":
            out += [(k, a) for a in case.buffers + ((case.param,) if case.param else ())]
        elif kind == "ndims":
            out += [(k, a, n) for a, n in case.ndims.items()]
        elif kind == "bad_shapes":
            out += [(k, a, s) for a, s in case.bad_shapes.items()]
        elif kind == "bad_values":
            out += [(k, kw, exc, name) for kw, exc, name in case.bad_values]
    return out


def _call(backend, kernel, dtype=np.float64, **changes):
    kwargs = CASES[kernel].make(dtype)
    kwargs.update(changes)
    return getattr(backend, kernel)(**kwargs)


# ----------------------------------------------------------------------------------------
# The same API on both sides
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS + RUNTIME)
def test_same_signature(kernel):
    compiled = inspect.signature(getattr(cnn_core, kernel))
    twin = inspect.signature(getattr(reference, kernel))
    assert [(p.name, p.kind, p.default) for p in compiled.parameters.values()] == \
           [(p.name, p.kind, p.default) for p in twin.parameters.values()]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_valid_call_passes(backend, kernel, dt):
    _call(backend, kernel, dt)


# ----------------------------------------------------------------------------------------
# Types and dtypes: TypeError for inputs, ValueError for buffers
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,arg", _calls("inputs"))
@pytest.mark.parametrize("bad", ["list", "scalar", "none_like"])
def test_input_not_ndarray(backend, kernel, arg, bad):
    value = CASES[kernel].make(np.float64)[arg]
    value = {"list": value.tolist(), "scalar": 1.5, "none_like": {"data": value}}[bad]
    with pytest.raises(TypeError, match=named(arg)):
        _call(backend, kernel, **{arg: value})


@pytest.mark.parametrize("kernel,arg", _calls("inputs"))
@pytest.mark.parametrize("bad_dtype", [np.int32, np.int64, np.bool_, np.float16, object, np.complex128])
def test_input_bad_dtype(backend, kernel, arg, bad_dtype):
    value = CASES[kernel].make(np.float64)[arg].astype(bad_dtype)
    with pytest.raises(TypeError, match=named(arg)):
        _call(backend, kernel, **{arg: value})


@pytest.mark.parametrize("kernel,arg", _calls("others"))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_input_mixed_dtypes(backend, kernel, arg, dt):
    other = np.float64 if dt == np.float32 else np.float32
    value = CASES[kernel].make(dt)[arg].astype(other)
    with pytest.raises(TypeError, match=named(arg)):
        _call(backend, kernel, dt, **{arg: value})


# ----------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,arg,ndim", _calls("ndims"))
def test_wrong_ndim(backend, kernel, arg, ndim):
    value = CASES[kernel].make(np.float64)[arg]
    for bad in (value.reshape(-1)[:3] if ndim != 1 else value.reshape(1, -1),
                value.reshape((1,) + value.shape),
                np.array(0.5)):
        if bad.ndim == ndim:
            continue
        with pytest.raises(ValueError, match=named(arg)):
            _call(backend, kernel, **{arg: bad})


@pytest.mark.parametrize("kernel,arg,shape", _calls("bad_shapes"))
def test_mismatched_shape(backend, kernel, arg, shape):
    with pytest.raises(ValueError, match=named(arg)):
        _call(backend, kernel, **{arg: np.full(shape, 0.5)})


# ----------------------------------------------------------------------------------------
# out= / grad= and the arrays updated in place
# ----------------------------------------------------------------------------------------

def _bad_buffers(good):
    """(description, bad buffer) for a valid buffer `good`."""
    if good.dtype.kind == "f":
        other, other_kind = (np.float32 if good.dtype == np.float64 else np.float64), np.int64
    else:                                        # an integer buffer (maxpool indices)
        other, other_kind = np.int32, np.float64
    bigger = np.zeros(tuple(2 * s + 1 for s in good.shape), good.dtype)
    readonly = good.copy()
    readonly.setflags(write=False)
    bad = [
        ("wrong_shape", np.zeros(good.shape + (1,), good.dtype)),
        ("wrong_shape_flat", np.zeros(good.size + 1, good.dtype)),
        ("wrong_dtype", good.astype(other)),
        ("int_dtype", good.astype(other_kind)),
        ("non_contiguous", bigger[tuple(slice(1, None, 2) for _ in good.shape)]),
        ("read_only", readonly),
        ("list", good.tolist()),
    ]
    if good.ndim >= 2:
        bad.append(("fortran", np.asfortranarray(good)))
    return bad


@pytest.mark.parametrize("kernel,arg", _calls("buffers"))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_bad_buffer(backend, kernel, arg, dt):
    case = CASES[kernel]
    good = case.make(dt)[arg]
    for what, buf in _bad_buffers(good):
        # the parameter itself sets the dtype: a wrong type there is a TypeError
        exc = TypeError if arg == case.param and what in ("wrong_dtype", "int_dtype", "list") \
            else ValueError
        if arg == case.param and what in ("wrong_dtype", "wrong_shape", "wrong_shape_flat"):
            continue        # then the *other* arrays disagree with it: tested with them
        with pytest.raises(exc, match=named(arg)):
            _call(backend, kernel, dt, **{arg: buf})


@pytest.mark.parametrize("kernel,arg", [(k, a) for k, a in _calls("buffers") if a != "param"])
def test_buffer_is_written_in_place(kernel, arg):
    # a valid buffer is the array the kernel returns or updates
    for mod in (cnn_core, reference):
        kwargs = CASES[kernel].make(np.float64)
        buf = kwargs[arg]
        before = buf.copy()
        result = getattr(mod, kernel)(**kwargs)
        returned = result if isinstance(result, tuple) else (result,)
        if arg in ("out", "grad_x", "grad", "indices", "save_mean", "save_invstd"):
            assert any(r is buf for r in returned), f"{mod.__name__}.{kernel} did not return {arg}"
        assert not np.array_equal(buf, before), f"{mod.__name__}.{kernel} did not write {arg}"


# ----------------------------------------------------------------------------------------
# Labels and masks
# ----------------------------------------------------------------------------------------

LABEL_CASES = [
    ("too_big", np.array([0, 4, 1]), ValueError),
    ("negative", np.array([0, -1, 1]), ValueError),
    ("too_big_uint8", np.array([0, 200, 1], dtype=np.uint8), ValueError),
    ("float", np.array([0.0, 1.0, 2.0]), TypeError),
    ("bool", np.array([True, False, True]), TypeError),
    ("too_short", np.array([0, 1]), ValueError),
    ("too_long", np.array([0, 1, 2, 3]), ValueError),
    ("2d", np.array([[0, 1, 2]]), ValueError),
    ("list", [0, 1, 2], TypeError),
]


@pytest.mark.parametrize("what,labels,exc", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_bad_labels(backend, what, labels, exc):
    with pytest.raises(exc, match=named("labels")):
        _call(backend, "softmax_cross_entropy", labels=labels)


def test_labels_need_a_class(backend):
    # C == 0: no label can be in range
    with pytest.raises(ValueError, match=f"{named('labels')}|{named('logits')}"):
        backend.softmax_cross_entropy(np.zeros((2, 0)), np.array([0, 0]))


MASK_CASES = [
    ("float", np.ones((3, 4)), TypeError),
    ("int64", np.ones((3, 4), np.int64), TypeError),
    ("list", np.ones((3, 4), np.uint8).tolist(), TypeError),
    ("wrong_shape", np.ones((4, 3), np.uint8), ValueError),
    ("flat", np.ones(12, np.uint8), ValueError),
]


@pytest.mark.parametrize("kernel", ["dropout_forward", "dropout_backward"])
@pytest.mark.parametrize("what,mask,exc", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_bad_mask(backend, kernel, what, mask, exc):
    with pytest.raises(exc, match=named("mask")):
        _call(backend, kernel, mask=mask)


# ----------------------------------------------------------------------------------------
# Hyper-parameters and other values
# ----------------------------------------------------------------------------------------

def _change_id(kernel, changes):
    """A readable test id: the kernel and the scalar values changed (arrays by shape)."""
    shown = (f"{n}={v.shape if isinstance(v, np.ndarray) else repr(v)}" for n, v in changes.items())
    return "-".join([kernel, *shown])


@pytest.mark.parametrize("kernel,changes,exc,arg", _calls("bad_values"),
                         ids=[_change_id(k, kw) for k, kw, _, _ in _calls("bad_values")])
def test_bad_value(backend, kernel, changes, exc, arg):
    pattern = named(arg) if arg != "nesterov" else r"(?i)nesterov"
    with pytest.raises(exc, match=pattern):
        _call(backend, kernel, **changes)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                     ("2", TypeError)])
def test_set_num_threads_rejects(backend, bad, exc):
    before = backend.get_num_threads()
    with pytest.raises(exc, match=named("n")):
        backend.set_num_threads(bad)
    assert backend.get_num_threads() == before


def test_runtime_helpers(backend):
    before = backend.get_num_threads()
    assert isinstance(before, int) and before >= 1
    try:
        backend.set_num_threads(1)
        assert backend.get_num_threads() == 1
    finally:
        backend.set_num_threads(before)
    assert isinstance(backend.openmp_enabled(), bool)
    features = backend.cpu_features()
    assert isinstance(features, dict)
    assert all(isinstance(v, bool) for v in features.values())
    for dt in (np.float32, np.float64):
        assert isinstance(backend.gemm_kernel_name(dt), str) and backend.gemm_kernel_name(dt)


def test_reference_runtime_helpers():
    assert reference.openmp_enabled() is False
    assert reference.cpu_features() == {}
    assert reference.gemm_kernel_name(np.float32) == "numpy"


def test_rejected_call_changes_nothing(backend):
    # a bad hyper-parameter is found before anything is written
    kwargs = CASES["adam_update"].make(np.float64)
    before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    kwargs["beta2"] = 1.0
    with pytest.raises(ValueError):
        backend.adam_update(**kwargs)
    for k, v in before.items():
        np.testing.assert_array_equal(kwargs[k], v)
    kwargs = CASES["softmax_cross_entropy"].make(np.float64)
    grad = kwargs["grad"].copy()
    kwargs["labels"] = np.array([0, 9, 1])
    with pytest.raises(ValueError):
        backend.softmax_cross_entropy(**kwargs)
    np.testing.assert_array_equal(kwargs["grad"], grad)


# ----------------------------------------------------------------------------------------
# Read-only inputs are fine: only what is written in place must be writeable
# ----------------------------------------------------------------------------------------

def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _results(kernel, kwargs, result):
    """Everything a call produced: its return values and its in-place arrays."""
    case = CASES[kernel]
    returned = result if isinstance(result, tuple) else (result,)
    written = [kwargs[a] for a in case.buffers + ((case.param,) if case.param else ())
               if kwargs.get(a) is not None]
    return [r for r in returned if isinstance(r, np.ndarray)] + written


@pytest.mark.parametrize("kernel", KERNELS)
def test_read_only_inputs(backend, kernel):
    # e.g. np.frombuffer over a downloaded file, np.broadcast_to, a memory-mapped dataset
    case = CASES[kernel]
    fn = getattr(backend, kernel)
    kwargs = case.make(np.float64)
    expected = _results(kernel, kwargs, fn(**kwargs))
    kwargs = case.make(np.float64)
    for name in [a for a in case.inputs if a != case.param] + ["mask", "labels", "indices"]:
        if isinstance(kwargs.get(name), np.ndarray) and name not in case.buffers:
            kwargs[name] = _read_only(kwargs[name])
    actual = _results(kernel, kwargs, fn(**kwargs))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def test_broadcast_input(backend):
    # a stride-0 view, read-only: copied like any non-contiguous input
    x = np.broadcast_to(np.linspace(-1, 1, 5), (3, 5))
    np.testing.assert_array_equal(backend.relu_forward(x), np.maximum(x, 0))
    np.testing.assert_allclose(backend.gemm(x, np.ones((5, 2))), x @ np.ones((5, 2)))
