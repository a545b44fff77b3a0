"""Hooks: ``register_forward_hook`` / ``register_full_backward_hook``, PyTorch's signatures.

They fire with the layer's own arrays (held against its own forward, a backward worked out
by hand, and PyTorch's hooks on the same weights), in registration order, on containers, in
predict (forward hooks only), on both paths; the fast path steps aside where hooks are --
a read-only hook inside a fused chain leaves fit's weights bit for bit as they were -- and
comes back when they are removed. Hooks are not saved; copies carry them.
"""
import contextlib
import copy
import warnings

import numpy as np
import pytest

import nnscratch as nn
from conftest import textbook
from nnscratch import _fast, backend
from nnscratch._fast.steps import ChainStep, ModuleStep

PATHS = ("fast", "textbook")


@pytest.fixture(params=PATHS)
def path(request):
    """Each test twice: on the fast path and on the layers' own code (same kernels)."""
    if request.param == "textbook":
        with textbook():
            yield request.param
    else:
        assert backend.fast_path()
        yield request.param


def _mlp(dtype=np.float32, seed=0):
    """Three Linear layers with ReLUs between: one fused chain on the fast path."""
    nn.seed(seed)
    return nn.Sequential(nn.Linear(6, 16, dtype=dtype), nn.ReLU(), nn.Linear(16, 12, dtype=dtype),
                         nn.ReLU(), nn.Linear(12, 3, dtype=dtype))


def _data(n=40, dtype=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)).astype(dtype), rng.integers(0, 3, n)


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def _weights(model):
    return [p.data.copy() for p in model.parameters()]


class Recorder:
    """Forward and backward hooks that copy what they are given."""

    def __init__(self):
        self.forward, self.backward = [], []

    def on_forward(self, module, inputs, output):
        assert isinstance(inputs, tuple) and len(inputs) == 1
        self.forward.append((module, inputs[0].copy(), output.copy()))

    def on_backward(self, module, grad_input, grad_output):
        assert isinstance(grad_input, tuple) and isinstance(grad_output, tuple)
        assert len(grad_input) == len(grad_output) == 1
        g_in = None if grad_input[0] is None else grad_input[0].copy()
        self.backward.append((module, g_in, grad_output[0].copy()))

    def attach(self, module):
        return (module.register_forward_hook(self.on_forward),
                module.register_full_backward_hook(self.on_backward))


# --- the arrays a hook is given ------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1, 2, 4])    # chain head, a fused ReLU, middle, last
def test_forward_hook_sees_the_layers_input_and_its_own_output(path, index):
    model, (x, _) = _mlp(), _data()
    expected = model(x).copy()                      # no hooks yet
    rec = Recorder()
    layer = model[index]
    rec.attach(layer)
    out = model(x)
    assert _same(out, expected)                     # a hook that only reads changes nothing
    assert len(rec.forward) == 1
    module, seen_x, seen_y = rec.forward[0]
    assert module is layer
    with textbook():
        assert _same(seen_x, model[:index].infer(x) if index else x)
    assert _same(seen_y, type(layer).infer(layer, seen_x))   # the layer's own computation


