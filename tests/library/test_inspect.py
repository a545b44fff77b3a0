"""`nnscratch.inspect`: per-layer statistics of one batch, the table, the fit callback.

* every value equals the same statistic computed by hand (each layer run by the test,
  backward by hand, ``np.linalg.norm``), on an MLP with dead units, saturated tanh and
  sigmoid units and exact zeros, and on a conv net with a residual block;
* the model is left as it was: weights, gradients, modes, running statistics, the library
  generator, no hooks, and the fast path's fused plan comes back;
* the issue's check: ten sigmoid layers' gradient norms fall layer by layer towards the
  input, a ResNet-20's do not;
* `StatsRecorder` leaves training bit for bit as it was (dropout, batch norm, momentum,
  Adam); `format_stats` names every layer; bad input names the argument.
"""
import copy

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import _random, backend
from nnscratch._fast.steps import ChainStep, ModuleStep
from nnscratch.inspect import LayerStats, StatsRecorder, format_stats, layer_stats

F64 = np.float64


@pytest.fixture(autouse=True)
def _restore_backend():
    name = nn.get_backend()
    yield
    nn.set_backend(name)


@pytest.fixture(scope="module")
def sample():
    (X, y), _ = nn.datasets.load_sample()
    return X, y


def _data(n=48, d=20, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def _mlp():
    """Float64 MLP with 4 dead ReLU units, a tanh pushed into saturation, a sigmoid, and an
    output column of the second Linear that is exactly zero."""
    nn.seed(1)
    model = nn.Sequential(nn.Linear(20, 16, dtype=F64), nn.ReLU(),
                          nn.Linear(16, 12, dtype=F64), nn.Tanh(),
                          nn.Linear(12, 8, dtype=F64), nn.Sigmoid(),
                          nn.Linear(8, 3, dtype=F64))
    model[0].bias.data[:4] = -1e3                 # units 0..3: never positive
    model[2].weight.data[:, 0] = 0.0              # output column 0: exactly 0
    model[4].weight.data *= 6.0                   # sigmoid inputs large: some saturate
    model[2].weight.data[:, 1:] *= 5.0            # tanh inputs large too
    return model


def _manual(layers, X, y):
    """Forward layer by layer (copies of the layers), cross-entropy, backward by hand:
    (outputs of each layer, weight gradients of the layers with parameters)."""
    layers = copy.deepcopy(layers)
    outs, x = [], X
    for layer in layers:
        x = layer.forward(x)
        outs.append(np.array(x, copy=True))
    loss = nn.CrossEntropyLoss()
    loss(x, y)
    g = loss.backward()
    for layer in layers:
        layer.zero_grad()
    for layer in reversed(layers):
        g = layer.backward(g)
    return outs, [layer.weight.grad.copy() for layer in layers if hasattr(layer, "weight")]


def _dead(a):
    """Units (features, or channels of an image) not positive for any sample."""
    axes = (0,) if a.ndim == 2 else (0, 2, 3)
    return float(np.mean(~np.any(a > 0, axis=axes)))


@pytest.mark.parametrize("backend_name", ["cython", "numpy"])
def test_values_equal_a_manual_computation(backend_name):
    nn.set_backend(backend_name)
    model, (X, y) = _mlp(), _data()
    outs, grads = _manual(list(model), X, y)
    for p in model.parameters():        # pending gradients: the batch's are computed from 0
        p.grad[...] = 1.0
    stats = layer_stats(model, X, y, nn.CrossEntropyLoss(), lr=0.05)
    assert all(np.all(p.grad == 1.0) for p in model.parameters())
    assert isinstance(stats, LayerStats) and len(stats) == 4
    assert [r["name"] for r in stats] == ["0", "2", "4", "6"]
    assert [r["type"] for r in stats] == ["Linear"] * 4
    assert [r["activation"] for r in stats] == ["ReLU", "Tanh", "Sigmoid", None]
    for row, i, grad in zip(stats, (0, 2, 4, 6), grads):
        z, w = outs[i], model[i].weight.data
        assert row["act_mean"] == pytest.approx(z.mean(), rel=1e-9, abs=1e-12)
        assert row["act_std"] == pytest.approx(z.std(), rel=1e-9)
        assert row["act_zero_fraction"] == np.count_nonzero(z == 0) / z.size
        assert row["weight_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-12)
        assert row["grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-9)
        assert row["update_ratio"] == pytest.approx(
            0.05 * np.linalg.norm(grad) / np.linalg.norm(w), rel=1e-9)
    relu, tanh, sigmoid = outs[1], outs[3], outs[5]
    assert stats[0]["dead_fraction"] == _dead(relu) == 4 / 16
    assert stats[0]["saturated_fraction"] is None
    assert stats[1]["act_zero_fraction"] == 1 / 12            # the zero column
    assert stats[1]["saturated_fraction"] == np.mean(np.abs(tanh) > 0.99) > 0.1
    assert stats[2]["saturated_fraction"] == np.mean((sigmoid < 0.01) | (sigmoid > 0.99)) > 0.1
    assert stats[1]["dead_fraction"] is None and stats[3]["dead_fraction"] is None
    assert stats[3]["saturated_fraction"] is None
    assert stats[0]["grad_norm"] > 0
    assert stats.loss == pytest.approx(nn.CrossEntropyLoss()(outs[-1], y), rel=1e-12)
    assert stats.samples == 48 and stats.lr == 0.05
    assert all(r["update_ratio"] is None for r in layer_stats(model, X, y, "cross_entropy"))


def test_conv_net_with_a_residual_block_by_dotted_name():
    nn.seed(2)
    body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, dtype=F64), nn.BatchNorm2d(3, dtype=F64),
                         nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1, dtype=F64))
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, dtype=F64),
                          nn.BatchNorm2d(3, dtype=F64), nn.ReLU(), nn.Residual(body), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 6 * 6, 4, dtype=F64))
    model[1].bias.data[0] = -50.0                 # channel 0 after the first ReLU: dead
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((10, 1, 6, 6)), rng.integers(0, 4, 10)
    stats = layer_stats(model, X, y, nn.CrossEntropyLoss())
    assert [r["name"] for r in stats] == ["0", "1", "3.body.0", "3.body.1", "3.body.3", "6"]
    assert [r["type"] for r in stats] == ["Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d",
                                          "Conv2d", "Linear"]
    assert [r["activation"] for r in stats] == [None, "ReLU", None, "ReLU", None, None]

    # by hand, on copies: the top level, then the residual block's body
    m = copy.deepcopy(model)
    a0 = m[0].forward(X)
    a1 = m[1].forward(a0)
    a2 = m[2].forward(a1)
    b0 = m[3].body[0].forward(a2)
    b1 = m[3].body[1].forward(b0)
    b2 = m[3].body[2].forward(b1)
    b3 = m[3].body[3].forward(b2)
    out = m[6].forward(m[5].forward(m[4].forward(b3 + a2)))
    loss = nn.CrossEntropyLoss()
    loss(out, y)
    m.zero_grad()
    m.backward(loss.backward())
    weights = [m[0], m[1], m[3].body[0], m[3].body[1], m[3].body[3], m[6]]
    for row, z, layer in zip(stats, (a0, a1, b0, b1, b3, out), weights):
        assert row["act_mean"] == pytest.approx(z.mean(), rel=1e-9, abs=1e-12), row["name"]
        assert row["act_std"] == pytest.approx(z.std(), rel=1e-9), row["name"]
        assert row["grad_norm"] == pytest.approx(np.linalg.norm(layer.weight.grad), rel=1e-9)
        assert row["weight_norm"] == pytest.approx(np.linalg.norm(layer.weight.data))
    assert stats[1]["dead_fraction"] == _dead(a2) == pytest.approx(1 / 3)
    assert stats[3]["dead_fraction"] == _dead(b2)
    assert stats[1]["act_std"] == pytest.approx(np.std(a1), rel=1e-9)


