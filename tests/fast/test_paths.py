"""The fast path against the textbook path: the same bits, whatever the model.

On the compiled kernels a Sequential runs on the fast path (nnscratch._fast: fused
Linear+ReLU, chains of Linear layers in one kernel call, ReLU after max pool, kept buffers,
fit's step without a zeroing pass and with the whole update in one call). With
``backend.set_fast_path(False)`` the layers' own code runs on the same kernels. Every output,
input gradient, parameter gradient, buffer and trained weight must be bit for bit the same.
"""
import contextlib

import numpy as np
import pytest

import nnscratch as nn
from conftest import randn, textbook
from nnscratch import backend
from nnscratch._fast.plan import plan_of
from nnscratch._fast.steps import (ActivationStep, BatchNormStep, ChainStep, ConvStep,
                                   DropoutStep, FlattenStep, LinearStep, ModuleStep, PoolStep,
                                   ResidualStep, AvgPoolStep)


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


class Residualish(nn.Module):
    """A user's block (its own forward and backward) holding a Sequential."""

    def __init__(self, d, dtype):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, d, dtype=dtype), nn.ReLU(),
                                  nn.Linear(d, d, dtype=dtype))

    def forward(self, x):
        return x + self.body(x)

    def backward(self, grad_out, *, compute_grad_input=True):
        return grad_out + self.body.backward(grad_out)


def MODELS(dtype):
    """name -> (a builder of the model, input shape of one sample)."""
    F = dict(dtype=dtype)
    return {
        "mlp": (lambda: nn.models.mlp(20, (16, 12), 5, dtype=dtype), (20,)),
        "mlp-dropout": (lambda: nn.models.mlp(20, (16, 12), 5, dropout=0.3, dtype=dtype),
                        (20,)),
        "no-bias-and-activations": (lambda: nn.Sequential(
            nn.Linear(20, 16, bias=False, **F), nn.ReLU(), nn.Linear(16, 16, **F), nn.Tanh(),
            nn.Linear(16, 8, bias=False, **F), nn.LeakyReLU(0.1), nn.Linear(8, 8, **F),
            nn.Sigmoid(), nn.Linear(8, 5, **F), nn.ReLU()), (20,)),
        "nested-and-identity": (lambda: nn.Sequential(
            nn.Sequential(nn.Linear(20, 16, **F), nn.ReLU()), nn.Identity(),
            nn.Sequential(nn.Linear(16, 12, **F), nn.Sequential(nn.ReLU(),
                                                                  nn.Linear(12, 5, **F)))),
            (20,)),
        "user-block": (lambda: nn.Sequential(nn.Linear(20, 12, **F), Residualish(12, dtype),
                                             nn.ReLU(), nn.Linear(12, 5, **F)), (20,)),
        "batchnorm1d": (lambda: nn.Sequential(nn.Linear(20, 16, **F), nn.BatchNorm1d(16, **F),
                                              nn.ReLU(), nn.Linear(16, 5, **F)), (20,)),
        "cnn": (lambda: nn.models.cnn(image_size=8, dropout=0.25, dtype=dtype), (1, 8, 8)),
        "lenet-like": (lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, **F), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 2, stride=2,
                                                                          **F),
            nn.Tanh(), nn.Flatten(), nn.Linear(24, 6, **F), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(6, 5, **F), nn.Softmax()), (2, 10, 10)),
        # a ResNet (identity and projection shortcuts, batch norm, global average pool) and
        # residual blocks of Linear layers: a shortcut with a dropout (drawn before the
        # body, as Residual.forward draws), a body of one layer, a block inside a block
        "resnet": (lambda: nn.models.resnet(8, in_channels=2, num_classes=5, width=4,
                                            dtype=dtype), (2, 9, 9)),
        # average pooling, windows side by side and overlapping (a last row floor mode drops)
        "avgpool": (lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, **F), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 1, **F),
            nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(36, 5, **F)), (2, 11, 11)),
        # a block after a Linear+ReLU step, a ReLU after a block's own ReLU (not in place:
        # the block's ReLU keeps that array), a block after that ReLU
        "residual-relus": (lambda: nn.Sequential(
            nn.Linear(20, 12, **F), nn.ReLU(),
            nn.Residual(nn.Sequential(nn.Linear(12, 12, **F), nn.ReLU(), nn.Linear(12, 12, **F))),
            nn.ReLU(), nn.ReLU(), nn.Residual(nn.Linear(12, 12, **F)), nn.ReLU(),
            nn.Linear(12, 5, **F)), (20,)),
        "residual-blocks": (lambda: nn.Sequential(
            nn.Linear(20, 12, **F),
            nn.Residual(nn.Sequential(nn.ReLU(), nn.Linear(12, 12, **F), nn.Tanh())),
            nn.Residual(nn.Sequential(nn.Linear(12, 8, **F), nn.ReLU(), nn.Dropout(0.3)),
                        nn.Sequential(nn.Dropout(0.2), nn.Linear(12, 8, **F))),
            nn.Residual(nn.Residual(nn.Linear(8, 8, **F)), nn.Identity()),
            nn.ReLU(), nn.Linear(8, 5, **F)), (20,)),
    }


