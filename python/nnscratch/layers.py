"""Layers: `Linear`, the activations, `Dropout`, `Flatten`, `Conv2d`, `MaxPool2d`,
`BatchNorm1d`, `BatchNorm2d`.

Each layer's ``forward`` sits right above its ``backward`` and keeps what that backward
needs (the input, the output or the dropout mask). All arithmetic happens in the kernels
of the active backend (``nnscratch.backend.kernels()``); this file only chooses which
kernel runs, on which arrays, into which buffer.

Shapes: N is the batch size. ``output_shape`` / ``flops`` take and return per-sample
shapes (the batch axis left out), as ``Sequential.summary`` shows them.
"""
import itertools
import math
import numbers

import numpy as np

from . import _random
from .backend import kernels
from .module import Module, Parameter, check_float_dtype

__all__ = ["Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout",
           "Flatten", "Conv2d", "MaxPool2d", "BatchNorm1d", "BatchNorm2d", "LAYERS"]


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------

def _init_he(gen, fan_in, fan_out, size):
    # Kaiming normal: keeps the variance of ReLU activations from layer to layer
    return gen.normal(0.0, math.sqrt(2.0 / fan_in), size=size)


def _init_he_uniform(gen, fan_in, fan_out, size):
    bound = math.sqrt(6.0 / fan_in)
    return gen.uniform(-bound, bound, size=size)


def _init_xavier(gen, fan_in, fan_out, size):
    # Glorot uniform: for tanh / sigmoid networks
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return gen.uniform(-bound, bound, size=size)


def _init_xavier_normal(gen, fan_in, fan_out, size):
    return gen.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=size)


INITS = {"he": _init_he, "he_uniform": _init_he_uniform, "xavier": _init_xavier,
         "xavier_normal": _init_xavier_normal}


# Counts every assignment of a Linear's weight or bias: [a number that changes with each].
# A chain of Linear layers keeps their arrays between calls (`Sequential`, one sample's
# forward is a few microseconds) and looks them up again only when it changes.
PARAMETERS_REBOUND = [0]
_rebinds = itertools.count(1)


class _Rebindable:
    """A Linear's ``weight`` / ``bias``: kept in the instance's ``__dict__`` as a plain
    attribute (this descriptor has no ``__get__``, so reading it costs what reading any
    attribute does) while assigning it also changes `PARAMETERS_REBOUND`."""

    def __set_name__(self, owner, name):
        self.name = name

    def __set__(self, layer, value):
        layer.__dict__[self.name] = value
        PARAMETERS_REBOUND[0] = next(_rebinds)     # (after the assignment; one atomic next)

    def __delete__(self, layer):
        raise AttributeError(f"cannot delete {self.name} of {type(layer).__name__}: assign "
                             f"a Parameter" + (" (or None)" if self.name == "bias" else ""))