def _snapshot(model):
    params = list(model.parameters())
    return ([p.data.copy() for p in params], [p.grad.copy() for p in params],
            [b.copy() for b in model.buffers()], [m.training for m in model.modules()])


def _assert_same(a, b):
    for xs, ys in zip(a[:3], b[:3]):
        assert len(xs) == len(ys) and all(np.array_equal(x, z) for x, z in zip(xs, ys))
    assert a[3] == b[3]


def _no_hooks(model):
    return all(not m.__dict__.get("_forward_hooks") and "forward" not in m.__dict__
               for m in model.modules())


def test_model_state_is_left_as_it_was():
    nn.seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 5))
    rng = np.random.default_rng(5)
    X, y = rng.random((16, 1, 8, 8), dtype=np.float32), rng.integers(0, 5, 16)
    for p in model.parameters():                          # gradients someone has pending
        p.grad[...] = rng.standard_normal(p.shape)
    model[1].running_mean[...] = 0.25
    for mode in ("eval", "train", "frozen batch norm"):
        model.train(mode != "eval")
        if mode == "frozen batch norm":
            model[1].eval()
        before, state = _snapshot(model), _random.get_state()
        stats = layer_stats(model, X, y, nn.CrossEntropyLoss(), lr=0.1)
        _assert_same(_snapshot(model), before)
        assert _random.get_state() == state                  # dropout drew nothing for good
        assert _no_hooks(model)
        # computed in training mode: batch statistics (mean 0, std 1 per channel) unless
        # the batch norm itself was in eval mode in a training model, as fit does
        if mode == "frozen batch norm":
            assert abs(stats[1]["act_std"] - 1) > 0.05
        else:
            assert stats[1]["act_mean"] == pytest.approx(0, abs=1e-5)
            assert stats[1]["act_std"] == pytest.approx(1, abs=1e-3)


