"""`nnscratch.explain`: one training step of the 2-2-2 demo network against a hand
computation, the printed report, and the learning-rate sweep.

The expected numbers are worked out here step by step from the seed's equations, in
plain NumPy on the demo's round weights, without calling the library.
"""
import math

import numpy as np
import pytest

import nnscratch as nn
from nnscratch.explain import explain_demo, explain_step, lr_find

# the demo's batch and weights (explain_demo's docstring)
X = np.array([[1.0, 2.0], [0.5, -1.0]])
Y = np.array([0, 1])
W1 = np.array([[0.5, -0.5], [0.25, 0.5]])
B1 = np.array([0.25, -0.25])
W2 = np.array([[1.0, -1.0], [0.5, 0.5]])
B2 = np.array([0.0, 0.5])
LR = 0.1


def by_hand(activation):
    """One SGD step of Linear(2,2) -> activation -> Linear(2,2), cross-entropy, by hand."""
    h = {}
    # forward
    h["z1"] = np.array([[1 * 0.5 + 2 * 0.25 + 0.25, 1 * -0.5 + 2 * 0.5 - 0.25],
                        [0.5 * 0.5 - 1 * 0.25 + 0.25, 0.5 * -0.5 - 1 * 0.5 - 0.25]])
    if activation == "relu":
        h["a1"] = np.where(h["z1"] > 0, h["z1"], 0.0)
    else:
        h["a1"] = 1 / (1 + np.exp(-h["z1"]))
    a = h["a1"]
    h["z2"] = np.array([[a[i, 0] * W2[0, j] + a[i, 1] * W2[1, j] + B2[j] for j in range(2)]
                        for i in range(2)])
    e = np.exp(h["z2"])
    h["p"] = e / e.sum(axis=1, keepdims=True)
    h["loss"] = -(math.log(h["p"][0, 0]) + math.log(h["p"][1, 1])) / 2
    # backward: dL/dz2 = (p - onehot) / N, then the chain rule layer by layer
    onehot = np.array([[1.0, 0.0], [0.0, 1.0]])
    h["dL/dz2"] = (h["p"] - onehot) / 2
    g2 = h["dL/dz2"]
    h["dL/dW2"] = np.array([[sum(a[n, i] * g2[n, j] for n in range(2)) for j in range(2)]
                            for i in range(2)])
    h["dL/db2"] = g2[0] + g2[1]
    h["dL/da1"] = np.array([[sum(g2[n, j] * W2[i, j] for j in range(2)) for i in range(2)]
                            for n in range(2)])
    if activation == "relu":
        h["dL/dz1"] = h["dL/da1"] * (h["z1"] > 0)
    else:
        h["dL/dz1"] = h["dL/da1"] * a * (1 - a)
    g1 = h["dL/dz1"]
    h["dL/dW1"] = np.array([[sum(X[n, i] * g1[n, j] for n in range(2)) for j in range(2)]
                            for i in range(2)])
    h["dL/db1"] = g1[0] + g1[1]
    # update: W = W - lr * dL/dW
    for name, value in (("W1", W1), ("b1", B1), ("W2", W2), ("b2", B2)):
        h[f"{name}_before"] = value
        h[f"{name}_after"] = value - LR * h[f"dL/d{name}"]
    return h


def test_relu_demo_numbers_worked_out_on_paper():
    # the round numbers a learner gets with pencil and paper
    r = explain_demo(print_fn=None)
    np.testing.assert_array_equal(r["z1"], [[1.25, 0.25], [0.25, -1.0]])
    np.testing.assert_array_equal(r["a1"], [[1.25, 0.25], [0.25, 0.0]])
    np.testing.assert_array_equal(r["z2"], [[1.375, -0.625], [0.25, 0.25]])
    # row 1: p = softmax(1.375, -0.625) = (1/(1+e^-2), 1/(1+e^2)); row 2: equal logits
    np.testing.assert_allclose(r["p"], [[1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))],
                                        [0.5, 0.5]], rtol=1e-14)
    assert r["loss"] == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2,
                                      rel=1e-14)
    # the ReLU's switched-off unit (z1[1, 1] = -1) passes no gradient back
    assert r["dL/dz1"][1, 1] == 0.0
    # ... and in row 0 the two paths back into a1[0, 1] cancel: -0.0596 * 0.5 + 0.0596 * 0.5
    assert np.abs(r["dL/dW1"][:, 1]).max() < 1e-15


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_explain_demo_matches_hand_computation(nn_backend, activation):
    r = explain_demo(print_fn=None, activation=activation, lr=LR)
    h = by_hand(activation)
    for key, expected in h.items():
        if key == "loss":
            assert r["loss"] == pytest.approx(expected, rel=1e-13), key
        else:
            np.testing.assert_allclose(r[key], expected, rtol=1e-12, atol=1e-15,
                                       err_msg=key)
    assert r["layers"] == ["z1", "a1", "z2"]
    assert r["lr"] == LR