def _run_both(build, fn):
    """fn(model) on the fast path and on the textbook path, each on a model built with the
    same seed; returns both results."""
    results = []
    for fast in (True, False):
        nn.seed(11)
        model = build()
        with contextlib.nullcontext() if fast else textbook():
            results.append(fn(model))
    return results


def _step_arrays(model, x, g, compute_grad_input, zero):
    """Forward, then backward of `g` (after zero_grad, or adding to what is there)."""
    out = np.array(model(x), copy=True)
    if zero:
        model.zero_grad()
    gx = model.backward(g, compute_grad_input=compute_grad_input)
    return [out, None if gx is None else np.array(gx, copy=True)] + \
        [p.grad.copy() for p in model.parameters()] + [b.copy() for b in model.buffers()]


@pytest.mark.parametrize("name", ["mlp", "mlp-dropout", "no-bias-and-activations",
                                  "nested-and-identity", "user-block", "batchnorm1d", "cnn",
                                  "lenet-like", "resnet", "residual-blocks", "residual-relus",
                                  "avgpool"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_backward_are_the_textbook_bits(rng, dtype, name, mode):
    build, sample = MODELS(dtype)[name]
    x = randn(rng, (7,) + sample, dtype)

    def steps(model):
        model.train(mode == "train")
        arrays = []
        for i, (n, need, zero) in enumerate([(7, True, True), (7, False, False),
                                             (3, True, False), (7, True, True)]):
            xb = x[:n]
            out_shape = model.predict(xb[:1]).shape[1:]
            g = np.random.default_rng(i).normal(size=(n,) + out_shape).astype(dtype)
            arrays += _step_arrays(model, xb, g, need, zero)
        arrays.append(model.predict(x, batch_size=4))
        return arrays

    fast, slow = _run_both(build, steps)
    assert len(fast) == len(slow)
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert (a is None and b is None) or same(a, b), i


OPTIMIZERS = {
    "sgd": lambda p: nn.SGD(p, lr=0.05),
    "nesterov-wd": lambda p: nn.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: nn.Adam(p, lr=1e-3, weight_decay=1e-4),
    "adamw": lambda p: nn.AdamW(p, lr=1e-3),
}


@pytest.mark.parametrize("name", ["mlp", "mlp-dropout", "no-bias-and-activations",
                                  "user-block", "batchnorm1d", "cnn", "lenet-like", "resnet",
                                  "residual-blocks", "residual-relus", "avgpool"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_fit_trains_to_the_textbook_bits(rng, name, optimizer):
    build, sample = MODELS(np.float32)[name]
    X = randn(rng, (50,) + sample, np.float32)
    y = rng.integers(0, 5, 50)

    def fit(model):
        h = model.fit(X, y, loss=nn.CrossEntropyLoss(),
                      optimizer=OPTIMIZERS[optimizer](model.parameters()), epochs=2,
                      batch_size=16, seed=3, progress=False, validation_data=(X[:9], y[:9]))
        return ([p.data.copy() for p in model.parameters()] + [b.copy() for b in model.buffers()]
                + [np.array(h.history[k]) for k in sorted(h.history)])

    fast, slow = _run_both(build, fit)
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert same(a, b), i


@pytest.mark.parametrize("loss", ["mse", "bce_with_logits", "custom"])
def test_fit_with_other_losses_frozen_parameters_and_a_custom_optimizer(rng, loss):
    class MAE(nn.Loss):
        def forward(self, pred, target):
            self._d = pred - target
            return float(np.abs(self._d).mean())

        def backward(self):
            return (np.sign(self._d) / self._d.size).astype(self._d.dtype)

    class HalfSGD(nn.SGD):          # a step of its own: runs as written on both paths
        def step(self):
            self.lr /= 2
            super().step()
            self.lr *= 2

    X = randn(rng, (40, 20), np.float32)
    y = (rng.random((40, 1)) > 0.5).astype(np.float32)

    def fit(model):
        params = list(model.parameters())
        opt = HalfSGD(params[2:], lr=0.1, momentum=0.5) if loss == "custom" \
            else nn.Adam(params[:-2])            # some parameters not optimized
        model.fit(X, y, loss=MAE() if loss == "custom" else loss, optimizer=opt, epochs=2,
                  batch_size=8, seed=1, progress=False)
        return [p.data.copy() for p in params] + [p.grad.copy() for p in params]

    build = (lambda: nn.models.mlp(20, (16, 12), 1, dropout=0.2))
    fast, slow = _run_both(build, fit)
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert same(a, b), i


def test_adam_with_parameters_at_different_step_counts(rng):
    X = randn(rng, (32, 20), np.float32)
    y = rng.integers(0, 5, 32)

    def fit(model):
        opt = nn.Adam(model.parameters(), lr=1e-2)
        opt.state[0]["step"] = 3         # (as after a load of an older state)
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=1, batch_size=8,
                  seed=0, progress=False)
        return [p.data.copy() for p in model.parameters()]

    fast, slow = _run_both(MODELS(np.float32)["mlp"][0], fit)
    assert all(same(a, b) for a, b in zip(fast, slow))


# --------------------------------------------------------------------------------------
# what the plan is made of, and that it follows the model

def kinds(model):
    return [type(step).__name__ for step in plan_of(model).steps]


def test_the_plan_of_each_model():
    assert kinds(nn.models.mlp()) == ["ChainStep"]
    assert kinds(nn.models.cnn()) == ["ConvStep", "BatchNormStep", "PoolStep", "ConvStep",
                                      "BatchNormStep", "PoolStep", "FlattenStep", "LinearStep",
                                      "DropoutStep", "LinearStep"]
    assert kinds(nn.models.lenet()) == ["ConvStep", "PoolStep", "ConvStep", "PoolStep",
                                        "FlattenStep", "ChainStep"]
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6), nn.Dropout(0.5),
                          nn.Linear(6, 2))
    assert kinds(model) == ["ChainStep", "DropoutStep", "LinearStep"]
    assert plan_of(model).steps[0].activations == ("relu", None)
    nested = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Identity(),
                           nn.Sequential(nn.Linear(4, 2)))
    assert kinds(nested) == ["ChainStep"]
    for step_class in (ActivationStep, BatchNormStep, ChainStep, ConvStep, DropoutStep,
                       FlattenStep, LinearStep, ModuleStep, PoolStep, ResidualStep,
                       AvgPoolStep):
        assert step_class.__name__ in {
            "ActivationStep", "BatchNormStep", "ChainStep", "ConvStep", "DropoutStep",
            "FlattenStep", "LinearStep", "ModuleStep", "PoolStep", "ResidualStep",
            "AvgPoolStep"}


