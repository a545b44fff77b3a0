"""The Module system: registration, names, modes, state_dict, custom layers and losses.

A PyTorch user's expectations, checked one by one: an attribute holding a Module or a
Parameter registers it; names are dotted paths; train/eval/zero_grad reach every sub-module;
state_dict / load_state_dict round-trip and name what does not fit; a layer of one's own is
saved and loaded once registered.
"""
import numpy as np
import pytest

import nnscratch as nn
from nnscratch import backend


class Block(nn.Module):
    """The issue's composite block: y = x + body(x)."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.body = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, x):
        return x + self.body(x)

    def backward(self, g):
        return g + self.body.backward(g)

    def get_config(self):
        return {"d": self.d}


def block_model(seed=0):
    nn.seed(seed)
    return nn.Sequential(nn.Linear(8, 8), Block(8), nn.Linear(8, 3))


def data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype(np.float32), rng.integers(0, 3, n)


# --------------------------------------------------------------------------------------
# registration and names

def test_attributes_register_modules_and_parameters_with_dotted_names():
    model = block_model()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.body.0.weight", "1.body.0.bias",
                     "1.body.2.weight", "1.body.2.bias", "2.weight", "2.bias"]
    assert len(list(model.parameters())) == 8
    assert [name for name, _ in model.named_children()] == ["0", "1", "2"]
    assert [name for name, _ in model.named_modules()] == [
        "", "0", "1", "1.body", "1.body.0", "1.body.1", "1.body.2", "2"]
    assert list(model[1].children()) == [model[1].body]
    assert sum(1 for _ in model.modules()) == 8


def test_the_composite_block_trains_every_parameter():
    # the example: before the Module system, the block's body was invisible
    for name in ("cython", "numpy"):
        with backend.using(name):
            model = block_model()
            X, y = data()
            before = {n: p.data.copy() for n, p in model.named_parameters()}
            model.fit(X, y, loss=nn.CrossEntropyLoss(),
                      optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=16,
                      seed=0, progress=False)
            changed = [n for n, p in model.named_parameters()
                       if not np.array_equal(p.data, before[n])]
            assert changed == list(before), (name, changed)


def test_the_block_gradients_are_finite_differences():
    nn.seed(3)

    class Block64(Block):
        def __init__(self, d):
            nn.Module.__init__(self)
            self.d = d
            self.body = nn.Sequential(nn.Linear(d, d, dtype=np.float64), nn.Tanh(),
                                      nn.Linear(d, d, dtype=np.float64))

    model = nn.Sequential(nn.Linear(4, 4, dtype=np.float64), Block64(4),
                          nn.Linear(4, 3, dtype=np.float64))
    X = np.random.default_rng(2).normal(size=(5, 4))
    errors = nn.gradcheck(model, X, np.array([0, 1, 2, 1, 0]), nn.CrossEntropyLoss(),
                          check_input=True)
    assert len(errors) == 9 and max(errors.values()) < 1e-6, errors


def test_reassigning_and_deleting_attributes_updates_the_registry():
    layer = nn.Linear(3, 2)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    layer.bias = None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    layer.bias = nn.Parameter(np.zeros(2, np.float32))
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    with pytest.raises(TypeError, match="a Parameter"):
        layer.bias = np.zeros(2)
    del layer.bias
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    block = Block(2)
    block.body = nn.Identity()
    assert list(block.parameters()) == []
    with pytest.raises(TypeError, match="a Module"):
        block.body = "relu"


def test_a_subclass_that_forgets_super_init_is_told():
    class Forgot(nn.Module):
        def __init__(self):
            self.layer = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgot()


def test_a_shared_parameter_is_listed_once_and_accumulates():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    model = nn.Sequential(a, nn.Tanh(), b)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.bias"]
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    for fast in (True, False):
        previous = backend.set_fast_path(fast)
        try:
            model.zero_grad()
            model(x)
            model.backward(np.ones((4, 3), np.float32))
            grads = a.weight.grad.copy()
        finally:
            backend.set_fast_path(previous)
        h = np.tanh(x @ a.weight.data + a.bias.data)
        g2 = np.ones((4, 3), np.float32)
        g1 = (g2 @ b.weight.data.T) * (1 - h ** 2)
        np.testing.assert_allclose(grads, h.T @ g2 + x.T @ g1, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# modes, zero_grad, summary, containers

def test_train_eval_and_zero_grad_reach_every_sub_module():
    model = block_model()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    X, _ = data(4)
    model(X)
    model.backward(np.ones((4, 3), np.float32))
    assert all(p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


def test_summary_counts_nested_parameters():
    text = block_model().summary(input_shape=(8,), print_fn=None)
    assert "Total params: 243 (float32)" in text          # 72 + 2 * 72 + 27
    assert "1: Block(d=8 ...)" in text and "144" in text


def test_module_list_and_identity():
    layers = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    layers.append(nn.Linear(2, 1))
    assert len(layers) == 3 and isinstance(layers[2], nn.Linear)
    assert [n for n, _ in layers.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                          "2.bias"]
    layers.insert(0, nn.Identity())
    assert [type(m).__name__ for m in layers] == ["Identity", "Linear", "ReLU", "Linear"]
    assert [n for n, _ in layers.named_parameters()][0] == "1.weight"
    del layers[0]
    assert isinstance(layers[:2], nn.ModuleList) and len(layers[:2]) == 2
    with pytest.raises(TypeError, match="argument 0"):
        nn.ModuleList(["relu"])
    x = np.arange(6.0).reshape(2, 3)
    assert nn.Identity()(x) is x
    g = np.ones((2, 3))
    assert nn.Identity().backward(g) is g

    class Stack(nn.Module):           # layers in a ModuleList: registered, trained
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    assert len(list(Stack().parameters())) == 4


def test_sequential_list_operations():
    nn.seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    model.append(nn.Linear(3, 2))
    model.insert(1, nn.Tanh())
    assert [type(m).__name__ for m in model] == ["Linear", "Tanh", "ReLU", "Linear"]
    assert model.pop(1).__class__ is nn.Tanh
    model[1] = nn.Sigmoid()
    del model[1]
    model.extend([nn.ReLU()])
    assert [type(m).__name__ for m in model] == ["Linear", "Linear", "ReLU"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight",
                                                         "1.bias"]
    assert isinstance(model.layers, tuple)


# --------------------------------------------------------------------------------------
# Parameter.grad

def test_parameter_grad_can_be_assigned_and_cleared():
    p = nn.Parameter(np.ones((2, 3), np.float32))
    old = p.grad
    new = np.full((2, 3), 5, np.float32)
    p.grad = new
    assert p.grad is new
    p.grad = None
    assert p.grad is not new and not p.grad.any() and p.grad.shape == (2, 3)
    assert p.grad.dtype == np.float32 and old is not p.grad
    for bad in (np.ones((3, 2), np.float32), np.ones((2, 3)), [[1, 2, 3], [4, 5, 6]],
                np.ones((2, 6), np.float32)[:, ::2]):
        with pytest.raises(ValueError, match="grad"):
            p.grad = bad


def test_an_assigned_grad_is_where_backward_adds_on_both_paths():
    for fast in (True, False):
        previous = backend.set_fast_path(fast)
        try:
            nn.seed(1)
            model = nn.Sequential(nn.Linear(3, 2))
            x = np.ones((4, 3), np.float32)
            model(x)
            mine = np.full((3, 2), 10, np.float32)
            model[0].weight.grad = mine
            model.backward(np.ones((4, 2), np.float32))
            assert model[0].weight.grad is mine
            np.testing.assert_array_equal(mine, 10 + x.T @ np.ones((4, 2)))
        finally:
            backend.set_fast_path(previous)


# --------------------------------------------------------------------------------------
# state_dict

def test_state_dict_round_trips_into_a_fresh_model():
    model = block_model(seed=0)
    X, y = data()
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.Adam(model.parameters(), 0.01),
              epochs=1, batch_size=16, progress=False)
    state = model.state_dict()
    assert list(state) == [n for n, _ in model.named_parameters()]
    fresh = block_model(seed=99)
    assert not np.array_equal(fresh.predict(X), model.predict(X))
    assert fresh.load_state_dict(state) == ([], [])
    np.testing.assert_array_equal(fresh.predict(X), model.predict(X))


def test_state_dict_holds_buffers_in_pytorch_order():
    torch = pytest.importorskip("torch")
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8, 3), nn.BatchNorm1d(3))
    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 3),
                               torch.nn.BatchNorm1d(3))
    theirs = [k for k in twin.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(model.state_dict()) == theirs


def test_load_state_dict_names_every_key_that_does_not_fit():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    state = {k: v.copy() for k, v in model.state_dict().items()}
    before = {k: v.copy() for k, v in state.items()}
    broken = dict(state)
    del broken["1.running_var"]
    broken["9.weight"] = np.zeros(3)
    broken["2.weight"] = np.zeros((2, 4))
    with pytest.raises(ValueError) as info:
        model.load_state_dict(broken)
    message = str(info.value)
    assert "missing key(s): '1.running_var'" in message
    assert "unexpected key(s): '9.weight'" in message
    assert "size mismatch for '2.weight'" in message and "(2, 4)" in message
    assert isinstance(info.value, RuntimeError)          # as PyTorch's
    for key, value in model.state_dict().items():       # nothing copied
        np.testing.assert_array_equal(value, before[key])
    # strict=False: the keys that fit are copied, the others reported
    del broken["2.weight"]
    broken["0.bias"] = np.full(4, 7.0)
    result = model.load_state_dict(broken, strict=False)
    assert result.missing_keys == ["1.running_var", "2.weight"]
    assert result.unexpected_keys == ["9.weight"]
    np.testing.assert_array_equal(model[0].bias.data, 7.0)
    with pytest.raises(TypeError, match="mapping"):
        model.load_state_dict([("0.bias", np.zeros(4))])


# --------------------------------------------------------------------------------------
# saving a layer of one's own

@nn.register
class Scale(nn.Module):
    """y = x * w (per feature), a registered custom layer with a parameter."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.w = nn.Parameter(np.linspace(0.5, 1.5, features).astype(np.float32))

    def forward(self, x):
        self._x = np.asarray(x, np.float32)
        return self._x * self.w.data

    def backward(self, grad_out, *, compute_grad_input=True):
        self.w.grad += (grad_out * self._x).sum(axis=0)
        return grad_out * self.w.data

    def get_config(self):
        return {"features": self.features}


