"""The fast path on the edges a review found: outputs fed back, tied weights, shared gradient
arrays, loss subclasses, blocks that call .forward or touch other layers' gradients, layers
run by hand between a forward and a backward, concurrent first calls, frozen modules.

Each test runs the same thing on the fast path and on the textbook path
(``set_fast_path(False)``) and wants the same bits (or the same behaviour).
"""
import contextlib
import threading

import numpy as np
import pytest

import nnscratch as nn
from conftest import textbook
from nnscratch._fast.plan import plan_of
from nnscratch._fast.steps import ActivationStep


def both(build, fn, seed=11):
    results = []
    for fast in (True, False):
        nn.seed(seed)
        model = build()
        with contextlib.nullcontext() if fast else textbook():
            results.append(fn(model))
    return results


def assert_same(fast, slow):
    assert len(fast) == len(slow)
    for i, (a, b) in enumerate(zip(fast, slow)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, i
        assert np.array_equal(a, b, equal_nan=True), (i, np.max(np.abs(a - b)))


RNG = np.random.default_rng(3)
X6 = RNG.standard_normal((5, 6)).astype(np.float32)


@pytest.mark.parametrize("layers", [
    lambda: [nn.Linear(6, 6), nn.Tanh()],
    lambda: [nn.ReLU(), nn.Linear(6, 6)],
    lambda: [nn.Linear(6, 6), nn.Dropout(0.5)],
    lambda: [nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU()]])
def test_an_output_fed_back_then_backward(layers):
    # model(model(x)): the first call's output is a kept buffer, and the second call's steps
    # keep their inputs for backward
    def run(model):
        y = np.array(model(model(X6)), copy=True)
        model.zero_grad()
        gx = np.array(model.backward(np.ones_like(y)), copy=True)
        return [y, gx] + [p.grad.copy() for p in model.parameters()]

    assert_same(*both(lambda: nn.Sequential(*layers()), run))


def test_tied_weights_and_shared_gradient_arrays():
    X = RNG.standard_normal((16, 6)).astype(np.float32)
    y = RNG.integers(0, 6, 16)

    def tied():
        a, b = nn.Linear(6, 6), nn.Linear(6, 6)
        b.weight = a.weight                     # one Parameter in two layers of a chain
        return nn.Sequential(a, nn.ReLU(), b)

    def fit(model):
        model.fit(X, y, loss="cross_entropy", optimizer=nn.SGD(model.parameters(), lr=0.1),
                  epochs=2, batch_size=8, seed=0, progress=False)
        return [p.data.copy() for p in model.parameters()]

    assert_same(*both(tied, fit))

    def shared_grad(model):
        model[2].weight.grad = model[0].weight.grad     # two Parameters, one gradient array
        return fit(model)

    assert_same(*both(lambda: nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)),
                      shared_grad))


def test_loss_subclasses_that_change_backward_or_the_kernel():
    X = RNG.standard_normal((32, 6)).astype(np.float32)
    labels, targets = RNG.integers(0, 3, 32), RNG.standard_normal((32, 3)).astype(np.float32)

    class ScaledCE(nn.CrossEntropyLoss):        # loss scaling: the gradient times 10
        def backward(self):
            return super().backward() * np.float32(10)

    class MAE(nn.MSELoss):                      # another kernel
        def _kernel(self, K, pred, target):
            d = pred - target
            return float(np.abs(d).mean()), (np.sign(d) / d.size).astype(pred.dtype)

    for loss, y in ((ScaledCE, labels), (MAE, targets)):
        def fit(model):
            h = model.fit(X, y, loss=loss(), optimizer=nn.SGD(model.parameters(), lr=0.1),
                          epochs=2, batch_size=8, seed=0, progress=False)
            return [p.data.copy() for p in model.parameters()] + [h.history["loss"]]

        assert_same(*both(lambda: nn.models.mlp(6, (8,), 3), fit))


