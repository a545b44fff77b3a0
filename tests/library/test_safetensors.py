"""model.save("m.safetensors") / nnscratch.load: the Hugging Face safetensors format.

Round trips (bit for bit, outputs equal), the file as other programs read it
(safetensors.numpy), plain weight files, atomic writes, and crafted files -- truncated,
garbled, with a lying header length, wrong offsets or shapes -- refused with a ValueError
before anything of their declared size is read or allocated.
"""
import json
import os
import struct
import sys
import zipfile

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import _random, serialization
from conftest import resident

st = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402

INVALID = "not a valid nnscratch model file"


# --- models and files -----------------------------------------------------------------------

def _model(name, dtype):
    """A recipe model with non-trivial batch-norm statistics (its buffers)."""
    nn.seed(3)
    model = {"mlp": lambda: nn.models.mlp(in_features=20, hidden=(16, 12), dtype=dtype),
             "cnn": lambda: nn.models.cnn(image_size=12, dtype=dtype),
             "lenet": lambda: nn.models.lenet(dtype=dtype)}[name]()
    rng = np.random.default_rng(7)
    for key, array in model.state_dict().items():
        if key.endswith("running_mean"):
            array[...] = rng.normal(size=array.shape)
        elif key.endswith("running_var"):
            array[...] = rng.uniform(0.5, 2.0, size=array.shape)
        elif key.endswith(".bias"):
            array[...] = rng.normal(size=array.shape)
    return model


def _inputs(name, dtype, n=5):
    shape = {"mlp": (20,), "cnn": (1, 12, 12), "lenet": (1, 28, 28)}[name]
    return np.random.default_rng(11).normal(size=(n,) + shape).astype(dtype)


def _small(dtype=np.float32):
    nn.seed(0)
    return nn.Sequential(nn.Linear(6, 8, dtype=dtype), nn.BatchNorm1d(8, dtype=dtype),
                         nn.ReLU(), nn.Linear(8, 3, dtype=dtype))


