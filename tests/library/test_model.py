"""Sequential: structure, PyTorch parity, inference, threads, and allocation-free steps."""

import numpy as np
import pytest

import nnscratch as nn
from conftest import run_in_threads
from nnscratch import backend


def _mlp(dtype=np.float32, seed=0):
    nn.seed(seed)
    return nn.Sequential(nn.Linear(6, 16, dtype=dtype), nn.ReLU(), nn.Linear(16, 8, dtype=dtype),
                         nn.Tanh(), nn.Linear(8, 3, dtype=dtype))


def test_structure_names_and_modes():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2, bias=False))
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "3.weight"]
    assert next(model.parameters()) is model[0].weight
    assert len(model) == 4 and isinstance(model[1], nn.ReLU) and list(model)[2] is model[2]
    assert isinstance(model[:2], nn.Sequential) and model[:2][0] is model[0]
    assert model.training and all(layer.training for layer in model)
    assert model.eval() is model
    assert not model.training and not any(layer.training for layer in model)
    model.train()
    assert all(layer.training for layer in model)
    assert model.dtype == np.float32
    assert repr(model).splitlines() == [
        "Sequential(",
        "  (0): Linear(in_features=4, out_features=5, bias=True)",
        "  (1): ReLU()",
        "  (2): Dropout(p=0.5)",
        "  (3): Linear(in_features=5, out_features=2, bias=False)",
        ")",
    ]
    with pytest.raises(TypeError, match="argument 1"):
        nn.Sequential(nn.ReLU(), "relu")


def test_zero_grad_clears_every_parameter():
    model = _mlp()
    X = np.random.default_rng(0).normal(size=(4, 6))
    model(X)
    model.backward(np.ones((4, 3), np.float32))
    assert any(p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


def test_summary_lists_shapes_params_and_flops(capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="input_shape"):
        model.summary()
    text = model.summary(input_shape=(3, 4))
    assert capsys.readouterr().out.strip() == text.strip()
    lines = text.splitlines()
    assert "(N, 12)" in lines[2] and "(N, 5)" in lines[3] and "(N, 2)" in lines[5]
    assert "Total params: 77 (float32)" in text            # 12*5+5 + 5*2+2
    assert "Forward FLOPs per sample: 152" in text         # (2*12*5+5) + 5 + (2*5*2+2)
    assert nn.Sequential(nn.Linear(3, 2)).summary(print_fn=None).count("Linear") == 1
    model.predict(np.zeros((1, 3, 4)))                      # remembers predict's X
    assert model.summary(print_fn=None) == text


def test_forward_and_backward_match_torch():
    torch = pytest.importorskip("torch")
    model = _mlp(np.float64, seed=1)
    X = np.random.default_rng(1).normal(size=(9, 6))
    y = np.random.default_rng(2).integers(0, 3, size=9)
    reference = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 8), torch.nn.Tanh(),
                                    torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for ours, theirs in zip(model.layers[::2], reference[::2]):
            theirs.weight.copy_(torch.from_numpy(ours.weight.data.T))   # torch stores (out, in)
            theirs.bias.copy_(torch.from_numpy(ours.bias.data))
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(X), y)
    grad_x = model.backward(loss_fn.backward())

    x_t = torch.from_numpy(X).requires_grad_(True)
    out_t = reference(x_t)
    loss_t = torch.nn.functional.cross_entropy(out_t, torch.from_numpy(y))
    loss_t.backward()
    np.testing.assert_allclose(model(X), out_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    np.testing.assert_allclose(grad_x, x_t.grad.numpy(), rtol=1e-10, atol=1e-14)
    for ours, theirs in zip(model.layers[::2], reference[::2]):
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy().T,
                                   rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10,
                                   atol=1e-14)


