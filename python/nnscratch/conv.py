"""Convolution and pooling over NCHW images: `Conv2d`, `MaxPool2d`, `AvgPool2d`,
`GlobalAvgPool2d`.

As in ``nnscratch.layers``: ``forward`` keeps what ``backward`` needs, ``infer`` keeps
nothing, and the arithmetic is in the kernels (``conv2d_*``, ``maxpool2d_*``,
``avgpool2d_*``: ``cnn_core/_conv.pyx`` and its twin ``cnn_core/reference/conv.py``).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from . import _checks, init as _init
from .backend import kernels
from .module import Module, Parameter, register

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d"]


def _size_arg(name, value, minimum):
    """A size argument given as an int or a pair of ints (height, width).

    Returns ``(public, (h, w))``: `public` is what the layer shows and saves (the int as
    given, or the pair as a tuple: forms ``torch.nn.Conv2d`` accepts too), ``(h, w)`` what
    the kernels receive.
    """
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))

    public: int | tuple[int, int]
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


class _Windowed(Module):
    """A layer that slides a (kh, kw) window with strides (sh, sw) over zero-padded
    (ph, pw) planes: the output size and the input checks of `Conv2d` and the pools."""

    _kernel, _stride, _padding = (1, 1), (1, 1), (0, 0)
    _channels: int | None = None      # the input channels required, or None for any
    out_channels: int                 # (Conv2d's, read when _channels is set)

    def _out_hw(self, h, w):
        """(OH, OW) for an (h, w) input, or None when the input is smaller than the window."""
        (kh, kw), (sh, sw), (ph, pw) = self._kernel, self._stride, self._padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            return None
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _check_sample(self, shape, what):
        # shape: (C, H, W) of one sample; `what` is the full shape to report
        channels = "C" if self._channels is None else self._channels
        if len(shape) != 3 or (self._channels is not None and shape[0] != self._channels):
            raise ValueError(f"{self!r} expects input of shape (N, {channels}, H, W), got "
                             f"{what}")
        if self._out_hw(*shape[1:]) is None:
            kh, kw = self._kernel
            raise ValueError(f"{self!r}: input of shape {what} is smaller than the {kh}x{kw} "
                             f"window (with padding {self._padding})")

    def _check(self, x):
        self._check_sample(x.shape[1:], x.shape)

    def _out_shape(self, x_shape, channels):
        return (x_shape[0], channels) + self._out_hw(*x_shape[2:])

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        self._check_sample(input_shape, f"samples of shape {input_shape}")
        channels = input_shape[0] if self._channels is None else self.out_channels
        return (channels,) + self._out_hw(*input_shape[1:])


@register
class Conv2d(_Windowed):
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
    init : str, default "he"
        As for `Linear` (``nnscratch.init``), with ``fan_in = in_channels * kh * kw`` and
        ``fan_out = out_channels * kh * kw``; the bias starts at zero, but for ``"torch"``
        (PyTorch's default: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))).

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

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 bias: bool = True, dtype: npt.DTypeLike = np.float32,
                 init: str = "he") -> None:
        super().__init__()
        self.in_channels = _checks.integer("in_channels", in_channels, 1)
        self.out_channels = _checks.integer("out_channels", out_channels, 1)
        self.kernel_size, self._kernel = _size_arg("kernel_size", kernel_size, 1)
        self.stride, self._stride = _size_arg("stride", stride, 1)
        self.padding, self._padding = _size_arg("padding", padding, 0)
        _checks.boolean("bias", bias)
        self.dtype = _checks.float_dtype(dtype)
        self.init = _init.check(init)
        self._channels = self.in_channels
        kh, kw = self._kernel
        shape = (self.out_channels, self.in_channels, kh, kw)
        fan_in = self.in_channels * kh * kw
        values = _init.draw(init, fan_in, self.out_channels * kh * kw, shape)
        self.weight = Parameter(values.astype(self.dtype))
        self.bias: Parameter | None = None
        if bias:
            values = _init.draw_bias(init, fan_in, (self.out_channels,))
            self.bias = Parameter(values.astype(self.dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        # x (N, C, H, W) * weight (O, C, KH, KW) + bias (O,) -> out (N, O, OH, OW)
        x = self._input(x, self.dtype, self._check)
        self._x = x                       # backward needs it for dL/dweight
        return kernels().conv2d_forward(x, self.weight.data, self._bias(),
                                        stride=self._stride, padding=self._padding)

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # g (N, O, OH, OW) -> weight.grad += dL/dweight, bias.grad += g summed over
        # (N, OH, OW); returns dL/dx (N, C, H, W)
        x = self._saved("_x")
        g = self._grad_of(grad_out, self._out_shape(x.shape, self.out_channels), self.dtype)
        return kernels().conv2d_backward(g, x, self.weight.data, self.weight.grad,
                                         None if self.bias is None else self.bias.grad,
                                         stride=self._stride, padding=self._padding,
                                         compute_grad_x=compute_grad_input)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, self.dtype, self._check)
        return kernels().conv2d_forward(x, self.weight.data, self._bias(),
                                        stride=self._stride, padding=self._padding)

    def _bias(self):
        return None if self.bias is None else self.bias.data

    def flops(self, input_shape: Sequence[int]) -> int:
        # per output element: one multiply and one add per weight of its filter, plus the bias
        oh, ow = self.output_shape(input_shape)[1:]
        kh, kw = self._kernel
        per_output = 2 * self.in_channels * kh * kw + (1 if self.bias is not None else 0)
        return per_output * self.out_channels * oh * ow

    def get_config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "bias": self.bias is not None,
                "dtype": self.dtype.name, "init": self.init}

    def extra_repr(self) -> str:
        text = (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")
        return text if self.dtype == np.float32 else f"{text}, dtype={self.dtype.name}"


class _Pool2d(_Windowed):
    """A pooling layer: a (kh, kw) window moved by (sh, sw), no padding; no parameters."""

    def __init__(self, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kernel_size, self._kernel = _size_arg("kernel_size", kernel_size, 1)
        self.stride, self._stride = _size_arg("stride", kernel_size if stride is None
                                              else stride, 1)

    def get_config(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride}

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


@register
class MaxPool2d(_Pool2d):
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

    def forward(self, x: np.ndarray) -> np.ndarray:
        # x (N, C, H, W) -> out (N, C, OH, OW), indices (N, C, OH, OW) of the maxima in x
        x = self._input(x, check=self._check)
        out, self._indices = kernels().maxpool2d_forward(x, self._kernel, self._stride)
        self._x_shape, self._dtype = x.shape, x.dtype
        return out

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # g (N, C, OH, OW) -> dL/dx (N, C, H, W): zeros, plus each g at its window's maximum
        x_shape = self._saved("_x_shape")
        g = self._grad_of(grad_out, self._indices.shape, self._dtype)
        return kernels().maxpool2d_backward(g, self._indices, x_shape)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, check=self._check)
        return kernels().maxpool2d_forward(x, self._kernel, self._stride)[0]

    def flops(self, input_shape: Sequence[int]) -> int:
        # kh*kw - 1 comparisons per output
        c, oh, ow = self.output_shape(input_shape)
        kh, kw = self._kernel
        return (kh * kw - 1) * c * oh * ow


@register
class AvgPool2d(_Pool2d):
    """2-D average pooling over NCHW images: the mean of each window.

    ::

        out[n, c, i, j] = 1/(kh*kw) * sum_{p < kh, q < kw} x[n, c, i*sh + p, j*sw + q]

    No padding, floor mode (PyTorch's defaults, as ``torch.nn.AvgPool2d(kernel_size,
    stride)``): a last partial window is dropped. Each window is summed row by row, then
    divided by ``kh*kw``.

    Backward: every input of a window had weight ``1/(kh*kw)`` in its mean, so it gets that
    share of the window's gradient, from each window that covers it::

        dL/dx[n, c, h, w] = sum over the windows (i, j) covering (h, w) of
                            dL/dout[n, c, i, j] / (kh*kw)

    One window when they lie side by side (the default stride), several where they
    overlap (stride < kernel_size), none for the rows and columns floor mode drops.

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window's (height, width); an int for a square one.
    stride : int or (int, int), optional
        The step from one window to the next; by default `kernel_size` (windows side by
        side), smaller steps overlap them.

    Shape
    -----
    input (N, C, H, W) -> output (N, C, (H - kh) // stride_h + 1, (W - kw) // stride_w + 1),
    in the input's float dtype.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        # x (N, C, H, W) -> out (N, C, OH, OW), each the mean of its window
        x = self._input(x, check=self._check)
        self._x_shape, self._dtype = x.shape, x.dtype
        return kernels().avgpool2d_forward(x, self._kernel, self._stride)

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # g (N, C, OH, OW) -> dL/dx (N, C, H, W): g / (kh*kw) over each window, summed
        x_shape = self._saved("_x_shape")
        g = self._grad_of(grad_out, self._out_shape(x_shape, x_shape[1]), self._dtype)
        return kernels().avgpool2d_backward(g, x_shape, self._kernel, self._stride)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, check=self._check)
        return kernels().avgpool2d_forward(x, self._kernel, self._stride)

    def flops(self, input_shape: Sequence[int]) -> int:
        # kh*kw - 1 additions and one division per output
        c, oh, ow = self.output_shape(input_shape)
        kh, kw = self._kernel
        return kh * kw * c * oh * ow


