"""Data in batches, splits that keep class proportions, and pixels scaled one batch at a time.

- `batches(X, y, batch_size, shuffle=True, seed=None)`: the ``(xb, yb)`` pairs of one
  pass over the data, for a training loop written by hand.
- `split_indices(y, test_fraction)` and `train_test_split(X, y, test_fraction)`: a
  held-out part in which every class keeps its share of `y` (stratified).
- `to_float`, `Normalize`, `channel_stats`: for images kept as uint8
  (``datasets.load_dataset(name, dtype=np.uint8)``, a quarter of float32's memory), turned
  into floats a batch at a time, so that the whole set never exists as floats.
  ``model.fit``, ``evaluate`` and ``predict`` do this themselves for uint8 X (a pixel k is
  ``to_float``'s k / 255), and ``fit(normalize=True)`` standardises with `channel_stats`;
  the functions here are for a loop written by hand.

A loop by hand, on MNIST kept as bytes::

    import numpy as np
    import nnscratch as nn
    from nnscratch import data, datasets

    (X, y), (X_test, y_test) = datasets.load_mnist(dtype=np.uint8)
    (X, y), (X_val, y_val) = data.train_test_split(X, y, 0.1, seed=0)
    scale = data.Normalize.from_data(X)          # per-channel mean and std of X
    for epoch in range(5):
        for xb, yb in data.batches(X, y, 128, seed=epoch):
            loss = loss_fn(model(scale(xb)), yb)
            ...

This folder also holds the data shipped with nnscratch (README.md here), which
`nnscratch.datasets` reads.
"""
from __future__ import annotations

import numbers
from fractions import Fraction
from typing import Iterator

import numpy as np
import numpy.typing as npt

from .. import _checks, _random

__all__ = ["batches", "Batches", "split_indices", "train_test_split", "to_float",
           "Normalize", "channel_stats"]


# ---------------------------------------------------------------------------
# argument checks shared below
# ---------------------------------------------------------------------------

def _generator(seed):
    """The generator for `seed`: the library's (``nnscratch.seed``) for None, a fresh
    PCG64 for an int, or the numpy.random.Generator given."""
    if seed is None:
        return _random.generator()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None, an int >= 0 or a numpy.random.Generator, "
                        f"got {type(seed).__name__}")
    return np.random.Generator(np.random.PCG64(_checks.integer("seed", seed, 0)))


def _rows(name: str, a: npt.ArrayLike) -> np.ndarray:
    """`a` as an array with one row per sample (no copy for an array)."""
    a = np.asarray(a)
    if a.ndim == 0:
        raise ValueError(f"{name} must be an array with one row per sample, got a scalar")
    return a


def _same_rows(X: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    X, y = _rows("X", X), _rows("y", y)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of rows, got {len(X)} and "
                         f"{len(y)}")
    return X, y


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------

