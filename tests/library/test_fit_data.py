"""fit / evaluate / predict on data at scale: uint8 pixels scaled a batch at a time (the same
bits as the floats k / 255, no float copy of X), the model's input normalisation
(fit(normalize=...), saved with the model), and the stratified validation_split."""
import copy
import tracemalloc

import numpy as np
import pytest

import nnscratch as nn
from conftest import textbook
from nnscratch import data, training
from nnscratch.transforms import RandomCrop


def _pixels(n=120, shape=(1, 6, 6), classes=3, seed=0):
    """uint8 images whose brightness depends on the class (a learnable problem), labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    noise = rng.integers(0, 90, size=(n,) + shape)
    X = (noise + 80 * y.reshape((n,) + (1,) * len(shape))).astype(np.uint8)
    return X, y


def _mlp(d=36, classes=3, seed=0, dtype=np.float32):
    nn.seed(seed)
    return nn.Sequential(nn.Linear(d, 16, dtype=dtype), nn.ReLU(),
                         nn.Linear(16, classes, dtype=dtype))


def _cnn(channels=1, classes=3, seed=0):
    nn.seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, classes))


def _fit(model, X, y, **kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    kwargs.setdefault("optimizer", nn.Adam(model.parameters(), lr=1e-2))
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("seed", 0)
    return model.fit(X, y, **kwargs)


def _weights(model):
    return [p.data.copy() for p in model.parameters()]


def _assert_same_bits(a, b):
    assert len(a) == len(b)
    for x, z in zip(a, b):
        assert x.dtype == z.dtype and x.tobytes() == z.tobytes()


class _Recorder:
    """A transform that keeps a copy of every batch it is given (and changes nothing)."""

    def __init__(self):
        self.batches = []

    def __call__(self, xb, rng):
        self.batches.append(xb.copy())
        return xb


# ---------------------------------------------------------------------------
# uint8 pixels: k / 255, a batch at a time
# ---------------------------------------------------------------------------

@pytest.fixture(params=["fast", "textbook", "numpy"])
def path(request):
    """The three ways a model computes: the fast path and the textbook path on the compiled
    kernels, and the NumPy twins."""
    before = nn.get_backend()
    nn.set_backend("numpy" if request.param == "numpy" else "cython")
    try:
        if request.param == "textbook":
            with textbook():
                yield request.param
        else:
            yield request.param
    finally:
        nn.set_backend(before)


FIT_OPTIONS = {
    "shuffled": dict(),
    "in order": dict(shuffle=False, batch_size=7),
    "validation_split and metrics": dict(validation_split=0.25, metrics=["macro_f1"]),
    "validation_data": dict(),          # (given below: the held-out images in either form)
    "transform": dict(),                # (below: for images or flat rows)
    # (statistics given: those computed from bytes and from floats may differ in a last bit)
    "normalize": dict(normalize=data.Normalize(0.4, 0.25), validation_split=0.2),
}


@pytest.mark.parametrize("option", FIT_OPTIONS)
@pytest.mark.parametrize("images", [False, True], ids=["flat", "images"])
def test_uint8_pixels_train_to_the_bits_of_the_floats_k_over_255(path, option, images):
    X8, y = _pixels(shape=(1, 6, 6) if images else (36,))
    X_val8, y_val = _pixels(n=30, shape=X8.shape[1:], seed=1)
    floats = data.to_float(X8)
    assert np.array_equal(floats * 255, X8)            # (the floats are k / 255)
    runs = []
    for X, X_val in ((X8, X_val8), (floats, data.to_float(X_val8))):
        model = _cnn() if images else _mlp()
        kwargs = dict(FIT_OPTIONS[option])
        if option == "validation_data":
            kwargs["validation_data"] = (X_val, y_val)
        if option == "transform":
            kwargs["transform"] = RandomCrop(6, padding=1,
                                             image_shape=None if images else (6, 6))
        history = _fit(model, X, y, epochs=3, **kwargs)
        runs.append((model, history))
    (a, history_a), (b, history_b) = runs
    _assert_same_bits(_weights(a), _weights(b))
    assert history_a.history == history_b.history
    assert history_a.history["loss"][-1] < history_a.history["loss"][0]    # (it learns)
    # and predict / evaluate give the same bits for either form of the same images
    _assert_same_bits([a.predict(X8), a.predict_proba(X8)],
                      [a.predict(floats), a.predict_proba(floats)])
    assert a.evaluate(X8, y, metrics=["macro_f1"]) == a.evaluate(floats, y, metrics=["macro_f1"])


def test_predict_evaluate_take_uint8_as_pixels_and_other_integers_as_they_are():
    X8, y = _pixels(n=50, shape=(36,))
    model = _mlp()
    out = model.predict(X8)
    assert out.tobytes() == model.infer(X8.astype(np.float32) / np.float32(255)).tobytes()
    # int32 (or bool) X is a number, not a pixel: 3 stays 3.0, as before
    assert model.predict(X8.astype(np.int32)).tobytes() == \
        model.infer(X8.astype(np.float32)).tobytes()
    # a float64 model: the pixels become float64 k / 255
    model64 = _mlp(dtype=np.float64)
    assert model64.predict(X8).tobytes() == model64.infer(X8 / 255.0).tobytes()
    # a batch of one, a batch larger than X, a read-only X: as predict always took them
    X8.flags.writeable = False
    np.testing.assert_array_equal(model.predict(X8, batch_size=1), out)
    np.testing.assert_array_equal(model.predict(X8, batch_size=1000), out)
    assert model.evaluate(X8, y, loss="cross_entropy")["loss"] == pytest.approx(
        model.evaluate(data.to_float(X8), y, loss="cross_entropy")["loss"], abs=0)


def _peak(run):
    """The peak of the memory traced while run() runs, above what was held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_fit_evaluate_predict_make_no_float_copy_of_a_uint8_X():
    rng = np.random.default_rng(0)
    X8 = rng.integers(0, 256, size=(20000, 784), dtype=np.uint8)       # 15.7 MB
    y = rng.integers(0, 10, size=20000)
    float_copy = X8.size * 4                                           # 62.7 MB as float32
    # the measurement sees NumPy's arrays: a float copy of X would show
    assert _peak(lambda: data.to_float(X8)) >= float_copy
    model = _mlp(d=784, classes=10)
    for run in (
            # a stratified split (rows read where they are), statistics computed once,
            # validation in batches, a transform in its thread: no copy of X in any of them
            lambda: _fit(model, X8, y, epochs=1, batch_size=256, validation_split=0.1,
                         normalize=True, metrics=["macro_f1"]),
            lambda: _fit(model, X8, y, epochs=1, batch_size=256,
                         transform=RandomCrop(28, padding=2, image_shape=(28, 28))),
            lambda: _fit(model, X8, y, epochs=1, batch_size=256, shuffle=False,
                         validation_data=(X8[:5000], y[:5000])),
            lambda: model.evaluate(X8, y),
            lambda: model.predict(X8),
            lambda: model.predict_proba(X8)):
        peak = _peak(run)
        # batches of 256 rows, the shuffled order, the labels and predict's (N, 10) result:
        # a few MB, never a quarter of the float copy (nor a copy of the uint8 X itself)
        assert peak < min(float_copy // 4, X8.nbytes), peak


# ---------------------------------------------------------------------------
# fit(normalize=...): the model's input normalisation
# ---------------------------------------------------------------------------

def test_normalize_true_takes_the_training_rows_statistics_once():
    X8, y = _pixels(n=200, shape=(3, 4, 4))        # three channels
    model = _cnn(channels=3)
    model[-1] = nn.Linear(4 * 2 * 2, 3)
    _fit(model, X8, y, normalize=True, validation_split=0.25)
    train_rows, _ = training.validation_split_indices(y, 0.25)
    mean, std = data.channel_stats(X8[train_rows])              # the training rows only
    norm = model.input_normalization
    assert isinstance(norm, data.Normalize) and norm.channels == 3
    np.testing.assert_array_equal(norm.mean, mean)
    np.testing.assert_array_equal(norm.std, std)
    assert not np.allclose(mean, data.channel_stats(X8)[0], rtol=1e-9, atol=0)   # (not all X)
    # fit again without normalize=: the model keeps its normalisation; False removes it
    _fit(model, X8[:40], y[:40], epochs=1)
    assert model.input_normalization is norm
    _fit(model, X8[:40], y[:40], epochs=1, normalize=False)
    assert model.input_normalization is None


@pytest.mark.parametrize("images", [False, True], ids=["flat", "images"])
def test_normalize_trains_as_on_the_normalised_floats_and_predict_keeps_to_it(images,
                                                                              tmp_path):
    X8, y = _pixels(n=150, shape=(1, 6, 6) if images else (36,))
    norm = data.Normalize(0.35, 0.27)
    a, b = (_cnn() if images else _mlp() for _ in range(2))
    history_a = _fit(a, X8, y, normalize=norm, validation_split=0.2)
    # the same training as on the floats normalised beforehand, with no normalisation
    history_b = _fit(b, norm(X8), y, validation_split=0.2)
    _assert_same_bits(_weights(a), _weights(b))
    assert history_a.history == history_b.history
    assert a.input_normalization is norm and b.input_normalization is None
    # predict normalises (uint8 and the floats k / 255 alike); the layers alone do not
    expected = b.predict(norm(X8))
    for X in (X8, data.to_float(X8)):
        assert a.predict(X).tobytes() == expected.tobytes()
    assert a.evaluate(X8, y) == b.evaluate(norm(X8), y)
    assert a.infer(data.to_float(X8)).tobytes() != expected.tobytes()
    # saved with the model, in both formats (and read back by nnscratch.load)
    for name in ("m.npz", "m.safetensors"):
        a.save(tmp_path / name)
        loaded = nn.load(tmp_path / name)
        assert repr(loaded.input_normalization) == repr(norm)
        np.testing.assert_array_equal(loaded.input_normalization.mean, norm.mean)
        assert loaded.predict(X8).tobytes() == expected.tobytes()
    # a model without one writes the config it always wrote; summary() shows it
    assert b.get_config() == {"layers": list(b.layers)}
    assert a.summary(print_fn=None).endswith(f"Input normalization: {norm!r}")
    assert "normalization" not in b.summary(print_fn=None)


def test_normalize_with_a_transform_the_transform_sees_the_pixels_in_0_1():
    X8, y = _pixels(n=48, shape=(1, 6, 6))
    record = _Recorder()
    norm = data.Normalize(0.4, 0.2)
    _fit(_cnn(), X8, y, normalize=norm, transform=record, shuffle=False, epochs=1)
    seen = np.concatenate(record.batches)
    assert seen.tobytes() == data.to_float(X8).tobytes()     # scaled, not yet normalised
    # ...and the model trained on the normalised batches: as a model given them directly
    a, b = _cnn(), _cnn()
    _fit(a, X8, y, normalize=norm, transform=RandomCrop(6, padding=1))
    _fit(b, X8, y, transform=_Then(RandomCrop(6, padding=1), norm))
    _assert_same_bits(_weights(a), _weights(b))


class _Then:
    """transform, then Normalize: what fit does with both (for the comparison above)."""

    def __init__(self, transform, norm):
        self.transform, self.norm = transform, norm

    def __call__(self, xb, rng):
        return self.norm(self.transform(xb, rng))


@pytest.mark.parametrize("change, exc, message", [
    (dict(normalize="yes"), TypeError, "normalize must be None, True, False or an "
                                       "nnscratch.data.Normalize, got str"),
    (dict(normalize=data.Normalize([0.1, 0.2, 0.3], [1, 1, 1])), ValueError,
     r"X does not fit the input normalization Normalize\(mean=\[0.1, 0.2, 0.3\], .*has 2 "
     r"channels"),
    (dict(normalize=True, validation_split=0.5, epochs=-1), ValueError, "epochs must be >= 0"),
])
def test_fit_refuses_a_bad_normalize_and_changes_nothing(change, exc, message):
    X8, y = _pixels(n=40, shape=(2, 6, 6))
    model = _cnn(channels=2)
    before, kept = _weights(model), data.Normalize(0.5, 0.5)
    model.input_normalization = kept
    with pytest.raises(exc, match=message):
        _fit(model, X8, y, **change)
    assert model.input_normalization is kept
    _assert_same_bits(_weights(model), before)


def test_input_normalization_attribute_and_config_are_checked():
    model = _mlp()
    with pytest.raises(TypeError, match="input_normalization must be an "
                                        "nnscratch.data.Normalize or None, got tuple"):
        model.input_normalization = (0.5, 0.2)
    config = {"layers": [nn.Linear(2, 2)], "input_normalization": {"mean": [0.5]}}
    with pytest.raises(ValueError, match="input_normalization is {'mean'"):
        nn.Sequential.from_config(config)
    config["input_normalization"] = {"mean": [0.5], "std": [0.0]}
    with pytest.raises(ValueError, match="Invalid std"):
        nn.Sequential.from_config(config)
    with pytest.raises(ValueError, match="a Sequential's config is"):
        nn.Sequential.from_config({"layers": [], "normalize": True})
    # predict with a normalisation that does not fit the data: the argument is named
    model.input_normalization = data.Normalize([0.1, 0.2, 0.3, 0.4, 0.5], 1.0)
    with pytest.raises(ValueError, match="X does not fit the input normalization .* cannot be "
                                         "split into 5 channels"):
        model.predict(np.zeros((2, 36), np.uint8))
    with pytest.raises(ValueError, match="X does not fit the input normalization"):
        model.evaluate(np.zeros((2, 36)), np.zeros(2, int), loss="cross_entropy")


def test_layer_stats_take_the_inputs_as_fit_does():
    from nnscratch.inspect import layer_stats

    X8, y = _pixels(n=64, shape=(36,))
    model = _mlp()
    loss = nn.CrossEntropyLoss()
    assert layer_stats(model, X8, y, loss) == layer_stats(model, data.to_float(X8), y, loss)
    model.input_normalization = norm = data.Normalize(0.3, 0.2)
    normalised = layer_stats(model, X8, y, loss)
    model.input_normalization = None
    assert normalised == layer_stats(model, norm(X8), y, loss)


def test_onnx_export_holds_the_input_normalization():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from nnscratch import onnx as nn_onnx

    for images, norm in ((False, data.Normalize(0.3, 0.2)),
                         (True, data.Normalize([0.3, 0.6], [0.2, 0.1])),
                         (False, data.Normalize([0.3, 0.6], [0.2, 0.1]))):
        shape = (2, 6, 6) if images else (72,)
        X8, _ = _pixels(n=20, shape=shape)
        model = _cnn(channels=2) if images else _mlp(d=72)
        model.input_normalization = norm
        proto = nn_onnx.to_model_proto(model, shape)
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": data.to_float(X8)})[0]
        np.testing.assert_allclose(got, model.predict(X8), rtol=1e-5, atol=1e-6)
        without = copy.deepcopy(model)
        without.input_normalization = None
        assert not np.allclose(got, without.predict(X8), rtol=1e-3)
    model.input_normalization = data.Normalize([0.1] * 5, 1.0)
    with pytest.raises(ValueError, match="input_normalization has 5 channels"):
        nn_onnx.to_model_proto(model, (72,))


def test_to_torch_refuses_an_input_normalization_rather_than_dropping_it():
    pytest.importorskip("torch")
    from nnscratch.interop import ConversionError, to_torch

    model = _mlp()
    model.input_normalization = data.Normalize(0.3, 0.2)
    with pytest.raises(ConversionError, match="the model normalises its inputs"):
        to_torch(model)
    model.input_normalization = None
    to_torch(model)


# ---------------------------------------------------------------------------
# validation_split: stratified for class labels, the last rows for other targets
# ---------------------------------------------------------------------------

def test_stratified_validation_split_holds_out_every_class_in_proportion():
    # labels sorted by class (50, 30, 20): the last rows would all be class 2
    y = np.repeat([0, 1, 2], [50, 30, 20])
    X = np.random.default_rng(0).normal(size=(100, 36)).astype(np.float32)
    train, held_out = training.validation_split_indices(y, 0.1)
    assert np.bincount(y[held_out]).tolist() == [5, 3, 2]
    assert np.bincount(y[train]).tolist() == [45, 27, 18]
    assert sorted(np.concatenate([train, held_out])) == list(range(100))
    expected = data.split_indices(y, 0.1, seed=0)                  # the documented rule
    assert all(np.array_equal(a, b) for a, b in zip((train, held_out), expected))
    # fit trains on exactly `train` and validates on exactly `held_out`, whatever its seed
    for seed in (0, 7):
        record = _Recorder()
        model = _mlp()
        history = _fit(model, X, y, validation_split=0.1, seed=seed, epochs=1,
                       transform=record)
        seen = sorted(int(np.flatnonzero((X == row).all(axis=1))[0])
                      for b in record.batches for row in b)
        assert seen == train.tolist()
        assert history.history["val_loss"][-1] == pytest.approx(
            model.evaluate(X[held_out], y[held_out])["loss"], rel=1e-6)


def test_binary_labels_are_stratified_and_regression_keeps_the_last_rows():
    y = np.repeat([0, 1], [80, 20])
    X = np.random.default_rng(1).normal(size=(100, 4)).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 1))
    history = _fit(model, X, y, loss=nn.BCEWithLogitsLoss(), validation_split=0.25,
                   optimizer=nn.SGD(model.parameters(), lr=0.1))
    _, held_out = training.validation_split_indices(y, 0.25)
    assert np.bincount(y[held_out]).tolist() == [20, 5]
    assert history.history["val_loss"][-1] == pytest.approx(
        model.evaluate(X[held_out], y[held_out])["loss"], rel=1e-6)
    # regression targets: the last rows, as Keras takes them (and as fit always did)
    target = X[:, :1] * 2.0
    reg = nn.Sequential(nn.Linear(4, 1))
    history = _fit(reg, X, target, loss=nn.MSELoss(), validation_split=0.25,
                   optimizer=nn.SGD(reg.parameters(), lr=0.01))
    train, held_out = training.validation_split_indices(target, 0.25, stratify=False)
    assert train.tolist() == list(range(75)) and held_out.tolist() == list(range(75, 100))
    assert history.history["val_loss"][-1] == pytest.approx(
        reg.evaluate(X[75:], target[75:])["loss"], rel=1e-6)


def test_validation_split_indices_errors():
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match=r"Invalid validation_split: 0 \(must be in \(0, 1\)"):
        training.validation_split_indices(y, 0)
    with pytest.raises(ValueError, match="validation_split=0.01 leaves an empty validation set "
                                         "from 10 samples"):
        training.validation_split_indices(y, 0.01)
    with pytest.raises(ValueError, match="validation_split=0.97 leaves an empty training"):
        training.validation_split_indices(y, 0.97, stratify=False)
    with pytest.raises(ValueError, match="one class label per sample"):
        training.validation_split_indices(np.zeros((10, 2)), 0.5)
    with pytest.raises(TypeError, match="stratify must be True or False"):
        training.validation_split_indices(y, 0.5, stratify="yes")
