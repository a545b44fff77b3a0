"""Training checkpoints (nnscratch.checkpoint): round trip, a model file too, rejected files,
optimizer kinds, atomic writes."""
import json
import os

import numpy as np
import pytest

import nnscratch as nn
from nnscratch.serialization import architecture
from nnscratch import checkpoint, serialization
from nnscratch.checkpoint import load_checkpoint, save_checkpoint, set_optimizer_state

HAVE_BATCHNORM = hasattr(nn, "BatchNorm1d")


def _model(dtype=np.float32, seed=0):
    nn.seed(seed)
    layers = [nn.Linear(6, 8, dtype=dtype), nn.ReLU(), nn.Dropout(0.2)]
    if HAVE_BATCHNORM:
        layers.append(nn.BatchNorm1d(8, dtype=dtype))    # buffers: running statistics
    layers += [nn.Linear(8, 3, dtype=dtype)]
    return nn.Sequential(*layers)


def _data(n=40):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 6)), rng.integers(0, 3, n)


def _train(model, optimizer, epochs=2, seed=0):
    X, y = _data()
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
              batch_size=16, seed=seed, progress=False)


OPTIMIZERS = {
    "sgd": lambda p: nn.SGD(p, lr=0.05),
    "sgd-momentum": lambda p: nn.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                     weight_decay=1e-3),
    "adam": lambda p: nn.Adam(p, lr=0.01),
    "adamw": lambda p: nn.AdamW(p, lr=0.01, weight_decay=0.05),
}


def _arrays(model):
    return {name: p.data.copy() for name, p in model.named_parameters()} | \
        {name: b.copy() for name, b in model.named_buffers()}


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_round_trip_and_training_continues_identically(tmp_path, kind, dtype):
    model = _model(dtype)
    optimizer = OPTIMIZERS[kind](model.parameters())
    _train(model, optimizer)
    meta = {"epoch": 2, "history": {"loss": [1.5, 0.75]}, "note": "ünïcode",
            "nested": {"list": [1, 2.5, None, True]}}
    path = tmp_path / "run.ckpt.npz"
    assert save_checkpoint(path, model, optimizer, meta=meta) is None
    assert os.listdir(tmp_path) == ["run.ckpt.npz"]

    loaded, state, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert architecture(loaded) == architecture(model)
    before = _arrays(model)
    for name, value in _arrays(loaded).items():
        assert value.dtype == before[name].dtype
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert state["type"] == type(optimizer).__name__
    assert state["lr"] == optimizer.lr
    original = optimizer.state_dict()["state"]
    assert len(state["state"]) == len(original)
    for got, want in zip(state["state"], original):
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype and got[key].shape == value.shape
                np.testing.assert_array_equal(got[key], value)
            else:
                assert got[key] == value and type(got[key]) is type(value)
    if kind.startswith("adam"):
        assert all(entry["step"] == 2 * 3 for entry in state["state"])   # 40/16 -> 3 a epoch
    if kind == "sgd":
        assert all(entry == {} for entry in state["state"])

    # a new optimizer over the loaded model takes the state; both continue the same way
    resumed = OPTIMIZERS[kind](loaded.parameters())
    set_optimizer_state(resumed, state)
    rng_state = nn._random.get_state()
    _train(model, optimizer, epochs=1, seed=5)
    nn._random.set_state(rng_state)        # the same dropout masks for the second model
    _train(loaded, resumed, epochs=1, seed=5)
    for name, value in _arrays(loaded).items():
        np.testing.assert_array_equal(value, _arrays(model)[name], err_msg=name)


def test_checkpoint_before_any_step_and_without_meta(tmp_path):
    model = _model()
    optimizer = nn.Adam(model.parameters())
    save_checkpoint(tmp_path / "c.npz", model, optimizer)
    _, state, meta = load_checkpoint(tmp_path / "c.npz")
    assert meta == {}
    assert state["state"] == [{} for _ in model.parameters()]
    fresh = nn.Adam(_model().parameters())
    set_optimizer_state(fresh, state)
    assert fresh.state == [{} for _ in model.parameters()]


def test_checkpoint_keeps_the_learning_rate(tmp_path):
    model = _model()
    optimizer = nn.SGD(model.parameters(), lr=0.1, momentum=0.5)
    _train(model, optimizer, epochs=1)
    optimizer.lr = 0.0123              # as a schedule leaves it
    save_checkpoint(tmp_path / "c.npz", model, optimizer)
    _, state, _ = load_checkpoint(tmp_path / "c.npz")
    other = nn.SGD(_model().parameters(), lr=1.0, momentum=0.5)
    set_optimizer_state(other, state)
    assert other.lr == 0.0123


def test_checkpoint_is_a_model_file(tmp_path):
    model = _model()
    optimizer = nn.Adam(model.parameters())
    _train(model, optimizer)
    save_checkpoint(tmp_path / "c.npz", model, optimizer, meta={"epoch": 1})
    loaded = nn.load(tmp_path / "c.npz")
    X, _ = _data(7)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    # and plainly a NumPy .npz: the extra entries sit under "checkpoint/"
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        extra = [k for k in z.files if k.startswith("checkpoint/")]
    assert "checkpoint/meta" in extra
    assert any(k.startswith("checkpoint/optim/0/") for k in extra)


