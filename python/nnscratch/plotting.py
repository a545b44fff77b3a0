"""Plots of a training run (optional: needs matplotlib, `pip install "nnscratch[plot]"`).

    plot_history(history, path)            loss and accuracy per epoch (train and validation)
    plot_confusion_matrix(matrix, path)    counts, true class by row, predicted by column
    plot_first_layer(weight, path)         each hidden unit's incoming weights as a 28x28 image

Each writes a PNG to `path` (atomically: a temporary file, then a rename) and returns the path.
"""
import os
import tempfile

import numpy as np

PLOT_HINT = 'plotting needs matplotlib: pip install "nnscratch[plot]" (or pip install matplotlib)'


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(PLOT_HINT) from exc
    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".plot-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        fig.clf()
    return path


def plot_history(history, path):
    """Learning curves from a History (or its .history dict): loss and accuracy by epoch."""
    plt = _pyplot()
    h = getattr(history, "history", history)
    epochs = np.arange(1, len(h.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = h.get(prefix + key)
            if values:
                ax.plot(epochs[: len(values)], values, style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("nnscratch: learning curves")
    result = _save(fig, path)
    plt.close(fig)
    return result


def plot_confusion_matrix(matrix, path, class_names=None):
    """A confusion matrix (true class by row, predicted class by column) as a heat map."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    k = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    result = _save(fig, path)
    plt.close(fig)
    return result


def plot_first_layer(weight, path, image_shape=(28, 28), max_units=64):
    """The first Linear layer's weight (in_features, units): each unit's column as an image."""
    plt = _pyplot()
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.shape[0] != image_shape[0] * image_shape[1]:
        raise ValueError(f"weight must have shape ({image_shape[0] * image_shape[1]}, units), "
                         f"got {weight.shape}")
    units = min(weight.shape[1], max_units)
    cols = int(np.ceil(np.sqrt(units)))
    rows = int(np.ceil(units / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2))
    for idx, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if idx < units:
            img = weight[:, idx].reshape(image_shape)
            lim = np.abs(img).max() or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle("first layer weights (red +, blue -)")
    result = _save(fig, path)
    plt.close(fig)
    return result