def test_backward_hook_sees_grad_input_and_grad_output_worked_out_by_hand(path):
    model, (x, _) = _mlp(np.float64), _data(dtype=np.float64)
    rec = Recorder()
    rec.attach(model[2])
    first = Recorder()
    first.attach(model[0])
    g = np.random.default_rng(2).standard_normal((len(x), 3))
    model(x)
    model.backward(g, compute_grad_input=False)
    W = [model[i].weight.data for i in (0, 2, 4)]
    b = [model[i].bias.data for i in (0, 2, 4)]
    z1 = x @ W[0] + b[0]
    z2 = np.maximum(z1, 0) @ W[1] + b[1]
    g2 = (g @ W[2].T) * (z2 > 0)                     # dL/d(output of layer 2)
    (module, g_in, g_out), = rec.backward
    assert module is model[2]
    np.testing.assert_allclose(g_out, g2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g_in, g2 @ W[1].T, rtol=1e-12, atol=1e-14)
    # the first layer, asked for no input gradient: PyTorch's None for an input that needs none
    (module, g_in, g_out), = first.backward
    assert module is model[0] and g_in is None
    np.testing.assert_allclose(g_out, (g2 @ W[1].T) * (z1 > 0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("input_grad", [True, False])
def test_hooks_give_what_pytorchs_give_on_the_same_network(path, input_grad):
    torch = pytest.importorskip("torch")
    model, (x, y) = _mlp(np.float64)[:3], _data(dtype=np.float64)    # Linear-ReLU-Linear
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 12)).double()
    with torch.no_grad():
        for i in (0, 2):
            net[i].weight.copy_(torch.from_numpy(model[i].weight.data.T))
            net[i].bias.copy_(torch.from_numpy(model[i].bias.data))
    ours, theirs = Recorder(), []
    for module in [*model, model]:
        ours.attach(module)
    for i, module in enumerate([*net, net]):
        module.register_forward_hook(
            lambda m, inp, out, i=i: theirs.append(("f", i, inp[0].detach().numpy().copy(),
                                                    out.detach().numpy().copy())))
        module.register_full_backward_hook(
            lambda m, g_in, g_out, i=i: theirs.append(
                ("b", i, None if g_in[0] is None else g_in[0].numpy().copy(),
                 g_out[0].numpy().copy())))
    loss = nn.CrossEntropyLoss()
    loss(model(x), y)
    model.backward(loss.backward(), compute_grad_input=input_grad)
    tx = torch.from_numpy(x).requires_grad_(input_grad)
    with warnings.catch_warnings():     # (PyTorch's note on hooks of inputs needing no grad)
        warnings.simplefilter("ignore", UserWarning)
        torch.nn.functional.cross_entropy(net(tx), torch.from_numpy(y)).backward()

    index = {id(m): i for i, m in enumerate([*model, model])}
    mine = [("f", index[id(m)], a, b) for m, a, b in ours.forward] + \
           [("b", index[id(m)], a, b) for m, a, b in ours.backward]
    theirs_f = [t for t in theirs if t[0] == "f"]
    theirs_b = [t for t in theirs if t[0] == "b"]
    mine_f, mine_b = mine[:len(ours.forward)], mine[len(ours.forward):]
    assert [t[1] for t in mine_f] == [t[1] for t in theirs_f] == [0, 1, 2, 3]
    assert [t[1] for t in mine_b] == [2, 1, 0, 3]       # the layers from the last, then
    if input_grad:                                      # the container: PyTorch's order --
        assert [t[1] for t in theirs_b] == [2, 1, 0, 3]  # which, when no input needs a
    else:                                               # gradient, fires the container's
        assert [t[1] for t in theirs_b] == [3, 2, 1, 0]  # hook first, from its output
    theirs_b = {t[1]: t for t in theirs_b}
    for kind, i, a, b in mine_f + mine_b:
        other = theirs_f[i] if kind == "f" else theirs_b[i]
        if other[2] is None or a is None:
            assert a is None and other[2] is None, (kind, i)
        else:
            np.testing.assert_allclose(a, other[2], rtol=1e-12, atol=1e-15, err_msg=f"{kind}{i}")
        np.testing.assert_allclose(b, other[3], rtol=1e-12, atol=1e-15, err_msg=f"{kind}{i}")
    assert (ours.backward[-1][1] is None) == (not input_grad)   # the container's grad_input


# --- order, removal, context manager ------------------------------------------------------

def test_hooks_run_in_registration_order_and_prepend_puts_one_first(path):
    model, (x, _) = _mlp(), _data()
    calls = []
    for name in "abc":
        model[2].register_forward_hook(lambda m, i, o, name=name: calls.append(name))
        model[2].register_full_backward_hook(
            lambda m, gi, go, name=name: calls.append(name.upper()))
    model[2].register_forward_hook(lambda m, i, o: calls.append("first"), prepend=True)
    model[2].register_full_backward_hook(lambda m, gi, go: calls.append("FIRST"), True)
    out = model(x)
    model.backward(np.ones_like(out))
    assert calls == ["first", "a", "b", "c", "FIRST", "A", "B", "C"]


def test_remove_takes_one_hook_off_and_a_second_remove_does_nothing(path):
    model, (x, _) = _mlp(), _data()
    calls = []
    keep = model[2].register_forward_hook(lambda m, i, o: calls.append("keep"))
    drop = model[2].register_forward_hook(lambda m, i, o: calls.append("drop"))
    drop_b = model[2].register_full_backward_hook(lambda m, gi, go: calls.append("back"))
    assert keep.id != drop.id
    drop.remove()
    drop.remove()
    drop_b.remove()
    out = model(x)
    model.backward(np.ones_like(out))
    assert calls == ["keep"]
    keep.remove()
    model(x)
    assert calls == ["keep"]
    assert not {"forward", "infer", "backward"} & model[2].__dict__.keys()  # as it was


