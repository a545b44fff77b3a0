"""Plots of a training run (optional: needs matplotlib, `pip install "nnscratch[plot]"`).

    plot_history(history, path)            loss and accuracy per epoch (train and validation)
    plot_confusion_matrix(matrix, path)    counts, true class by row, predicted by column
    plot_first_layer(weight, path)         each hidden unit's incoming weights as a 28x28 image

Each writes a PNG to `path` (atomically: a temporary file, then a rename) and returns the path.
The figures are plain `matplotlib.figure.Figure` objects, not pyplot's: plotting neither
switches the caller's matplotlib backend nor opens or closes any of their figures.
"""
from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from .serialization import write_bytes_atomic

if TYPE_CHECKING:
    from .callbacks import History

PLOT_HINT = 'plotting needs matplotlib: pip install "nnscratch[plot]" (or pip install matplotlib)'


def require_matplotlib() -> None:
    """Import matplotlib or raise ImportError with the message saying how to install it."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise ImportError(PLOT_HINT) from exc


def _figure(**kwargs):
    # a Figure outside pyplot: rendered by the Agg canvas savefig picks for "png", so no
    # matplotlib.use() (which would switch, and close the figures of, a user's session)
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


def plot_history(history: History | Mapping[str, Sequence[float]],
                 path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """Learning curves from a History (or its .history dict): loss and accuracy by epoch."""
    h: Any = getattr(history, "history", history)      # the History's dict, or the dict
    fig = _figure(figsize=(10, 4))
    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = h.get(prefix + key)
            if values is not None and len(values):
                ax.plot(np.arange(1, len(values) + 1), values, style,
                        label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle("nnscratch: learning curves")
    return _save(fig, path)


def plot_confusion_matrix(matrix: npt.ArrayLike, path: str | os.PathLike[str],
                          class_names: Sequence[str] | None = None) -> str | os.PathLike[str]:
    """A confusion matrix (true class by row, predicted class by column) as a heat map."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"matrix must be square (k, k) with k >= 1, got shape {matrix.shape}")
    k = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} matrix")
    fig = _figure(figsize=(7, 6))
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    return _save(fig, path)


def plot_first_layer(weight: npt.ArrayLike, path: str | os.PathLike[str],
                     image_shape: tuple[int, int] = (28, 28),
                     max_units: int = 64) -> str | os.PathLike[str]:
    """The first Linear layer's weight (in_features, units): each unit's column as an image."""
    weight = np.asarray(weight)
    if (weight.ndim != 2 or weight.shape[0] != image_shape[0] * image_shape[1]
            or weight.shape[1] == 0):
        raise ValueError(f"weight must have shape ({image_shape[0] * image_shape[1]}, units) "
                         f"with units >= 1, got {weight.shape}")
    if max_units < 1:
        raise ValueError(f"max_units must be >= 1, got {max_units}")
    units = min(weight.shape[1], max_units)
    cols = int(np.ceil(np.sqrt(units)))
    rows = int(np.ceil(units / cols))
    fig = _figure(figsize=(cols * 1.2, rows * 1.2))
    axes = fig.subplots(rows, cols, squeeze=False)
    for idx, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if idx < units:
            img = weight[:, idx].reshape(image_shape)
            lim = np.abs(img).max() or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle("first layer weights (red +, blue -)")
    return _save(fig, path)
