"""model.save / nnscratch.load: round trip, exact path, atomicity, and rejected files."""
import json
import os
import zipfile

import numpy as np
import pytest

import nnscratch as nn
from nnscratch.serialization import architecture
from nnscratch import _random


def _model(dtype=np.float32):
    nn.seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8, dtype=dtype), nn.LeakyReLU(0.2),
                         nn.Dropout(0.25), nn.Linear(8, 4, bias=False, dtype=dtype),
                         nn.Tanh(), nn.Linear(4, 3, dtype=dtype, init="xavier"), nn.Softmax())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_architecture_and_weights(tmp_path, dtype):
    model = _model(dtype)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nn.load(path)
    assert repr(loaded) == repr(model)
    assert architecture(loaded) == architecture(model)
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    for (_, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert q.dtype == dtype
        np.testing.assert_array_equal(p.data, q.data)
        assert not q.grad.any()
    X = np.random.default_rng(0).normal(size=(5, 2, 3))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.training


def test_nested_sequential_round_trip(tmp_path):
    nn.seed(1)
    block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(block, nn.Linear(4, 2))
    assert [n for n, _ in model.named_parameters()] == ["0.0.weight", "0.0.bias", "1.weight",
                                                        "1.bias"]
    model.save(tmp_path / "nested.npz")
    loaded = nn.load(tmp_path / "nested.npz")
    X = np.random.default_rng(1).normal(size=(3, 4))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert repr(loaded[0]) == repr(block)


@nn.register
class _Shift(nn.Module):
    """A layer with saved, untrained state (as a batch norm's running statistics)."""

    def __init__(self, size=3):
        super().__init__()
        self.size = size
        self.register_buffer("offset", np.zeros(size))

    def forward(self, x):
        return x

    def get_config(self):
        return {"size": self.size}


def test_buffers_are_saved_and_restored(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), _Shift())
    model[1].offset[...] = [1.0, 2.0, 3.0]
    assert [n for n, _ in model.named_buffers()] == ["1.offset"]
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded[1].offset, [1.0, 2.0, 3.0])


def test_writes_exactly_the_given_path_and_nothing_else(tmp_path):
    model = _model()
    for name in ("weights.bin", "no_extension", "model.npz"):
        path = tmp_path / name
        model.save(str(path))
        assert path.exists()
        assert zipfile.is_zipfile(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "no_extension", "weights.bin"]
    with np.load(tmp_path / "weights.bin", allow_pickle=False) as archive:   # plain npz
        document = json.loads(archive["__architecture__"].tobytes())
        assert document["format"] == "nnscratch"
        assert document["type"] == "Sequential"
        assert [layer["__module__"]["type"] for layer in document["config"]["layers"]][:3] == [
            "Flatten", "Linear", "LeakyReLU"]
        assert archive["1.weight"].shape == (6, 8)


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    bigger = nn.Sequential(nn.Linear(6, 100), nn.ReLU(), nn.Linear(100, 3))
    bigger.save(path)
    assert repr(nn.load(path)) == repr(bigger)
    assert os.listdir(tmp_path) == ["m.npz"]              # no temporary file left behind


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        _model().save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_load_does_not_disturb_the_library_generator(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    nn.seed(5)
    state = _random.get_state()
    nn.load(path)
    assert _random.get_state() == state


def test_truncated_file_is_a_value_error(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    data = path.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 20):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match="not a valid nnscratch model file"):
            nn.load(path)


def test_foreign_files_are_value_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n")
    npy = tmp_path / "array.npy"
    np.save(npy, np.arange(3))
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.ones(3))
    for path in (text, npy, plain):
        with pytest.raises(ValueError, match="not a valid nnscratch model file"):
            nn.load(path)
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.npz")


