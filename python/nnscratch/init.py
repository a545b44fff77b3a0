"""Initial weights: the random values a layer's weights start from.

A layer asks for ``draw(init, fan_in, fan_out, shape)`` for its weight and
``draw_bias(init, fan_in, shape)`` for its bias; the values come from the library's
generator (``nnscratch.seed``), so a seeded model starts from the same weights every time.
``fan_in`` is the number of inputs that feed one output (``in_features``, or
``in_channels * kh * kw`` for a convolution), ``fan_out`` the number of outputs one input
feeds.

========================  ==============================================  ===================
init                      distribution                                    for
========================  ==============================================  ===================
``"he"``                  N(0, 2 / fan_in)                                ReLU networks
``"he_uniform"``          U(-b, b), b = sqrt(6 / fan_in)                  ReLU networks
``"xavier"``              U(-b, b), b = sqrt(6 / (fan_in + fan_out))      tanh / sigmoid
``"xavier_normal"``       N(0, 2 / (fan_in + fan_out))                    tanh / sigmoid
``"torch"``               U(-b, b), b = 1 / sqrt(fan_in), bias too        PyTorch's default
========================  ==============================================  ===================

The bias starts at zero, except with ``"torch"``: PyTorch's ``Linear`` and ``Conv2d`` draw
it from the same U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as the weight (their
``reset_parameters``: ``kaiming_uniform_(weight, a=sqrt(5))``, whose bound
``gain * sqrt(3 / fan_in)`` with ``gain = sqrt(2 / (1 + a**2))`` is ``1 / sqrt(fan_in)``).
The distribution is PyTorch's, not the numbers: the generators differ.

He (Kaiming) keeps the variance of ReLU activations from layer to layer; Glorot (Xavier)
keeps it for activations that are linear around zero.
"""
from __future__ import annotations

import math

import numpy as np

from . import _random

__all__ = ["INITS", "draw", "draw_bias"]


def _he(gen, fan_in, fan_out, shape):
    return gen.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def _he_uniform(gen, fan_in, fan_out, shape):
    bound = math.sqrt(6.0 / fan_in)
    return gen.uniform(-bound, bound, size=shape)


def _xavier(gen, fan_in, fan_out, shape):
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return gen.uniform(-bound, bound, size=shape)


def _xavier_normal(gen, fan_in, fan_out, shape):
    return gen.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def _torch(gen, fan_in, fan_out, shape):
    # torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5)), its arithmetic step by step
    a = math.sqrt(5)
    gain = math.sqrt(2.0 / (1 + a ** 2))       # calculate_gain("leaky_relu", a)
    std = gain / math.sqrt(fan_in)
    bound = math.sqrt(3.0) * std                # = 1 / sqrt(fan_in), up to rounding
    return gen.uniform(-bound, bound, size=shape)


INITS = {"he": _he, "he_uniform": _he_uniform, "xavier": _xavier,
         "xavier_normal": _xavier_normal, "torch": _torch}


def check(init: str) -> str:
    """`init` when it names an initialisation, else ValueError."""
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; choose one of {sorted(INITS)}")
    return init


def draw(init: str, fan_in: int, fan_out: int, shape: tuple[int, ...]) -> np.ndarray:
    """float64 values of `shape` drawn by initialisation `init` from the library generator."""
    return INITS[check(init)](_random.generator(), fan_in, fan_out, shape)


def draw_bias(init: str, fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
    """float64 starting values of a bias of `shape`: zeros, or for ``"torch"``
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from the library generator (drawn after the weight,
    as PyTorch's ``reset_parameters`` does)."""
    if check(init) != "torch":
        return np.zeros(shape)
    bound = 1 / math.sqrt(fan_in)                # as torch.nn.Linear.reset_parameters
    return _random.generator().uniform(-bound, bound, size=shape)