@register
class GlobalAvgPool2d(Module):
    """The mean of each channel's plane: ``y[n, c] = mean over (i, j) of x[n, c, i, j]``.

    What a residual network puts before its last Linear layer (He et al. 2016): whatever
    the image size, each channel becomes one number. ``torch.nn.AdaptiveAvgPool2d(1)``
    followed by ``torch.nn.Flatten()``. It is `AvgPool2d` with one window over the whole
    plane (the same kernels, ``kernel_size = (H, W)``), its (N, C, 1, 1) output seen as
    (N, C).

    Backward: every input of a plane had weight 1/(H*W) in its mean, so
    ``dL/dx[n, c, i, j] = dL/dy[n, c] / (H * W)``.

    Shape
    -----
    input (N, C, H, W), H and W >= 1 -> output (N, C). Keeps the input's float dtype.
    """

    def _check(self, x):
        if x.ndim != 4:
            raise ValueError(f"{self!r} expects input of shape (N, C, H, W), got {x.shape}")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{self!r}: input of shape {x.shape} has empty planes (no mean)")

    def forward(self, x: np.ndarray) -> np.ndarray:
        # x (N, C, H, W) -> (N, C): one window of (H, W) per plane
        x = self._input(x, check=self._check)
        self._x_shape, self._dtype = x.shape, x.dtype
        return kernels().avgpool2d_forward(x, x.shape[2:]).reshape(x.shape[:2])

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # g (N, C) -> dL/dx (N, C, H, W): g / (H*W) over each plane
        x_shape = self._saved("_x_shape")
        g = self._grad_of(grad_out, x_shape[:2], self._dtype)
        return kernels().avgpool2d_backward(g.reshape(x_shape[:2] + (1, 1)), x_shape,
                                            x_shape[2:])

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, check=self._check)
        return kernels().avgpool2d_forward(x, x.shape[2:]).reshape(x.shape[:2])

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"{self!r} expects samples of shape (C, H, W), got {input_shape}")
        return (input_shape[0],)

    def flops(self, input_shape: Sequence[int]) -> int:
        return math.prod(input_shape)        # one addition per input (and C divisions)
