"""The library's random generator: weight initialisation and dropout masks draw from it.

One ``numpy.random.Generator`` (PCG64) for the whole library. ``nnscratch.seed(n)``
replaces it with a freshly seeded one, so that building a model and training it with the
same seeds (and the same backend and thread count) gives the same weights bit for bit.
Shuffling in ``fit`` uses its own generator when ``fit(seed=...)`` is given, and this one
otherwise.

Layers read the generator through `generator()` at call time, never keep a reference.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import _checks

__all__ = ["seed", "generator", "get_state", "set_state"]

_generator = np.random.Generator(np.random.PCG64())


def seed(n: int) -> None:
    """Seed the library's generator (initialisation and dropout masks).

    Parameters
    ----------
    n : int >= 0
    """
    global _generator
    n = _checks.integer("seed", n, 0)
    _generator = np.random.Generator(np.random.PCG64(n))


def generator() -> np.random.Generator:
    """The library's ``numpy.random.Generator``."""
    return _generator


def get_state() -> Mapping[str, Any]:
    """The generator's state (a dict), to replay the same draws with `set_state`."""
    return _generator.bit_generator.state


def set_state(state: Mapping[str, Any]) -> None:
    """Put the generator back into a state returned by `get_state`."""
    _generator.bit_generator.state = state
