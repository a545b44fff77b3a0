"""Layers: `Linear`, the activations, `Dropout`, `Flatten`.

Each layer's ``forward`` sits right above its ``backward`` and keeps what that backward
needs (the input, the output or the dropout mask). All arithmetic happens in the kernels
of the active backend (``nnscratch.backend.kernels()``); this file only chooses which
kernel runs, on which arrays, into which buffer.

Shapes: N is the batch size. ``output_shape`` / ``flops`` take and return per-sample
shapes (the batch axis left out), as ``Sequential.summary`` shows them.
"""
import math
import numbers

import numpy as np

from . import _random
from .backend import kernels
from .module import Module, Parameter, check_float_dtype

__all__ = ["Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout",
           "Flatten", "LAYERS"]


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------

def _init_he(gen, fan_in, fan_out):
    # Kaiming normal: keeps the variance of ReLU activations from layer to layer
    return gen.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def _init_he_uniform(gen, fan_in, fan_out):
    bound = math.sqrt(6.0 / fan_in)
    return gen.uniform(-bound, bound, size=(fan_in, fan_out))


def _init_xavier(gen, fan_in, fan_out):
    # Glorot uniform: for tanh / sigmoid networks
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return gen.uniform(-bound, bound, size=(fan_in, fan_out))


def _init_xavier_normal(gen, fan_in, fan_out):
    return gen.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


INITS = {"he": _init_he, "he_uniform": _init_he_uniform, "xavier": _init_xavier,
         "xavier_normal": _init_xavier_normal}


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
        values = INITS[init](_random.generator(), self.in_features, self.out_features)
        self.weight = Parameter(values.astype(self.dtype))
        self.bias = Parameter(np.zeros(self.out_features, self.dtype)) if bias else None

    def _check(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input of shape (N, {self.in_features}), "
                             f"got {x.shape}")

    def forward(self, x):
        # x (N, in) @ weight (in, out) + bias (out,) -> out (N, out)
        x = self._as_input(x, self.dtype, self._check)
        self._x = x
        out = self._scratch("out", (x.shape[0], self.out_features), self.dtype)
        bias = None if self.bias is None else self.bias.data
        return kernels().linear_forward(x, self.weight.data, bias, out)

    def backward(self, grad_out, *, compute_grad_input=True):
        # grad_out (N, out) -> weight.grad += x.T @ grad_out, bias.grad += sum_n grad_out,
        # returns grad_x = grad_out @ weight.T (N, in)
        x = self._saved("_x")
        grad_out = self._as_grad(grad_out, (x.shape[0], self.out_features), self.dtype)
        grad_x = self._scratch("grad_x", x.shape, self.dtype) if compute_grad_input else None
        grad_b = None if self.bias is None else self.bias.grad
        return kernels().linear_backward(grad_out, x, self.weight.data, self.weight.grad,
                                         grad_b, grad_x, compute_grad_x=compute_grad_input)

    def infer(self, x):
        x = self._as_input(x, self.dtype, self._check)
        bias = None if self.bias is None else self.bias.data
        return kernels().linear_forward(x, self.weight.data, bias)

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


LAYERS = {cls.__name__: cls for cls in
          (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Dropout, Flatten)}