def test_the_plan_of_a_resnet_holds_each_blocks_branches():
    model = nn.models.resnet(8, width=4)
    # each block with the ReLU after it; each block's input gradient through the ReLU below
    assert kinds(model) == ["ConvStep", "BatchNormStep", "ActivationStep", "ResidualStep",
                            "ResidualStep", "ResidualStep", "AvgPoolStep", "LinearStep"]
    steps = plan_of(model).steps
    blocks = [step for step in steps if isinstance(step, ResidualStep)]
    assert [b.relu for b in blocks] == [model[4], model[6], model[8]]
    assert [b.below for b in blocks] == [steps[2]] + blocks[:2]
    body = ["ConvStep", "BatchNormStep", "ActivationStep", "ConvStep", "BatchNormStep"]
    assert [[type(s).__name__ for s in b.body] for b in blocks] == [body] * 3
    assert [[type(s).__name__ for s in b.shortcut] for b in blocks] == [
        [], ["ConvStep", "BatchNormStep"], ["ConvStep", "BatchNormStep"]]
    # a hooked block, or a subclass with its own forward, runs its own code
    with model[3].register_forward_hook(lambda module, args, out: None):
        assert kinds(model)[3] == "ModuleStep"
    assert kinds(model)[3] == "ResidualStep"

    class Scaled(nn.Residual):
        def forward(self, x):
            return 0.5 * super().forward(x)

    assert kinds(nn.Sequential(Scaled(nn.Linear(3, 3)))) == ["ModuleStep"]