def test_fast_path_plan_comes_back():
    if not backend.fast_path():
        pytest.skip("the fast path runs on the compiled kernels only")
    nn.seed(6)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                          nn.Linear(12, 3))
    X, y = _data()
    model(X)
    fused = [type(s) for s in model._fast_plan.steps]
    assert ChainStep in fused
    layer_stats(model, X, y, nn.CrossEntropyLoss())
    model(X)
    assert [type(s) for s in model._fast_plan.steps] == fused
    assert not any(isinstance(s, ModuleStep) for s in model._fast_plan.steps)


def _deep_sigmoid():
    nn.seed(0)
    layers = [nn.Linear(784, 64, init="xavier")]
    for _ in range(8):
        layers += [nn.Sigmoid(), nn.Linear(64, 64, init="xavier")]
    return nn.Sequential(*layers, nn.Sigmoid(), nn.Linear(64, 10, init="xavier"))


def test_sigmoid_gradients_fall_layer_by_layer_and_a_resnet_s_do_not(sample):
    # the issue's check: "the statistics of a 10-layer sigmoid MLP show gradient norms
    # falling layer by layer while a ResNet's do not"
    X, y = sample
    sigmoid = [r["grad_norm"] for r in layer_stats(_deep_sigmoid(), X[:128], y[:128],
                                                    nn.CrossEntropyLoss())]
    assert len(sigmoid) == 10
    rising = sum(a < b for a, b in zip(sigmoid, sigmoid[1:]))   # from the input up
    assert rising >= 8, sigmoid
    assert sigmoid[0] < 1e-3 * sigmoid[-1], sigmoid

    nn.seed(0)
    resnet = nn.models.resnet(depth=20, width=8)
    stats = layer_stats(resnet, X[:64].reshape(-1, 1, 28, 28), y[:64], nn.CrossEntropyLoss())
    norms = [r["grad_norm"] for r in stats]
    convs = [r["grad_norm"] for r in stats if r["type"] == "Conv2d"]
    assert len(convs) == 21 and stats[0]["name"] == "0" and stats[-1]["type"] == "Linear"
    assert norms[0] > 0.1 * norms[-1], (norms[0], norms[-1])    # within 10x of the last
    assert convs[0] > 0.1 * convs[-1] and min(convs) > 0.05 * max(convs), convs
    assert sum(a < b for a, b in zip(convs, convs[1:])) < 0.7 * (len(convs) - 1)


def _train(model, X, y, optimizer, callbacks=None, epochs=2):
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
              batch_size=32, seed=7, callbacks=callbacks, progress=False)
    return [a.copy() for a in model.state_dict().values()]