def test_explain_prints_every_intermediate_with_shapes():
    lines = []
    r = explain_demo(print_fn=lines.append)
    text = "\n".join(lines)
    for formula in ("z1 = X @ W1 + b1", "a1 = ReLU(z1)", "z2 = a1 @ W2 + b2",
                    "p = softmax(z2)", "dL/dz2 = (p - onehot(y)) / N",
                    "dL/dW2 = a1.T @ dL/dz2", "dL/da1 = dL/dz2 @ W2.T",
                    "dL/dz1 = dL/da1 * (z1 > 0)", "dL/dW1 = X.T @ dL/dz1",
                    "dL/db1 = dL/dz1 summed over the batch", "W1 = W1 - lr * dL/dW1",
                    "b2 = b2 - lr * dL/db2"):
        assert formula in text, formula
    assert "shape (2, 2)" in text and "shape (2,)" in text
    assert "loss = mean over the batch of -log p[i, y_i] = 0.410038" in text
    # the values as printed: a learner compares these with their own
    assert "[[ 1.25  0.25]\n     [ 0.25 -1.  ]]" in text
    # forward before loss before backward before update, in the printed order
    order = r["order"]
    assert order.index("z2") < order.index("loss") < order.index("dL/dz2") \
        < order.index("dL/dW1") < order.index("W1_after")


def test_explain_step_leaves_a_real_step_and_the_mode():
    nn.seed(0)
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Tanh(),
                          nn.Linear(4, 2, dtype=np.float64))
    model.eval()
    rng = np.random.default_rng(0)
    Xb, yb = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    opt = nn.SGD(model.parameters(), lr=0.5, momentum=0.9)
    r = explain_step(model, Xb, yb, nn.CrossEntropyLoss(), opt, print_fn=None)
    assert not model.training                          # the mode it came in with
    np.testing.assert_array_equal(model[0].weight.data, r["W1_after"])
    np.testing.assert_array_equal(model[2].bias.grad, r["dL/db2"])
    # the same step by hand: the tanh network's forward and the momentum update
    z1 = Xb @ r["W1_before"] + r["b1_before"]
    np.testing.assert_allclose(r["a1"], np.tanh(z1), rtol=1e-12)
    # first momentum step: velocity = grad, W -= lr * velocity
    np.testing.assert_allclose(r["W2_after"], r["W2_before"] - 0.5 * r["dL/dW2"], rtol=1e-12)
    assert "velocity" in r["formulas"]["W2_after"]


def test_explain_step_on_a_small_cnn():
    nn.seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, dtype=np.float64), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3,
                                                                   dtype=np.float64))
    Xb = np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    lines = []
    r = explain_step(model, Xb, np.array([0, 2]), nn.CrossEntropyLoss(),
                     nn.SGD(model.parameters(), lr=0.1), print_fn=lines.append)
    assert r["layers"] == ["z1", "a1", "pool2", "flat3", "z2"]
    assert r["z1"].shape == (2, 2, 4, 4) and r["pool2"].shape == (2, 2, 2, 2)
    assert r["dL/dW1"].shape == (2, 1, 3, 3) and r["dL/db2"].shape == (3,)
    assert "dL/dX" not in r                       # as in fit: no gradient for the input
    assert "shape (2, 2, 4, 4)" in "\n".join(lines)