def _counting(monkeypatch, names):
    """Record the calls of cnn_core's `names` (the fast path looks them up at each call):
    the name and the fusing keywords given (activation=, plus=, relu_x=True)."""
    import cnn_core

    calls = []
    for name in names:
        def counted(*args, _name=name, _kernel=getattr(cnn_core, name), **kwargs):
            calls.append((_name,) + tuple(sorted(
                k for k, v in kwargs.items()
                if k in ("activation", "plus", "relu_x") and v is not None and v is not False)))
            return _kernel(*args, **kwargs)
        monkeypatch.setattr(cnn_core, name, counted)
    return calls


def test_a_resnet_sums_through_its_relus_in_one_pass(rng, monkeypatch):
    # ResNet-8: three blocks, each followed by a ReLU, the first after the stem's ReLU
    nn.seed(2)
    model = nn.models.resnet(8, width=4)
    x = randn(rng, (5, 1, 12, 12), np.float32)
    model(x)                                    # (planned before the kernels are counted)
    calls = _counting(monkeypatch, ["add", "relu_forward", "relu_backward", "conv2d_backward"])
    model(x)
    # the stem's ReLU, then per block its body's ReLU and the sum with the ReLU after it
    assert calls == [("relu_forward",)] + [("relu_forward",), ("add", "activation")] * 3
    del calls[:]
    model.backward(randn(rng, (5, 10), np.float32))
    # the top block's ReLU alone; then per block: its body's second convolution through the
    # body's ReLU, the first, the shortcut's (the 2nd and 3rd blocks), and the input's sum
    # through the ReLU below; the stem's convolution last
    conv, through = ("conv2d_backward",), ("conv2d_backward", "relu_x")
    sums = ("relu_backward", "plus")
    assert calls == ([("relu_backward",)] + [through, conv, conv, sums] * 2 +
                     [through, conv, sums] + [conv])


