"""Data augmentation: random crops and flips of a batch of images, for ``fit(transform=...)``.

A transform is a callable ``t(x, rng) -> array``:

* ``x`` is a batch of images, (N, H, W) or (N, C, H, W) (any axes between N and the last
  two, which are height and width), or flat rows (N, D) when the transform is given
  ``image_shape=`` (the CLI's MLP trains on rows of 784 pixels: ``image_shape=(28, 28)``);
* ``rng`` is a ``numpy.random.Generator``: every random choice is drawn from it (the
  library's generator, ``nnscratch.seed``, when None);
* the result is a new array of x's dtype and layout (flat rows stay flat rows); x is never
  written to.

Each image gets its own random choice, and a batch is transformed in a few NumPy calls, with
no Python loop over its images::

    t = Compose([RandomCrop(28, padding=2), RandomHorizontalFlip()])
    model.fit(X, y, ..., transform=t, seed=0)   # applied to each training batch only

``fit`` calls the transform on each training batch, in a background thread one batch ahead
of the training step, with a generator of its own for each epoch (see
`nnscratch.training.fit`); validation, ``evaluate`` and ``predict`` never see it. Any
callable with this signature serves as a transform; one given to ``fit`` runs in that thread,
so it must not touch the model.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Sequence, cast

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from . import _checks, _random

__all__ = ["RandomCrop", "RandomHorizontalFlip", "Compose"]


def _generator(rng):
    """`rng`, or the library's generator when None."""
    if rng is None:
        return _random.generator()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (or None for the library's "
                        f"generator), got {type(rng).__name__}")
    return rng


def _pair(name, value):
    """An int or a pair of ints, each >= 1, as a pair (h, w)."""
    values = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        h, w = values
        return _checks.integer(name, h, 1), _checks.integer(name, w, 1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int >= 1 or a pair (h, w) of them, "
                         f"got {value!r}") from None


class _ImageTransform:
    """What the image transforms share: flat rows <-> images, and the generator."""

    def __init__(self, image_shape: Sequence[int] | None) -> None:
        if image_shape is not None:
            try:
                ok = len(image_shape) in (2, 3)
                image_shape = tuple(_checks.integer("image_shape", d, 1) for d in image_shape)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"image_shape must be (H, W) or (C, H, W), positive ints, "
                                 f"got {image_shape!r}")
        self.image_shape = cast("tuple[int, ...] | None", image_shape)    # (a tuple now)

    def __call__(self, x: npt.ArrayLike, rng: np.random.Generator | None = None) -> np.ndarray:
        """The transformed batch (a new array); draws from `rng`, or from the library's
        generator when None."""
        rng = _generator(rng)
        x = np.asarray(x)
        name = type(self).__name__
        if self.image_shape is None:
            if x.ndim < 3:
                raise ValueError(f"{name} takes images (N, H, W) or (N, C, H, W), got x of "
                                 f"shape {x.shape}; for flat rows such as (N, 784) give "
                                 f"image_shape=(28, 28)")
            return self._apply(x, rng)
        size = math.prod(self.image_shape)
        if x.ndim != 2 or x.shape[1] != size:
            raise ValueError(f"{name}(image_shape={self.image_shape}) takes rows (N, {size}), "
                             f"got x of shape {x.shape}")
        images = self._apply(x.reshape((len(x),) + self.image_shape), rng)
        return images.reshape(len(x), -1)

    def _apply(self, images, rng):
        raise NotImplementedError

    def _shape_repr(self):
        return "" if self.image_shape is None else f", image_shape={self.image_shape}"