class Batches:
    """The batches of one pass over ``(X, y)``, made by `batches`.

    Iterate for the ``(xb, yb)`` pairs; ``len()`` is how many there are. The order is
    drawn when the object is made, so iterating it twice gives the same batches.

    Attributes
    ----------
    indices : int64 ndarray (N,)
        The rows in the order the batches take them.
    batch_size : int
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, indices: np.ndarray,
                 shuffled: bool, drop_last: bool) -> None:
        self._X, self._y = X, y
        self.batch_size = batch_size
        self.indices = indices
        self._shuffled = shuffled
        self._drop_last = drop_last

    def __len__(self) -> int:
        n, b = len(self.indices), self.batch_size
        return n // b if self._drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        X, y, b = self._X, self._y, self.batch_size
        stop = len(self) * b
        for start in range(0, min(stop, len(self.indices)), b):
            if self._shuffled:      # rows gathered into fresh arrays
                rows = self.indices[start:start + b]
                yield X[rows], y[rows]
            else:                   # consecutive rows: views, nothing copied
                yield X[start:start + b], y[start:start + b]

    def __repr__(self) -> str:
        return (f"Batches({len(self.indices)} rows, batch_size={self.batch_size}, "
                f"{len(self)} batches, shuffled={self._shuffled})")


def batches(X: npt.ArrayLike, y: npt.ArrayLike, batch_size: int, shuffle: bool = True,
            seed: int | np.random.Generator | None = None, *, drop_last: bool = False) -> Batches:
    """The ``(xb, yb)`` batches of one pass over ``(X, y)``, for a loop written by hand.

    Every row comes exactly once per pass; the last batch holds the rows left over
    (fewer than `batch_size`) unless `drop_last`. Shuffled, the rows are gathered into
    fresh arrays (``X[rows]``); in order, the batches are views of `X` and `y`.

    The order is drawn when `batches` is called: from ``numpy.random.Generator(PCG64(seed))``
    for an int seed -- the order of the first epoch of ``model.fit(seed=seed)`` -- from the
    generator given, or, with ``seed=None``, from the library's generator, so that
    ``nnscratch.seed(n)`` makes the whole run repeat. The same int seed gives the same
    order every call: give each epoch its own (``seed=epoch``), or pass one Generator for
    the whole run, whose draws go on from epoch to epoch.

    Parameters
    ----------
    X : array (N, ...)
        Inputs, one row per sample, any dtype (uint8 images stay uint8).
    y : array (N, ...)
        Targets, one row per sample.
    batch_size : int >= 1
    shuffle : bool, default True
    seed : None, int >= 0 or numpy.random.Generator
    drop_last : bool, default False
        Leave out the last batch when it is smaller than `batch_size`.

    Returns
    -------
    Batches
        Iterable of ``(xb, yb)``; ``len()`` batches.

    Raises
    ------
    ValueError
        X and y differ in length, or batch_size < 1.
    TypeError
        batch_size, shuffle, drop_last or seed of the wrong kind.
    """
    X, y = _same_rows(X, y)
    batch_size = _checks.integer("batch_size", batch_size, 1)
    shuffle = _checks.boolean("shuffle", shuffle)
    drop_last = _checks.boolean("drop_last", drop_last)
    rng = _generator(seed) if shuffle or seed is not None else None
    indices = np.arange(len(X), dtype=np.int64)
    if rng is not None and shuffle:
        rng.shuffle(indices)        # as fit shuffles: the same seed, the same order
    return Batches(X, y, batch_size, indices, shuffle, drop_last)


# ---------------------------------------------------------------------------
# stratified splits
# ---------------------------------------------------------------------------

def split_indices(y: npt.ArrayLike, test_fraction: float,
                  seed: int | np.random.Generator | None = None,
                  stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a training part and a held-out part, each class kept in proportion.

    The held-out part has ``round(N * test_fraction)`` rows. Stratified (the default), a
    class with ``n_c`` rows gives ``floor(n_c * test_fraction)`` or one more of them to it
    -- within one row of its exact share -- the classes with the largest remainders taking
    the one more (ties drawn at random), so that the total comes out exact; which rows of
    each class go is drawn at random. Both index arrays are sorted: the rows keep their
    order.

    Parameters
    ----------
    y : array (N,)
        Class labels (any values ``np.unique`` can sort); with ``stratify=False``, any
        targets with one row per sample.
    test_fraction : float in (0, 1)
    seed : None, int >= 0 or numpy.random.Generator
        As in `batches`: None draws from the library's generator.
    stratify : bool, default True

    Returns
    -------
    train_index, test_index : int64 ndarrays

    Raises
    ------
    ValueError
        test_fraction outside (0, 1), a split that leaves a part empty, or stratified
        labels that are not one-dimensional.
    """
    y = _rows("y", y)
    f = _checks.real("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    stratify = _checks.boolean("stratify", stratify)
    rng = _generator(seed)
    n = len(y)
    exact = Fraction(f)         # the float's exact value: the counts below are exact integers
    n_test = int((2 * n * exact + 1) // 2)      # round half up
    if n_test == 0 or n_test == n:
        raise ValueError(f"test_fraction={f} leaves an empty "
                         f"{'test' if n_test == 0 else 'training'} part of {n} samples")
    if not stratify:
        test = rng.permutation(n)[:n_test]
    else:
        if y.ndim != 1:
            raise ValueError(f"a stratified split needs one class label per sample, y has "
                             f"shape {y.shape} (one-hot rows? pass y.argmax(1), or "
                             f"stratify=False)")
        _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        shares = [int(c) * exact for c in counts]
        take = [int(s) for s in shares]                       # floor of each share
        remainder = [s - t for s, t in zip(shares, take)]
        extra = n_test - sum(take)  # 0 <= extra <= classes with a remainder (the sum is exact)
        tiebreak = rng.random(len(counts))
        for c in sorted(range(len(counts)), key=lambda c: (-remainder[c], tiebreak[c]))[:extra]:
            take[c] += 1
        by_class = np.argsort(inverse, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)))
        test = np.concatenate([
            by_class[starts[c]:starts[c + 1]][rng.permutation(int(counts[c]))[:take[c]]]
            for c in range(len(counts))])
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)


