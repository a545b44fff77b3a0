"""Backends: switching, both agree on training, bitwise reproducibility, threads, imports."""
import pathlib
import re
import subprocess
import sys

import cnn_core
import cnn_core.reference
import numpy as np
import pytest

import nnscratch as nn
from nnscratch import backend

PACKAGE = pathlib.Path(nn.__file__).parent


@pytest.fixture
def threads():
    """Restore the kernels' thread count after the test."""
    before = nn.get_num_threads()
    yield
    nn.set_num_threads(before)


def test_set_and_get_backend():
    assert nn.get_backend() == "cython" and backend.kernels() is cnn_core
    with backend.using("numpy"):
        assert nn.get_backend() == "numpy" and backend.kernels() is cnn_core.reference
        with pytest.raises(RuntimeError):
            with backend.using("cython"):
                assert backend.kernels() is cnn_core
                raise RuntimeError
        assert nn.get_backend() == "numpy"
    assert nn.get_backend() == "cython"
    for bad in ("torch", "Cython", None):
        with pytest.raises(ValueError, match="Unknown backend"):
            nn.set_backend(bad)
    assert nn.get_backend() == "cython"


def _data(n=150, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)


def _train(name, dtype=np.float64, seed=0, fit_seed=1, optimizer="sgd", epochs=2):
    with backend.using(name):
        nn.seed(seed)
        model = nn.Sequential(nn.Linear(5, 32, dtype=dtype), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(32, 16, dtype=dtype), nn.Tanh(),
                              nn.Linear(16, 3, dtype=dtype))
        if optimizer == "sgd":
            opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                         weight_decay=1e-4)
        else:
            opt = nn.AdamW(model.parameters(), lr=1e-2)
        X, y = _data()
        history = model.fit(X.astype(dtype), y, loss=nn.CrossEntropyLoss(), optimizer=opt,
                            epochs=epochs, batch_size=16, validation_split=0.2,
                            seed=fit_seed, progress=False)
        return [p.data.copy() for p in model.parameters()], history.history


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_both_backends_agree_on_a_training_run(dtype, rtol, optimizer):
    fast, fast_history = _train("cython", dtype, optimizer=optimizer)
    slow, slow_history = _train("numpy", dtype, optimizer=optimizer)
    for a, b in zip(fast, slow):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    for key in fast_history:
        np.testing.assert_allclose(fast_history[key], slow_history[key], rtol=rtol)


@pytest.mark.parametrize("name", ["cython", "numpy"])
def test_same_seeds_give_bitwise_identical_weights(name, threads):
    nn.set_num_threads(2)
    first, _ = _train(name, np.float32)
    again, _ = _train(name, np.float32)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other_init, _ = _train(name, np.float32, seed=1)
    other_shuffle, _ = _train(name, np.float32, fit_seed=2)
    assert not np.array_equal(first[0], other_init[0])
    assert not np.array_equal(first[0], other_shuffle[0])


def test_library_seed_alone_makes_fit_reproducible():
    runs = [_train("cython", fit_seed=None) for _ in range(2)]
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)


def test_set_num_threads_reaches_both_backends(threads):
    nn.set_num_threads(1)
    assert nn.get_num_threads() == 1 == cnn_core.reference.get_num_threads()
    nn.set_num_threads(2)
    assert cnn_core.reference.get_num_threads() == 2
    assert nn.get_num_threads() == 2
    with pytest.raises(ValueError):
        nn.set_num_threads(0)


def test_layers_compute_only_through_the_backend_kernels(monkeypatch):
    calls = []

    class Recording:
        def __getattr__(self, name):
            function = getattr(cnn_core.reference, name)

            def record(*args, **kwargs):
                calls.append(name)
                return function(*args, **kwargs)
            return record

    monkeypatch.setitem(backend._BACKENDS, "numpy", Recording())
    with backend.using("numpy"):
        nn.seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Dropout(0.5), nn.Linear(4, 4),
                              nn.Sigmoid(), nn.Softmax())
        loss = nn.MSELoss()
        loss(model(np.ones((2, 3))), np.zeros((2, 4)))
        model.backward(loss.backward())
        nn.Adam(model.parameters()).step()
    assert calls == ["linear_forward", "leaky_relu_forward", "dropout_forward",
                     "linear_forward", "sigmoid_forward", "softmax_forward", "mse",
                     "softmax_backward", "sigmoid_backward", "linear_backward",
                     "dropout_backward", "leaky_relu_backward", "linear_backward",
                     "adam_update", "adam_update", "adam_update", "adam_update"]
    # (one update per parameter: the textbook step)


def test_only_backend_module_imports_cnn_core():
    pattern = re.compile(r"^\s*(import|from)\s+cnn_core", re.MULTILINE)
    importers = sorted(p.name for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text()))
    assert importers == ["backend.py"]


def test_setup_installs_every_package_of_the_source_tree():
    # a subpackage missing from setup.py's list works in an editable install and breaks
    # every other one (the installed nnscratch could not import its fast path)
    root = pathlib.Path(__file__).resolve().parents[2]
    text = (root / "setup.py").read_text()
    listed = set(re.search(r"packages=\[([^\]]*)\]", text).group(1).replace('"', "")
                 .replace(" ", "").split(","))
    found = set()
    for base, top in ((root / "python" / "nnscratch", "nnscratch"), (root / "cnn_core", "cnn_core")):
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            found.add(".".join((top,) + parts))
    assert found == listed


def test_import_is_light_and_exports_the_api(tmp_path):
    code = ("import sys, nnscratch; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'tqdm') if m in sys.modules))")
    # run outside the checkout, whose uncompiled cnn_core/ would shadow the installed one
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"
    assert nn.__version__ == "0.1.0"
    for name in nn.__all__:
        assert hasattr(nn, name), name
