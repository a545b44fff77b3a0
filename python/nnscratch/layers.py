"""Layers: `Linear`, the activations, `Dropout`, `Flatten`, `Identity`.

Each layer's ``forward`` sits right above its ``backward`` and keeps what that backward
needs (the input, the output or the dropout mask). All arithmetic happens in the kernels of
the active backend (``nnscratch.backend.kernels()``: ``cnn_core`` or its NumPy twins
``cnn_core.reference``); a layer only chooses which kernel runs on which arrays. ``infer``
is the eval-mode forward that keeps nothing (``predict`` calls it).

Shapes: N is the batch size. ``output_shape`` / ``flops`` take and return per-sample shapes
(the batch axis left out), as ``Sequential.summary`` shows them. Convolution and pooling are
in ``nnscratch.conv``, batch normalisation in ``nnscratch.norm``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, cast

import numpy as np
import numpy.typing as npt

from . import _checks, _random, init as _init
from .backend import kernels
from .module import Module, Parameter, register

__all__ = ["Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout", "Flatten",
           "Identity", "Residual"]


@register
class Linear(Module):
    """Fully connected layer, ``y = x @ W + b``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
        Without bias, ``y = x @ W``.
    dtype : np.float32 (default) or np.float64
        Of the parameters and of the computation; inputs of another dtype are cast.
    init : str, default "he"
        How the weights start (``nnscratch.init``), with ``fan_in = in_features``; the
        bias starts at zero, but for ``"torch"`` (PyTorch's default: weight and bias
        U(-1/sqrt(in_features), 1/sqrt(in_features))).

    Attributes
    ----------
    weight : Parameter (in_features, out_features)
        Read left to right: input feature i feeds output j through ``weight[i, j]``.
        PyTorch stores the transpose: ``torch_linear.weight == weight.T``.
    bias : Parameter (out_features,) or None

    Shape
    -----
    input (N, in_features) -> output (N, out_features)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: npt.DTypeLike = np.float32, init: str = "he") -> None:
        super().__init__()
        self.in_features = _checks.integer("in_features", in_features, 1)
        self.out_features = _checks.integer("out_features", out_features, 1)
        _checks.boolean("bias", bias)
        self.dtype = _checks.float_dtype(dtype)
        self.init = _init.check(init)
        shape = (self.in_features, self.out_features)
        values = _init.draw(init, self.in_features, self.out_features, shape)
        self.weight = Parameter(values.astype(self.dtype))
        self.bias: Parameter | None = None
        if bias:
            values = _init.draw_bias(init, self.in_features, (self.out_features,))
            self.bias = Parameter(values.astype(self.dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        # z = x @ W + b:   x (N, in) @ weight (in, out) + bias (out,) -> z (N, out)
        x = self._input(x, self.dtype, self._check)
        self._x = x                         # backward needs it: dL/dW = x.T @ dL/dz
        return kernels().linear_forward(x, self.weight.data, self._bias())

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # g = dL/dz (N, out):  dL/dW += x.T @ g,  dL/db += sum of g over the batch,
        #                      dL/dx  = g @ W.T (N, in)
        x = self._saved("_x")
        g = self._grad_of(grad_out, (x.shape[0], self.out_features), self.dtype)
        return kernels().linear_backward(g, x, self.weight.data, self.weight.grad,
                                         None if self.bias is None else self.bias.grad,
                                         compute_grad_x=compute_grad_input)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, self.dtype, self._check)
        return kernels().linear_forward(x, self.weight.data, self._bias())

    def _bias(self):
        return None if self.bias is None else self.bias.data

    def _check(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input of shape (N, {self.in_features}), "
                             f"got {x.shape}")

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self!r} expects samples of shape ({self.in_features},), "
                             f"got {tuple(input_shape)}")
        return (self.out_features,)

    def flops(self, input_shape: Sequence[int]) -> int:
        # one multiply and one add per weight, one add per bias
        return 2 * self.in_features * self.out_features + (
            self.out_features if self.bias is not None else 0)

    def get_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": self.dtype.name, "init": self.init}

    def extra_repr(self) -> str:
        text = (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
        return text if self.dtype == np.float32 else f"{text}, dtype={self.dtype.name}"


# --------------------------------------------------------------------------------------
# Activations: a kernel for y = f(x) and one for dL/dx = dL/dy * f'(x)
# --------------------------------------------------------------------------------------

class _Activation(Module):
    """An elementwise activation computed by a pair of kernels.

    Subclasses give ``_f(K, x, out=None)`` (the forward kernel call) and
    ``_df(K, g, kept, out=None)`` (the backward one) and say what the backward reads: the input x (``_keeps = "input"``: ReLU's
    derivative is ``x > 0``) or the output y (``"output"``: sigmoid's is ``y * (1 - y)``,
    cheaper from y than from x). Inputs keep a float dtype; others become float32.
    """

    _keeps = "input"
    _flops = 1          # per element, for summary()
    # the kernel calls, given by each subclass: _f(K, x, out=None), _df(K, g, kept, out=None)
    _f: Callable[..., np.ndarray]
    _df: Callable[..., np.ndarray]

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, check=self._check)
        y = self._f(kernels(), x)
        self._kept = x if self._keeps == "input" else y      # what the backward kernel reads
        return y

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        kept = self._saved("_kept")
        return self._df(kernels(), self._grad_of(grad_out, kept.shape, kept.dtype), kept)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._f(kernels(), self._input(x, check=self._check))

    def _check(self, x):
        pass

    def flops(self, input_shape: Sequence[int]) -> int:
        return self._flops * math.prod(input_shape)


