"""Layers: gradients against finite differences (float64), shapes, dtypes, errors, modes."""
import numpy as np
import pytest

import nnscratch as nn

GRAD_TOL = 1e-6


def _sandwich(layer, d_in=5, d_mid=6, d_out=3, bias=True):
    """Linear -> layer -> Linear in float64, so the layer's backward feeds parameter grads."""
    return nn.Sequential(nn.Linear(d_in, d_mid, bias=bias, dtype=np.float64), layer,
                         nn.Linear(d_mid, d_out, dtype=np.float64))


def _batch(n=7, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, size=n)


@pytest.mark.parametrize("layer", [
    nn.ReLU(), nn.LeakyReLU(0.1), nn.Sigmoid(), nn.Tanh(), nn.Softmax(), nn.Dropout(0.0),
], ids=lambda layer: repr(layer))
def test_activation_gradients_match_finite_differences(layer):
    nn.seed(1)
    model = _sandwich(layer)
    X, y = _batch()
    errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss(), check_input=True)
    assert set(errors) == {"0.weight", "0.bias", "2.weight", "2.bias", "input"}
    assert max(errors.values()) < GRAD_TOL, errors


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_match_finite_differences(bias):
    nn.seed(2)
    model = nn.Sequential(nn.Linear(4, 3, bias=bias, dtype=np.float64))
    X, y = _batch(n=5, d=4)
    errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss(), check_input=True)
    assert set(errors) == ({"0.weight", "0.bias", "input"} if bias else {"0.weight", "input"})
    assert max(errors.values()) < GRAD_TOL, errors


def test_flatten_gradients_match_finite_differences():
    nn.seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4, dtype=np.float64), nn.Tanh(),
                          nn.Linear(4, 2, dtype=np.float64))
    X = np.random.default_rng(3).normal(size=(5, 2, 3))
    y = np.array([0, 1, 1, 0, 1])
    errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss(), check_input=True)
    assert max(errors.values()) < GRAD_TOL, errors


@pytest.mark.parametrize("training", [True, False], ids=["train-fixed-mask", "eval"])
def test_dropout_gradients_match_finite_differences(training):
    nn.seed(4)
    model = _sandwich(nn.Dropout(0.4)).train(training)
    X, y = _batch()
    errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss(), check_input=True)
    assert max(errors.values()) < GRAD_TOL, errors


@pytest.mark.parametrize("loss, target", [
    (nn.CrossEntropyLoss(), lambda rng: rng.integers(0, 3, size=6)),
    (nn.MSELoss(), lambda rng: rng.normal(size=(6, 3))),
    (nn.BCEWithLogitsLoss(), lambda rng: rng.random((6, 3))),
], ids=["cross_entropy", "mse", "bce_with_logits"])
def test_loss_gradients_match_finite_differences(loss, target):
    nn.seed(5)
    rng = np.random.default_rng(5)
    model = nn.Sequential(nn.Linear(4, 3, dtype=np.float64))
    errors = nn.gradcheck(model, rng.normal(size=(6, 4)), target(rng), loss, check_input=True)
    assert max(errors.values()) < GRAD_TOL, errors


def test_loss_values_match_formulas():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(5, 4))
    labels = rng.integers(0, 4, size=5)
    expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(5), labels])
    ce = nn.CrossEntropyLoss()
    assert ce(logits, labels) == pytest.approx(expected, rel=1e-12)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(ce.backward(), (probs - onehot) / 5, rtol=1e-12, atol=1e-15)

    target = rng.normal(size=(5, 4))
    mse = nn.MSELoss()
    assert mse(logits, target) == pytest.approx(np.mean((logits - target) ** 2), rel=1e-12)
    np.testing.assert_allclose(mse.backward(), 2 * (logits - target) / 20, rtol=1e-12)

    t = rng.random((5, 4))
    bce = nn.BCEWithLogitsLoss()
    p = 1 / (1 + np.exp(-logits))
    assert bce(logits, t) == pytest.approx(np.mean(-t * np.log(p) - (1 - t) * np.log(1 - p)),
                                           rel=1e-10)
    # a (N,) target fits a (N, 1) prediction
    assert nn.MSELoss()(logits[:, :1], target[:, 0]) == pytest.approx(
        np.mean((logits[:, 0] - target[:, 0]) ** 2))


