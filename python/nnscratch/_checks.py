"""The argument checks of the Python layer: one place, one style.

Every public constructor and function checks its arguments up front with these helpers, so
that bad input is a `TypeError` (wrong kind) or a `ValueError` (wrong value) whose message
names the argument -- never a crash or a wrong answer later. (The kernels check their own
arrays: ``cnn_core._checks`` and ``cnn_core.reference._checks``.)
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["integer", "real", "boolean", "float_dtype", "FLOATS"]

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def integer(name: str, value: Any, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum] (either bound may be None).

    Raises TypeError for a non-integer (bools included), ValueError out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def real(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
         low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a finite float in the interval from `low` to `high` (an open end excludes
    the bound itself).

    The message reads ``Invalid <name>: <value> (must be ...)``, the form PyTorch's
    optimizers use. Raises ValueError for anything else, including a bool, a NaN and a
    non-number.
    """
    try:
        ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
              and math.isfinite(value))
    except OverflowError:           # an int too large for a float (10**400)
        ok = False
    if ok:
        v = float(value)
        ok = (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (must be {_interval(low, high, low_open, high_open)})")
    return float(value)


def _interval(low, high, low_open, high_open):
    if high == math.inf:
        return f"a finite number {'>' if low_open else '>='} {low:g}" if low > -math.inf \
            else "a finite number"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def boolean(name: str, value: Any) -> bool:
    """`value` as a bool; only True and False (NumPy's too) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def float_dtype(dtype: npt.DTypeLike, name: str = "dtype") -> np.dtype:
    """``np.dtype(dtype)`` when it is float32 or float64, else TypeError."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be np.float32 or np.float64, got {dtype!r}") from None
    if dtype not in FLOATS:
        raise TypeError(f"{name} must be np.float32 or np.float64, got {dtype}")
    return dtype