def test_a_handle_is_a_context_manager(path):
    model, (x, _) = _mlp(), _data()
    calls = []
    with model[0].register_forward_hook(lambda m, i, o: calls.append(1)) as handle:
        assert isinstance(handle, nn.module.RemovableHandle)
        model(x)
        model.predict(x)
    model(x)
    model.predict(x)
    assert calls == [1, 1]


def test_a_hook_may_remove_itself_while_the_hooks_run(path):
    model, (x, _) = _mlp(), _data()
    calls = []

    def once(m, i, o):
        calls.append("once")
        handle.remove()

    handle = model[2].register_forward_hook(once)
    model[2].register_forward_hook(lambda m, i, o: calls.append("always"))
    model(x)
    model(x)
    assert calls == ["once", "always", "always"]


# --- containers, inference ------------------------------------------------------------------

def test_hooks_on_containers_see_the_containers_input_and_output(path):
    nn.seed(0)
    body = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    block = nn.Residual(body)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), block, nn.Linear(6, 3))
    x, _ = _data()
    with textbook():                                # (before the hooks are on)
        h = model[1].infer(model[0].infer(x))
        body_out, block_out = body.infer(h), block.infer(h)
    recs = {name: Recorder() for name in ("model", "block", "body")}
    for name, module in (("model", model), ("block", block), ("body", body)):
        recs[name].attach(module)
    out = model(x)
    g = np.ones_like(out)
    grad_x = model.backward(g)
    (m, seen_x, seen_y), = recs["model"].forward
    assert m is model and _same(seen_x, x) and _same(seen_y, out)
    (m, seen_x, seen_y), = recs["body"].forward
    assert m is body and _same(seen_x, h) and _same(seen_y, body_out)
    (m, seen_x, seen_y), = recs["block"].forward
    assert m is block and _same(seen_x, h) and _same(seen_y, block_out)
    (m, g_in, g_out), = recs["model"].backward
    assert m is model and _same(g_out, g) and _same(g_in, grad_x)
    (_, body_g_in, body_g_out), = recs["body"].backward
    (_, block_g_in, block_g_out), = recs["block"].backward
    assert _same(body_g_out, block_g_out)            # the sum sends dL/dy to both branches
    assert _same(block_g_in, body_g_in + block_g_out)
    # predict runs infer all the way down: the forward hooks fire there too
    model.predict(x)
    assert [len(recs[n].forward) for n in recs] == [2, 2, 2]
    assert _same(recs["body"].forward[1][2], body_out)


def test_predict_and_evaluate_fire_forward_hooks_only(path):
    model, (x, y) = _mlp(), _data(n=50)
    expected = model.predict(x, batch_size=16)
    recs = [Recorder(), Recorder()]
    recs[0].attach(model)
    recs[1].attach(model[2])
    model.train()
    assert _same(model.predict(x, batch_size=16), expected)
    assert [len(r.forward) for r in recs] == [4, 4]          # 4 batches of up to 16
    assert [len(r.backward) for r in recs] == [0, 0]
    assert _same(np.concatenate([out for _, _, out in recs[0].forward]), expected)
    model.eval()
    model(x)
    model.evaluate(x, y, loss="cross_entropy", batch_size=25)
    assert [len(r.forward) for r in recs] == [7, 7]
    assert [len(r.backward) for r in recs] == [0, 0]


class Block(nn.Module):
    """A user's block with the default infer (which runs forward)."""

    def __init__(self, d):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, d), nn.ReLU())

    def forward(self, x):
        return x + self.body(x)

    def backward(self, grad_out, *, compute_grad_input=True):
        return grad_out + self.body.backward(grad_out)


def test_a_blocks_default_infer_fires_its_hooks_once(path):
    nn.seed(0)
    block = Block(6)
    model = nn.Sequential(nn.Linear(6, 6), block, nn.Linear(6, 3))
    x, _ = _data()
    with textbook():
        expected = block.infer(model[0].infer(x))
    seen = []
    block.register_forward_hook(lambda m, i, o: seen.append(o.copy()))
    out = model.predict(x)
    assert len(seen) == 1 and _same(seen[0], expected)
    model(x)
    assert len(seen) == 2 and _same(model.predict(x), out)