def test_a_plain_model_file_is_not_a_checkpoint(tmp_path):
    model = _model()
    model.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="not an nnscratch checkpoint"):
        load_checkpoint(tmp_path / "model.npz")


def _saved(tmp_path, kind="adam"):
    model = _model()
    optimizer = OPTIMIZERS[kind](model.parameters())
    _train(model, optimizer, epochs=1)
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, optimizer, meta={"epoch": 1})
    return path, model, optimizer


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1])
def test_truncated_checkpoint(tmp_path, keep):
    path, _, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ValueError):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello", b"PK\x03\x04" + bytes(50)])
def test_not_a_checkpoint_at_all(tmp_path, content):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing.npz")


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    serialization.write_npz(path, arrays)


@pytest.mark.parametrize("damage", ["not-json", "no-optimizer", "bad-lr", "wrong-dtype",
                                    "optim-index", "optim-junk", "missing-weight",
                                    "scalars-not-dicts", "optimizer-not-dict", "meta-list"])
def test_damaged_checkpoint(tmp_path, damage):
    path, _, _ = _saved(tmp_path)

    def document(arrays):
        return json.loads(arrays[checkpoint.META_KEY].tobytes())

    def put(arrays, doc):
        arrays[checkpoint.META_KEY] = np.frombuffer(json.dumps(doc).encode(), np.uint8)

    def change(arrays):
        if damage == "not-json":
            arrays[checkpoint.META_KEY] = np.frombuffer(b"{not json", np.uint8)
        elif damage == "no-optimizer":
            doc = document(arrays)
            del doc["optimizer"]
            put(arrays, doc)
        elif damage == "bad-lr":
            doc = document(arrays)
            doc["optimizer"]["lr"] = "fast"
            put(arrays, doc)
        elif damage == "wrong-dtype":
            arrays[checkpoint.META_KEY] = arrays[checkpoint.META_KEY].astype(np.int32)
        elif damage == "optim-index":
            arrays[checkpoint.OPTIM_PREFIX + "99/m"] = np.zeros(3, np.float32)
        elif damage == "optim-junk":
            arrays[checkpoint.OPTIM_PREFIX + "x/m"] = np.zeros(3, np.float32)
        elif damage == "missing-weight":
            del arrays["0.weight"]
        elif damage == "scalars-not-dicts":
            doc = document(arrays)
            doc["optimizer"]["scalars"] = [1] * len(doc["optimizer"]["scalars"])
            put(arrays, doc)
        elif damage == "optimizer-not-dict":
            doc = document(arrays)
            doc["optimizer"] = ["Adam"]
            put(arrays, doc)
        elif damage == "meta-list":
            doc = document(arrays)
            doc["meta"] = [1, 2]
            put(arrays, doc)

    _rewrite(path, change)
    with pytest.raises(ValueError):
        load_checkpoint(path)


def test_wrong_optimizer_type(tmp_path):
    path, model, _ = _saved(tmp_path, "adam")
    _, state, _ = load_checkpoint(path)
    for other in (nn.SGD(model.parameters(), lr=0.1, momentum=0.9),
                  nn.AdamW(model.parameters())):       # a subclass is another kind too
        with pytest.raises(ValueError, match="holds Adam state, the optimizer is"):
            set_optimizer_state(other, state)
    path, model, _ = _saved(tmp_path, "adamw")
    _, state, _ = load_checkpoint(path)
    with pytest.raises(ValueError, match="holds AdamW state"):
        set_optimizer_state(nn.Adam(model.parameters()), state)


def test_state_for_another_model(tmp_path):
    path, _, _ = _saved(tmp_path, "adam")
    _, state, _ = load_checkpoint(path)
    nn.seed(0)
    smaller = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ValueError):
        set_optimizer_state(nn.Adam(smaller.parameters()), state)
    wider = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))
    with pytest.raises(ValueError):
        set_optimizer_state(nn.Adam(wider.parameters()), state)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path, model, optimizer = _saved(tmp_path)
    before = path.read_bytes()
    _train(model, optimizer, epochs=1, seed=9)     # something new to save

    real_savez = np.savez

    def half_then_fail(file, **arrays):
        real_savez(file, **dict(list(arrays.items())[:2]))   # part of the archive is written
        raise error("disk full")

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(error):
        save_checkpoint(path, model, optimizer, meta={"epoch": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.npz"]             # no temporary file left
    assert path.read_bytes() == before
    assert load_checkpoint(path)[2] == {"epoch": 1}


def test_meta_that_is_not_json_leaves_the_previous_checkpoint(tmp_path):
    path, model, optimizer = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, model, optimizer, meta={"epoch": object()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_save_writes_exactly_the_path_given(tmp_path):
    model = _model()
    optimizer = nn.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "run.ckpt", model, optimizer)     # no ".npz" appended
    save_checkpoint(str(tmp_path / "other"), model, optimizer)
    assert sorted(os.listdir(tmp_path)) == ["other", "run.ckpt"]
    assert load_checkpoint(str(tmp_path / "run.ckpt"))[2] == {}