def _tampered(tmp_path, edit_document=None, edit_arrays=None):
    path = tmp_path / "m.npz"
    _model().save(path)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if edit_document is not None:
        document = json.loads(arrays["__architecture__"].tobytes())
        edit_document(document)
        arrays["__architecture__"] = np.frombuffer(json.dumps(document).encode(), np.uint8)
    if edit_arrays is not None:
        edit_arrays(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _layer(document, i):
    """The i-th layer's entry of a saved Sequential's architecture."""
    return document["config"]["layers"][i]["__module__"]


@pytest.mark.parametrize("edit_document, edit_arrays, message", [
    (lambda d: d["config"]["layers"].__setitem__(1, {"__module__": {"type": "os.system",
                                                                    "config": {}}}), None,
     "not a registered module class"),
    (lambda d: _layer(d, 1)["config"].__setitem__("out_features", 9), None,
     "weights do not match|has shape"),
    (lambda d: _layer(d, 1)["config"].__setitem__("bogus", 1), None, "bad config"),
    (lambda d: _layer(d, 3)["config"].__setitem__("p", 2.0), None, "bad config"),
    (lambda d: d.__setitem__("type", "Linear"), None, "bad config"),
    (lambda d: d.__setitem__("config", {"layers": 3}), None, "bad config"),
    (lambda d: d.__setitem__("format", "keras"), None, "'format'"),
    (lambda d: d.__setitem__("version", 99), None, "version 99"),
    (None, lambda a: a.pop("1.bias"), "missing \\['1.bias'\\]"),
    (None, lambda a: a.__setitem__("9.weight", np.ones(2)), "unexpected \\['9.weight'\\]"),
    (None, lambda a: a.__setitem__("1.weight", np.ones((6, 8))), "float64"),
    (None, lambda a: a.__setitem__("1.weight", np.ones((8, 6), np.float32)), "shape"),
    (None, lambda a: a.__setitem__("__architecture__", np.frombuffer(b"{nope", np.uint8)),
     "not valid JSON"),
    (None, lambda a: a.__setitem__("__architecture__", np.array(["x"])),
     "uint8|not a number type"),
])
def test_tampered_files_are_value_errors(tmp_path, edit_document, edit_arrays, message):
    path = _tampered(tmp_path, edit_document, edit_arrays)
    with pytest.raises(ValueError, match=message):
        nn.load(path)


def test_npz_without_architecture_is_a_value_error(tmp_path):
    path = _tampered(tmp_path, edit_arrays=lambda a: a.pop("__architecture__"))
    with pytest.raises(ValueError, match="__architecture__"):
        nn.load(path)


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __architecture__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a valid nnscratch model file"):
        nn.load(path)


@nn.register
class _Fussy(nn.Module):
    """A registered layer whose constructor raises what a crafted config provokes."""

    def __init__(self, factor=1):
        super().__init__()
        self.factor = 1 / factor

    def forward(self, x):
        return x

    def get_config(self):
        return {"factor": 1 / self.factor}


@pytest.mark.parametrize("edit, message", [
    (lambda d: _layer(d, 2)["config"].__setitem__("negative_slope", 10 ** 400), "bad config"),
    (lambda d: _layer(d, 3)["config"].__setitem__("p", 10 ** 400), "bad config"),
    (lambda d: _layer(d, 1)["config"].__setitem__("in_features", 2 ** 62),
     "bad config|architecture needs"),
    (lambda d: d["config"]["layers"].__setitem__(
        0, {"__module__": {"type": "_Fussy", "config": {"factor": 0}}}), "ZeroDivisionError"),
    (lambda d: _layer(d, 3)["config"].__setitem__("p", _nested(900)), "nested deeper"),
])
def test_crafted_configs_are_value_errors(tmp_path, edit, message):
    path = _tampered(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        nn.load(path)


def _nested(depth):
    value = 0.5
    for _ in range(depth):
        value = [value]
    return value


def test_forty_nested_sequentials_load(tmp_path):
    model = nn.Linear(2, 2)
    for _ in range(40):
        model = nn.Sequential(model)
    model.save(tmp_path / "deep.npz")
    assert [n for n, _ in nn.load(tmp_path / "deep.npz").named_parameters()] == \
        [n for n, _ in model.named_parameters()]