# --- replacing values -----------------------------------------------------------------------

def test_a_forward_hook_may_replace_the_output_in_infer_only(path):
    model, (x, _) = _mlp(), _data()
    expected = model.predict(x)
    handle = model[4].register_forward_hook(lambda m, i, out: out * 2)
    assert _same(model.predict(x), expected * 2)
    with pytest.raises(RuntimeError, match="only in infer"):
        model(x)
    handle.remove()
    model[0].register_forward_hook(lambda m, i, out: np.zeros_like(out))   # -> bias only
    with textbook():
        tail = model[1:].infer(np.zeros((len(x), 16), np.float32))
    assert _same(model.predict(x), tail)


def test_a_backward_hook_may_replace_grad_input(path):
    model, (x, _) = _mlp(np.float64), _data(dtype=np.float64)
    g = np.ones((len(x), 3))
    model(x)
    grad_x = model.backward(g).copy()
    model[0].register_full_backward_hook(lambda m, gi, go: (2 * gi[0],))
    model(x)
    assert _same(model.backward(g), 2 * grad_x)
    model(x)
    model[2].register_full_backward_hook(lambda m, gi, go: (np.zeros_like(gi[0]),))
    assert not model.backward(g).any()          # nothing flows below layer 2
    model[4].register_full_backward_hook(lambda m, gi, go: gi[0])
    model(x)
    with pytest.raises(TypeError, match=r"\(grad_input,\)"):
        model.backward(g)


def test_a_backward_hook_returning_another_shape_is_an_error(path):
    model, (x, _) = _mlp(np.float64), _data(dtype=np.float64)
    model[2].register_full_backward_hook(lambda m, gi, go: (gi[0][:, :3],))
    out = model(x)
    with pytest.raises(ValueError, match="shape"):
        model.backward(np.ones_like(out))


# --- the fast path steps aside, and comes back -----------------------------------------------

@pytest.fixture
def train_steps(monkeypatch):
    """How many fast-path training steps (``_fast.TrainStep``) fit has made."""
    made = []
    real = _fast.TrainStep

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_fast, "TrainStep", counting)
    return made


def _train(model, X, y, epochs=2):
    model.fit(X, y, loss=nn.CrossEntropyLoss(), epochs=epochs, batch_size=32, seed=3,
              optimizer=nn.SGD(model.parameters(), lr=0.05, momentum=0.9), progress=False)
    return _weights(model)


def _chain_of(model):
    """The linear layers of the plan's chain steps."""
    return [lin for step in model._fast_plan.steps if isinstance(step, ChainStep)
            for lin in step.linears]


def test_fit_with_a_read_only_hook_inside_a_fused_chain_keeps_every_bit(train_steps):
    X, y = _data(n=200)
    steps = 2 * 7                                   # 2 epochs of 200 samples in 32s
    plain = _train(_mlp(), X, y)
    train_steps.clear()
    model = _mlp()
    model(X[:4])
    assert _chain_of(model) == [model[0], model[2], model[4]]
    layer, seen, plans = model[2], {"forward": 0, "backward": 0}, []

    def on_forward(m, inputs, out):             # the layer's own output, every step
        seen["forward"] += 1
        W, b = m.weight.data, m.bias.data
        assert _same(out, backend.kernels().linear_forward(inputs[0], W, b))
        plans.append([type(s) for s in model._fast_plan.steps])

    def on_backward(m, grad_input, grad_output):   # and its own input gradient
        seen["backward"] += 1
        np.testing.assert_allclose(grad_input[0], grad_output[0] @ m.weight.data.T,
                                   rtol=1e-5, atol=1e-6)

    handles = layer.register_forward_hook(on_forward), \
        layer.register_full_backward_hook(on_backward)
    hooked = _train(model, X, y)
    assert train_steps == [1]                     # fit's fast step...
    assert seen == {"forward": steps, "backward": steps}
    assert all(ModuleStep in p and ChainStep not in p for p in plans)  # ...its chain split
    assert all(_same(a, b) for a, b in zip(hooked, plain))
    for handle in handles:
        handle.remove()
    model(X[:4])
    assert _chain_of(model) == [model[0], model[2], model[4]]   # the fused chain is back
    again = _train(model, X, y)                     # hooks gone: not called, fast step
    assert seen["forward"] == steps and train_steps == [1, 1]
    twice = _mlp()
    _train(twice, X, y)
    assert all(_same(a, b) for a, b in zip(again, _train(twice, X, y)))


