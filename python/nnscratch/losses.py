"""Losses: ``value = loss_fn(pred, target)`` (a float), then ``loss_fn.backward()`` (dL/dpred).

Each loss is one fused kernel that returns the mean loss and its gradient in one pass; the
reduction is the mean, as in PyTorch. A loss of your own subclasses `Loss`.

============================  ===================================  ======================
loss                          pred, target                         kernel
============================  ===================================  ======================
``CrossEntropyLoss()``        logits (N, C), integer labels (N,)    softmax_cross_entropy
``MSELoss()``                 any shape, float target of pred's     mse
``BCEWithLogitsLoss()``       logits, targets in [0, 1], same shape bce_with_logits
============================  ===================================  ======================

``CrossEntropyLoss(label_smoothing=e)`` adds the smoothing's terms to the kernel's result
(two lines of NumPy on the (N, C) logits; see `CrossEntropyLoss`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from . import _checks
from .backend import kernels

__all__ = ["Loss", "CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss", "LOSSES"]


class Loss:
    """Base class of losses: ``value = loss_fn(pred, target)``, then ``loss_fn.backward()``.

    A loss of your own is a small subclass with two methods::

        class MAELoss(nnscratch.Loss):
            def forward(self, pred, target):      # the mean loss, a float
                self._diff = pred - target         # keep what backward needs
                return float(np.abs(self._diff).mean())
            def backward(self):                    # dL/dpred, of pred's shape
                return np.sign(self._diff) / self._diff.size

    ``fit`` uses it as it uses the built-in ones (``prepare_targets`` may check and convert
    the targets once before training; by default they are passed through).
    """

    def __call__(self, pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
        """The mean loss (a Python float); keeps dL/dpred for `backward`."""
        return self.forward(pred, target)

    def forward(self, pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
        """The mean loss of `pred` against `target` (a float); keeps what `backward` needs."""
        raise NotImplementedError(
            f"{type(self).__name__} has no forward(pred, target): a Loss subclass defines "
            f"forward(pred, target) -> float and backward() -> dL/dpred (see nnscratch.Loss)")

    def backward(self) -> np.ndarray:
        """dL/dpred for the last `forward`, an array of pred's shape."""
        raise NotImplementedError(
            f"{type(self).__name__} has no backward(): a Loss subclass defines "
            f"forward(pred, target) -> float and backward() -> dL/dpred (see nnscratch.Loss)")

    def prepare_targets(self, y: npt.ArrayLike, n: int, output_shape: Sequence[int],
                        dtype: npt.DTypeLike, name: str = "y") -> np.ndarray:
        """Check the targets of ``fit`` / ``evaluate`` once, and convert them.

        Parameters
        ----------
        y : array_like
            The targets.
        n : int
            The number of samples.
        output_shape : tuple of int
            The model's per-sample output shape.
        dtype : dtype
            The model's dtype.
        name : str
            The argument's name in error messages.

        Returns
        -------
        ndarray
            The targets as ``fit`` and ``evaluate`` pass them to the loss.
        """
        return np.asarray(y)

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, a dict (none for the built-in losses but
        `CrossEntropyLoss`'s label_smoothing)."""
        return {}

    def _pred(self, pred: npt.ArrayLike) -> np.ndarray:
        pred = np.asarray(pred)
        if pred.dtype not in _checks.FLOATS:
            raise TypeError(f"{self!r} expects float32 or float64 predictions, got {pred.dtype}")
        return pred

    def _saved_grad(self) -> np.ndarray:
        grad = self.__dict__.get("_grad")
        if grad is None:
            raise RuntimeError(f"{self!r}: backward() called before the loss was computed")
        return grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy of logits against integer class labels, averaged over the batch.

    ``loss = mean_i( logsumexp(logits_i) - logits_i[y_i] )``; the softmax is fused into
    the loss (stable for any finite logits), so the model should end with logits, not with
    a `Softmax` layer. Gradient: ``(softmax(logits) - onehot(y)) / N``.

    With label smoothing e (as PyTorch's ``label_smoothing``), the target of row i is the
    distribution ``q_i = (1 - e) * onehot(y_i) + e / C`` instead of ``onehot(y_i)``::

        loss = mean_i( -sum_k q_ik * log_softmax(logits_i)_k )
        dL/dlogits = (softmax(logits) - q) / N

    Parameters
    ----------
    label_smoothing : float in [0, 1], default 0
        0 is the plain loss, computed by the fused kernel alone.

    Shape
    -----
    pred (N, C) float, target (N,) integers in [0, C).
    """

    _label_smoothing = 0.0      # (also for subclasses whose __init__ does not call this one)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self._label_smoothing = _checks.real("label_smoothing", label_smoothing, 0.0, 1.0)

    @property
    def label_smoothing(self) -> float:
        """The smoothing e, fixed when the loss is made: ``CrossEntropyLoss(label_smoothing=e)``."""
        return self._label_smoothing

    def forward(self, pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
        pred, target = self._pred(pred), np.asarray(target)
        if target.dtype.kind not in "iu":
            raise TypeError(f"{self!r} expects integer class labels, got dtype {target.dtype}")
        value, self._grad = kernels().softmax_cross_entropy(pred, target)
        if self.label_smoothing:
            value += self._smoothing(pred, target, self._grad)
        return float(value)

    def backward(self) -> np.ndarray:
        """dL/dlogits = (softmax(logits) - q) / N, with q = onehot(y) without smoothing."""
        return self._saved_grad()

    def _smoothing(self, pred, target, grad):
        """What smoothing adds to the kernel's loss (returned) and gradient (in `grad`).

        With ``log p = z - logsumexp(z)`` for a row z of C logits and
        ``q = (1 - e) * onehot(y) + e / C``::

            -sum_k q_k log p_k = (logsumexp(z) - z_y) + e * (z_y - mean_k z_k)
            softmax(z) - q     = (softmax(z) - onehot(y)) + e * (onehot(y) - 1 / C)

        The first terms are the kernel's plain loss and gradient, the second ones the
        smoothing's, here (each divided by N, the loss summed in float64 as the kernels do).
        """
        e, (n, c) = self.label_smoothing, pred.shape
        rows = np.arange(n)
        z_y = pred[rows, target].astype(np.float64)
        grad -= grad.dtype.type(e / (n * c))            # - e / C / N on every class
        grad[rows, target] += grad.dtype.type(e / n)     # + e / N on the label's
        return e * np.mean(z_y - pred.mean(axis=1, dtype=np.float64))

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments: ``{"label_smoothing": e}``."""
        return {"label_smoothing": self.label_smoothing}

    def __repr__(self) -> str:
        name = type(self).__name__
        if not self.label_smoothing:
            return f"{name}()"
        return f"{name}(label_smoothing={self.label_smoothing:g})"

    def prepare_targets(self, y: npt.ArrayLike, n: int, output_shape: Sequence[int],
                        dtype: npt.DTypeLike, name: str = "y") -> np.ndarray:
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer class labels for {self!r}, got dtype "
                            f"{y.dtype}")
        if y.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one label per sample), got "
                             f"{y.shape}")
        if len(output_shape) != 1:
            raise ValueError(f"{self!r} needs a model whose output is (N, C), got "
                             f"(N, {', '.join(map(str, output_shape))})")
        n_classes = output_shape[0]
        if n and (y.min() < 0 or y.max() >= n_classes):
            bad = y.min() if y.min() < 0 else y.max()
            raise ValueError(f"{name} holds label {bad}, outside [0, {n_classes}) for a model "
                             f"with {n_classes} outputs")
        return y


