"""Batch normalisation: `BatchNorm1d`, `BatchNorm2d` (``torch.nn`` semantics).

The arithmetic is in the kernels ``batchnorm_forward`` / ``batchnorm_backward``
(``cnn_core/_norm.pyx`` and its twin ``cnn_core/reference/norm.py``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from . import _checks
from .backend import kernels
from .module import Module, Parameter, register

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    """Batch normalisation of each channel (axis 1).

    Per channel c, over the batch (and the positions of an image)::

        y = weight[c] * (x - mean[c]) / sqrt(var[c] + eps) + bias[c]

    In training mode mean and var are the batch's (var biased), and the running statistics
    move towards them: ``running = (1 - momentum) * running + momentum * batch`` (the
    variance with Bessel's correction, as PyTorch). In eval mode, and always in `infer`, the
    running statistics are used and left untouched. They are buffers: ``state_dict`` and
    ``save`` keep them.

    Subclasses set ``_sample_ndims`` (the accepted ndims of one sample) and ``_shape_text``
    (the input shape, for error messages).
    """

    _sample_ndims: tuple[int, ...] = ()
    _shape_text = ""
    running_mean: np.ndarray      # buffers (register_buffer), of shape (num_features,)
    running_var: np.ndarray

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        self.num_features = _checks.integer("num_features", num_features, 1)
        self.eps = _checks.real("eps", eps, 0.0, low_open=True)
        self.momentum = _checks.real("momentum", momentum, 0.0, 1.0)
        self.dtype = _checks.float_dtype(dtype)
        self.weight = Parameter(np.ones(self.num_features, self.dtype))    # gamma
        self.bias = Parameter(np.zeros(self.num_features, self.dtype))     # beta
        self.register_buffer("running_mean", np.zeros(self.num_features, self.dtype))
        self.register_buffer("running_var", np.ones(self.num_features, self.dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        # x (N, C, ...) -> y of x's shape; keeps the mean and 1/std it used, for backward
        x = self._input(x, self.dtype, self._check)
        if self.training:
            self._check_batch(x)
        y, self._mean, self._invstd = kernels().batchnorm_forward(
            _as_4d(x), self.weight.data, self.bias.data, self.running_mean, self.running_var,
            training=self.training, momentum=self.momentum, eps=self.eps)
        self._x, self._batch_statistics = x, self.training
        return y.reshape(x.shape)

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        # g (x's shape) -> weight.grad += sum(g * xhat), bias.grad += sum(g); returns dL/dx
        x = self._saved("_x")
        g = self._grad_of(grad_out, x.shape, self.dtype)
        grad_x = kernels().batchnorm_backward(
            _as_4d(g), _as_4d(x), self.weight.data, self._mean, self._invstd, self.weight.grad,
            self.bias.grad, training=self._batch_statistics, compute_grad_x=compute_grad_input)
        return None if grad_x is None else grad_x.reshape(x.shape)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, self.dtype, self._check)
        y = kernels().batchnorm_forward(
            _as_4d(x), self.weight.data, self.bias.data, self.running_mean, self.running_var,
            training=False, momentum=self.momentum, eps=self.eps)[0]
        return y.reshape(x.shape)

    def _check_sample(self, shape, what):
        if len(shape) not in self._sample_ndims or shape[0] != self.num_features:
            raise ValueError(f"{self!r} expects input of shape "
                             f"{self._shape_text.format(C=self.num_features)}, got {what}")

    def _check(self, x):
        self._check_sample(x.shape[1:], x.shape)

    def _check_batch(self, x):
        # the batch's statistics need two values per channel at least
        if x.size // self.num_features <= 1:
            raise ValueError(f"{self!r} in training mode needs more than one value per "
                             f"channel, got input of shape {x.shape}")

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        self._check_sample(input_shape, f"samples of shape {input_shape}")
        return input_shape

    def flops(self, input_shape: Sequence[int]) -> int:
        # eval mode: one multiply and one add per element (scale and shift folded per channel)
        return 2 * math.prod(self.output_shape(input_shape))

    def get_config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "dtype": self.dtype.name}

    def extra_repr(self) -> str:
        text = f"num_features={self.num_features}, eps={self.eps}, momentum={self.momentum}"
        return text if self.dtype == np.float32 else f"{text}, dtype={self.dtype.name}"


def _as_4d(x):
    """x as the kernels take it: (N, C) or (N, C, H, W); (N, C, L) -> (N, C, L, 1)."""
    return x.reshape(x.shape + (1,)) if x.ndim == 3 else x


@register
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


@register
class BatchNorm2d(_BatchNorm):
    """Batch normalisation of image channels: each channel over the batch and its H x W
    positions. Parameters and attributes as `BatchNorm1d`.

    Shape
    -----
    input (N, C, H, W) -> output (N, C, H, W).
    """

    _sample_ndims = (3,)
    _shape_text = "(N, {C}, H, W)"