class RandomCrop(_ImageTransform):
    """Pad each image with zeros, then cut a random window out of it.

    Every image of the batch is padded with `padding` zeros on each side (H + 2 * padding
    by W + 2 * padding) and cropped to ``size`` at its own offset, uniform over every
    position where the window fits: image i's output is
    ``padded[i, ..., top[i]:top[i] + h, left[i]:left[i] + w]``. ``RandomCrop(28,
    padding=2)`` shifts 28 x 28 images by up to 2 pixels each way (CIFAR's
    ``RandomCrop(32, padding=4)``).

    Parameters
    ----------
    size : int or (h, w)
        The output's height and width; at most the padded image's.
    padding : int >= 0, default 0
        Zeros added on each of the four sides before cropping.
    image_shape : (H, W) or (C, H, W), optional
        For flat input rows (N, C * H * W); the output is then flat too, (N, C * h * w).

    Shape
    -----
    (N, ..., H, W) -> (N, ..., h, w), the dtype kept.

    Notes
    -----
    Draws ``top = rng.integers(0, H + 2 * padding - h + 1, size=N)``, then ``left`` the
    same way over the width.
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0,
                 image_shape: Sequence[int] | None = None) -> None:
        super().__init__(image_shape)
        self.size = _pair("size", size)
        self.padding = _checks.integer("padding", padding, 0)

    def _apply(self, images, rng):
        # images (N, ..., H, W) -> (N, ..., h, w)
        n, (H, W), p = len(images), images.shape[-2:], self.padding
        h, w = self.size
        if h > H + 2 * p or w > W + 2 * p:
            raise ValueError(f"RandomCrop: size {self.size} is larger than the padded image "
                             f"({H + 2 * p}, {W + 2 * p}) (images {H} x {W}, padding {p})")
        top = rng.integers(0, H + 2 * p - h + 1, size=n)
        left = rng.integers(0, W + 2 * p - w + 1, size=n)
        padded = images
        if p:
            padded = np.zeros(images.shape[:-2] + (H + 2 * p, W + 2 * p), images.dtype)
            padded[..., p:p + H, p:p + W] = images
        # every h x w window of every image, as a view: (N, ..., H + 2p - h + 1,
        # W + 2p - w + 1, h, w); one gather picks window (top[i], left[i]) of image i
        windows = sliding_window_view(padded, (h, w), axis=(-2, -1))
        return windows[np.arange(n), ..., top, left, :, :]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}{self._shape_repr()})"


class RandomHorizontalFlip(_ImageTransform):
    """Flip each image left to right (reverse its last axis) with probability `p`.

    Parameters
    ----------
    p : float in [0, 1], default 0.5
        The probability that an image is flipped; each image decides on its own.
    image_shape : (H, W) or (C, H, W), optional
        For flat input rows (N, C * H * W); the output is then flat too.

    Shape
    -----
    (N, ..., H, W) -> the same, the dtype kept.

    Notes
    -----
    Draws ``rng.random(N) < p`` (whatever p is: the same draws for p = 0 and p = 1).
    """

    def __init__(self, p: float = 0.5, image_shape: Sequence[int] | None = None) -> None:
        super().__init__(image_shape)
        self.p = _checks.real("p", p, 0.0, 1.0)

    def _apply(self, images, rng):
        flip = rng.random(len(images)) < self.p
        out = images.copy()
        out[flip] = images[flip, ..., ::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}{self._shape_repr()})"


class Compose:
    """Transforms applied one after the other, all drawing from the same generator:
    ``Compose([a, b])(x, rng) = b(a(x, rng), rng)``.

    Parameters
    ----------
    transforms : list of callables ``t(x, rng) -> array``
        Applied in this order. ``Compose([])`` returns a copy of x.
    """

    def __init__(self, transforms: Iterable[Callable[[Any, np.random.Generator], Any]]) -> None:
        if isinstance(transforms, (str, bytes)) or not hasattr(transforms, "__iter__") \
                or callable(transforms):
            raise TypeError(f"Compose takes a list of transforms, got "
                            f"{type(transforms).__name__}")
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not callable(t):
                raise TypeError(f"Compose: transforms[{i}] must be callable as t(x, rng), got "
                                f"{type(t).__name__} {t!r}")

    def __call__(self, x: npt.ArrayLike, rng: np.random.Generator | None = None) -> Any:
        """``x`` through every transform in turn, each given the same generator."""
        rng = _generator(rng)
        if not self.transforms:
            return np.array(x)
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])" if inner else "Compose([])"