@pytest.mark.parametrize("relu", ["stem", "block", "body"])
def test_a_relu_run_on_its_own_between_forward_and_backward_gets_the_textbook_bits(rng, relu):
    # the fused steps use a ReLU's mask only while the ReLU holds what they left there: a
    # ReLU called on its own since backs its own values (what the textbook computes) --
    # the stem's (below the first block's sum), the first block's own, the first block's
    # body's (below its second convolution)
    x = randn(rng, (4, 2, 9, 9), np.float32)
    other = randn(rng, (4, 4, 9, 9), np.float32)
    g = randn(rng, (4, 10), np.float32)
    results = []
    for fast in (True, False):
        nn.seed(4)
        model = nn.models.resnet(8, in_channels=2, width=4)
        with contextlib.nullcontext() if fast else textbook():
            model(x)
            model.zero_grad()
            {"stem": model[2], "block": model[4], "body": model[3].body[2]}[relu](other)
            results.append([np.array(model.backward(g), copy=True)] +
                           [p.grad.copy() for p in model.parameters()])
    assert results[0][0].tobytes() == results[1][0].tobytes()     # (zeros' signs too)
    assert all(same(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("change", ["body", "shortcut", "inside"])
def test_the_plan_follows_changes_inside_a_residual_block(rng, change):
    nn.seed(5)
    block = nn.Residual(nn.Sequential(nn.Linear(6, 6), nn.ReLU()))
    model = nn.Sequential(nn.Linear(6, 6), block, nn.Linear(6, 3))
    x = randn(rng, (4, 6), np.float32)
    model(x)
    if change == "body":
        block.body = nn.Sequential(nn.Tanh(), nn.Linear(6, 6))
    elif change == "shortcut":
        block.shortcut = nn.Linear(6, 6)
    else:
        block.body.append(nn.Sigmoid())
    with textbook():
        expected = model(x)
    assert same(model(x), expected)
    g = randn(rng, (4, 3), np.float32)
    model.zero_grad()
    gx = np.array(model.backward(g), copy=True)
    grads = [p.grad.copy() for p in model.parameters()]
    with textbook():
        model(x)
        model.zero_grad()
        assert same(gx, model.backward(g))
        assert all(same(a, p.grad) for a, p in zip(grads, model.parameters()))


def test_a_residual_whose_branches_disagree_is_the_layers_error(rng):
    model = nn.Sequential(nn.Residual(nn.Linear(6, 4)))
    with pytest.raises(ValueError, match=r"Residual: the body gives shape \(4,\) per sample "
                                         r"and the input \(identity\) \(6,\)"):
        model(randn(rng, (2, 6), np.float32))


def test_layers_that_change_their_computation_run_their_own_code():
    class Doubling(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    class Named(nn.Linear):         # computes what Linear does: planned as a Linear
        def extra_repr(self):
            return "named"

    class Traced(nn.Linear):
        calls = 0

        def __call__(self, x):
            Traced.calls += 1
            return super().__call__(x)

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), Doubling(3, 2))
    assert kinds(model) == ["LinearStep", "ModuleStep"]
    x = np.ones((2, 4), np.float32)
    lin, dbl = model[0], model[2]
    expected = 2 * (np.maximum(x @ lin.weight.data + lin.bias.data, 0) @ dbl.weight.data
                    + dbl.bias.data)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)
    assert kinds(nn.Sequential(nn.Linear(4, 3), Named(3, 2))) == ["ChainStep"]
    traced = nn.Sequential(nn.Linear(4, 3), Traced(3, 2))
    assert kinds(traced) == ["LinearStep", "ModuleStep"]
    traced(x)
    assert Traced.calls == 1
    patched = nn.Linear(4, 3)
    patched.forward = lambda x: np.zeros((len(x), 3), np.float32)     # on the instance
    assert kinds(nn.Sequential(patched)) == ["ModuleStep"]
    # features that do not follow on, or two dtypes: no chain, and the layer's own error
    mixed = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, dtype=np.float64))
    assert kinds(mixed) == ["LinearStep", "LinearStep"]
    assert mixed(x).dtype == np.float64
    wrong = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(5, 2))
    assert kinds(wrong) == ["LinearStep", "LinearStep"]
    with pytest.raises(ValueError, match=r"Linear\(in_features=5.*expects input of shape"):
        wrong(x)


@pytest.mark.parametrize("change", ["setitem", "slice", "delitem", "append", "extend",
                                    "insert", "pop", "nested", "attribute"])