def _parts(data):
    """(header dict, data bytes) of safetensors bytes."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def _craft(header, body, length=None):
    """Safetensors bytes from a header dict and the data bytes (`length`: the one declared)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def _saved(tmp_path, model=None, name="m.safetensors"):
    path = tmp_path / name
    (model or _small()).save(path)
    return path


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet"])
def test_round_trip_is_bit_for_bit(tmp_path, name, dtype):
    model = _model(name, dtype)
    path = tmp_path / f"{name}.safetensors"
    model.save(path)
    loaded = nn.load(path)
    assert type(loaded) is nn.Sequential and loaded.training
    assert repr(loaded) == repr(model)
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype == dtype
        assert got[key].tobytes() == want[key].tobytes(), key      # bit for bit
    X = _inputs(name, dtype)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_batchnorm_buffers_survive_and_are_used(tmp_path):
    model = _model("cnn", np.float64)
    assert any(k.endswith("running_var") for k in model.state_dict())
    loaded = nn.load(_saved(tmp_path, model))
    for key in ("1.running_mean", "1.running_var", "5.running_mean", "5.running_var"):
        np.testing.assert_array_equal(loaded.state_dict()[key], model.state_dict()[key])
    # the eval output depends on the running statistics: a fresh model's differ
    X = _inputs("cnn", np.float64)
    fresh = nn.models.cnn(image_size=12, dtype=np.float64)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "running" not in k},
                          strict=False)
    assert not np.allclose(fresh.predict(X), loaded.predict(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_the_file_is_plain_safetensors(tmp_path):
    model = _model("cnn", np.float32)
    path = _saved(tmp_path, model)
    tensors = st.load_file(path)
    state = model.state_dict()
    assert sorted(tensors) == sorted(state)
    for key, array in state.items():
        assert tensors[key].shape == array.shape and tensors[key].dtype == array.dtype
        np.testing.assert_array_equal(tensors[key], array)
    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata()
    assert set(metadata) == {"__architecture__"}
    document = json.loads(metadata["__architecture__"])
    # the same document the .npz format stores under __architecture__
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        assert document == json.loads(archive["__architecture__"].tobytes())
    assert document["format"] == "nnscratch" and document["type"] == "Sequential"


def test_suffix_chooses_the_format_and_npz_stays_the_default(tmp_path):
    model = _small()
    for name in ("m.npz", "weights.bin", "no_extension", "m.safetensors.npz"):
        model.save(tmp_path / name)
        assert zipfile.is_zipfile(tmp_path / name), name
    for name in ("a.safetensors", "b.SafeTensors"):
        model.save(tmp_path / name)
        assert not zipfile.is_zipfile(tmp_path / name)
        assert sorted(st.load_file(tmp_path / name)) == sorted(model.state_dict())
    X = np.random.default_rng(0).normal(size=(4, 6))
    for name in os.listdir(tmp_path):
        np.testing.assert_array_equal(nn.load(tmp_path / name).predict(X), model.predict(X))
    assert len(os.listdir(tmp_path)) == 6                    # nothing else written


def test_files_are_recognised_by_content_as_well(tmp_path):
    model = _small()
    renamed = tmp_path / "model.bin"                          # safetensors under another name
    os.replace(_saved(tmp_path, model), renamed)
    zipped = tmp_path / "really_npz.safetensors"              # an npz under a .safetensors name
    model.save(tmp_path / "x.npz")
    os.replace(tmp_path / "x.npz", zipped)
    X = np.random.default_rng(0).normal(size=(3, 6))
    for path in (renamed, zipped):
        np.testing.assert_array_equal(nn.load(path).predict(X), model.predict(X))


def test_nested_and_empty_models(tmp_path):
    nn.seed(1)
    nested = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    empty = nn.Sequential(nn.Flatten(), nn.ReLU())
    for i, model in enumerate((nested, empty)):
        path = tmp_path / f"{i}.safetensors"
        model.save(path)
        loaded = nn.load(path)
        assert repr(loaded) == repr(model)
        assert list(loaded.state_dict()) == list(model.state_dict())
        X = np.random.default_rng(i).normal(size=(3, 4))
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_load_does_not_disturb_the_library_generator(tmp_path):
    path = _saved(tmp_path)
    nn.seed(5)
    state = _random.get_state()
    nn.load(path)
    assert _random.get_state() == state


# --- plain weight files -----------------------------------------------------------------------

def test_a_plain_state_dict_file_loads_into_a_model(tmp_path):
    model = _model("lenet", np.float32)
    path = tmp_path / "weights.safetensors"
    st.save_file(dict(model.state_dict()), path)          # no metadata: weights only
    other = nn.models.lenet()
    other.load_state_dict(st.load_file(path))
    for key, array in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], array)
    X = _inputs("lenet", np.float32)
    np.testing.assert_array_equal(other.predict(X), model.predict(X))
    with pytest.raises(ValueError, match=f"{INVALID}.*without '__metadata__'.*load_state_dict") \
            as info:
        nn.load(path)
    assert str(path) in str(info.value)


