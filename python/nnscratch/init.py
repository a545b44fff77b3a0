"""Initial weights: the random values a layer's weights start from.

A layer asks for ``draw(init, fan_in, fan_out, shape)``; the values come from the library's
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
========================  ==============================================  ===================

He (Kaiming) keeps the variance of ReLU activations from layer to layer; Glorot (Xavier)
keeps it for activations that are linear around zero.
"""
import math

from . import _random

__all__ = ["INITS", "draw"]


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


INITS = {"he": _he, "he_uniform": _he_uniform, "xavier": _xavier,
         "xavier_normal": _xavier_normal}


def check(init):
    """`init` when it names an initialisation, else ValueError."""
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; choose one of {sorted(INITS)}")
    return init


def draw(init, fan_in, fan_out, shape):
    """float64 values of `shape` drawn by initialisation `init` from the library generator."""
    return INITS[check(init)](_random.generator(), fan_in, fan_out, shape)