def test_the_plan_follows_every_change_to_the_model(rng, change):
    nn.seed(4)
    a, b, c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
    inner = nn.Sequential(nn.Linear(6, 6))
    model = nn.Sequential(a, nn.ReLU(), b, inner).eval()
    x = randn(rng, (2, 6), np.float32)
    model(x)
    if change == "setitem":
        model[2] = c
    elif change == "slice":
        model[1:] = [c]
    elif change == "delitem":
        del model[1]
    elif change == "append":
        model.append(c)
    elif change == "extend":
        model.extend([nn.Tanh(), c])
    elif change == "insert":
        model.insert(0, c)
    elif change == "pop":
        model.pop()
    elif change == "nested":
        inner.append(nn.Tanh())
    else:
        model[2].weight = nn.Parameter(np.full((6, 6), 0.5, np.float32))
        model[0].bias = None
    with textbook():
        expected = model(x)
    assert same(model(x), expected)


def test_the_plan_follows_new_values_and_rebound_parameters(rng):
    model = nn.models.mlp(6, (5,), 4).eval()
    x = randn(rng, (3, 6), np.float32)
    model(x)
    model[2].weight.data = np.zeros((5, 4), np.float32)
    assert same(model(x), np.broadcast_to(model[2].bias.data, (3, 4)))
    model[0].weight = nn.Parameter(np.full((6, 5), 0.5, np.float32))
    model[2].bias = None
    with textbook():
        expected = model(x)
    assert same(model(x), expected)
    model[2].bias = nn.Parameter(np.arange(4, dtype=np.float32))
    with textbook():
        expected = model(x)
    assert same(model(x), expected)


# --------------------------------------------------------------------------------------
# buffers, state, errors

def test_training_outputs_are_kept_buffers_and_eval_outputs_fresh(rng):
    model = nn.models.mlp(784, (32,), 10)
    x = randn(rng, (4, 784), np.float32)
    a = model(x)
    b = model(x + 1)
    assert a is b                               # training mode: the kept buffer
    pool = dict(plan_of(model).pool._arrays)
    model.zero_grad()
    model.backward(np.ones((4, 10), np.float32))
    model(x)
    model.backward(np.ones((4, 10), np.float32))
    assert {k: v[2] for k, v in plan_of(model).pool._arrays.items() if k in pool} == \
        {k: v[2] for k, v in pool.items()}      # the same arrays, step after step
    model.eval()
    c, d = model(x), model(x)
    assert c is not d and same(c, d) and not np.shares_memory(c, d)
    assert same(model.infer(x), c) and same(model.predict(x), c)
    flat = nn.Sequential(nn.Flatten()).eval()
    img = randn(rng, (2, 3, 4), np.float32)
    assert not np.shares_memory(flat(img), img)     # never a view of the input in eval mode