class Linear(Module):
    """Fully connected layer, ``y = x @ W + b`` (the seed's ``z = X @ W + b``).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
        Without bias, ``y = x @ W``.
    dtype : np.float32 (default) or np.float64
        Of the parameters and of the computation; inputs of another dtype are cast.
    init : {"he", "he_uniform", "xavier", "xavier_normal"}, default "he"
        Weight initialisation, drawn from the library generator (``nnscratch.seed``):
        "he" is N(0, 2/in_features) for ReLU networks, "xavier" is
        U(+-sqrt(6/(in+out))) for tanh / sigmoid ones. The bias starts at zero.

    Attributes
    ----------
    weight : Parameter (in_features, out_features)
        PyTorch stores the transpose: ``torch_linear.weight == weight.T``.
    bias : Parameter (out_features,) or None

    Shape
    -----
    input (N, in_features) -> output (N, out_features)
    """

    weight = _Rebindable()
    bias = _Rebindable()

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, init="he"):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        self.out_features = _check_positive_int("out_features", out_features)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r} (pass dtype= by name)")
        self.dtype = check_float_dtype(dtype)
        if init not in INITS:
            raise ValueError(f"Unknown init {init!r}; choose one of {sorted(INITS)}")
        self.init = init
        values = INITS[init](_random.generator(), self.in_features, self.out_features,
                             (self.in_features, self.out_features))
        self.weight = Parameter(values.astype(self.dtype))
        self.bias = Parameter(np.zeros(self.out_features, self.dtype)) if bias else None

    def _check(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input of shape (N, {self.in_features}), "
                             f"got {x.shape}")

    def forward(self, x, *, activation=None):
        # x (N, in) @ weight (in, out) + bias (out,) -> out (N, out); activation="relu"
        # applies max(., 0) in the same pass (Sequential uses it for a Linear-ReLU pair)
        x = self._as_input(x, self.dtype, self._check)
        self._x = x
        out = self._scratch("out", (x.shape[0], self.out_features), self.dtype, x)
        bias = None if self.bias is None else self.bias.data
        return kernels().linear_forward(x, self.weight.data, bias, out, activation=activation)

    def backward(self, grad_out, *, compute_grad_input=True):
        # grad_out (N, out) -> weight.grad += x.T @ grad_out, bias.grad += sum_n grad_out,
        # returns grad_x = grad_out @ weight.T (N, in)
        x = self._saved("_x")
        grad_out = self._as_grad(grad_out, (x.shape[0], self.out_features), self.dtype)
        grad_x = (self._scratch("grad_x", x.shape, self.dtype, grad_out, x)
                  if compute_grad_input else None)
        # after a zero_grad the kernel overwrites the gradients (beta = 0 in the GEMM)
        grad_w, accumulate = self.weight.grad_for_backward()
        grad_b = None
        if self.bias is not None:
            grad_b, bias_accumulate = self.bias.grad_for_backward()
            if bias_accumulate != accumulate:   # only one of the two was zeroed
                if not accumulate:
                    grad_w.fill(0)
                else:
                    grad_b.fill(0)
                accumulate = True
        try:
            return kernels().linear_backward(grad_out, x, self.weight.data, grad_w, grad_b,
                                             grad_x, compute_grad_x=compute_grad_input,
                                             accumulate=accumulate)
        except BaseException:
            if not accumulate:   # a rejected call leaves the gradients zero, as it found them
                grad_w.fill(0)
                if grad_b is not None:
                    grad_b.fill(0)
            raise

    def infer(self, x, *, activation=None):
        x = self._as_input(x, self.dtype, self._check)
        bias = None if self.bias is None else self.bias.data
        return kernels().linear_forward(x, self.weight.data, bias, activation=activation)

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self!r} expects samples of shape ({self.in_features},), "
                             f"got {tuple(input_shape)}")
        return (self.out_features,)

    def flops(self, input_shape):
        # one multiply and one add per weight, one add per bias
        return 2 * self.in_features * self.out_features + (
            self.out_features if self.bias is not None else 0)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": self.dtype.name, "init": self.init}

    def extra_repr(self):
        text = (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
        return text if self.dtype == np.float32 else f"{text}, dtype={self.dtype.name}"


# --------------------------------------------------------------------------------------
# Activations: one kernel pair each; the layer keeps the input or the output
# --------------------------------------------------------------------------------------

class _Activation(Module):
    """An activation computed by one forward/backward kernel pair.

    Inputs keep their dtype when float32/float64 (others become float32). Subclasses set
    ``_saves`` ("input" or "output": what their backward kernel reads), ``_flops`` per
    element, and implement ``_forward(K, x, out)`` / ``_backward(K, grad_out, saved, out)``.
    """

    _saves = "input"
    _flops = 1
    _ndim = None      # required input ndim, None = any

    def _check(self, x):
        if self._ndim is not None and x.ndim != self._ndim:
            raise ValueError(f"{self!r} expects a {self._ndim}-D input (N, C), got shape "
                             f"{x.shape}")

    def forward(self, x):
        x = self._as_input(x, check=self._check)
        out = self._forward(kernels(), x, self._scratch("out", x.shape, x.dtype))
        self._kept = x if self._saves == "input" else out
        return out

    def backward(self, grad_out, *, compute_grad_input=True):
        kept = self._saved("_kept")
        if not compute_grad_input:
            return None
        grad_out = self._as_grad(grad_out, kept.shape, kept.dtype)
        out = self._scratch("grad_x", kept.shape, kept.dtype)
        return self._backward(kernels(), grad_out, kept, out)

    def infer(self, x):
        return self._forward(kernels(), self._as_input(x, check=self._check), None)

    def flops(self, input_shape):
        return self._flops * math.prod(input_shape)


class ReLU(_Activation):
    """``y = max(x, 0)``; backward ``grad * (x > 0)``. Shape: any -> same."""

    def _forward(self, K, x, out):
        return K.relu_forward(x, out)

    def _backward(self, K, grad_out, x, out):
        return K.relu_backward(grad_out, x, out)

    def keep_output(self, y):
        """Take ``y = relu(z)`` computed elsewhere (a Linear's fused ReLU, in `Sequential`)
        as this layer's forward: backward reads it where it would read z, since
        relu(z) > 0 exactly where z > 0. Returns y."""
        self._kept = y
        return y


class LeakyReLU(_Activation):
    """``y = x if x > 0 else negative_slope * x``. Shape: any -> same.

    Parameters
    ----------
    negative_slope : float, default 0.01
    """

    _flops = 2

    def __init__(self, negative_slope=0.01):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
                or not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def _forward(self, K, x, out):
        return K.leaky_relu_forward(x, self.negative_slope, out)

    def _backward(self, K, grad_out, x, out):
        return K.leaky_relu_backward(grad_out, x, self.negative_slope, out)

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``; backward ``grad * y * (1 - y)``. Shape: any -> same."""

    _saves = "output"
    _flops = 3

    def _forward(self, K, x, out):
        return K.sigmoid_forward(x, out)

    def _backward(self, K, grad_out, y, out):
        return K.sigmoid_backward(grad_out, y, out)


class Tanh(_Activation):
    """``y = tanh(x)``; backward ``grad * (1 - y**2)``. Shape: any -> same."""

    _saves = "output"
    _flops = 5

    def _forward(self, K, x, out):
        return K.tanh_forward(x, out)

    def _backward(self, K, grad_out, y, out):
        return K.tanh_backward(grad_out, y, out)


class Softmax(_Activation):
    """Softmax of each row, ``y[i, j] = exp(x[i, j]) / sum_k exp(x[i, k])``.

    For training a classifier, end the model with logits and use ``CrossEntropyLoss``
    (which fuses the softmax); this layer is for models that must output probabilities.

    Shape: (N, C) -> (N, C).
    """

    _saves = "output"
    _flops = 5
    _ndim = 2

    def _forward(self, K, x, out):
        return K.softmax_forward(x, out)

    def _backward(self, K, grad_out, y, out):
        return K.softmax_backward(grad_out, y, out)

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self!r} expects samples of shape (C,), got {tuple(input_shape)}")
        return tuple(input_shape)


# --------------------------------------------------------------------------------------
# Dropout and Flatten
# --------------------------------------------------------------------------------------

class Dropout(Module):
    """Inverted dropout: in training mode each element is zeroed with probability ``p``
    and the others are scaled by ``1 / (1 - p)``; in eval mode the identity.

    The keep-mask (uint8) is drawn from the library generator (``nnscratch.seed``).

    Parameters
    ----------
    p : float in [0, 1), default 0.5

    Shape: any -> same.
    """

    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"dropout probability has to be in [0, 1), got {p!r}")
        self.p = float(p)
        self.scale = 1.0 / (1.0 - self.p)

    def forward(self, x):
        x = self._as_input(x)
        self._shape, self._dtype = x.shape, x.dtype
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        # mask = (uniform >= p), drawn into kept buffers: no allocation in steady state
        uniform = self._scratch("uniform", x.shape, np.dtype(np.float32))
        mask = self._scratch("mask", x.shape, np.dtype(np.uint8))
        _random.generator().random(dtype=np.float32, out=uniform)
        np.greater_equal(uniform, self.p, out=mask.view(np.bool_))
        self._mask = mask
        return kernels().dropout_forward(x, mask, self.scale,
                                         self._scratch("out", x.shape, x.dtype))

    def backward(self, grad_out, *, compute_grad_input=True):
        # grad_x = grad_out * mask * scale, with the forward pass's mask
        shape = self._saved("_shape")
        if not compute_grad_input:
            return None
        grad_out = self._as_grad(grad_out, shape, self._dtype)
        if self._mask is None:
            return grad_out
        return kernels().dropout_backward(grad_out, self._mask, self.scale,
                                          self._scratch("grad_x", shape, self._dtype))

    def infer(self, x):
        return self._as_input(x)

    def get_config(self):
        return {"p": self.p}


class Flatten(Module):
    """Flatten every sample into a vector: (N, d1, d2, ...) -> (N, d1 * d2 * ...).

    Keeps the input's dtype (a reshape: no copy for C-contiguous input).
    """

    def _flatten(self, x):
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{self!r} expects a real-valued input, got dtype {x.dtype}")
        if x.ndim < 1:
            raise ValueError(f"{self!r} expects input of shape (N, ...), got a scalar")
        return x, x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def forward(self, x):
        x, flat = self._flatten(x)
        self._shape = x.shape
        return flat

    def backward(self, grad_out, *, compute_grad_input=True):
        shape = self._saved("_shape")
        if not compute_grad_input:
            return None
        flat = (shape[0], math.prod(shape[1:]))
        grad_out = np.asarray(grad_out)
        if grad_out.shape != flat:
            raise ValueError(f"{self!r}: grad_out has shape {grad_out.shape}, expected {flat}")
        return grad_out.reshape(shape)

    def infer(self, x):
        return self._flatten(x)[1]

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)


# --------------------------------------------------------------------------------------
# Convolution and pooling (NCHW)
# --------------------------------------------------------------------------------------

def _size_arg(name, value, minimum):
    """A size argument given as an int or a pair of ints (height, width).

    Returns ``(public, (h, w))``: `public` is what the layer shows and saves (the int as
    given, or the pair as a tuple: forms ``torch.nn.Conv2d`` accepts too), ``(h, w)`` what
    the kernels receive.
    """
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        pair = (int(value), int(value))
        public = int(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_int, value)):
        pair = public = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return public, pair


class Conv2d(Module):
    """2-D convolution over NCHW images (cross-correlation, as ``torch.nn.Conv2d``).

    ::

        out[n, o, i, j] = bias[o]
                          + sum_{c, p, q} weight[o, c, p, q] * xpad[n, c, i*sh + p, j*sw + q]

    where ``xpad`` is x with ``padding`` zeros around each plane.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0
        Zeros added on both sides of the height and the width.
    bias : bool, default True
    dtype : np.float32 (default) or np.float64
        Of the parameters and of the computation; inputs of another dtype are cast.
    init : {"he", "he_uniform", "xavier", "xavier_normal"}, default "he"
        As for `Linear`, with ``fan_in = in_channels * kh * kw`` and
        ``fan_out = out_channels * kh * kw``; the bias starts at zero.

    Attributes
    ----------
    weight : Parameter (out_channels, in_channels, kh, kw)
        The same layout as PyTorch's.
    bias : Parameter (out_channels,) or None
    kernel_size, stride, padding
        As given: an int or a tuple of two ints.

    Shape
    -----
    input (N, in_channels, H, W) -> output (N, out_channels, OH, OW), with
    ``OH = (H + 2*padding_h - kh) // stride_h + 1`` (OW likewise).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32, init="he"):
        super().__init__()
        self.in_channels = _check_positive_int("in_channels", in_channels)
        self.out_channels = _check_positive_int("out_channels", out_channels)
        self.kernel_size, self._kernel = _size_arg("kernel_size", kernel_size, 1)
        self.stride, self._stride = _size_arg("stride", stride, 1)
        self.padding, self._padding = _size_arg("padding", padding, 0)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r} (pass dtype= by name)")
        self.dtype = check_float_dtype(dtype)
        if init not in INITS:
            raise ValueError(f"Unknown init {init!r}; choose one of {sorted(INITS)}")
        self.init = init
        kh, kw = self._kernel
        shape = (self.out_channels, self.in_channels, kh, kw)
        values = INITS[init](_random.generator(), self.in_channels * kh * kw,
                             self.out_channels * kh * kw, shape)
        self.weight = Parameter(values.astype(self.dtype))
        self.bias = Parameter(np.zeros(self.out_channels, self.dtype)) if bias else None

    def _out_hw(self, h, w):
        """(OH, OW) for an (h, w) input, or None when the input is smaller than the kernel."""
        (kh, kw), (sh, sw), (ph, pw) = self._kernel, self._stride, self._padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            return None
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _check_sample(self, shape, what):
        # shape: (C, H, W) of one sample; `what` is the full shape to report
        expected = f"(N, {self.in_channels}, H, W)"
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"{self!r} expects input of shape {expected}, got {what}")
        if self._out_hw(*shape[1:]) is None:
            kh, kw = self._kernel
            raise ValueError(f"{self!r}: input of shape {what} is smaller than the "
                             f"{kh}x{kw} kernel (with padding {self._padding})")

    def _check(self, x):
        self._check_sample(x.shape[1:], x.shape)

    def forward(self, x):
        # x (N, C, H, W) * weight (O, C, KH, KW) + bias (O,) -> out (N, O, OH, OW)
        x = self._as_input(x, self.dtype, self._check)
        self._x = x
        out = self._scratch("out", (x.shape[0], self.out_channels) + self._out_hw(*x.shape[2:]),
                            self.dtype)
        bias = None if self.bias is None else self.bias.data
        return kernels().conv2d_forward(x, self.weight.data, bias, out, stride=self._stride,
                                        padding=self._padding)

    def backward(self, grad_out, *, compute_grad_input=True):
        # grad_out (N, O, OH, OW) -> weight.grad += dL/dw, bias.grad += sum over (N, OH, OW),
        # returns grad_x (N, C, H, W)
        x = self._saved("_x")
        out_shape = (x.shape[0], self.out_channels) + self._out_hw(*x.shape[2:])
        grad_out = self._as_grad(grad_out, out_shape, self.dtype)
        grad_x = self._scratch("grad_x", x.shape, self.dtype) if compute_grad_input else None
        grad_b = None if self.bias is None else self.bias.grad
        return kernels().conv2d_backward(grad_out, x, self.weight.data, self.weight.grad,
                                         grad_b, grad_x, stride=self._stride,
                                         padding=self._padding,
                                         compute_grad_x=compute_grad_input)

    def infer(self, x):
        x = self._as_input(x, self.dtype, self._check)
        bias = None if self.bias is None else self.bias.data
        return kernels().conv2d_forward(x, self.weight.data, bias, stride=self._stride,
                                        padding=self._padding)

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_sample(input_shape, f"samples of shape {input_shape}")
        return (self.out_channels,) + self._out_hw(*input_shape[1:])

    def flops(self, input_shape):
        # per output element: one multiply and one add per weight of its filter, plus the bias
        oh, ow = self.output_shape(input_shape)[1:]
        kh, kw = self._kernel
        per_output = 2 * self.in_channels * kh * kw + (1 if self.bias is not None else 0)
        return per_output * self.out_channels * oh * ow

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "bias": self.bias is not None,
                "dtype": self.dtype.name, "init": self.init}

    def extra_repr(self):
        text = (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")
        return text if self.dtype == np.float32 else f"{text}, dtype={self.dtype.name}"


class MaxPool2d(Module):
    """2-D max pooling over NCHW images: the largest value of each window.

    ::

        out[n, c, i, j] = max_{p < kh, q < kw} x[n, c, i*sh + p, j*sw + q]

    No padding, floor mode (PyTorch's defaults): a last partial window is dropped. The
    backward pass sends each output's gradient to the position of its maximum (the first
    one in row-major order when several are equal).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to `kernel_size` (windows side by side).

    Shape
    -----
    input (N, C, H, W) -> output (N, C, OH, OW), ``OH = (H - kh) // stride_h + 1``
    (OW likewise). Keeps the input's float dtype.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self._kernel = _size_arg("kernel_size", kernel_size, 1)
        self.stride, self._stride = _size_arg("stride", kernel_size if stride is None
                                              else stride, 1)

    def _out_hw(self, h, w):
        (kh, kw), (sh, sw) = self._kernel, self._stride
        if h < kh or w < kw:
            return None
        return (h - kh) // sh + 1, (w - kw) // sw + 1

    def _check_sample(self, shape, what):
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects input of shape (N, C, H, W), got {what}")
        if self._out_hw(*shape[1:]) is None:
            kh, kw = self._kernel
            raise ValueError(f"{self!r}: input of shape {what} is smaller than the "
                             f"{kh}x{kw} pooling window")

    def _check(self, x):
        self._check_sample(x.shape[1:], x.shape)

    def forward(self, x):
        # x (N, C, H, W) -> out (N, C, OH, OW), indices (N, C, OH, OW) of the maxima
        x = self._as_input(x, check=self._check)
        shape = x.shape[:2] + self._out_hw(*x.shape[2:])
        out, indices = kernels().maxpool2d_forward(
            x, self._kernel, self._stride, self._scratch("out", shape, x.dtype),
            self._scratch("indices", shape, np.dtype(np.int64)))
        self._x_shape, self._dtype, self._indices = x.shape, x.dtype, indices
        return out

    def backward(self, grad_out, *, compute_grad_input=True):
        # grad_out (N, C, OH, OW) -> grad_x (N, C, H, W): zeros, plus grad_out at the maxima
        x_shape = self._saved("_x_shape")
        if not compute_grad_input:
            return None
        grad_out = self._as_grad(grad_out, self._indices.shape, self._dtype)
        return kernels().maxpool2d_backward(grad_out, self._indices, x_shape,
                                            self._scratch("grad_x", x_shape, self._dtype))

    def infer(self, x):
        x = self._as_input(x, check=self._check)
        return kernels().maxpool2d_forward(x, self._kernel, self._stride)[0]

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_sample(input_shape, f"samples of shape {input_shape}")
        return input_shape[:1] + self._out_hw(*input_shape[1:])

    def flops(self, input_shape):
        # kh*kw - 1 comparisons per output
        c, oh, ow = self.output_shape(input_shape)
        kh, kw = self._kernel
        return (kh * kw - 1) * c * oh * ow

    def get_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride}


# --------------------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------------------

class _BatchNorm(Module):
    """Batch normalisation of each channel (axis 1), ``torch.nn.BatchNorm1d/2d`` semantics.

    Per channel c, over the batch (and the positions of an image)::

        y = weight[c] * (x - mean[c]) / sqrt(var[c] + eps) + bias[c]

    In training mode mean and var are the batch's (var biased), and the running
    statistics move towards them: ``running = (1 - momentum) * running + momentum *
    batch`` (the variance with Bessel's correction, as PyTorch). In eval mode, and always
    in `infer`, the running statistics are used and left untouched. They are buffers:
    saved and restored by ``save`` / ``load``.

    Subclasses set ``_sample_ndims`` (the accepted ndims of one sample) and ``_shape_text``
    (the input shape, for error messages).
    """

    _sample_ndims = ()
    _shape_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        self.num_features = _check_positive_int("num_features", num_features)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or \
                not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or \
                not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.dtype = check_float_dtype(dtype)
        self.weight = Parameter(np.ones(self.num_features, self.dtype))    # gamma
        self.bias = Parameter(np.zeros(self.num_features, self.dtype))     # beta
        self.running_mean = np.zeros(self.num_features, self.dtype)
        self.running_var = np.ones(self.num_features, self.dtype)

    def named_buffers(self):
        return [("running_mean", self.running_mean), ("running_var", self.running_var)]

    def _check_sample(self, shape, what):
        if len(shape) not in self._sample_ndims or shape[0] != self.num_features:
            raise ValueError(f"{self!r} expects input of shape "
                             f"{self._shape_text.format(C=self.num_features)}, got {what}")

    def _check(self, x):
        self._check_sample(x.shape[1:], x.shape)

    @staticmethod
    def _as_kernel_shape(x):
        """x as the kernel takes it: (N, C) or (N, C, H, W); (N, C, L) -> (N, C, L, 1)."""
        return x.reshape(x.shape + (1,)) if x.ndim == 3 else x

    def forward(self, x):
        # x (N, C, ...) -> out (x's shape); keeps the mean and 1/std used, for backward
        x = self._as_input(x, self.dtype, self._check)
        shape, x = x.shape, self._as_kernel_shape(x)
        c, training = self.num_features, self.training
        if training and x.size // c <= 1:
            raise ValueError(f"{self!r} in training mode needs more than one value per "
                             f"channel, got input of shape {shape}")
        out, mean, invstd = kernels().batchnorm_forward(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            training=training, momentum=self.momentum, eps=self.eps,
            out=self._scratch("out", x.shape, self.dtype),
            save_mean=self._scratch("save_mean", (c,), self.dtype),
            save_invstd=self._scratch("save_invstd", (c,), self.dtype))
        self._x, self._shape, self._mean, self._invstd = x, shape, mean, invstd
        self._batch_statistics = training
        return out.reshape(shape) if out.shape != shape else out

    def backward(self, grad_out, *, compute_grad_input=True):
        # grad_out (x's shape) -> weight.grad += sum(g * xhat), bias.grad += sum(g), grad_x
        x = self._saved("_x")
        grad_out = self._as_grad(grad_out, self._shape, self.dtype)
        grad_x = self._scratch("grad_x", x.shape, self.dtype) if compute_grad_input else None
        grad_x = kernels().batchnorm_backward(
            grad_out.reshape(x.shape), x, self.weight.data, self._mean, self._invstd,
            self.weight.grad, self.bias.grad, grad_x, training=self._batch_statistics,
            compute_grad_x=compute_grad_input)
        if grad_x is None or grad_x.shape == self._shape:
            return grad_x
        return grad_x.reshape(self._shape)

    def infer(self, x):
        x = self._as_input(x, self.dtype, self._check)
        out = kernels().batchnorm_forward(
            self._as_kernel_shape(x), self.weight.data, self.bias.data, self.running_mean,
            self.running_var, training=False, momentum=self.momentum, eps=self.eps)[0]
        return out.reshape(x.shape)

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_sample(input_shape, f"samples of shape {input_shape}")
        return input_shape

    def flops(self, input_shape):
        # eval mode: one multiply and one add per element (scale and shift folded per channel)
        return 2 * math.prod(self.output_shape(input_shape))

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "dtype": self.dtype.name}

    def extra_repr(self):
        text = f"num_features={self.num_features}, eps={self.eps}, momentum={self.momentum}"
        return text if self.dtype == np.float32 else f"{text}, dtype={self.dtype.name}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of features: each of the C columns over the batch (and over L).

    Parameters
    ----------
    num_features : int
        C.
    eps : float > 0, default 1e-5
        Added to the variance.
    momentum : float in [0, 1], default 0.1
        Weight of the batch's statistics in the running ones.
    dtype : np.float32 (default) or np.float64

    Attributes
    ----------
    weight, bias : Parameter (C,)
        gamma (ones) and beta (zeros).
    running_mean, running_var : ndarray (C,)
        Buffers: zeros and ones at the start.

    Shape
    -----
    input (N, C) or (N, C, L) -> output of the same shape.
    """

    _sample_ndims = (1, 2)
    _shape_text = "(N, {C}) or (N, {C}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of image channels: each channel over the batch and its H x W
    positions. Parameters and attributes as `BatchNorm1d`.

    Shape
    -----
    input (N, C, H, W) -> output (N, C, H, W).
    """

    _sample_ndims = (3,)
    _shape_text = "(N, {C}, H, W)"


LAYERS = {cls.__name__: cls for cls in
          (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Dropout, Flatten, Conv2d, MaxPool2d,
           BatchNorm1d, BatchNorm2d)}