def train_test_split(X: npt.ArrayLike, y: npt.ArrayLike, test_fraction: float,
                     seed: int | np.random.Generator | None = None, stratify: bool = True
                     ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split ``(X, y)`` into a training and a held-out part, each class kept in proportion.

    The rows are chosen by `split_indices` (see there: every class within one row of its
    exact share, the total ``round(N * test_fraction)``) and keep their order. Both parts
    are copies; with data too large to hold twice, index with `split_indices` yourself.

    Returns
    -------
    (X_train, y_train), (X_test, y_test)
        As the loaders of `nnscratch.datasets` return them (not scikit-learn's order).
    """
    X, y = _same_rows(X, y)
    train, test = split_indices(y, test_fraction, seed=seed, stratify=stratify)
    return (X[train], y[train]), (X[test], y[test])


# ---------------------------------------------------------------------------
# pixels: uint8 -> float, a batch at a time
# ---------------------------------------------------------------------------

def _pixels(name: str, x: npt.ArrayLike) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise TypeError(f"{name} must hold uint8 pixels (0..255) or floats, got {x.dtype}")
    return x


def to_float(x: npt.ArrayLike, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """uint8 pixels k as floats k / 255 in [0, 1]: bit for bit the floats the loaders of
    `nnscratch.datasets` return for the same images. A float array is returned in `dtype`
    (as it is, not copied, when it has that dtype already).

    Parameters
    ----------
    x : uint8 or float array, any shape
    dtype : np.float32 (default) or np.float64
    """
    dt = _checks.float_dtype(dtype)
    x = _pixels("x", x)
    if x.dtype != np.uint8:
        return x.astype(dt, copy=False)
    out = x.astype(dt)
    out /= dt.type(255)         # as datasets does it: the same rounding
    return out


def _channel_blocks(name: str, x: np.ndarray, channels: int) -> np.ndarray:
    """`x` seen as (N, C, rest): (N, C, H, W) images, or flat rows (N, C*H*W) in the
    loaders' order (each channel's pixels together); one channel: any shape."""
    if channels == 1:
        return x.reshape(len(x), 1, -1) if x.ndim else x
    if x.ndim >= 3:
        if x.shape[1] != channels:
            raise ValueError(f"{name} has {x.shape[1]} channels (axis 1 of shape {x.shape}), "
                             f"expected {channels}")
        return x.reshape(x.shape[0], channels, -1)
    if x.ndim == 2 and x.shape[1] % channels == 0:
        return x.reshape(x.shape[0], channels, x.shape[1] // channels)
    raise ValueError(f"{name} of shape {x.shape} cannot be split into {channels} channels "
                     f"(give (N, C, H, W) images or flat rows (N, C*H*W))")


def channel_stats(X: npt.ArrayLike, channels: int | None = None,
                  chunk_size: int | None = None, *,
                  rows: npt.ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every channel of a set of images, in the units of
    floats in [0, 1] (uint8 values k count as k / 255), without a float copy of `X`.

    uint8 images are counted value by value (a histogram of the 256 values per channel,
    exact); float images are summed in float64 a chunk at a time (Chan's pairwise update
    of mean and variance). The standard deviation is the population one (divided by the
    count, not count - 1), as torchvision's usual MNIST figures (0.1307, 0.3081) are.

    Parameters
    ----------
    X : uint8 or float array
        (N, C, H, W) images, or flat rows (N, C*H*W) in the loaders' order, or any array
        taken as one channel.
    channels : int, optional
        C; by default X.shape[1] for 4-D X, else 1.
    chunk_size : int, optional
        Rows per chunk (by default about 2**18 values: a few MB of scratch memory).
    rows : int array, optional
        The statistics of ``X[rows]`` (a training part, say), gathered a chunk at a time:
        no copy of those rows is made either.

    Returns
    -------
    mean, std : float64 ndarrays (C,)
    """
    X = _pixels("X", _rows("X", X))
    if channels is None:
        channels = X.shape[1] if X.ndim == 4 else 1
    channels = _checks.integer("channels", channels, 1)
    index = None if rows is None else _row_index(rows, len(X))
    if X.size == 0 or (index is not None and len(index) == 0):
        raise ValueError(f"X is empty (shape {X.shape}"
                         f"{'' if index is None else ', rows empty'}): no statistics to take")
    _channel_blocks("X", X[:1], channels)                   # the layout checked up front
    if chunk_size is None:
        chunk_size = max(1, (1 << 18) // max(X[:1].size, 1))
    chunk_size = _checks.integer("chunk_size", chunk_size, 1)
    if index is None:
        chunks = (_channel_blocks("X", X[i:i + chunk_size], channels)     # (n, C, L) each
                  for i in range(0, len(X), chunk_size))
    else:
        chunks = (_channel_blocks("X", X.take(index[i:i + chunk_size], axis=0), channels)
                  for i in range(0, len(index), chunk_size))
    if X.dtype == np.uint8:
        hist: np.ndarray = np.zeros(channels * 256, dtype=np.int64)
        offsets = (np.arange(channels, dtype=np.intp) * 256)[None, :, None]
        for block in chunks:
            codes = block.astype(np.intp) + offsets
            hist += np.bincount(codes.reshape(-1), minlength=channels * 256)
        hist = hist.reshape(channels, 256).astype(np.float64)
        values = np.arange(256) / 255.0
        count = hist.sum(axis=1)
        mean = hist @ values / count
        var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / count
    else:
        count = 0
        mean = np.zeros(channels)
        m2 = np.zeros(channels)
        for block in chunks:
            chunk = block.astype(np.float64)
            k = chunk.shape[0] * chunk.shape[2]
            chunk_mean = chunk.mean(axis=(0, 2))
            chunk_m2 = ((chunk - chunk_mean[None, :, None]) ** 2).sum(axis=(0, 2))
            delta = chunk_mean - mean
            total = count + k
            mean = mean + delta * (k / total)
            m2 = m2 + chunk_m2 + delta ** 2 * (count * k / total)
            count = total
        var = m2 / count
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
            raise ValueError("X holds NaN or infinite values")
    return mean, np.sqrt(var)


def _row_index(rows: npt.ArrayLike, n: int) -> np.ndarray:
    """`rows` as a 1-D int64 array of row indices into n rows (negative ones refused)."""
    index = np.asarray(rows)
    if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
        raise TypeError(f"rows must be a 1-D array of integer row indices, got "
                        f"{index.dtype} of shape {index.shape}")
    index = index.astype(np.int64, copy=False)
    if index.size and (index.min() < 0 or index.max() >= n):
        bad = index.min() if index.min() < 0 else index.max()
        raise ValueError(f"rows holds {bad}, outside [0, {n}) for X of {n} rows")
    return index


class Normalize:
    """Standardise images channel by channel, one batch at a time.

    ``out = (x / 255 - mean) / std`` for uint8 pixels x, ``out = (x - mean) / std`` for
    floats (already in [0, 1]), per channel, in `dtype` -- torchvision's ``ToTensor()``
    then ``Normalize(mean, std)``. The division by 255 is `to_float`'s, so
    ``Normalize()`` (mean 0, std 1) gives exactly the loaders' floats.

    Parameters
    ----------
    mean, std : float or sequence of floats (one per channel)
        In the units of floats in [0, 1] (MNIST: ``Normalize(0.1307, 0.3081)``); std > 0.
    dtype : np.float32 (default) or np.float64

    Notes
    -----
    Channels: (N, C, H, W) batches along axis 1; flat rows (N, C*H*W) in C equal blocks
    (the loaders' and `load_image_folder`'s order); with one channel, any shape.
    The input is never changed: the result is a new array.
    """

    def __init__(self, mean: npt.ArrayLike = 0.0, std: npt.ArrayLike = 1.0,
                 dtype: npt.DTypeLike = np.float32) -> None:
        self.dtype = _checks.float_dtype(dtype)
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if mean.ndim != 1 or std.ndim != 1:
            raise ValueError(f"mean and std must be numbers or 1-D sequences (one per "
                             f"channel), got shapes {mean.shape} and {std.shape}")
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"mean and std must have one value per channel, got "
                             f"{len(mean)} and {len(std)}")
        mean, std = np.broadcast_arrays(mean, std)
        if not np.all(np.isfinite(mean)):
            raise ValueError(f"Invalid mean: {mean.tolist()} (must be finite)")
        if not (np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError(f"Invalid std: {std.tolist()} (must be finite and > 0)")
        self.mean, self.std = mean.copy(), std.copy()

    @classmethod
    def from_data(cls, X: npt.ArrayLike, channels: int | None = None,
                  dtype: npt.DTypeLike = np.float32,
                  chunk_size: int | None = None, *,
                  rows: npt.ArrayLike | None = None) -> Normalize:
        """A Normalize with the per-channel mean and std of `X` -- of ``X[rows]`` when
        `rows` is given -- (`channel_stats`); a channel that never varies gets std 1 (as
        scikit-learn's StandardScaler does)."""
        mean, std = channel_stats(X, channels=channels, chunk_size=chunk_size, rows=rows)
        return cls(mean, np.where(std > 0, std, 1.0), dtype=dtype)

    @property
    def channels(self) -> int:
        """C, the number of channels (of `mean` and `std`)."""
        return len(self.mean)

    def __call__(self, x: npt.ArrayLike) -> np.ndarray:
        """``(x - mean) / std`` per channel, a new array (uint8 pixels divided by 255 first)."""
        x = _pixels("x", x)
        out = x.astype(self.dtype, order="C")                   # a new array, always
        if x.dtype == np.uint8:
            out /= self.dtype.type(255)
        view = _channel_blocks("x", out, self.channels)         # (N, C, L), a view of out
        view -= self.mean.astype(self.dtype)[:, None]
        view /= self.std.astype(self.dtype)[:, None]
        return out

    def __repr__(self) -> str:
        values = lambda a: ", ".join(f"{v:.4g}" for v in a)     # noqa: E731
        return f"Normalize(mean=[{values(self.mean)}], std=[{values(self.std)}])"