class _CallsForward(nn.Module):
    """A block whose forward calls its Sequential's .forward (not through __call__)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8))

    def forward(self, x):
        return self.body.forward(x)

    def backward(self, grad_out, *, compute_grad_input=True):
        return self.body.backward(grad_out)


def test_predict_through_a_block_that_calls_forward_is_eval_mode():
    x = RNG.standard_normal((6, 8)).astype(np.float32)

    def run(model):                             # a model in training mode, as during fit
        before = model[0].body[2].running_mean.copy()
        out = model.predict(x)
        assert np.array_equal(model[0].body[2].running_mean, before)
        return [out]

    fast, slow = both(lambda: nn.Sequential(_CallsForward(), nn.Linear(8, 3)), run)
    assert_same(fast, slow)


def test_a_block_that_adds_into_another_layers_gradient():
    X = RNG.standard_normal((16, 6)).astype(np.float32)
    y = RNG.integers(0, 6, 16)

    class TiedDecoder(nn.Module):               # y = x @ enc.W.T, the encoder's weight
        def __init__(self, encoder):
            super().__init__()
            self._encoder = [encoder]           # (not registered: a layer of the model)

        def output_shape(self, input_shape):
            return (self._encoder[0].in_features,)

        def forward(self, x):
            self._x = x
            return x @ self._encoder[0].weight.data.T

        def backward(self, grad_out, *, compute_grad_input=True):
            weight = self._encoder[0].weight
            weight.grad += (self._x.T @ grad_out).T
            return grad_out @ weight.data

    def build():
        encoder = nn.Linear(6, 4)
        return nn.Sequential(encoder, nn.Tanh(), TiedDecoder(encoder))

    def fit(model):
        model.fit(X, y, loss="cross_entropy", optimizer=nn.SGD(model.parameters(), lr=0.1),
                  epochs=1, batch_size=16, shuffle=False, progress=False)
        return [p.data.copy() for p in model.parameters()] + \
            [p.grad.copy() for p in model.parameters()]

    assert_same(*both(build, fit))


def test_layers_keep_their_state_and_may_run_by_hand_in_between():
    x1, x2 = RNG.standard_normal((2, 4, 6)).astype(np.float32)
    g = np.ones((4, 3), np.float32)
    for model in both(lambda: nn.models.mlp(6, (5,), 3), lambda m: m):
        model(x1)
        model[2].backward(g)                    # a layer's own backward after model(x)

    def by_hand_in_between(model):
        model(x1)
        out = x2
        for layer in model:                     # the layers' own forward, on other data
            out = layer(out)
        model.zero_grad()
        model.backward(g)                       # uses what the layers hold: x2's
        return [p.grad.copy() for p in model.parameters()]

    for build in (lambda: nn.models.mlp(6, (5,), 3),
                  lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)),
                  lambda: nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Dropout(0.3),
                                        nn.Linear(5, 3))):
        assert_same(*both(build, by_hand_in_between))


def test_first_calls_from_several_threads_at_once():
    # the first call makes the plan and looks the chain's weights up: four threads at once
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    nn.seed(1)
    expected = nn.models.mlp(6, (5, 4), 3).eval().infer(x)
    results, errors = [], []
    for _ in range(40):
        nn.seed(1)
        model = nn.models.mlp(6, (5, 4), 3).eval()
        start = threading.Barrier(4)

        def work():
            start.wait()
            try:
                results.append(model.infer(x))
            except Exception as exc:            # (an empty chain, once)
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(results) == 160 and all(np.array_equal(r, expected) for r in results)


def test_fit_keeps_a_frozen_module_in_eval_mode():
    X = RNG.standard_normal((32, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 32)

    def fit(model):
        model[1].eval()                         # a frozen batch norm in a training model
        before = model[1].running_mean.copy()
        model.fit(X, y, loss="cross_entropy", optimizer=nn.SGD(model.parameters(), lr=0.1),
                  epochs=1, batch_size=8, seed=0, progress=False)
        assert not model[1].training and model.training
        assert np.array_equal(model[1].running_mean, before)
        return [p.data.copy() for p in model.parameters()]

    assert_same(*both(lambda: nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(),
                                            nn.Linear(5, 3)), fit))


def test_eval_mode_backward_returns_fresh_arrays():
    model = nn.models.mlp(6, (5,), 3).eval()
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    model(x)
    g1 = model.backward(np.ones((4, 3), np.float32))
    g2 = model.backward(-np.ones((4, 3), np.float32))
    assert g1 is not g2 and np.array_equal(g1, -g2)


def test_a_deep_model_keeps_its_buffers_from_one_epoch_to_the_next():
    layers = []
    for _ in range(40):
        layers += [nn.Linear(8, 8), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(8, 2))
    X = RNG.standard_normal((70, 8)).astype(np.float32)   # a smaller last batch
    y = RNG.integers(0, 2, 70)
    opt = nn.SGD(model.parameters(), lr=0.01)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=32,
              progress=False)
    pool = plan_of(model).pool
    kept = {key: entry[2] for key, entry in pool._arrays.items()}
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=32,
              progress=False)
    assert {key: entry[2] for key, entry in pool._arrays.items()} == kept


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_nan_gradient_is_named_alike_on_both_paths():
    # gradients of 3e38 everywhere overflow in every layer: both paths name the first
    # parameter in the model's order (the fast path checks some inside the chain first)
    X = RNG.standard_normal((16, 6)).astype(np.float32) * 1e3
    y = RNG.integers(0, 3, 16)

    class Huge(nn.CrossEntropyLoss):
        def forward(self, pred, target):
            value = super().forward(pred, target)
            self._grad = np.full_like(self._grad, 3e38)
            return value

    def fit(model):
        with pytest.raises(FloatingPointError) as info:
            model.fit(X, y, loss=Huge(), optimizer=nn.SGD(model.parameters(), lr=0.1),
                      epochs=1, batch_size=16, progress=False)
        return [str(info.value).split(" became")[0]]

    fast, slow = both(lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8),
                                            nn.ReLU(), nn.Linear(8, 3)), fit)
    assert fast == slow and "0.weight" in fast[0], (fast, slow)


def test_the_gradients_passed_down_share_a_few_arrays_per_shape():
    # each gradient is read by the step below and then never again (a Residual's incoming
    # gradient and its body's result excepted: held until the shortcut and the sum have
    # read them), so a ResNet's backward pass needs a handful per feature-map size, not
    # one per layer; and the saved activations a ReLU overwrites in place are not kept twice
    nn.seed(3)
    model = nn.models.resnet(20, width=4)
    X = RNG.standard_normal((16, 1, 12, 12)).astype(np.float32)
    y = RNG.integers(0, 10, 16)
    opt = nn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=8,
              progress=False)
    pool = plan_of(model).pool
    counts = {kind: len(arrays) for kind, arrays in pool._passing.items()}
    # (the first convolution passes nothing down; the Linear layer keeps its own array)
    assert {shape for shape, _ in counts} == {(8, 4, 12, 12), (8, 8, 6, 6), (8, 16, 3, 3)}, \
        counts
    assert max(counts.values()) <= 4, counts
    steps = plan_of(model).steps
    relus = [s for s in steps if isinstance(s, ActivationStep)]
    assert relus and all(s.in_place for s in relus)     # after batch norm / a residual sum


def test_a_backward_hook_may_keep_the_gradient_it_is_given():
    # a hooked layer runs its own code; the gradient it gets comes from arrays the steps
    # share, so it gets a copy: what a hook keeps still holds that gradient after the pass
    X = RNG.standard_normal((6, 1, 8, 8)).astype(np.float32)
    g = RNG.standard_normal((6, 10)).astype(np.float32)

    def run(fast):
        nn.seed(8)
        model = nn.models.resnet(8, width=4)
        kept = []
        model[3].body[1].register_full_backward_hook(
            lambda module, grad_input, grad_output: kept.append(grad_output[0]))
        with contextlib.nullcontext() if fast else textbook():
            model(X)
            model.zero_grad()
            model.backward(g)
        return kept[0]

    np.testing.assert_array_equal(run(True), run(False))
