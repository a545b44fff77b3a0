"""CrossEntropyLoss(label_smoothing=e): PyTorch's values and gradients, the textbook formula,
finite differences, the unchanged e = 0 kernel path, argument checks, and fit (fast path
and textbook path alike)."""
import copy
import pickle

import numpy as np
import pytest

import nnscratch as nn
from nnscratch.backend import kernels
from conftest import textbook

TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-12, atol=1e-15)}
SMOOTHINGS = [0.0, 0.05, 0.1, 0.5, 1.0]


def _batch(dtype, n=9, c=6, scale=4.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, c)) * scale).astype(dtype), rng.integers(0, c, n)


def _textbook(z, y, e):
    """-mean_i sum_k q_ik log softmax(z_i)_k and (softmax - q) / N, q = (1-e) onehot + e/C,
    in float64 with NumPy."""
    z = z.astype(np.float64)
    n, c = z.shape
    q = (1 - e) * np.eye(c)[y] + e / c
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(q * log_p).sum(axis=1).mean(), (np.exp(log_p) - q) / n


@pytest.mark.parametrize("e", SMOOTHINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_value_and_gradient_equal_torch(nn_backend, dtype, e):
    torch = pytest.importorskip("torch")
    z, y = _batch(dtype)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=e)
    value = loss_fn(z, y)
    grad = loss_fn.backward()
    zt = torch.tensor(z, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(zt, torch.tensor(y), label_smoothing=e)
    expected.backward()
    assert isinstance(value, float) and grad.dtype == dtype and grad.shape == z.shape
    np.testing.assert_allclose(value, expected.item(), **TOL[dtype])
    np.testing.assert_allclose(grad, zt.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("e", SMOOTHINGS[1:])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_value_and_gradient_equal_the_textbook_formula(nn_backend, dtype, e):
    # large logits too: the smoothing's terms are as stable as the fused kernel
    for scale in (1.0, 300.0):
        z, y = _batch(dtype, n=17, c=10, scale=scale, seed=3)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=e)
        value = loss_fn(z, y)
        expected, expected_grad = _textbook(z, y, e)
        np.testing.assert_allclose(value, expected, **TOL[dtype])
        np.testing.assert_allclose(loss_fn.backward(), expected_grad, **TOL[dtype])
        assert np.isfinite(value)


def test_zero_smoothing_is_the_fused_kernel_bit_for_bit(nn_backend):
    z, y = _batch(np.float32)
    value, grad = kernels().softmax_cross_entropy(z, y)
    for loss_fn in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(0), nn.CrossEntropyLoss(0.0),
                    nn.CrossEntropyLoss(label_smoothing=np.float64(0.0))):
        assert type(loss_fn) is nn.CrossEntropyLoss and loss_fn.label_smoothing == 0.0
        assert loss_fn(z, y) == float(value)
        np.testing.assert_array_equal(loss_fn.backward(), grad)
    assert repr(nn.CrossEntropyLoss(0)) == "CrossEntropyLoss()"


def test_gradcheck_in_float64():
    nn.seed(0)
    model = nn.Sequential(nn.Linear(5, 7, dtype=np.float64), nn.Tanh(),
                          nn.Linear(7, 4, dtype=np.float64))
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(6, 5)), rng.integers(0, 4, 6)
    for e in (0.1, 0.7):
        errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss(label_smoothing=e),
                              check_input=True)
        assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("bad", [-0.1, 1.0000001, 2, float("nan"), float("inf"), "0.1", None,
                                 True, [0.1]])
def test_bad_label_smoothing_is_refused(bad):
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=bad)


def test_config_repr_copies_and_labels():
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    assert isinstance(loss_fn, nn.CrossEntropyLoss)
    assert loss_fn.get_config() == {"label_smoothing": 0.1}
    assert nn.CrossEntropyLoss().get_config() == {"label_smoothing": 0.0}
    assert nn.MSELoss().get_config() == {}
    assert repr(loss_fn) == "CrossEntropyLoss(label_smoothing=0.1)"
    rebuilt = nn.CrossEntropyLoss(**loss_fn.get_config())
    z, y = _batch(np.float64)
    assert rebuilt(z, y) == loss_fn(z, y)
    for other in (copy.copy(loss_fn), copy.deepcopy(loss_fn), pickle.loads(pickle.dumps(loss_fn))):
        assert type(other) is type(loss_fn) and other(z, y) == loss_fn(z, y)
    with pytest.raises(AttributeError):
        loss_fn.label_smoothing = 0.2          # fixed when made
    with pytest.raises(TypeError, match="integer class labels"):
        loss_fn(z, y.astype(np.float64))
    with pytest.raises(ValueError):
        loss_fn(z, y + 10)                      # the kernel's label check
    with pytest.raises(RuntimeError, match="before the loss was computed"):
        nn.CrossEntropyLoss(label_smoothing=0.1).backward()


def test_a_subclass_with_its_own_constructor_still_works():
    class Scaled(nn.CrossEntropyLoss):            # no super().__init__(): smoothing 0
        def __init__(self, scale):
            self.scale = scale

    loss_fn = Scaled(2.0)
    z, y = _batch(np.float64)
    assert loss_fn(z, y) == nn.CrossEntropyLoss()(z, y) and repr(loss_fn) == "Scaled()"


def _data():
    rng = np.random.default_rng(5)
    return rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 4, 40)


def _fit(e, epochs=2):
    nn.seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    history = model.fit(*_data(), loss=nn.CrossEntropyLoss(label_smoothing=e),
                        optimizer=nn.SGD(model.parameters(), lr=0.2, momentum=0.9),
                        epochs=epochs, batch_size=16, seed=1, progress=False)
    return model, history


def test_fit_trains_with_the_smoothed_loss_on_every_path():
    """fit's fast path computes a plain CrossEntropyLoss with the fused kernel alone; a
    smoothed one must give the textbook path's numbers, bit for bit, not the plain loss's."""
    before = nn.get_backend()
    try:
        nn.set_backend("cython")
        fast, fast_history = _fit(0.2)
        plain, plain_history = _fit(0.0)
        with textbook():
            slow, slow_history = _fit(0.2)
        assert fast_history.history["loss"] == slow_history.history["loss"]
        for p, q in zip(fast.parameters(), slow.parameters()):
            np.testing.assert_array_equal(p.data, q.data)
        assert fast_history.history["loss"] != plain_history.history["loss"]
        nn.set_backend("numpy")
        ref, ref_history = _fit(0.2)
        np.testing.assert_allclose(ref_history.history["loss"], fast_history.history["loss"],
                                   rtol=1e-5)
    finally:
        nn.set_backend(before)


def test_fit_loss_and_evaluate_are_the_smoothed_loss():
    X, y = _data()
    nn.seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.3)
    # lr 0 and one batch: the epoch's loss is the loss of the initial weights
    history = model.fit(X, y, loss=loss_fn, optimizer=nn.SGD(model.parameters(), lr=0.0),
                        epochs=1, batch_size=len(X), shuffle=False, progress=False)
    expected, _ = _textbook(model(X), y, 0.3)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-6)
    assert model.evaluate(X, y)["loss"] == pytest.approx(expected, rel=1e-6)   # fit's loss
    assert model.evaluate(X, y, loss=nn.CrossEntropyLoss())["loss"] < expected