def test_loss_errors():
    with pytest.raises(RuntimeError, match="before"):
        nn.MSELoss().backward()
    with pytest.raises(TypeError, match="integer class labels"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="target has shape"):
        nn.MSELoss()(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="float32 or float64 predictions"):
        nn.MSELoss()(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 3)))


@pytest.mark.parametrize("layer, formula", [
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (nn.Tanh(), np.tanh),
    (nn.Softmax(), lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
], ids=lambda v: repr(v) if isinstance(v, nn.Module) else "")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_forward_matches_formula_and_keeps_dtype(layer, formula, dtype):
    x = np.random.default_rng(7).normal(size=(4, 6)).astype(dtype)
    out = layer(x)
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_allclose(out, formula(x.astype(np.float64)),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-7)


def test_linear_forward_is_x_at_w_plus_b_and_casts_input():
    nn.seed(8)
    layer = nn.Linear(3, 2)
    layer.bias.data = np.array([0.5, -1.0])
    x = np.random.default_rng(8).normal(size=(4, 3))          # float64 into a float32 layer
    out = layer(x)
    assert out.dtype == np.float32 and out.shape == (4, 2)
    np.testing.assert_allclose(out, x.astype(np.float32) @ layer.weight.data + layer.bias.data,
                               rtol=1e-5)
    assert layer(np.ones((2, 3), dtype=np.uint8)).dtype == np.float32   # ints are cast too
    assert nn.Linear(3, 2, dtype=np.float64)(x.astype(np.float32)).dtype == np.float64


def test_linear_parameters_shapes_and_init():
    nn.seed(9)
    layer = nn.Linear(400, 300)
    assert layer.weight.shape == (400, 300) and layer.bias.shape == (300,)
    assert layer.weight.dtype == np.float32 and layer.weight.grad.dtype == np.float32
    assert not layer.weight.grad.any() and not layer.bias.data.any()
    assert np.std(layer.weight.data) == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    xavier = nn.Linear(400, 300, init="xavier")
    bound = np.sqrt(6 / 700)
    assert np.abs(xavier.weight.data).max() <= bound
    assert np.std(xavier.weight.data) == pytest.approx(bound / np.sqrt(3), rel=0.02)
    assert nn.Linear(3, 2, bias=False).bias is None
    assert [n for n, _ in nn.Linear(3, 2, bias=False).named_parameters()] == ["weight"]
    with pytest.raises(ValueError, match="init"):
        nn.Linear(3, 2, init="orthogonal")
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 2)
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(3, 2, dtype=np.int32)
    with pytest.raises(TypeError, match="bias must be True or False"):
        nn.Linear(3, 2, np.float64)            # dtype passed where bias goes


def test_bad_inputs_name_the_layer_and_expected_shape():
    layer = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*\(N, 4\).*\(5, 3\)"):
        layer(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        layer(np.zeros(4))
    with pytest.raises(TypeError, match="Linear.*real-valued.*complex"):
        layer(np.zeros((2, 4), dtype=complex))
    with pytest.raises(TypeError, match="ReLU"):
        nn.ReLU()(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match=r"Softmax.*2-D"):
        nn.Softmax()(np.zeros((2, 3, 4)))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2).backward(np.zeros((1, 2)))
    layer(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="grad_out has shape"):
        layer.backward(np.zeros((5, 2)))