@pytest.mark.parametrize("kind", ["mlp, dropout, SGD momentum", "cnn, batch norm, Adam"])
def test_stats_recorder_leaves_training_bit_for_bit(kind, sample):
    X, y = sample
    if kind.startswith("mlp"):
        def make():
            nn.seed(8)
            return nn.models.mlp(hidden=(32, 16), dropout=0.2)
        X, y, every = X[:200], y[:200], 2

        def opt(m):
            return nn.SGD(m.parameters(), lr=0.05, momentum=0.9)
    else:
        def make():
            nn.seed(8)
            return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        X, y, every = X[:128].reshape(-1, 1, 28, 28), y[:128], "epoch"

        def opt(m):
            return nn.Adam(m.parameters(), lr=1e-2)
    model = make()
    plain = _train(model, X, y, opt(model))
    model = make()
    optimizer = opt(model)
    recorder = StatsRecorder(X[:64], y[:64], every=every, lr=optimizer)
    recorded = _train(model, X, y, optimizer, [recorder])
    assert len(plain) == len(recorded)
    assert all(np.array_equal(a, b) for a, b in zip(plain, recorded))
    steps = 2 * -(-len(X) // 32)
    if every == "epoch":
        assert [(r["epoch"], r["batch"], r["step"]) for r in recorder.history] == \
            [(0, None, steps // 2), (1, None, steps)]
    else:
        assert [r["step"] for r in recorder.history] == list(range(2, steps + 1, 2))
    last = recorder.history[-1]["stats"]
    assert last.lr == optimizer.lr and last.samples == 64
    # the last record (after the last step) is layer_stats of the trained model
    again = layer_stats(model, X[:64], y[:64], nn.CrossEntropyLoss(), lr=optimizer.lr)
    assert [r["grad_norm"] for r in again] == [r["grad_norm"] for r in last]
    series = recorder.series(last[0]["name"], "grad_norm")
    assert series.shape == (len(recorder.history),) and np.all(series > 0)


def test_format_stats_names_every_layer(sample):
    X, y = sample
    nn.seed(0)
    model = nn.models.resnet(depth=8, width=4)
    stats = layer_stats(model, X[:16].reshape(-1, 1, 28, 28), y[:16], nn.CrossEntropyLoss(),
                        lr=0.1)
    text = str(stats)
    assert text == format_stats(stats)
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "act_mean", "act_std", "zeros", "next",
                                "weight_norm", "grad_norm", "update_ratio"]
    body = lines[2:-1]
    assert len(body) == len(stats)
    for line, row in zip(body, stats):
        assert line.split()[:2] == [row["name"], row["type"]]
        assert f"{row['grad_norm']:.2e}" in line
    assert "ReLU 0% dead" in text
    assert lines[-1].startswith(f"loss {stats.loss:.4f} on 16 samples")
    plain = format_stats([dict(r, act_mean=None) for r in stats])   # a plain list: no footer
    assert len(plain.splitlines()) == len(stats) + 2 and " - " in plain


def test_bad_input_names_the_argument():
    model, (X, y) = _mlp(), _data()
    loss = nn.CrossEntropyLoss()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"X must have shape"):
        layer_stats(model, X[0], y, loss)
    with pytest.raises(ValueError, match=r"X and y have different lengths"):
        layer_stats(model, X, y[:-1], loss)
    with pytest.raises(ValueError, match=r"y must have shape \(48,\)"):
        layer_stats(model, X, y.reshape(-1, 1), loss)
    with pytest.raises(ValueError, match=r"X has samples of shape \(7,\)"):
        layer_stats(model, X[:, :7], y, loss)
    with pytest.raises(ValueError, match=r"X contains NaN"):
        layer_stats(model, np.where(X > 2, np.nan, X), y, loss)
    with pytest.raises(ValueError, match=r"Invalid lr"):
        layer_stats(model, X, y, loss, lr=-1)
    with pytest.raises(TypeError, match=r"loss must be"):
        layer_stats(model, X, y, object())
    with pytest.raises(TypeError, match=r"model must be a Module"):
        layer_stats([model], X, y, loss)
    with pytest.raises(ValueError, match=r"no layer with parameters"):
        layer_stats(nn.Sequential(nn.ReLU()), X, y, loss)
    _assert_same(_snapshot(model), before)
    with pytest.raises(ValueError, match=r"every"):
        StatsRecorder(X, y, every=0)
    with pytest.raises(ValueError, match=r"every"):
        StatsRecorder(X, y, every="batch")
    with pytest.raises(TypeError, match=r"lr must be"):
        StatsRecorder(X, y, lr="fast")
    recorder = StatsRecorder(X[:, :5], y)                   # checked when fit begins
    with pytest.raises(ValueError, match=r"X has samples of shape \(5,\)"):
        model.fit(X, y, loss=loss, optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=1,
                  batch_size=16, callbacks=[recorder], progress=False)
    _assert_same(_snapshot(model), before)