def test_an_output_fed_back_is_not_written_while_it_is_read(rng, dtype):
    model = nn.Sequential(nn.Linear(5, 5, dtype=dtype), nn.ReLU(), nn.Linear(5, 5, dtype=dtype))
    lone = nn.Sequential(nn.Linear(5, 5, dtype=dtype))
    x = randn(rng, (3, 5), dtype)
    for m in (model, lone):
        expected = m.infer(m.infer(x))
        y = m(x)
        np.testing.assert_allclose(m(y), expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_backward_before_forward_names_the_layer():
    for model in (nn.models.mlp(4, (3,), 2), nn.Sequential(nn.Conv2d(1, 1, 2))):
        with pytest.raises(RuntimeError, match="backward\\(\\) called before forward\\(\\)"):
            model.backward(np.ones((1, 2), np.float32))


def test_a_layer_object_twice_never_trains_silently_wrong(rng):
    # one object in two places keeps only its second input for backward: refused in
    # training mode, by backward and by fit, at any depth, on both paths; eval mode is fine
    from nnscratch.explain import explain_step

    lin = nn.Linear(4, 4)
    act = nn.ReLU()
    inner = nn.Sequential(nn.Linear(4, 4))
    for fast in (True, False):
        for model in (nn.Sequential(lin, nn.ReLU(), lin),
                      nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2)),
                      nn.Sequential(lin, nn.Sequential(lin)),
                      nn.Sequential(inner, nn.ReLU(), inner)):
            with contextlib.nullcontext() if fast else textbook():
                x = randn(rng, (3, 4), np.float32)
                model.eval()
                expected = x
                for layer in model:
                    expected = layer.infer(expected)
                np.testing.assert_allclose(model(x), expected, rtol=1e-6)
                np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6)
                with pytest.raises(ValueError, match="same .* object"):
                    model.backward(np.ones_like(expected))
                model.train()
                once = list(model.parameters())
                values = [p.data.copy() for p in once]
                target = np.zeros((3, expected.shape[1]), np.float32)
                with pytest.raises(ValueError, match="same .* object"):
                    model.fit(x, target, loss="mse", optimizer=nn.SGD(once, lr=0.1), epochs=1,
                              batch_size=3, progress=False)
                assert model._last_loss is None     # refused before fit changed anything
                assert all(np.array_equal(p.data, v) for p, v in zip(once, values))
                with pytest.raises(ValueError, match="same .* object"):
                    explain_step(model, x, target, nn.MSELoss(), nn.SGD(once, lr=0.1),
                                 print_fn=None)
    # on the fast path a training forward is refused too, before anything ran
    model = nn.Sequential(lin, nn.Sequential(lin))
    with pytest.raises(ValueError, match="same Linear object"):
        model(randn(rng, (3, 4), np.float32))
    # a nested Sequential changed after its first use is looked at again
    model = nn.Sequential(nn.Linear(4, 4), inner)
    model(randn(rng, (3, 4), np.float32))
    inner.append(model[0])
    with pytest.raises(ValueError, match="same Linear object"):
        model(randn(rng, (3, 4), np.float32))


class _HugeGradientLoss(nn.CrossEntropyLoss):
    """Cross-entropy whose gradient is 3e38 everywhere: finite, but sums of two overflow."""

    def forward(self, pred, target):
        value = super().forward(pred, target)
        self._grad = np.full_like(self._grad, 3e38)
        return value


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # (the twin's NumPy overflows)
@pytest.mark.parametrize("path", ["fast", "textbook", "numpy"])
def test_fit_stops_before_a_poisoned_update(path):
    # the last layer's weight gradient overflows (its weights are zero, so no other
    # layer's does): fit names it, and no parameter is updated
    rng = np.random.default_rng(0)
    X = rng.random((64, 20), dtype=np.float32)
    y = rng.integers(0, 4, 64)
    nn.seed(0)
    model = nn.models.mlp(20, (16, 8), 4)
    model[4].weight.data = np.zeros((8, 4), np.float32)
    before = [p.data.copy() for p in model.parameters()]
    context = {"fast": contextlib.nullcontext(), "textbook": textbook(),
               "numpy": backend.using("numpy")}[path]
    with context:
        with pytest.raises(FloatingPointError, match=r"layer 4 \(Linear\), parameter 4\.weight "
                                                     r"became NaN or infinite at epoch 1/1, "
                                                     r"batch 1/2"):
            model.fit(X, y, loss=_HugeGradientLoss(),
                      optimizer=nn.SGD(model.parameters(), 0.1, momentum=0.9), epochs=1,
                      batch_size=32, seed=0, progress=False)
    for p, b in zip(model.parameters(), before):
        assert np.array_equal(p.data, b)


def test_a_failed_backward_in_fit_leaves_the_gradients_zero(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.random((16, 6), dtype=np.float32)
    y = rng.integers(0, 4, 16)
    model = nn.models.mlp(6, (5,), 4)
    for p in model.parameters():
        p.grad[...] = 7
    K = backend.kernels()

    def failing(*args, **kwargs):
        raise MemoryError("no memory")

    monkeypatch.setattr(K, "linear_chain_backward", failing)
    with pytest.raises(MemoryError):
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.SGD(model.parameters(), 0.1),
                  epochs=1, batch_size=8, progress=False)
    for p in model.parameters():
        assert not p.grad.any()