def test_parameter_gradients_accumulate_until_zero_grad():
    nn.seed(10)
    layer = nn.Linear(3, 2, dtype=np.float64)
    x = np.random.default_rng(10).normal(size=(4, 3))
    g = np.ones((4, 2))
    layer(x)
    layer.backward(g)
    once = layer.weight.grad.copy()
    np.testing.assert_allclose(once, x.T @ g)
    np.testing.assert_allclose(layer.bias.grad, g.sum(0))
    layer(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_zero_grad_clears_in_place_and_backward_adds(backend):
    # zero_grad fills the gradients with zeros in place, whatever they held (NaN too), and
    # each backward adds its gradients to what is there
    nn.seed(12)
    rng = np.random.default_rng(12)
    x, g = rng.normal(size=(6, 5)), rng.normal(size=(6, 3))
    with nn.backend.using(backend):
        for bias in (True, False):
            layer = nn.Linear(5, 3, bias=bias, dtype=np.float64)
            params = list(layer.parameters())
            assert len(params) == (2 if bias else 1)
            layer(x)
            layer.backward(g)
            expected = [p.grad.copy() for p in params]
            arrays = [p.grad for p in params]
            for p in params:
                p.grad.fill(np.nan)
            layer.zero_grad()
            assert all(p.grad is a and not p.grad.any() for p, a in zip(params, arrays))
            layer(x)
            layer.backward(g)
            for p, e in zip(params, expected):
                np.testing.assert_allclose(p.grad, e, rtol=1e-12, atol=1e-12)
            layer.backward(g)
            for p, e in zip(params, expected):
                np.testing.assert_allclose(p.grad, 2 * e, rtol=1e-12, atol=1e-12)
    # only one of the two parameters zeroed: the other keeps accumulating
    layer = nn.Linear(5, 3, dtype=np.float64)
    layer(x)
    layer.backward(g)
    w_once, b_once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer.weight.zero_grad()
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, w_once, rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, 2 * b_once, rtol=1e-12)
    layer.bias.zero_grad()
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * w_once, rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, b_once, rtol=1e-12)
    # a backward the kernel rejects leaves zeroed gradients zero
    layer.zero_grad()
    with pytest.raises(ValueError):
        layer.backward(np.ones((6, 4)))
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_parameter_data_keeps_identity():
    p = nn.Parameter(np.arange(6.0).reshape(2, 3))
    data, grad = p.data, p.grad
    p.data = np.ones((2, 3), dtype=np.float32)
    assert p.data is data and p.grad is grad and p.data.dtype == np.float64
    assert (p.data == 1).all() and not grad.any()
    with pytest.raises(ValueError, match="shape"):
        p.data = np.ones(3)
    with pytest.raises(TypeError):
        nn.Parameter(np.arange(3))
    assert repr(p) == "Parameter(shape=(2, 3), dtype=float64)"


def test_dropout_masks_in_training_and_is_identity_in_eval():
    nn.seed(11)
    layer = nn.Dropout(0.25)
    x = np.ones((200, 50), dtype=np.float32)
    out = layer(x)
    kept = out != 0
    assert 0.72 < kept.mean() < 0.78
    np.testing.assert_allclose(out[kept], 1 / 0.75, rtol=1e-6)
    grad = layer.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(grad != 0, kept)             # the forward pass's mask
    layer.eval()
    assert layer(x) is x
    for p in (-0.1, 1.0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            nn.Dropout(p)


def test_dropout_mask_follows_the_library_seed():
    x = np.ones((8, 8))
    nn.seed(12)
    a = nn.Dropout(0.5)(x).copy()
    nn.seed(12)
    b = nn.Dropout(0.5)(x)
    np.testing.assert_array_equal(a, b)


def test_flatten_shapes():
    layer = nn.Flatten()
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = layer(x)
    assert out.shape == (2, 12)
    assert layer.backward(np.ones((2, 12), np.float32)).shape == (2, 3, 4)
    assert layer.output_shape((3, 4)) == (12,)
    assert nn.Flatten()(np.zeros((0, 3, 4))).shape == (0, 12)


def test_reprs():
    assert repr(nn.Linear(3, 2)) == "Linear(in_features=3, out_features=2, bias=True)"
    assert repr(nn.Linear(3, 2, bias=False, dtype=np.float64)) == \
        "Linear(in_features=3, out_features=2, bias=False, dtype=float64)"
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    assert repr(nn.Dropout(0.5)) == "Dropout(p=0.5)"


def test_train_and_eval_set_the_flag():
    layer = nn.Dropout()
    assert layer.training
    assert layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training