def test_a_file_with_foreign_metadata_is_refused(tmp_path):
    path = tmp_path / "torch_style.safetensors"
    st.save_file(dict(_small().state_dict()), path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no '__architecture__' entry"):
        nn.load(path)


# --- atomic writes ----------------------------------------------------------------------------

def test_save_overwrites_atomically(tmp_path):
    path = _saved(tmp_path)
    bigger = nn.Sequential(nn.Linear(6, 100), nn.ReLU(), nn.Linear(100, 3))
    bigger.save(path)
    assert repr(nn.load(path)) == repr(bigger)
    assert os.listdir(tmp_path) == ["m.safetensors"]           # no temporary file left


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()

    def broken(fd):
        raise OSError("disk full")

    monkeypatch.setattr(serialization.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        nn.Sequential(nn.Linear(6, 50), nn.Linear(50, 3)).save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert path.read_bytes() == before
    assert repr(nn.load(path)) == repr(_small())


def test_a_failed_serialisation_writes_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("serialiser broke")

    monkeypatch.setattr(st, "save", broken)
    with pytest.raises(RuntimeError, match="serialiser broke"):
        _small().save(tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_without_the_package_saving_says_how_to_install_and_loading_works(tmp_path,
                                                                          monkeypatch):
    path = _saved(tmp_path)
    for name in [m for m in sys.modules if m == "safetensors" or m.startswith("safetensors.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "safetensors", None)     # import safetensors fails
    with pytest.raises(ImportError, match='pip install "nnscratch\\[safetensors\\]"'):
        _small().save(tmp_path / "new.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    X = np.random.default_rng(0).normal(size=(2, 6))
    np.testing.assert_array_equal(nn.load(path).predict(X), _small().predict(X))


def test_unregistered_layers_are_refused_before_writing(tmp_path):
    class Mine(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="Mine cannot be saved"):
        nn.Sequential(nn.Linear(2, 2), Mine()).save(tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


# --- files that are not what they claim -------------------------------------------------------

def test_truncated_files_are_value_errors(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    for size in (0, 3, 8, 9, 8 + length // 2, 8 + length, 8 + length + 1, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=INVALID) as info:
            nn.load(path)
        assert str(path) in str(info.value)


def test_every_header_byte_garbled_is_a_value_error(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    for i in range(8 + length):
        garbled = bytearray(data)
        garbled[i] ^= 0xFF
        path.write_bytes(bytes(garbled))
        with pytest.raises(ValueError, match=INVALID):
            nn.load(path)


def test_random_garbling_loads_or_is_a_value_error(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = set()
    for case in range(300):
        garbled = bytearray(data)
        for i in rng.integers(0, len(data), size=rng.integers(1, 4)):
            garbled[i] = int(rng.integers(0, 256))
        path.write_bytes(bytes(garbled))
        try:
            model = nn.load(path)
        except ValueError:
            outcomes.add("refused")
        else:
            assert type(model) is nn.Sequential, case
            outcomes.add("loaded")              # a weight's bytes changed: still a model
    assert outcomes == {"refused", "loaded"}


@pytest.mark.parametrize("length, message", [
    (2 ** 64 - 1, "declares 18446744073709551615 bytes"),
    (2 ** 40, "declares"),
    (10 ** 6, "declares"),
])
def test_a_header_length_beyond_the_file_is_refused_before_reading(tmp_path, length, message):
    header, body = _parts(_saved(tmp_path).read_bytes())
    path = tmp_path / "m.safetensors"
    path.write_bytes(_craft(header, body, length=length))
    start, peak = resident()
    with pytest.raises(ValueError, match=message):
        nn.load(path)
    assert peak() - start < 4 << 20


def test_a_header_longer_than_the_cap_is_refused(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    monkeypatch.setattr(serialization, "MAX_SAFETENSORS_HEADER", 64)
    with pytest.raises(ValueError, match="more than 64"):
        nn.load(path)


def _edited(tmp_path, edit):
    """The small model's file with its header dict edited by ``edit(header, data) -> data``."""
    header, body = _parts(_saved(tmp_path).read_bytes())
    edited = edit(header, body)
    body = edited if isinstance(edited, bytes) else body
    path = tmp_path / "m.safetensors"
    path.write_bytes(_craft(header, body))
    return path


def _set(name, field, value):
    def edit(header, body):
        header[name][field] = value
    return edit


def _architecture(change):
    def edit(header, body):
        document = json.loads(header["__metadata__"]["__architecture__"])
        change(document)
        header["__metadata__"]["__architecture__"] = json.dumps(document)
    return edit


def _layer(document, i):
    return document["config"]["layers"][i]["__module__"]["config"]


@pytest.mark.parametrize("edit, message", [
    # byte ranges
    (_set("0.weight", "data_offsets", [0, 10 ** 12]), "not a byte range"),
    (_set("0.weight", "data_offsets", [-4, 188]), "not a byte range"),
    (_set("0.weight", "data_offsets", [4, 196]), "a gap or an overlap|declares"),
    (_set("0.weight", "data_offsets", [0, 200]), "declares 200 bytes"),
    (_set("0.weight", "data_offsets", "0-192"), "not a byte range"),
    (lambda h, b: b + b"\0" * 8, "the file holds"),                      # trailing bytes
    (lambda h, b: [h[k].__setitem__("data_offsets", [0, h[k]["data_offsets"][1]
                                                     - h[k]["data_offsets"][0]])
                   for k in h if k != "__metadata__"], "a gap or an overlap"),
    # shapes and dtypes
    (_set("0.weight", "shape", [2 ** 62, 2 ** 62]), "declares"),
    (_set("0.weight", "shape", [-6, -8]), "non-negative ints"),
    (_set("0.weight", "shape", [6.0, 8.0]), "non-negative ints"),
    (_set("0.weight", "shape", [1] * 40), "non-negative ints"),
    (_set("0.weight", "shape", [8, 6]), "has shape \\(8, 6\\)"),        # right bytes, wrong shape
    (_set("0.weight", "dtype", "BF16"), "NumPy cannot hold"),
    (_set("0.weight", "dtype", "F64"), "declares"),
    (_set("0.weight", "dtype", "I32"), "dtype int32"),                  # right bytes, wrong kind
    (_set("0.weight", "extra", 1), "not a \\{dtype, shape, data_offsets\\} entry"),
    (lambda h, b: h.__setitem__("0.weight", [1, 2]), "not a \\{dtype"),
    # names
    (lambda h, b: h.__setitem__("9.weight", h.pop("3.bias")), "missing|unexpected"),
    # metadata
    (lambda h, b: h.pop("__metadata__"), "without '__metadata__'"),
    (lambda h, b: h.__setitem__("__metadata__", {"__architecture__": 3}), "map of strings"),
    (lambda h, b: h.__setitem__("__metadata__", [1]), "map of strings"),
    (lambda h, b: h["__metadata__"].__setitem__("__architecture__", "{nope"), "not valid JSON"),
    (lambda h, b: h["__metadata__"].__setitem__("__architecture__", "[" * 100000),
     "not valid JSON"),
    (_architecture(lambda d: d.__setitem__("format", "keras")), "'format'"),
    (_architecture(lambda d: _layer(d, 0).__setitem__("out_features", 9)),
     "architecture needs|weights do not match"),
    (_architecture(lambda d: _layer(d, 0).__setitem__("in_features", 10 ** 6)),
     "architecture needs"),
    (_architecture(lambda d: d["config"]["layers"][2]["__module__"].__setitem__("type",
                                                                                "os.system")),
     "not a registered module class"),
])
def test_crafted_headers_are_value_errors(tmp_path, edit, message):
    path = _edited(tmp_path, edit)
    start, peak = resident()
    with pytest.raises(ValueError, match=message) as info:
        nn.load(path)
    assert INVALID in str(info.value) or str(path) in str(info.value)
    assert peak() - start < 16 << 20           # nothing of the declared sizes was allocated


def test_header_syntax_errors_are_value_errors(tmp_path):
    header, body = _parts(_saved(tmp_path).read_bytes())
    text = json.dumps(header)
    path = tmp_path / "m.safetensors"
    for bad in (b"[1, 2, 3]", b"  " + text.encode(), b"{\"a\": 1, \"a\": 2}",
                text.replace('"0.weight"', '"3.bias"').encode(),        # a name twice
                b"{" + bytes([0xC3, 0x28]) + b"}", b"{}", b"{" * 9999):
        path.write_bytes(struct.pack("<Q", len(bad)) + bad + body)
        with pytest.raises(ValueError, match=INVALID):
            nn.load(path)


def test_folders_and_missing_files(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match="folder"):
        nn.load(tmp_path / "dir.safetensors")
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.safetensors")