def test_a_hook_on_the_relu_the_fast_path_runs_after_max_pool_keeps_every_bit():
    def cnn():
        nn.seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((96, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 96)

    def train(model):
        model.fit(X, y, loss=nn.CrossEntropyLoss(), epochs=2, batch_size=16, seed=1,
                  optimizer=nn.Adam(model.parameters(), lr=1e-2), progress=False)
        return _weights(model)

    plain, model = train(cnn()), cnn()
    rec = Recorder()
    rec.attach(model[1])
    hooked = train(model)
    assert len(rec.forward) == len(rec.backward) == 12
    assert all(_same(out, np.maximum(x, 0)) for _, x, out in rec.forward)
    assert [type(s).__name__ for s in model._fast_plan.steps] == [
        "ConvStep", "ModuleStep", "PoolStep", "FlattenStep", "ChainStep"]
    assert all(_same(a, b) for a, b in zip(hooked, plain))


def test_a_hook_on_the_model_itself_trains_with_the_textbook_step_and_the_same_bits(
        train_steps):
    X, y = _data(n=200)
    plain = _train(_mlp(), X, y)
    assert train_steps == [1]
    model = _mlp()
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    assert not _fast.plannable(model)
    hooked = _train(model, X, y)
    assert train_steps == [1]                     # no fast step: fit's textbook one
    assert calls == [32] * 6 + [8] + [32] * 6 + [8]
    assert all(_same(a, b) for a, b in zip(hooked, plain))
    handle.remove()
    assert _fast.plannable(model)
    _train(model, X, y, epochs=1)
    assert train_steps == [1, 1]


def test_a_hook_put_on_between_forward_and_backward(path):
    model, (x, _) = _mlp(), _data()
    clean = _mlp()
    g = np.random.default_rng(5).standard_normal((len(x), 3)).astype(np.float32)
    clean(x)
    expected = clean.backward(g).copy()
    model(x)
    seen = []
    model[2].register_full_backward_hook(lambda m, gi, go: seen.append(1))
    assert _same(model.backward(g), expected)
    assert seen == [1]
    assert all(_same(p.grad, q.grad) for p, q in zip(model.parameters(), clean.parameters()))


# --- hooks are not state; copies ---------------------------------------------------------------

def test_hooks_are_not_saved(tmp_path):
    model, (x, _) = _mlp(), _data()
    keys = list(model.state_dict())
    Recorder().attach(model)
    Recorder().attach(model[2])
    assert list(model.state_dict()) == keys
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    assert not any(m.__dict__.get("_forward_hooks") or "forward" in m.__dict__
                   for m in loaded.modules())
    assert _same(loaded.predict(x), model.predict(x))


def test_copies_carry_the_hooks_each_with_its_own_list():
    model, (x, _) = _mlp(), _data()
    seen = []
    handle = model[2].register_forward_hook(lambda m, i, o: seen.append(m))
    deep, shallow = copy.deepcopy(model), copy.copy(model[2])
    deep(x)
    assert seen == [deep[2]]                       # the copy's own layer, not the original's
    shallow(model[1](model[0](x)))
    assert seen == [deep[2], shallow]
    handle.remove()                                # from the original only
    model(x)
    deep(x)
    assert seen == [deep[2], shallow, deep[2]]


# --- arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("register", ["register_forward_hook", "register_full_backward_hook",
                                      "register_backward_hook"])
def test_a_hook_that_is_not_callable_is_a_type_error_naming_the_argument(register):
    layer = nn.Linear(2, 2)
    named = "register_forward_hook" if register == "register_forward_hook" else \
        "register_full_backward_hook"
    warns = pytest.warns(FutureWarning) if register == "register_backward_hook" else \
        contextlib.nullcontext()
    with warns, pytest.raises(TypeError, match=f"{named}: hook must be callable.*got int"):
        getattr(layer, register)(42)
    assert "forward" not in layer.__dict__


def test_register_backward_hook_is_the_full_one_with_a_future_warning(path):
    model, (x, _) = _mlp(), _data()
    seen = []
    with pytest.warns(FutureWarning, match="register_full_backward_hook"):
        model[2].register_backward_hook(lambda m, gi, go: seen.append(gi[0].shape))
    out = model(x)
    model.backward(np.ones_like(out))
    assert seen == [(len(x), 16)]