def test_a_registered_custom_layer_saves_and_loads(tmp_path):
    nn.seed(4)
    model = nn.Sequential(nn.Linear(8, 8), Scale(8), nn.ReLU(), nn.Linear(8, 3))
    X, y = data()
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.SGD(model.parameters(), 0.1),
              epochs=1, batch_size=16, progress=False)
    assert not np.allclose(model[1].w.data, np.linspace(0.5, 1.5, 8))     # it trained
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    assert isinstance(loaded[1], Scale)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_the_composite_block_saves_and_loads_once_registered(tmp_path):
    model = block_model()
    X, _ = data()
    with pytest.raises(ValueError, match=r"Block cannot be saved.*@nnscratch.register"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    registered = nn.register(Block)
    try:
        model.save(tmp_path / "m.npz")
        loaded = nn.load(tmp_path / "m.npz")
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
        assert [n for n, _ in loaded.named_parameters()] == \
            [n for n, _ in model.named_parameters()]
    finally:
        nn.module._REGISTRY.pop("Block")
    with pytest.raises(ValueError, match="'Block', which is not a registered module class"):
        nn.load(tmp_path / "m.npz")
    assert registered is Block


def test_register_refuses_what_it_cannot_keep():
    with pytest.raises(TypeError, match="Module subclass"):
        nn.register(int)

    class Linear(nn.Module):        # another class under a name already taken
        pass

    with pytest.raises(ValueError, match="already registered"):
        nn.register(Linear)
    assert nn.register(name="MyLinear")(Linear) is Linear
    nn.module._REGISTRY.pop("MyLinear")

    class Subclass(nn.Linear):      # unregistered: not saved under its parent's name
        pass

    with pytest.raises(ValueError, match="Subclass cannot be saved"):
        nn.serialization.architecture(nn.Sequential(Subclass(2, 2)))


# --------------------------------------------------------------------------------------
# what a subclass must write

def test_a_layer_without_forward_or_backward_says_what_is_missing():
    class Half(nn.Module):
        pass

    with pytest.raises(NotImplementedError, match=r"Half has no forward\(x\)"):
        Half()(np.ones(2))
    with pytest.raises(NotImplementedError, match=r"backward\(grad_out, \*, "
                                                  r"compute_grad_input=True\)"):
        Half().backward(np.ones(2))


def test_a_custom_loss_is_a_small_subclass():
    class MAELoss(nn.Loss):
        def forward(self, pred, target):
            self._diff = pred - target
            return float(np.abs(self._diff).mean())

        def backward(self):
            return np.sign(self._diff) / self._diff.size

    nn.seed(5)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    X, _ = data(128)
    target = X[:, :1] * 2.0
    history = model.fit(X, target, loss=MAELoss(), optimizer=nn.Adam(model.parameters(), 0.01),
                        epochs=5, batch_size=16, progress=False)
    assert history.history["loss"][-1] < history.history["loss"][0]

    class NoBackward(nn.Loss):
        def forward(self, pred, target):
            return 0.0

    with pytest.raises(NotImplementedError, match=r"NoBackward has no backward\(\)"):
        NoBackward().backward()
    with pytest.raises(NotImplementedError, match=r"forward\(pred, target\)"):
        nn.Loss()(np.ones(2), np.ones(2))


def test_names_of_buffers_and_modules_are_checked():
    layer = nn.Linear(2, 2)
    for bad in ("", "a.b"):
        with pytest.raises(KeyError, match="without a dot"):
            layer.register_buffer(bad, np.zeros(1))
    with pytest.raises(KeyError, match="already exists"):
        layer.register_buffer("training", np.zeros(1))
    with pytest.raises(TypeError, match="must be a str"):
        layer.add_module(3, nn.ReLU())
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(AttributeError):
        model.layers = nn.Sequential()          # a read-only property: nothing registered
    assert len(model) == 1 and [n for n, _ in model.named_children()] == ["0"]


def test_load_state_dict_takes_parameters_and_refuses_lossy_casts():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", np.zeros(1, np.int64))

    counter = Counter()
    with pytest.raises(ValueError, match="'count' has dtype float64"):
        counter.load_state_dict({"count": np.array([0.7])})
    layer = nn.Linear(3, 2)
    other = nn.Linear(3, 2)
    layer.load_state_dict({"weight": other.weight, "bias": other.bias})
    np.testing.assert_array_equal(layer.weight.data, other.weight.data)
    layer64 = nn.Linear(3, 2, dtype=np.float64)
    layer64.load_state_dict(layer.state_dict())          # float32 into float64: exact
    np.testing.assert_array_equal(layer64.weight.data, layer.weight.data)