class _ElementwiseLoss(Loss):
    """A loss whose target has the prediction's shape (a (N,) target fits a (N, 1) output),
    computed by one kernel ``_kernel(K, pred, target)`` -> (loss, dL/dpred)."""

    _kernel: Callable[..., tuple[float, np.ndarray]]     # given by each subclass

    def forward(self, pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
        pred = self._pred(pred)
        value, self._grad = self._kernel(kernels(), pred, self._target(pred, target))
        return float(value)

    def backward(self) -> np.ndarray:
        return self._saved_grad()

    def _target(self, pred, target):
        target = np.asarray(target)
        if target.dtype.kind not in "fiub":
            raise TypeError(f"{self!r} expects a real-valued target, got dtype {target.dtype}")
        if target.shape != pred.shape:
            if target.size != pred.size or not _squeezable(target.shape, pred.shape):
                raise ValueError(f"{self!r}: target has shape {target.shape}, expected the "
                                 f"prediction's shape {pred.shape}")
            target = target.reshape(pred.shape)
        return target if target.dtype == pred.dtype else target.astype(pred.dtype)

    def prepare_targets(self, y: npt.ArrayLike, n: int, output_shape: Sequence[int],
                        dtype: npt.DTypeLike, name: str = "y") -> np.ndarray:
        y = np.asarray(y)
        shape = (n,) + tuple(output_shape)
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be real-valued for {self!r}, got dtype {y.dtype}")
        if y.shape != shape:
            if y.size != math.prod(shape) or not _squeezable(y.shape, shape):
                raise ValueError(f"{name} has shape {y.shape}, expected {shape} (the model's "
                                 f"output) for {self!r}")
            y = y.reshape(shape)
        y = np.ascontiguousarray(y, dtype=dtype)
        if not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or infinity")
        return y


def _squeezable(a, b):
    """True when shapes a and b differ only by axes of length 1 (e.g. (N,) and (N, 1))."""
    return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


class MSELoss(_ElementwiseLoss):
    """Mean squared error over all elements, ``mean((pred - target)**2)``.

    Gradient ``2 * (pred - target) / pred.size``. Shape: pred and target alike.
    """

    def _kernel(self, K, pred, target):
        return K.mse(pred, target)


class BCEWithLogitsLoss(_ElementwiseLoss):
    """Binary cross-entropy of ``sigmoid(logits)`` against targets in [0, 1], mean over all
    elements, computed stably from the logits:
    ``max(z, 0) - z * t + log(1 + exp(-|z|))``.

    Gradient ``(sigmoid(z) - t) / size``. Shape: logits and targets alike, e.g. (N, 1)
    logits with (N,) or (N, 1) labels 0/1.
    """

    def _kernel(self, K, pred, target):
        return K.bce_with_logits(pred, target)


LOSSES = {"cross_entropy": CrossEntropyLoss, "mse": MSELoss, "bce_with_logits": BCEWithLogitsLoss}
