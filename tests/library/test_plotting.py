"""Plots (nnscratch.plotting, needs matplotlib): learning curves, confusion matrix, first layer
weights as images; bad input; no matplotlib; the caller's matplotlib left alone."""
import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import nnscratch as nn
from conftest import no_matplotlib
from nnscratch import _png, plotting


def read_grey(path):
    """The PNG at `path` as a grey uint8 array, decoded by Pillow (matplotlib needs it)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"))


def assert_png(path, min_bytes=8_000):
    data = open(path, "rb").read()
    assert data.startswith(_png.SIGNATURE)
    assert len(data) > min_bytes
    image = read_grey(path)              # a real, decodable image of some size
    assert min(image.shape) > 100
    assert image.std() > 5               # not a blank canvas
    return image


HISTORY = {"loss": [1.2, 0.8, 0.6], "accuracy": [0.55, 0.7, 0.78],
           "val_loss": [1.0, 0.85, 0.7], "val_accuracy": [0.6, 0.68, 0.74],
           "seconds": [0.4, 0.4, 0.4]}


def test_plot_history_from_a_dict(tmp_path):
    path = tmp_path / "curves.png"
    assert plotting.plot_history(HISTORY, path) == path
    assert_png(path)
    assert os.listdir(tmp_path) == ["curves.png"]


def test_plot_history_from_fit(tmp_path):
    nn.seed(0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    history = model.fit(X, y, loss=nn.CrossEntropyLoss(),
                        optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=3,
                        batch_size=20, validation_data=(X[:10], y[:10]), progress=False)
    plotting.plot_history(history, str(tmp_path / "h.png"))       # a History, a str path
    assert_png(tmp_path / "h.png")


def test_plot_history_without_validation_or_epochs(tmp_path):
    plotting.plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.9]}, tmp_path / "a.png")
    assert_png(tmp_path / "a.png")
    plotting.plot_history({}, tmp_path / "empty.png")      # e.g. train --epochs 0 --plot
    assert read_grey(tmp_path / "empty.png").size > 0


def test_plot_confusion_matrix(tmp_path):
    rng = np.random.default_rng(1)
    matrix = rng.integers(0, 20, (10, 10)) + np.diag(np.full(10, 80))
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    assert plotting.plot_confusion_matrix(matrix, tmp_path / "cm.png", names) == \
        tmp_path / "cm.png"
    assert_png(tmp_path / "cm.png")
    plotting.plot_confusion_matrix(matrix[:3, :3], tmp_path / "small.png")   # numbers
    assert_png(tmp_path / "small.png")
    plotting.plot_confusion_matrix(np.zeros((4, 4), int), tmp_path / "zeros.png")
    assert read_grey(tmp_path / "zeros.png").size > 0


@pytest.mark.parametrize("matrix, names", [(np.zeros((3, 4)), None), (np.zeros(5), None),
                                           (np.zeros((0, 0)), None),
                                           (np.zeros((3, 3)), ["a", "b"])],
                         ids=["not square", "1-D", "empty", "names"])
def test_plot_confusion_matrix_bad_input(tmp_path, matrix, names):
    with pytest.raises(ValueError):
        plotting.plot_confusion_matrix(matrix, tmp_path / "cm.png", names)
    assert os.listdir(tmp_path) == []


def test_plot_first_layer(tmp_path):
    nn.seed(0)
    layer = nn.Linear(784, 100)
    path = tmp_path / "w.png"
    assert plotting.plot_first_layer(layer.weight.data, path) == path     # 64 of the 100
    assert_png(path)
    plotting.plot_first_layer(layer.weight.data[:, :1], tmp_path / "one.png")
    assert_png(tmp_path / "one.png", min_bytes=1_000)
    plotting.plot_first_layer(np.zeros((784, 5)), tmp_path / "zero.png")   # all-zero unit
    plotting.plot_first_layer(np.ones((12, 7)), tmp_path / "small.png", image_shape=(3, 4),
                              max_units=3)
    assert sorted(os.listdir(tmp_path)) == ["one.png", "small.png", "w.png", "zero.png"]


@pytest.mark.parametrize("shape", [(100, 10), (784,), (784, 0), (1, 784, 10), (10, 784)])
def test_plot_first_layer_bad_weight_shape(tmp_path, shape):
    with pytest.raises(ValueError, match="weight must have shape"):
        plotting.plot_first_layer(np.zeros(shape), tmp_path / "w.png")
    assert os.listdir(tmp_path) == []


def test_plots_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        plotting.plot_history(HISTORY, tmp_path / "curves.png")
    finally:
        os.umask(old)
    assert (tmp_path / "curves.png").stat().st_mode & 0o777 == 0o644


def test_a_failed_plot_keeps_the_old_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "curves.png"
    path.write_bytes(b"old")

    def fail(self, *args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plotting.plot_history(HISTORY, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["curves.png"]


def test_the_callers_matplotlib_is_left_alone(tmp_path):
    """Plotting neither switches pyplot's backend nor closes or adds pyplot figures."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("pdf")            # a non-interactive backend other than Agg
    try:
        mine = plt.figure()
        numbers = plt.get_fignums()
        plotting.plot_history(HISTORY, tmp_path / "a.png")
        plotting.plot_confusion_matrix(np.eye(3, dtype=int), tmp_path / "b.png")
        plotting.plot_first_layer(np.ones((784, 2)), tmp_path / "c.png")
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == numbers and plt.fignum_exists(mine.number)
    finally:
        plt.close("all")
        plt.switch_backend(before)


def test_without_matplotlib_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    calls = (lambda: plotting.require_matplotlib(),
             lambda: plotting.plot_history(HISTORY, tmp_path / "a.png"),
             lambda: plotting.plot_confusion_matrix(np.eye(2, dtype=int), tmp_path / "b.png"),
             lambda: plotting.plot_first_layer(np.ones((784, 2)), tmp_path / "c.png"))
    with no_matplotlib(monkeypatch):
        for call in calls:
            with pytest.raises(ImportError) as info:
                call()
            assert str(info.value) == plotting.PLOT_HINT
            assert 'pip install "nnscratch[plot]"' in str(info.value)
    assert os.listdir(tmp_path) == []