@register
class ReLU(_Activation):
    """``y = max(x, 0)``; backward ``dL/dx = dL/dy * (x > 0)``. Shape: any -> same."""

    def _f(self, K, x, out=None):
        return K.relu_forward(x, out)

    def _df(self, K, g, x, out=None):
        return K.relu_backward(g, x, out)


@register
class LeakyReLU(_Activation):
    """``y = x if x > 0 else negative_slope * x``. Shape: any -> same.

    Parameters
    ----------
    negative_slope : float, default 0.01
    """

    _flops = 2

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = _checks.real("negative_slope", negative_slope)

    def _f(self, K, x, out=None):
        return K.leaky_relu_forward(x, self.negative_slope, out)

    def _df(self, K, g, x, out=None):
        return K.leaky_relu_backward(g, x, self.negative_slope, out)

    def get_config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


@register
class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``; backward ``dL/dx = dL/dy * y * (1 - y)``. Shape: any."""

    _keeps = "output"
    _flops = 3

    def _f(self, K, x, out=None):
        return K.sigmoid_forward(x, out)

    def _df(self, K, g, y, out=None):
        return K.sigmoid_backward(g, y, out)


@register
class Tanh(_Activation):
    """``y = tanh(x)``; backward ``dL/dx = dL/dy * (1 - y**2)``. Shape: any."""

    _keeps = "output"
    _flops = 5

    def _f(self, K, x, out=None):
        return K.tanh_forward(x, out)

    def _df(self, K, g, y, out=None):
        return K.tanh_backward(g, y, out)


@register
class Softmax(_Activation):
    """Softmax of each row, ``y[i, j] = exp(x[i, j]) / sum_k exp(x[i, k])``.

    For training a classifier, end the model with logits and use ``CrossEntropyLoss``
    (which fuses the softmax); this layer is for models that must output probabilities.

    Shape: (N, C) -> (N, C).
    """

    _keeps = "output"
    _flops = 5

    def _f(self, K, x, out=None):
        return K.softmax_forward(x, out)

    def _df(self, K, g, y, out=None):
        return K.softmax_backward(g, y, out)

    def _check(self, x):
        if x.ndim != 2:
            raise ValueError(f"{self!r} expects a 2-D input (N, C), got shape {x.shape}")

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        if len(input_shape) != 1:
            raise ValueError(f"{self!r} expects samples of shape (C,), got {tuple(input_shape)}")
        return tuple(input_shape)


# --------------------------------------------------------------------------------------
# Dropout, Flatten, Identity
# --------------------------------------------------------------------------------------

@register
class Dropout(Module):
    """Inverted dropout: in training mode each element is zeroed with probability ``p`` and
    the others are scaled by ``1 / (1 - p)``, so that the expected output is the input; in
    eval mode the identity.

    The keep-mask (1 = kept) is drawn from the library generator (``nnscratch.seed``).

    Parameters
    ----------
    p : float in [0, 1), default 0.5

    Shape
    -----
    any -> same.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _checks.real("dropout probability p", p, 0.0, 1.0, high_open=True)
        self.scale = 1.0 / (1.0 - self.p)

    def forward(self, x: np.ndarray) -> np.ndarray:
        # y = x * mask * scale, mask[i] = 1 with probability 1 - p
        x = self._input(x)
        self._shape, self._dtype = x.shape, x.dtype
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        uniform = _random.generator().random(x.shape, dtype=np.float32)
        self._mask = (uniform >= self.p).view(np.uint8)
        return kernels().dropout_forward(x, self._mask, self.scale)

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # dL/dx = dL/dy * mask * scale, with the forward pass's mask
        shape = self._saved("_shape")
        g = self._grad_of(grad_out, shape, self._dtype)
        if self._mask is None:
            return g
        return kernels().dropout_backward(g, self._mask, self.scale)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._input(x)

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p}