def test_predict_evaluate_and_predict_proba():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    X = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
    y = np.random.default_rng(4).integers(0, 3, size=50)
    out = model.predict(X, batch_size=7)
    assert model.training                                  # predict leaves the mode alone
    assert out.shape == (50, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, model.eval()(X), rtol=1e-6)   # eval mode: no dropout
    assert model.predict(X) is not model.predict(X)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(proba, np.exp(out) / np.exp(out).sum(1, keepdims=True),
                               rtol=1e-5)
    result = model.evaluate(X, y, loss=nn.CrossEntropyLoss(), batch_size=16)
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == pytest.approx(nn.CrossEntropyLoss()(out, y), rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(out.argmax(1) == y))
    with pytest.raises(ValueError, match="loss="):
        nn.Sequential(nn.Linear(4, 3)).evaluate(X, y)
    binary = nn.Sequential(nn.Linear(4, 1))
    p = binary.predict_proba(X)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-binary.predict(X))), rtol=1e-5)
    ends_with_softmax = nn.Sequential(nn.Linear(4, 3), nn.Softmax())
    np.testing.assert_array_equal(ends_with_softmax.predict_proba(X),
                                  ends_with_softmax.predict(X))
    assert model.predict(np.zeros((0, 4))).shape == (0, 3)


def test_eval_forward_returns_fresh_arrays():
    model = _mlp().eval()
    X = np.ones((3, 6), np.float32)
    assert model(X) is not model(X)
    flatten_only = nn.Sequential(nn.Flatten()).eval()
    x = np.ones((2, 2, 2))
    assert not np.shares_memory(flatten_only(x), x)
    assert not np.shares_memory(flatten_only.predict(x), x)


def test_predict_from_four_threads_at_once():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(300, 32)).astype(np.float32) for _ in range(4)]
    expected = [model.predict(x) for x in inputs]
    results = {}

    def work(i):
        for _ in range(10):
            got = model.predict(inputs[i], batch_size=64)
            np.testing.assert_array_equal(got, expected[i])
        results[i] = got

    run_in_threads(work, 4)
    assert len(results) == 4
    assert model.training


def test_eval_mode_call_from_four_threads_at_once():
    model = _mlp().eval()
    rng = np.random.default_rng(6)
    inputs = [rng.normal(size=(200, 6)).astype(np.float32) for _ in range(4)]
    expected = [model(x).copy() for x in inputs]

    def work(i):
        outs = [model(inputs[i]) for _ in range(10)]
        assert len({id(o) for o in outs}) == 10
        for out in outs:
            np.testing.assert_array_equal(out, expected[i])

    run_in_threads(work, 4)


@pytest.mark.parametrize("name", [
    "cython",
    "numpy",
])
def test_read_only_inputs_are_accepted(name):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    X = np.ones((5, 4), np.float32)
    X.flags.writeable = False                 # e.g. np.load(..., mmap_mode="r")
    with backend.using(name):
        assert model.predict(X).shape == (5, 3)
        model.fit(X, np.zeros(5, int), loss=nn.CrossEntropyLoss(),
                  optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=2,
                  shuffle=False, progress=False)


def test_changing_the_list_of_layers_changes_what_runs():
    # Sequential keeps its run plan (order, Linear+ReLU pairs) until the list changes,
    # recognising the layers by identity -- not by a layer's own __eq__
    class Scale(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.s = s

        def forward(self, x):
            return x * self.s

        def __eq__(self, other):        # every Scale "equal": must not hide a replacement
            return type(other) is Scale

        __hash__ = nn.Module.__hash__

    x = np.ones((2, 3), np.float32)
    model = nn.Sequential(Scale(2.0))
    np.testing.assert_array_equal(model(x), 2)
    model[0] = Scale(10.0)                               # replaced in place
    np.testing.assert_array_equal(model(x), 10)
    model.append(Scale(0.5))                             # appended
    np.testing.assert_array_equal(model(x), 5)
    nn.seed(0)
    model[:] = [nn.Linear(3, 4), nn.ReLU()]              # now a fusable pair
    expected = np.maximum(x @ model[0].weight.data + model[0].bias.data, 0)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)
    model.pop()                                          # the ReLU gone: no fusion
    np.testing.assert_allclose(model(x), x @ model[0].weight.data + model[0].bias.data,
                               rtol=1e-6)