def test_explain_step_mse():
    nn.seed(0)
    model = nn.Sequential(nn.Linear(2, 1, dtype=np.float64))
    model[0].weight.data = [[1.0], [2.0]]
    model[0].bias.data = [0.5]
    r = explain_step(model, [[1.0, 1.0], [2.0, 0.0]], np.array([[3.0], [1.0]]), nn.MSELoss(),
                     nn.SGD(model.parameters(), lr=0.1), print_fn=None)
    # z = [3.5, 2.5]; loss = (0.5^2 + 1.5^2) / 2 = 1.25; dL/dz = 2 (z - y) / 2 = [0.5, 1.5]
    np.testing.assert_allclose(r["z1"], [[3.5], [2.5]])
    assert r["loss"] == pytest.approx(1.25)
    np.testing.assert_allclose(r["dL/dz1"], [[0.5], [1.5]])
    np.testing.assert_allclose(r["dL/dW1"], [[0.5 * 1 + 1.5 * 2], [0.5 * 1 + 1.5 * 0]])
    np.testing.assert_allclose(r["W1_after"], [[1 - 0.35], [2 - 0.05]])


def test_explain_rejects_bad_arguments():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="loss"):
        explain_step(model, np.ones((1, 2)), np.array([0]), "cross_entropy",
                     nn.SGD(model.parameters(), lr=0.1), print_fn=None)
    with pytest.raises(ValueError, match="activation"):
        explain_demo(print_fn=None, activation="softplus")


# --------------------------------------------------------------------------------------
# lr_find
# --------------------------------------------------------------------------------------

def _blobs():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-1, 0.7, (64, 4)), rng.normal(1, 0.7, (64, 4))])
    y = np.array([0] * 64 + [1] * 64)
    return X.astype(np.float32), y


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _initial_loss(X, y):
    nn.seed(0)
    return _mlp().evaluate(X, y, loss=nn.CrossEntropyLoss())["loss"]


def test_lr_find_too_low_is_slow_too_high_is_worse():
    X, y = _blobs()
    lines = []
    results = lr_find(_mlp, X, y, lrs=[1.0, 1e-6, 0.1, 1e4], epochs=2, batch_size=16,
                      print_fn=lines.append)
    assert [lr for lr, _ in results] == [1e-6, 0.1, 1.0, 1e4]     # sorted, all reported
    losses = dict(results)
    start = _initial_loss(X, y)
    assert abs(losses[1e-6] - start) < 1e-3 * start                # barely moved
    assert losses[0.1] < 0.5 * start                               # learned
    assert losses[1e4] > losses[0.1]                               # worse, or diverged
    text = "\n".join(lines)
    assert "too low = slow" in text and "too high = unstable" in text and "best" in text


def test_lr_find_reports_divergence_instead_of_raising():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = (X @ np.array([2.0, -1.0, 0.5], np.float32) + 3).reshape(-1, 1)
    lines = []
    results = lr_find(lambda: nn.Sequential(nn.Linear(3, 1)), X, y, lrs=[0.05, 50.0],
                      epochs=5, batch_size=8, loss=nn.MSELoss(), print_fn=lines.append)
    losses = dict(results)
    assert math.isfinite(losses[0.05])
    assert losses[50.0] == math.inf
    assert "diverged" in "\n".join(lines)


def test_lr_find_same_start_for_every_lr_and_adam():
    X, y = _blobs()
    a = lr_find(_mlp, X, y, lrs=[1e-3], optimizer="adam", print_fn=None)
    b = lr_find(_mlp, X, y, lrs=[1e-3], optimizer=lambda params, lr: nn.Adam(params, lr=lr),
                print_fn=None)
    assert a == b                                  # same seed, same weights, same batches


def test_lr_find_checks_arguments():
    X, y = _blobs()
    with pytest.raises(ValueError, match="learning rate"):
        lr_find(_mlp, X, y, lrs=[0.1, -1.0], print_fn=None)
    with pytest.raises(ValueError, match="optimizer"):
        lr_find(_mlp, X, y, lrs=[0.1], optimizer="rmsprop", print_fn=None)
    with pytest.raises(TypeError, match="model_factory"):
        lr_find(_mlp(), X, y, lrs=[0.1], print_fn=None)


def test_lr_find_plot(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = _blobs()
    path = tmp_path / "sweep.png"
    lr_find(_mlp, X, y, lrs=[1e-3, 0.1], print_fn=None, plot=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