@register
class Flatten(Module):
    """Flatten every sample into a vector: (N, d1, d2, ...) -> (N, d1 * d2 * ...).

    Keeps the input's dtype (a reshape: no copy for C-contiguous input).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._flat_input(x)
        self._shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        return self._unflatten(grad_out, self._saved("_shape"))

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = self._flat_input(x)
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def _flat_input(self, x):
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{self!r} expects a real-valued input, got dtype {x.dtype}")
        if x.ndim < 1:
            raise ValueError(f"{self!r} expects input of shape (N, ...), got a scalar")
        return x

    def _unflatten(self, grad_out, shape):
        """dL/dx: the gradient (N, d1 * d2 * ...) back in the input's shape."""
        grad_out = np.asarray(grad_out)
        flat = (shape[0], math.prod(shape[1:]))
        if grad_out.shape != flat:
            raise ValueError(f"{self!r}: grad_out has shape {grad_out.shape}, expected {flat}")
        return grad_out.reshape(shape)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return (math.prod(input_shape),)


@register
class Identity(Module):
    """``y = x``; backward ``dL/dx = dL/dy``. A placeholder (e.g. a residual block's
    shortcut when the shapes already agree). Shape: any -> same."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        return grad_out

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x


@register
class Residual(Module):
    """A residual connection: ``y = body(x) + shortcut(x)``, the shortcut the identity
    (``y = body(x) + x``) when it is None.

    The body learns only what to add to its input (He et al. 2016), and the sum gives the
    gradient a path around the body: backward sends ``dL/dy`` down both branches and adds
    what comes back, ``dL/dx = body.backward(dL/dy) + shortcut.backward(dL/dy)`` (the second
    term is ``dL/dy`` itself for the identity) -- so however small the body's gradient, the
    layers below still get ``dL/dy``.

    Parameters
    ----------
    body : Module
        The branch that computes: in a ResNet, conv-BN-ReLU-conv-BN.
    shortcut : Module, optional
        Where the body changes the shape (a stride, more channels), what brings `x` to the
        body's output shape: in a ResNet a 1x1 convolution with the stride, and batch norm.
        None: the identity, and the body must keep the shape.

    Shape
    -----
    the body's: input (N, ...) -> output (N, ...); the two branches must agree.
    """

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        if not isinstance(body, Module):
            raise TypeError(f"Residual: body must be a Module, got {type(body).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"Residual: shortcut must be a Module or None, got "
                            f"{type(shortcut).__name__}")
        self.body = body
        self.shortcut = shortcut

    def _sum(self, y, s):
        if y.shape != s.shape:
            branch = "the shortcut" if self.shortcut is not None else "the input (identity)"
            raise ValueError(f"Residual: the body gives shape {y.shape[1:]} per sample and "
                             f"{branch} {s.shape[1:]}; they must agree (a shortcut brings x "
                             f"to the body's shape)")
        return y + s

    def forward(self, x: np.ndarray) -> np.ndarray:
        s = x if self.shortcut is None else self.shortcut(x)
        return self._sum(self.body(x), s)

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # the sum's gradient goes to both branches unchanged; the input gets both back
        # (arrays: each branch is asked for its input's gradient)
        g_body = cast(np.ndarray, self.body.backward(grad_out))
        g_short = grad_out if self.shortcut is None else \
            cast(np.ndarray, self.shortcut.backward(grad_out))
        return g_body + g_short

    def infer(self, x: np.ndarray) -> np.ndarray:
        s = x if self.shortcut is None else self.shortcut.infer(x)
        return self._sum(self.body.infer(x), s)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        body = tuple(self.body.output_shape(input_shape))
        short = tuple(input_shape) if self.shortcut is None else \
            tuple(self.shortcut.output_shape(input_shape))
        if body != short:
            raise ValueError(f"Residual: the body gives shape {body} per sample and the "
                             f"{'shortcut' if self.shortcut is not None else 'input'} {short}")
        return body

    def flops(self, input_shape: Sequence[int]) -> int:
        short = 0 if self.shortcut is None else self.shortcut.flops(input_shape)
        return self.body.flops(input_shape) + short + math.prod(self.output_shape(input_shape))

    def get_config(self) -> dict[str, Any]:
        return {"body": self.body, "shortcut": self.shortcut}

    def extra_repr(self) -> str:
        return ""           # the branches are listed as the children
